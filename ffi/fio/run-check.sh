#!/usr/bin/env bash
# Build the fio engine and check it: a randwrite job with CRC32C verify
# through keel, then 4 KiB random read/write IOPS through keel next to
# fio's own io_uring and psync engines on a plain file of the same size.
# usage: ffi/fio/run-check.sh [FIO_SRC=/tmp/fio-src] [SECONDS=4]
# FIO_SRC: a configured fio source tree of the installed fio's version
# (see README.md); fetched and configured here if missing and git works.
set -euo pipefail
cd "$(dirname "$0")"
FIO_SRC=${1:-/tmp/fio-src} SECS=${2:-4}
ver=$(fio --version)            # e.g. fio-3.33
if [[ ! -f $FIO_SRC/config-host.h ]]; then
    git clone -q https://github.com/axboe/fio "$FIO_SRC" && (cd "$FIO_SRC" && git checkout -q "$ver" && ./configure >/dev/null)
fi
(cd ../.. && cargo build --release -q -p keel-ffi)
make -s FIO_SRC="$FIO_SRC"
dir=$(mktemp -d ../../target/fio-keel.XXXXXX)
trap 'rm -rf "$dir"' EXIT
eng=external:$PWD/keel_engine.so
echo "== verify: randwrite 4k QD32 64 MiB with crc32c through keel"
fio --name=verify --ioengine="$eng" --filename="$dir/v.keel" --size=64m --rw=randwrite --bs=4k \
    --iodepth=32 --verify=crc32c --do_verify=1 --verify_fatal=1 | grep -E "err=|IOPS"
for rw in randread randwrite; do
    for e in "$eng" io_uring psync; do
        f=$dir/v.keel; [[ $e == "$eng" ]] || f=$dir/plain.img
        iops=$(fio --name=x --ioengine="$e" --filename="$f" --size=64m --rw=$rw --bs=4k --iodepth=32 \
            --time_based --runtime="$SECS" --output-format=terse --terse-version=3 | awk -F';' -v rw=$rw \
            '{ print (rw == "randread") ? $8 : $49 }')
        printf '%-10s %-9s %8s IOPS\n' "${e##*/}" "$rw" "$iops"
    done
done
