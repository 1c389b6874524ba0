#!/usr/bin/env bash
# Installs and starts what the test suite needs, on loopback only:
#   - Debian packages: e2fsprogs (mke2fs, e2fsck), attr (getfattr), libnbd-bin (nbdinfo,
#     nbdcopy), memcached (the AZ cache tests start and stop their own memcached processes on
#     loopback, `LocalFleet`), and through scripts/vm-assets.sh qemu-system-x86 + qemu-utils from
#     bookworm-backports, busybox-static, cpio, kmod, plus the guest kernel and initrd of the
#     QEMU tests (skipped with LAZYBLOCK_SKIP_VM_TESTS=1);
#   - an S3-compatible server: moto (from PyPI, into .test-tools/venv), started on a free port
#     with a fresh bucket.
# Source it (". scripts/test-env.sh") to get the exported variables, then call
# lazyblock_test_env_stop (installed as an EXIT trap) to stop the server.
set -euo pipefail
LB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LB_TOOLS="$LB_ROOT/.test-tools"
mkdir -p "$LB_TOOLS"

need_apt=()
command -v mke2fs >/dev/null || need_apt+=(e2fsprogs)
command -v getfattr >/dev/null || need_apt+=(attr)
command -v nbdcopy >/dev/null || need_apt+=(libnbd-bin)
command -v losetup >/dev/null || need_apt+=(mount)
command -v memcached >/dev/null || need_apt+=(memcached)
if ((${#need_apt[@]})); then
  echo "test-env: installing ${need_apt[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [[ "${LAZYBLOCK_SKIP_VM_TESTS:-}" != 1 ]]; then
  # qemu-utils (qemu-img, qemu-io) comes from here too, matched with qemu-system-x86.
  "$LB_ROOT/scripts/vm-assets.sh" >&2
elif ! command -v qemu-io >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils busybox-static >/dev/null
fi

if [[ ! -x "$LB_TOOLS/venv/bin/moto_server" ]]; then
  echo "test-env: installing moto (S3-compatible test server) into $LB_TOOLS/venv" >&2
  python3 -m venv "$LB_TOOLS/venv"
  "$LB_TOOLS/venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.*' boto3
fi

LB_S3_PORT="$("$LB_TOOLS/venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$LB_TOOLS/venv/bin/moto_server" -H 127.0.0.1 -p "$LB_S3_PORT" >"$LB_TOOLS/moto.log" 2>&1 &
LB_S3_PID=$!
lazyblock_test_env_stop() {
  if [[ -n "${LB_S3_PID:-}" ]]; then kill "$LB_S3_PID" 2>/dev/null || true; wait "$LB_S3_PID" 2>/dev/null || true; LB_S3_PID=; fi
}
trap lazyblock_test_env_stop EXIT

export AWS_ENDPOINT_URL="http://127.0.0.1:$LB_S3_PORT"
export AWS_ACCESS_KEY_ID=lazyblock-test AWS_SECRET_ACCESS_KEY=lazyblock-test-secret
export AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
for _ in $(seq 1 100); do
  if "$LB_TOOLS/venv/bin/python" - <<'PY' 2>/dev/null; then break; fi
import boto3, os
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="lazyblock-test")
PY
  sleep 0.2
done
"$LB_TOOLS/venv/bin/python" -c 'import boto3,os; boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).head_bucket(Bucket="lazyblock-test")' \
  || { echo "test-env: moto did not start; see $LB_TOOLS/moto.log" >&2; exit 1; }
export LAZYBLOCK_TEST_S3_URL="s3://lazyblock-test/run-$$"
echo "test-env: S3-compatible server (moto) at $AWS_ENDPOINT_URL, bucket lazyblock-test" >&2
