#!/usr/bin/env bash
# One garbage-collection cycle on real images, in a throw-away local store:
#   build the corpus's five images (they share base layers), unpublish two of them,
#   `lazyblock roots`, one `lazyblock gc run` with every age at zero (rotate, migrate, expire,
#   delete), `lazyblock roots` again, then verify every image still published.
# Usage: scripts/gc-cycle.sh <corpus dir>   (made by scripts/make-corpus.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus="${1:?usage: scripts/gc-cycle.sh <corpus dir>}"
cargo build --release -q -p lazyblock
LB="$PWD/target/release/lazyblock"
work="$(mktemp -d /var/tmp/lazyblock-gc-cycle.XXXXXX)"
trap 'rm -rf "$work"' EXIT
export LAZYBLOCK_STORE="file://$work/store" LAZYBLOCK_KEYS_DIR="$work/keys"
unset LAZYBLOCK_CONFIG LAZYBLOCK_TENANT LAZYBLOCK_ROOT_GROUP

keep=(python3 python3-numpy-pandas python3-numpy-pandas-flaskapp)
drop=(debian-minbase nodejs)
for tag in "${keep[@]}" "${drop[@]}"; do
  "$LB" build "oci:$corpus/oci:$tag" --name "corpus/$tag:v1" 2>&1 | tail -n 1
done
for tag in "${drop[@]}"; do "$LB" rm "corpus/$tag:v1"; done
echo "== roots before the cycle (${drop[*]} unpublished)"
"$LB" roots
before=$("$LB" roots --json)
echo "== gc run --rotate-after 0 --expire-after 0 --delete-after 0"
t0=$(date +%s.%N)
"$LB" gc run --rotate-after 0 --expire-after 0 --delete-after 0
t1=$(date +%s.%N)
echo "== roots after the cycle"
"$LB" roots
after=$("$LB" roots --json)
python3 - "$before" "$after" "$t0" "$t1" <<'PY'
import json, sys
before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
secs = float(sys.argv[4]) - float(sys.argv[3])
b = sum(r["bytes"] for r in before); lb = sum(r["live_bytes"] for r in before)
a = sum(r["bytes"] for r in after); la = sum(r["live_bytes"] for r in after)
print(f"stored before {b/1e6:.1f} MB (live {lb/1e6:.1f} MB); after {a/1e6:.1f} MB (live {la/1e6:.1f} MB); "
      f"reclaimed {(b-a)/1e6:.1f} MB; cycle {secs:.1f} s")
assert a == la, "after the cycle every stored byte must be live"
assert a < b, "the cycle reclaimed nothing"
PY
echo "== every published image verifies after the cycle"
for tag in "${keep[@]}"; do "$LB" verify "corpus/$tag:v1"; done
for tag in "${drop[@]}"; do
  if "$LB" inspect "corpus/$tag:v1" >/dev/null 2>&1; then echo "error: $tag is still published" >&2; exit 1; fi
done
echo "gc cycle: OK"
