#!/usr/bin/env bash
# Install what keel's tests need on a fresh Debian machine with a Rust
# toolchain, then run every test. This is the README's test command and what
# CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: libiscsi (iscsi-test-cu, iscsi-inq, ...),
# fio, and tgt (the peer target of the benchmarks). The qemu set (taken from
# bookworm as one release) and the guest's packages are installed by
# tests/guest/build-guest.sh below.
PACKAGES=(libiscsi-bin fio tgt)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "scripts/test.sh: missing packages ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The qemu guest with the kernel initiators (cached in ~/.cache/keel-guest;
# seconds when up to date). Installs qemu and the guest's packages.
tests/guest/build-guest.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The end-to-end tests once more with the volume server on the other socket
# I/O backend (the first pass ran the default, epoll).
if ((status == 0)); then
    echo "== end-to-end tests again with --socket-io io_uring"
    KEEL_TEST_SOCKET_IO=io_uring cargo test -p keel-tests "$@" \
        --test iscsi_conformance --test iscsi_robustness --test iscsi_shutdown --test iscsi_fio \
        --test kill9 --test nvmf_robustness --test server_admin --test guest_iscsi --test guest_nvme \
        2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
fi
set -e
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
