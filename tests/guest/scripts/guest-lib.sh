# keel guest library: sourced by the guest scripts (run-guest.sh puts it at
# /usr/share/keel/guest-lib.sh in every guest). busybox sh.
#
# Output convention, parsed by people and by tests/src/guest.rs:
#   STEP <n> <what>       before each step
#   FAIL <what>: <why>    once, on the first failure (then exit 1)
#   PASS <script>         at the end of a script that passed
# Extra lines start with two spaces or come from the tools themselves.

KEEL_STEP=0
KEEL_SCRIPT=${KEEL_SCRIPT:-test}
KEEL_FAILED=""
KEEL_DMESG0=$(dmesg | wc -l)   # kernel messages before the script started

now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

step() {
  KEEL_STEP=$((KEEL_STEP + 1))
  KEEL_WHAT="$*"
  echo "STEP $KEEL_STEP $* [t=$(now)s]"
}

# fail WHY: report the current step as failed, show recent kernel messages, exit 1.
fail() {
  KEEL_FAILED=1
  echo "FAIL ${KEEL_WHAT:-$KEEL_SCRIPT}: $*"
  echo "  --- kernel messages since the script started (last 25)"
  dmesg | tail -n +$((KEEL_DMESG0 + 1)) | tail -25 | sed 's/^/  /'
  exit 1
}

# run WHAT CMD...: a step that is one command; its failure fails the script.
run() {
  what=$1; shift
  step "$what"
  "$@"
  rc=$?
  [ $rc -eq 0 ] || fail "'$*' exited $rc"
}

# check CMD...: inside a step, a command that must succeed.
check() {
  "$@"
  rc=$?
  [ $rc -eq 0 ] || fail "'$*' exited $rc"
}

pass() { echo "PASS $KEEL_SCRIPT [t=$(now)s]"; exit 0; }

# An exit without PASS or FAIL (a shell error, a signal) still says FAIL.
keel_exit_trap() {
  rc=$?
  if [ $rc -ne 0 ] && [ -z "$KEEL_FAILED" ]; then
    echo "FAIL ${KEEL_WHAT:-$KEEL_SCRIPT}: script exited $rc"
  fi
}
trap keel_exit_trap EXIT

# wait_until SECONDS CMD...: poll CMD every 0.2 s; false on timeout.
wait_until() {
  limit=$(($1 * 5)); shift
  i=0
  while [ $i -lt $limit ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
    i=$((i + 1))
  done
  return 1
}

# need_env VAR...: fail unless every VAR is set and not empty.
need_env() {
  for v in "$@"; do
    eval "val=\${$v:-}"
    [ -n "$val" ] || fail "environment variable $v is not set (run-guest.sh -e $v=...)"
  done
}

# make_files DIR SUMS: write files of assorted sizes into DIR (a mounted file
# system) and their sha256 sums, relative to DIR, into SUMS (outside DIR).
make_files() {
  dir=$1 sums=$2
  mkdir -p "$dir/small" "$dir/nested/a/b" || return 1
  for n in 1 2 3 4 5 6 7 8; do
    head -c $((n * 517)) /dev/urandom > "$dir/small/f$n" || return 1
  done
  head -c 4096 /dev/urandom > "$dir/nested/a/b/block4k" || return 1
  head -c 1048576 /dev/urandom > "$dir/one-mib" || return 1
  head -c 8388608 /dev/urandom > "$dir/eight-mib" || return 1
  dd if=/dev/urandom of="$dir/sparse" bs=4096 count=3 seek=1000 2>/dev/null || return 1
  echo "keel was here" > "$dir/hello.txt" || return 1
  (cd "$dir" && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum) > "$sums" || return 1
  echo "  wrote $(wc -l < "$sums") files, $(du -sk "$dir" | cut -f1) KiB"
}

# verify_files DIR SUMS: every file's sha256 matches, and no file is missing.
verify_files() {
  (cd "$1" && sha256sum -c "$2") > /tmp/verify.out 2>&1
  rc=$?
  bad=$(grep -v ': OK$' /tmp/verify.out)
  if [ $rc -ne 0 ] || [ -n "$bad" ]; then
    echo "$bad" | sed 's/^/  /'
    return 1
  fi
  echo "  $(grep -c ': OK$' /tmp/verify.out) files match their checksums"
}

# fsck_clean DEV: a forced read-only e2fsck finds nothing to fix.
fsck_clean() {
  e2fsck -fn "$1" > /tmp/fsck.out 2>&1
  rc=$?
  sed 's/^/  /' /tmp/fsck.out | tail -8
  [ $rc -eq 0 ] || { echo "  e2fsck -fn exited $rc"; return 1; }
}

# fio_verify DEV SIZE: random writes of 4k..1M at iodepth 32 (libaio, O_DIRECT),
# every block verified (crc32c) after the write pass.
fio_verify() {
  fio --name=keel-verify --filename="$1" --size="$2" --ioengine=libaio --direct=1 \
      --rw=randwrite --bssplit=4k/30:16k/20:64k/20:256k/15:1m/15 --iodepth=32 \
      --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 \
      --group_reporting --output-format=normal > /tmp/fio.out 2>&1
  rc=$?
  grep -E 'err=|WRITE:|READ:|verify|IOPS' /tmp/fio.out | sed 's/^/  /'
  [ $rc -eq 0 ] || { tail -20 /tmp/fio.out | sed 's/^/  /'; echo "  fio exited $rc"; return 1; }
}
