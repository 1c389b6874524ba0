#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds (default 20). cargo-fuzz needs nightly features:
# on the stable toolchain they are enabled with RUSTC_BOOTSTRAP=1 for this build only.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz" >&2
  cargo install -q --locked cargo-fuzz
fi
for target in $(RUSTC_BOOTSTRAP=1 cargo fuzz list); do
  echo "fuzz-smoke: $target for ${secs}s" >&2
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -n 3
done
