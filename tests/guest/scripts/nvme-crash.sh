#!/bin/sh
# Guest test: the target dies (kill -9) in the middle of a write load and
# comes back; the Linux NVMe/TCP host reconnects and every write it saw
# completed with a flush (dd conv=fsync) is on the namespace afterwards.
#
#   connect (reconnect delay 1 s) -> write N 4 KiB blocks, each with its
#   index, fsync after each -> after block KILL_AT ask the host test, over
#   TCP to 10.0.2.2:CTL_PORT, to kill -9 and restart the target -> keep
#   writing (the host requeues across the reconnect) -> read every block
#   back and check its index -> disconnect
#
# env: TGT_PORT, TGT_NQN, CTL_PORT (required); BLOCKS (default 300),
#      KILL_AT (default 100)
. /usr/share/keel/guest-lib.sh
# shellcheck disable=SC2034 # read by guest-lib.sh
KEEL_SCRIPT=nvme-crash
need_env TGT_PORT
need_env TGT_NQN
need_env CTL_PORT
A=${TGT_ADDR:-10.0.2.2}
N=${BLOCKS:-300} K=${KILL_AT:-100}

run "load nvme-tcp" modprobe nvme-tcp
run "connect to $TGT_NQN" nvme connect -t tcp -a "$A" -s "$TGT_PORT" -n "$TGT_NQN" \
  --reconnect-delay=1 --ctrl-loss-tmo=120
step "wait for the namespace"
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/nvme0n1 ] || fail "no /dev/nvme0n1"

step "write $N blocks with fsync, target killed after block $K"
blk() { printf 'keel-crash-block-%08d\n' "$1"; }
i=0
while [ $i -lt "$N" ]; do
  blk $i > /tmp/b
  dd if=/tmp/b of=/dev/nvme0n1 bs=4096 seek=$i count=1 conv=sync,fsync oflag=direct 2>/tmp/dd.err \
    || fail "write of block $i: $(cat /tmp/dd.err)"
  if [ $i -eq "$K" ]; then
    echo "  block $i acknowledged; asking the host to kill -9 the target"
    echo kill | nc "$A" "$CTL_PORT" > /tmp/ctl || fail "control connection to $A:$CTL_PORT"
    echo "  host answered: $(cat /tmp/ctl)"
  fi
  i=$((i + 1))
done
echo "  $N blocks acknowledged"

step "read every block back"
i=0
while [ $i -lt "$N" ]; do
  want=$(blk $i)
  got=$(dd if=/dev/nvme0n1 bs=4096 skip=$i count=1 iflag=direct 2>/dev/null | head -c ${#want})
  [ "$got" = "$want" ] || fail "block $i holds '$got', want '$want'"
  i=$((i + 1))
done
echo "  all $N blocks hold their data"
run "disconnect" nvme disconnect -n "$TGT_NQN"
pass
