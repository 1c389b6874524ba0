#!/usr/bin/env bash
# The main job, on embedded defaults (no configuration: local store under
# ~/.local/share/lazyblock/store, keys under ~/.config/lazyblock/keys):
#   1. make a small sample ext4 image,
#   2. build it into the store as tenant demo-a, then again as tenant demo-b,
#      and show that the second build stored no new chunk objects,
#   3. inspect and verify it, export it and compare the bytes with the original.
set -euo pipefail
cd "$(dirname "$0")/.."
unset LAZYBLOCK_STORE LAZYBLOCK_TENANT LAZYBLOCK_KEYS_DIR LAZYBLOCK_CONFIG

if ! command -v mke2fs >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends e2fsprogs >/dev/null
fi
echo "== building lazyblock (release)"
cargo build --release -q -p lazyblock
LB="$PWD/target/release/lazyblock"

work="$(mktemp -d /var/tmp/lazyblock-demo.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo "== making a sample ext4 image in $work"
mkdir -p "$work/root/etc" "$work/root/usr/bin" "$work/root/var/lib/app"
echo "hello from lazyblock" > "$work/root/etc/motd"
cp /bin/sh "$work/root/usr/bin/sh"
head -c 3M /dev/urandom > "$work/root/var/lib/app/data.bin"
E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -t ext4 -b 4096 -U 11111111-2222-3333-4444-555555555555 \
  -E hash_seed=66666666-7777-8888-9999-aaaaaaaaaaaa -d "$work/root" "$work/sample.img" 64M >/dev/null

store="${XDG_DATA_HOME:-$HOME/.local/share}/lazyblock/store"
count_chunks() { find "$store/roots" -path '*/chunks/*' -type f 2>/dev/null | wc -l; }

echo "== build as tenant demo-a"
"$LB" build "raw:$work/sample.img" --name demo/sample:v1 --tenant demo-a
before=$(count_chunks)
echo "== build the same image as tenant demo-b"
"$LB" build "raw:$work/sample.img" --name demo/sample:v1 --tenant demo-b
after=$(count_chunks)
echo "chunk objects in $store: $before before the second build, $after after ($((after - before)) new)"
if [[ "$after" != "$before" ]]; then echo "error: the second tenant's build stored new chunks" >&2; exit 1; fi

echo "== inspect, verify, export (tenant demo-b)"
"$LB" inspect demo/sample:v1 --tenant demo-b
"$LB" verify demo/sample:v1 --tenant demo-b
"$LB" export demo/sample:v1 --tenant demo-b -o "$work/exported.img"
cmp "$work/sample.img" "$work/exported.img"
echo "exported image is identical to the original ($(stat -c %s "$work/exported.img") bytes, $(du -k "$work/exported.img" | cut -f1) KiB allocated)"
echo "== catalog of demo-a"
"$LB" images --tenant demo-a
echo "demo: OK"
