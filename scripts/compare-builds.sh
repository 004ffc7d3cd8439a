#!/usr/bin/env bash
# Comparison builds: build keel once per I/O-backend combination (Cargo
# features of keel-blockvol, forwarded by keel-volume, keel-tools and
# keel-bench) and run the same benchmark matrix on each, printing one table.
#
# usage: scripts/compare-builds.sh [SECONDS=3]
#   builds target/compare-{std,io_uring,both}/release/{keel-bench,keel-volume}
#   per build: keel-bench engine (every compiled backend vs raw fdatasync),
#   keel-bench targets (NVMe/TCP, keel iSCSI, tgt), and a check that a
#   backend not compiled in is refused at start with a clear error.
# Reactor socket I/O has one implementation today (epoll); an io_uring
# socket backend will add a column here.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-3}
declare -A FEATURES=([std]=backend-std [io_uring]=backend-uring [both]="backend-std,backend-uring")
OUT=$(mktemp -d)
for b in std io_uring both; do
    echo "== build $b (--no-default-features --features ${FEATURES[$b]})" >&2
    CARGO_TARGET_DIR=target/compare-$b cargo build --release -q -p keel-bench -p keel-volume \
        --no-default-features --features "${FEATURES[$b]}"
done
for b in std io_uring both; do
    bin=target/compare-$b/release
    echo "== run $b" >&2
    "$bin/keel-bench" engine --json --runs 1 --seconds "$SECS" > "$OUT/engine-$b.json"
    "$bin/keel-bench" targets --json --runs 1 --seconds "$SECS" > "$OUT/targets-$b.json"
    # A backend that is not compiled in is refused with a clear error.
    for want in standard io_uring; do
        d=$(mktemp -d)
        if "$bin/keel-volume" --data-dir "$d" --volume v:16MiB --backend "$want" --admin-listen "" \
            --iscsi-listen 127.0.0.1:0 --nvmf-listen 127.0.0.1:0 --check-config >/dev/null 2>&1; then :; fi
        set +e
        timeout 5 "$bin/keel-volume" --data-dir "$d" --volume v:16MiB --backend "$want" --admin-listen "" \
            --iscsi-listen 127.0.0.1:0 --nvmf-listen 127.0.0.1:0 > /dev/null 2> "$OUT/refuse-$b-$want.txt"
        echo $? > "$OUT/refuse-$b-$want.rc"
        set -e
        rm -rf "$d"
    done
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
print(f"{'build':<9} {'backend':<9} {'QD1 durable p50 us':>19} {'QD32 durable IOPS':>18} {'NVMe 4k rd QD32':>16} {'iSCSI 4k rd QD32':>17} {'iSCSI 4k wr QD32':>17}  refuses")
for b in ['std', 'io_uring', 'both']:
    e = json.load(open(f"{out}/engine-{b}.json"))
    t = json.load(open(f"{out}/targets-{b}.json"))
    rows = {r['workload']: r for r in t['rows']}
    perf = {r['workload']: r for r in t['iscsi_perf']}
    refused = []
    for want in ['standard', 'io_uring']:
        rc = open(f"{out}/refuse-{b}-{want}.rc").read().strip()
        msg = open(f"{out}/refuse-{b}-{want}.txt").read()
        if rc == '1' and 'unavailable' in msg:
            refused.append(want)
    for be in e.get('backends', []):
        print(f"{b:<9} {be.get('backend',''):<9} {be.get('qd1_durable_write_p50_us',0):>19.0f} {be.get('qd32_durable_write_iops',0):>18.0f} "
              f"{rows['4k-randread-qd32']['keel_nvmf']['iops']:>16.0f} {perf['4k-randread-qd32']['keel_iscsi']['iops']:>17.0f} "
              f"{rows['4k-randwrite-qd32']['keel_iscsi']['iops']:>17.0f}  {','.join(refused) or '-'}")
print(f"(raw pwrite+fdatasync QD1 p50: " + ", ".join(f"{b}: {json.load(open(f'{out}/engine-{b}.json')).get('raw_qd1_write_fdatasync_p50_us',0):.0f} us" for b in ['std','io_uring','both']) + ")")
PY
echo "raw results: $OUT" >&2
