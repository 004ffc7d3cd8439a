#!/usr/bin/env bash
# Boot a second guest as a PEER target (the Linux kernel's nvmet-tcp), forward
# it to the host's loopback, run CMD on the host against it, stop the guest.
# Lets the initiator scripts be checked against a known-good target, e.g.
#   tests/guest/peer-target.sh nvmet -- \
#     tests/guest/run-guest.sh -e TGT_PORT=14420 tests/guest/scripts/nvme-fs.sh
#
# usage: tests/guest/peer-target.sh nvmet [-p HOSTPORT=14420] [-t TIMEOUT_S=1800] -- CMD [ARG...]
#   guest 4420 -> host 127.0.0.1:HOSTPORT; NQN nqn.2024-01.io.keel.test:nvmet, NSID 1,
#   256 MiB ramdisk. CMD sees PEER_HOST, PEER_PORT and PEER_NQN. Exit: CMD's status;
#   124 if the target did not come up; 125 if its guest died.
# The target guest gets one CPU so the initiator guest keeps the rest.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KIND=${1:-}; shift || true
[[ $KIND == nvmet ]] || { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
HOSTPORT=14420 TIMEOUT=1800
while [[ $# -gt 0 && $1 != -- ]]; do
  case $1 in -p) HOSTPORT=$2; shift 2 ;; -t) TIMEOUT=$2; shift 2 ;; *) echo "peer-target: bad argument $1" >&2; exit 2 ;; esac
done
shift || true
[[ $# -ge 1 ]] || { echo "peer-target: no command after --" >&2; exit 2; }
export PEER_HOST=127.0.0.1 PEER_PORT=$HOSTPORT PEER_NQN=nqn.2024-01.io.keel.test:nvmet
LOG=$(mktemp "${TMPDIR:-/tmp}/keel-peer.XXXXXX.log")
T0=$SECONDS
setsid "$HERE/run-guest.sh" -t "$TIMEOUT" -c 1 -m 768 -f "tcp:127.0.0.1:$HOSTPORT-:4420" \
  -e HOLD="$TIMEOUT" -e NVMET_NQN="$PEER_NQN" "$HERE/scripts/nvmet-target.sh" > "$LOG" 2>&1 < /dev/null &
GPID=$!
stop() { kill -TERM -- -"$GPID" 2>/dev/null; sleep 1; kill -KILL -- -"$GPID" 2>/dev/null; wait "$GPID" 2>/dev/null; }
trap stop EXIT
for ((i = 0; i < 240; i++)); do
  grep -q TARGET_READY "$LOG" && break
  kill -0 "$GPID" 2>/dev/null || { echo "peer-target: the target guest died:" >&2; tail -30 "$LOG" >&2; exit 125; }
  sleep 0.5
done
grep -q TARGET_READY "$LOG" || { echo "peer-target: not ready after 120s:" >&2; tail -30 "$LOG" >&2; exit 124; }
echo "peer-target: nvmet ready on 127.0.0.1:$HOSTPORT ($PEER_NQN) after $((SECONDS - T0))s; console $LOG" >&2
"$@"; rc=$?
echo "peer-target: command exited $rc after $((SECONDS - T0))s" >&2
if [[ $rc -eq 0 ]]; then rm -f "$LOG"; else echo "peer-target: target console kept in $LOG" >&2; fi
exit $rc
