#!/usr/bin/env bash
# A private tgtd (the Linux SCSI target framework's userspace iSCSI target) on
# the host's loopback: a reference target to run the guest scripts against.
#
# usage: tests/guest/tgtd.sh start [PORT=3270] [SIZE=1G]
#        tests/guest/tgtd.sh stop  [PORT=3270]
# One target, IQN ${IQN:-iqn.2024-01.io.keel.test:tgt}, with LUN 1 on a sparse
# file in ${DIR:-/tmp/keel-tgtd-PORT} (LUN 0 is tgt's controller). The
# management socket is numbered PORT so several can run. tgtd ignores SIGTERM
# while it has targets, so stop deletes them through tgtadm first.
set -euo pipefail
CMD=${1:-}; PORT=${2:-3270}; SIZE=${3:-1G}
DIR=${DIR:-/tmp/keel-tgtd-$PORT} IQN=${IQN:-iqn.2024-01.io.keel.test:tgt}
T="tgtadm -C $PORT --lld iscsi"
case $CMD in
start)
  command -v tgtd >/dev/null || { echo "tgtd.sh: tgtd missing (apt-get install tgt)" >&2; exit 1; }
  mkdir -p "$DIR"
  if [[ -s $DIR/tgtd.pid ]] && kill -0 "$(cat "$DIR/tgtd.pid")" 2>/dev/null; then
    echo "tgtd.sh: already running, pid $(cat "$DIR/tgtd.pid")" >&2; exit 1
  fi
  rm -f "$DIR/lun1.img"; truncate -s "$SIZE" "$DIR/lun1.img"
  setsid tgtd -f -C "$PORT" --iscsi portal=127.0.0.1:"$PORT" > "$DIR/tgtd.log" 2>&1 < /dev/null &
  echo $! > "$DIR/tgtd.pid"
  for _ in $(seq 50); do $T --mode target --op show >/dev/null 2>&1 && break; sleep 0.1; done
  $T --mode target --op new --tid 1 --targetname "$IQN"
  $T --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$DIR/lun1.img"
  $T --mode target --op bind --tid 1 --initiator-address ALL
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
  echo "tgtd pid $(cat "$DIR/tgtd.pid") on 127.0.0.1:$PORT, $IQN LUN 1 ($SIZE)"
  ;;
stop)
  PID=$(cat "$DIR/tgtd.pid" 2>/dev/null) || { echo "tgtd.sh: no $DIR/tgtd.pid" >&2; exit 1; }
  for tid in $($T --mode target --op show 2>/dev/null | sed -nE 's/^Target ([0-9]+):.*/\1/p'); do
    $T --mode target --op delete --force --tid "$tid" || true
  done
  tgtadm -C "$PORT" --mode system --op delete 2>/dev/null || kill "$PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
  rm -f "$DIR/tgtd.pid" "$DIR/lun1.img"
  echo "tgtd $PID stopped"
  ;;
*) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
