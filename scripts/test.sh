#!/usr/bin/env bash
# Install what keel's tests need on a fresh Debian machine with a Rust
# toolchain, then run every test. This is the README's test command and what
# CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use. Nothing beyond the Rust toolchain is needed
# yet; the protocol tests (libiscsi, tgt, fio, qemu) add theirs here.
PACKAGES=()
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

cargo test --workspace "$@"
