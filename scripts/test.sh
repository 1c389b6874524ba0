#!/usr/bin/env bash
# The whole test suite, on a fresh machine as root:
#   installs what the tests need (Debian packages, the moto S3-compatible server),
#   starts the servers on loopback, runs every test of the workspace, stops the servers.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p lazyblock-format).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh
cargo test --workspace "$@"
