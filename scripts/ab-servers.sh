#!/usr/bin/env bash
# A/B of two keel-volume setups with the bench's own initiators, interleaved
# (A, B, A, B, ...), a fresh 1 GiB volume per run, then the median of each
# metric per workload and the B/A ratios.
#
#   scripts/ab-servers.sh A_BIN "A_ARGS" B_BIN "B_ARGS" [RUNS] [SECONDS]
#
# A_ARGS/B_ARGS are extra keel-volume arguments (e.g. "--config off.toml").
# WL (environment) lists the workloads, each keel-bench arguments with `_`
# for spaces; default: 4 KiB random write at QD1 and QD32 over both
# protocols. Example (the same build, a setting off and on):
#
#   printf '[engine]\nwal_inline_writes = false\n' > /tmp/off.toml
#   scripts/ab-servers.sh target/release/keel-volume "--config /tmp/off.toml" \
#       target/release/keel-volume "" 4 3
set -euo pipefail
A_BIN=$1 A_ARGS=$2 B_BIN=$3 B_ARGS=$4 RUNS=${5:-4} SECS=${6:-3}
BENCH=${BENCH:-target/release/keel-bench}
WL=${WL:-"iscsi-load_--qd_1_--write nvmf-load_--qd_1_--write iscsi-load_--qd_32_--write nvmf-load_--qd_32_--write"}
DIR=$(mktemp -d)
OUT=$DIR/results
trap 'rm -rf "$DIR"' EXIT
for run in $(seq 1 "$RUNS"); do
  for side in A B; do
    if [ $side = A ]; then bin=$A_BIN args=$A_ARGS; else bin=$B_BIN args=$B_ARGS; fi
    rm -rf "$DIR/data" && mkdir "$DIR/data"
    # shellcheck disable=SC2086 # the extra arguments are split on purpose
    "$bin" $args --data-dir "$DIR/data" --volume vol0:1GiB --admin-listen "" \
      --iscsi-listen 127.0.0.1:3277 --nvmf-listen 127.0.0.1:4477 >"$DIR/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
      (exec 3<>/dev/tcp/127.0.0.1/4477) 2>/dev/null && break
      sleep 0.1
    done
    for w in $WL; do
      w=${w//_/ }
      # shellcheck disable=SC2086
      set -- $w
      cmd=$1; shift
      if [ "$cmd" = iscsi-load ]; then addr=127.0.0.1:3277; else addr=127.0.0.1:4477; fi
      line=$("$BENCH" "$cmd" --addr $addr --pid $pid --seconds "$SECS" "$@" 2>&1 | tail -1)
      echo "$run $side [$w] $line"
      echo "$side|$w|$line" >>"$OUT"
    done
    kill $pid; wait $pid 2>/dev/null || true
  done
done
echo
echo "medians of $RUNS runs (B/A):"
awk -F'|' '
  function med(s,   n, a, i, j, t) {
    n = split(s, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    match($3, /: [0-9]+ IOPS/); iops = substr($3, RSTART + 2, RLENGTH - 7)
    match($3, /p50 [0-9]+/); p50 = substr($3, RSTART + 4, RLENGTH - 4)
    match($3, /cpu\/io [0-9.]+/); cpu = substr($3, RSTART + 7, RLENGTH - 7)
    k = $2; seen[k] = 1
    I[$1 k] = I[$1 k] " " iops; P[$1 k] = P[$1 k] " " p50; C[$1 k] = C[$1 k] " " cpu
  }
  END {
    for (k in seen) {
      ia = med(I["A" k]); ib = med(I["B" k]); ca = med(C["A" k]); cb = med(C["B" k])
      printf "%-45s IOPS %8.0f -> %8.0f (%.2fx)  p50 %5.0f -> %5.0f us  cpu/io %7.1f -> %7.1f us (%.2fx)\n", \
        k, ia, ib, ib / ia, med(P["A" k]), med(P["B" k]), ca, cb, (ca > 0 ? cb / ca : 0)
    }
  }' "$OUT"
