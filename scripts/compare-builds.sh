#!/usr/bin/env bash
# Comparison builds: build keel once per I/O combination (Cargo features:
# the engine's backend-std / backend-uring and the reactors' sockets-uring,
# forwarded by keel-volume, keel-tools and keel-bench) and run the same
# benchmark matrix on each, printing one table.
#
# usage: scripts/compare-builds.sh [SECONDS=3]
#   builds target/compare-<build>/release/{keel-bench,keel-volume} for
#     std        engine std only,      epoll sockets only
#     io_uring   engine io_uring only, epoll sockets only
#     uring-all  engine io_uring only, epoll + io_uring sockets
#     both       everything (the default build)
#   per build: keel-bench engine (every compiled backend vs raw fdatasync),
#   keel-bench targets (NVMe/TCP, keel iSCSI, tgt) once per socket I/O
#   compiled in, and a check that a backend or socket I/O that is not
#   compiled in is refused at start with a clear error.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-3}
BUILDS=(std io_uring uring-all both)
declare -A FEATURES=([std]=backend-std [io_uring]=backend-uring
    [uring-all]="backend-uring,sockets-uring" [both]="backend-std,backend-uring,sockets-uring")
declare -A SOCKETS=([std]=epoll [io_uring]=epoll [uring-all]="epoll io_uring" [both]="epoll io_uring")
OUT=$(mktemp -d)
for b in "${BUILDS[@]}"; do
    echo "== build $b (--no-default-features --features ${FEATURES[$b]})" >&2
    CARGO_TARGET_DIR=target/compare-$b cargo build --release -q -p keel-bench -p keel-volume \
        --no-default-features --features "${FEATURES[$b]}"
done
for b in "${BUILDS[@]}"; do
    bin=target/compare-$b/release
    echo "== run $b" >&2
    "$bin/keel-bench" engine --json --runs 1 --seconds "$SECS" > "$OUT/engine-$b.json"
    for s in ${SOCKETS[$b]}; do
        "$bin/keel-bench" targets --json --runs 1 --seconds "$SECS" --socket-io "$s" > "$OUT/targets-$b-$s.json"
    done
    # io_uring socket I/O is refused by a build without it.
    d=$(mktemp -d)
    set +e
    timeout 5 "$bin/keel-volume" --data-dir "$d" --volume v:16MiB --socket-io io_uring --admin-listen "" \
        --iscsi-listen 127.0.0.1:0 --nvmf-listen 127.0.0.1:0 > /dev/null 2> "$OUT/refuse-$b-sockets.txt"
    echo $? > "$OUT/refuse-$b-sockets.rc"
    set -e
    rm -rf "$d"
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
python3 - "$OUT" "${BUILDS[@]}" <<'PY'
import json, sys, os
out, builds = sys.argv[1], sys.argv[2:]
print("engine (keel-bench engine):")
print(f"{'build':<10} {'backend':<9} {'QD1 durable p50 us':>19} {'QD32 durable IOPS':>18} {'4k read QD32 IOPS':>18}  refuses")
for b in builds:
    e = json.load(open(f"{out}/engine-{b}.json"))
    refused = []
    for want in ['standard', 'io_uring']:
        rc = open(f"{out}/refuse-{b}-{want}.rc").read().strip()
        msg = open(f"{out}/refuse-{b}-{want}.txt").read()
        if rc == '1' and 'unavailable' in msg:
            refused.append(want)
    rc = open(f"{out}/refuse-{b}-sockets.rc").read().strip()
    msg = open(f"{out}/refuse-{b}-sockets.txt").read()
    if rc == '1' and 'not compiled' in msg:
        refused.append('io_uring sockets')
    for be in e.get('backends', []):
        print(f"{b:<10} {be.get('backend',''):<9} {(be.get('qd1_durable_write_p50_us') or 0):>19.0f} {(be.get('qd32_durable_write_iops') or 0):>18.0f} "
              f"{(be.get('qd32_read_iops') or 0):>18.0f}  {','.join(refused) or '-'}")
print(f"(raw pwrite+fdatasync QD1 p50: " + ", ".join(f"{b}: {json.load(open(f'{out}/engine-{b}.json')).get('raw_qd1_write_fdatasync_p50_us',0):.0f} us" for b in builds) + ")")
print()
print("targets (keel-bench targets), per build and socket I/O:")
print(f"{'build':<10} {'sockets':<9} {'NVMe 4k rd QD1':>15} {'NVMe 4k rd QD32':>16} {'iSCSI 4k rd QD1':>16} {'iSCSI 4k rd QD32':>17} {'iSCSI 4k wr QD32':>17} {'tgt 4k rd QD32':>15}")
for b in builds:
    for s in ['epoll', 'io_uring']:
        p = f"{out}/targets-{b}-{s}.json"
        if not os.path.exists(p):
            continue
        t = json.load(open(p))
        rows = {r['workload']: r for r in t['rows']}
        perf = {r['workload']: r for r in t['iscsi_perf']}
        print(f"{b:<10} {s:<9} {rows['4k-randread-qd1']['keel_nvmf']['iops']:>15.0f} {rows['4k-randread-qd32']['keel_nvmf']['iops']:>16.0f} "
              f"{perf['4k-randread-qd1']['keel_iscsi']['iops']:>16.0f} {perf['4k-randread-qd32']['keel_iscsi']['iops']:>17.0f} "
              f"{rows['4k-randwrite-qd32']['keel_iscsi']['iops']:>17.0f} {perf['4k-randread-qd32']['tgt_iscsi']['iops']:>15.0f}")
PY
echo "raw results: $OUT" >&2
