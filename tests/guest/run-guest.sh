#!/usr/bin/env bash
# Boot the keel test guest (built by build-guest.sh) under qemu, run SCRIPT in
# it, print the guest console, and exit with SCRIPT's exit status.
#
# usage: tests/guest/run-guest.sh [-t TIMEOUT_S] [-m MB] [-c CPUS] [-e VAR=VAL]...
#                                 [-f HOSTFWD]... [-l LOGFILE] SCRIPT [FILE...]
#   -t  wall-clock limit for the whole run, boot included (default 300)
#   -m  guest memory in MiB (default 1024);  -c  guest CPUs (default 2)
#   -e  export VAR=VAL into SCRIPT's environment (repeatable)
#   -f  forward a host port into the guest, qemu hostfwd syntax, e.g.
#       -f tcp:127.0.0.1:14420-:4420 (for a peer target running in the guest)
#   -l  also write the console to LOGFILE
#   FILEs are copied into the guest's /root, SCRIPT's working directory.
#
# Inside the guest 10.0.2.2:PORT is the host's 127.0.0.1:PORT (qemu user-mode
# networking), for any TCP port. SCRIPT runs under busybox sh as root and can
# source /usr/share/keel/guest-lib.sh (scripts/guest-lib.sh, added at every boot).
#
# exit: SCRIPT's status (keep it below 124); 124 timeout; 125 the guest stopped
#       without reporting a status (kernel panic, qemu died); 126 harness error
#       (usage, guest not built, qemu missing).
# env:  KEEL_GUEST_CACHE (default $HOME/.cache/keel-guest)
#       KEEL_GUEST_ACCEL=tcg|kvm (default tcg unless kvm_intel/kvm_amd is loaded;
#       a PVM-backed /dev/kvm cannot boot a stock kernel)
#       KEEL_GUEST_APPEND (extra kernel command line), KEEL_GUEST_QEMU_ARGS
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KEEL_GUEST_CACHE:-$HOME/.cache/keel-guest}
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 126; }
TIMEOUT=300 MEM=1024 CPUS=2 FWDS="" LOG="" ENVS=()
while getopts "t:m:c:e:f:l:h" o; do
  case $o in
    t) TIMEOUT=$OPTARG ;; m) MEM=$OPTARG ;; c) CPUS=$OPTARG ;;
    e) [[ $OPTARG == [A-Za-z_]*=* ]] || { echo "run-guest: -e wants VAR=VAL, got '$OPTARG'" >&2; exit 126; }
       ENVS+=("$OPTARG") ;;
    f) FWDS+=",hostfwd=$OPTARG" ;; l) LOG=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -ge 1 ]] || usage
SCRIPT=$1; shift
[[ -f $SCRIPT ]] || { echo "run-guest: no such script: $SCRIPT" >&2; exit 126; }
[[ -s $CACHE/vmlinuz && -s $CACHE/initramfs.cpio ]] \
  || { echo "run-guest: no guest in $CACHE; run tests/guest/build-guest.sh first" >&2; exit 126; }
command -v qemu-system-x86_64 >/dev/null \
  || { echo "run-guest: qemu-system-x86_64 missing; run tests/guest/build-guest.sh (it installs it)" >&2; exit 126; }

W=$(mktemp -d "${TMPDIR:-/tmp}/keel-guest.XXXXXX")
cleanup() {
  if [[ -s $W/qemu.pid ]]; then kill "$(cat "$W/qemu.pid")" 2>/dev/null; fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP

# The second cpio (SCRIPT, FILEs, environment, guest library) is unpacked by
# the kernel over the cached initramfs.
mkdir -p "$W/x/root" "$W/x/usr/share/keel"
cp "$SCRIPT" "$W/x/run-test.sh"
cp "$HERE/scripts/guest-lib.sh" "$W/x/usr/share/keel/guest-lib.sh"
for f in "$@"; do cp -r "$f" "$W/x/root/" || exit 126; done
for e in "${ENVS[@]}"; do
  v=${e#*=}; printf "%s='%s'\n" "${e%%=*}" "${v//\'/\'\\\'\'}" >> "$W/x/root/.env"
done
(cd "$W/x" && find . -print0 | cpio --null -o -H newc --quiet -R 0:0) > "$W/extra.cpio" || exit 126
cat "$CACHE/initramfs.cpio" "$W/extra.cpio" > "$W/initrd" || exit 126

ACCEL=${KEEL_GUEST_ACCEL:-}
if [[ -z $ACCEL ]]; then
  if [[ -r /dev/kvm && -w /dev/kvm && ( -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ) ]]; then
    ACCEL=kvm; else ACCEL=tcg; fi
fi
if [[ $ACCEL == kvm ]]; then ACC=(-accel kvm -cpu host); else ACC=(-accel tcg -cpu max); fi

T0=$(date +%s%N)
# shellcheck disable=SC2086 # KEEL_GUEST_QEMU_ARGS is a word list
timeout --foreground -k 5 "$TIMEOUT" qemu-system-x86_64 -name keel-guest -pidfile "$W/qemu.pid" \
  "${ACC[@]}" -M q35 -smp "$CPUS" -m "$MEM" \
  -kernel "$CACHE/vmlinuz" -initrd "$W/initrd" \
  -append "console=ttyS0 panic=-1 loglevel=4 ${KEEL_GUEST_APPEND:-}" \
  -nographic -no-reboot -monitor none \
  -netdev "user,id=n0${FWDS}" -device virtio-net-pci,netdev=n0 \
  ${KEEL_GUEST_QEMU_ARGS:-} < /dev/null 2>&1 | sed -u 's/\r$//; s/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc/\n/g' | tee "$W/console.log"
qrc=${PIPESTATUS[0]}
T1=$(date +%s%N)
if [[ -n $LOG ]]; then cp "$W/console.log" "$LOG"; fi

rc=$(grep -a -o 'GUEST_EXIT=[0-9]*' "$W/console.log" | tail -1 | cut -d= -f2)
boot=$(grep -a -o 'GUEST_BOOTED .*uptime=[0-9.]*' "$W/console.log" | tail -1 | sed 's/.*uptime=//')
end=$(grep -a -o 'GUEST_EXIT=[0-9]* uptime=[0-9.]*' "$W/console.log" | tail -1 | sed 's/.*uptime=//')
wall=$(( (T1 - T0) / 1000000 ))
printf 'run-guest: %s accel=%s qemu_rc=%s guest_rc=%s boot=%ss script=%ss wall=%d.%03ds\n' \
  "$(basename "$SCRIPT")" "$ACCEL" "$qrc" "${rc:-none}" "${boot:-?}" \
  "$( [[ -n $boot && -n $end ]] && awk -v a="$boot" -v b="$end" 'BEGIN{printf "%.1f", b-a}' || echo '?')" \
  $((wall / 1000)) $((wall % 1000)) >&2
if [[ $qrc == 124 || $qrc == 137 ]]; then
  echo "run-guest: TIMEOUT after ${TIMEOUT}s" >&2; exit 124
fi
if [[ -z $rc ]]; then
  echo "run-guest: the guest reported no exit status (qemu_rc=$qrc)" >&2; exit 125
fi
exit "$rc"
