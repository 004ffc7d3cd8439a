#!/bin/sh
# Guest test: the Linux NVMe/TCP initiator (nvme-tcp + nvme-cli) against an
# NVMe/TCP target on the HOST: discovery, admin commands, a file system across
# two connections, then a fio write+verify job on the raw namespace.
#
#   nvme discover -> connect -> nvme list, id-ctrl, id-ns, smart-log, ana-log ->
#   mkfs.ext4 -> files + sha256 sums -> umount, disconnect -> connect again ->
#   e2fsck -fn clean -> mount -> checksums match -> umount ->
#   fio randwrite 4k..1M, iodepth 32, libaio, O_DIRECT, crc32c verify -> disconnect
#
# env: TGT_PORT   target port on the host's 127.0.0.1 (required)
#      TGT_NQN    subsystem NQN (default: the first NVMe subsystem discovered)
#      TGT_ADDR   address of the host as the guest sees it (default 10.0.2.2)
#      HDGST=1, DDGST=1  ask for header / data digests (CRC32C)
#      NR_IO_QUEUES      nvme connect --nr-io-queues
#      NO_ANA=1          skip the ANA log page (targets without ANA reporting)
#      FIO_SIZE          bytes of the namespace fio covers (default 128M, capped
#                        at the namespace size)
#      MKFS_OPTS         extra mkfs.ext4 options
. /usr/share/keel/guest-lib.sh
# shellcheck disable=SC2034 # read by guest-lib.sh
KEEL_SCRIPT=nvme-fs
need_env TGT_PORT
A=${TGT_ADDR:-10.0.2.2} P=$TGT_PORT
MNT=/mnt/keel SUMS=/tmp/sums
mkdir -p $MNT

# ctrl_of NQN: print nvmeX for the live controller of subsystem NQN
ctrl_of() {
  for c in /sys/class/nvme/nvme*; do
    [ -e "$c/subsysnqn" ] || continue
    [ "$(cat "$c/subsysnqn")" = "$1" ] || continue
    [ "$(cat "$c/state" 2>/dev/null)" = live ] || continue
    echo "${c##*/}"; return 0
  done
  return 1
}

# ns_of NQN: print /dev/nvmeXnY, the first namespace block device of NQN (the
# multipath head node when native multipath is on, else the controller's node)
ns_of() {
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ -e "$s/subsysnqn" ] && [ "$(cat "$s/subsysnqn")" = "$1" ] || continue
    for b in "$s"/nvme*n*; do
      n=${b##*/}
      case $n in *c*n*) continue ;; esac   # hidden per-path nodes
      [ -b "/dev/$n" ] && { echo "/dev/$n"; return 0; }
    done
  done
  c=$(ctrl_of "$1") || return 1
  for b in /sys/class/nvme/"$c"/"$c"n*; do
    [ -b "/dev/${b##*/}" ] && { echo "/dev/${b##*/}"; return 0; }
  done
  return 1
}

connect() {
  step "connect to $NQN at $A:$P${HDGST:+ hdgst}${DDGST:+ ddgst}${NR_IO_QUEUES:+ nr-io-queues=$NR_IO_QUEUES}"
  t0=$(now)
  nvme connect -t tcp -a "$A" -s "$P" -n "$NQN" ${HDGST:+--hdr-digest} ${DDGST:+--data-digest} \
    ${NR_IO_QUEUES:+--nr-io-queues=$NR_IO_QUEUES} 2>&1 | sed 's/^/  /'
  wait_until 30 ns_of "$NQN" || fail "no namespace block device appeared within 30s of nvme connect"
  CTRL=/dev/$(ctrl_of "$NQN") || fail "no live controller for $NQN"
  DEV=$(ns_of "$NQN")
  c=/sys/class/nvme/${CTRL#/dev/}
  echo "  connected: $CTRL ($(cat $c/transport) $(cat $c/address | tr ',' ' ')), $DEV after $(elapsed "$t0")s"
  qc=$(cat $c/queue_count 2>/dev/null)
  echo "  queue_count=$qc (admin + I/O) sqsize=$(cat $c/sqsize 2>/dev/null) cntlid=$(cat $c/cntlid 2>/dev/null)"
  if [ -n "${NR_IO_QUEUES:-}" ] && [ -n "$qc" ] && [ $((qc - 1)) -gt "$NR_IO_QUEUES" ]; then
    fail "$((qc - 1)) I/O queues, more than NR_IO_QUEUES=$NR_IO_QUEUES"
  fi
}

disconnect() {
  step "disconnect"
  nvme disconnect -n "$NQN" 2>&1 | sed 's/^/  /'
  wait_until 10 sh -c "[ ! -b $DEV ]" || fail "$DEV still exists 10s after disconnect"
  ctrl_of "$NQN" >/dev/null && fail "a controller for $NQN is still live after disconnect"
  echo "  disconnected"
}

step "load nvme-tcp"
check modprobe nvme-tcp
check modprobe ext4

step "nvme discover at $A:$P"
nvme discover -t tcp -a "$A" -s "$P" > /tmp/disc 2>&1
rc=$?
sed 's/^/  /' /tmp/disc
[ $rc -eq 0 ] || fail "nvme discover against $A:$P failed (exit $rc): is an NVMe/TCP target listening on the host's 127.0.0.1:$P?"
NQN=${TGT_NQN:-$(awk '/^subtype: *nvme subsystem/ {s = 1} s && /^subnqn:/ {print $2; exit}' /tmp/disc)}
[ -n "$NQN" ] || fail "the discovery log lists no NVMe subsystem"
awk -v n="$NQN" '/^subnqn:/ && $2 == n {f = 1} END {exit !f}' /tmp/disc \
  || fail "the discovery log does not list $NQN"
ADV=$(awk -v n="$NQN" '/^=====/ {a = ""; s = ""} /^traddr:/ {a = $2} /^trsvcid:/ {s = $2}
  /^subnqn:/ && $2 == n {found = 1} found && a != "" && s != "" {print a ":" s; exit}' /tmp/disc)
echo "  $NQN advertised at ${ADV:-?}; connecting to $A:$P explicitly"

connect
run "nvme list" nvme list
step "nvme id-ctrl $CTRL"
nvme id-ctrl "$CTRL" > /tmp/idctrl 2>&1 || { cat /tmp/idctrl; fail "nvme id-ctrl exited $?"; }
grep -E '^(vid|ssvid|sn|mn|fr|cntlid|ver|mdts|oacs|oncs|vwc|nn|sgls|anacap|anagrpmax|cmic|ioccsz|iorcsz|maxcmd|subnqn) ' /tmp/idctrl | sed 's/^/  /'
step "nvme id-ns $DEV"
nvme id-ns "$DEV" > /tmp/idns 2>&1 || { cat /tmp/idns; fail "nvme id-ns exited $?"; }
grep -E '^(nsze|ncap|nuse|nsfeat|nlbaf|flbas|anagrpid|nguid|eui64|lbaf.*in use)' /tmp/idns | sed 's/^/  /'
step "nvme smart-log $CTRL"
nvme smart-log "$CTRL" > /tmp/smart 2>&1 || { cat /tmp/smart; fail "nvme smart-log exited $?"; }
grep -Ei '^(critical_warning|temperature|available_spare|percentage_used|data_units|host_read|host_write|power_on)' /tmp/smart | sed 's/^/  /'
if [ -z "${NO_ANA:-}" ]; then
  step "nvme ana-log $CTRL"
  nvme ana-log "$CTRL" > /tmp/ana 2>&1 || { cat /tmp/ana; fail "nvme ana-log exited $? (NO_ANA=1 skips it)"; }
  sed 's/^/  /' /tmp/ana | head -20
fi

run "mkfs.ext4 $DEV" mkfs.ext4 -F -q ${MKFS_OPTS:-} "$DEV"
run "mount $DEV" mount -t ext4 "$DEV" $MNT
run "write files and their checksums" make_files $MNT $SUMS
run "sync" sync
run "umount" umount $MNT
disconnect

connect
run "e2fsck -fn $DEV is clean" fsck_clean "$DEV"
run "mount $DEV again" mount -t ext4 -o ro "$DEV" $MNT
run "checksums match after a new connection" verify_files $MNT $SUMS
run "umount" umount $MNT

SIZE=$(blockdev --getsize64 "$DEV")
FS=${FIO_SIZE:-134217728}
case $FS in *[kK]) FS=$((${FS%?} << 10)) ;; *[mM]) FS=$((${FS%?} << 20)) ;; *[gG]) FS=$((${FS%?} << 30)) ;; esac
[ "$FS" -gt "$SIZE" ] && FS=$SIZE
run "fio randwrite+verify 4k..1M qd32 libaio direct over $((FS >> 20)) MiB of $DEV" fio_verify "$DEV" "$FS"
disconnect
pass
