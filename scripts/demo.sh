#!/usr/bin/env bash
# The main job, on embedded defaults (no configuration: local store under
# ~/.local/share/lazyblock/store, keys under ~/.config/lazyblock/keys):
#   1. make a small sample ext4 image,
#   2. build it into the store as tenant demo-a, then again as tenant demo-b,
#      and show that the second build stored no new chunk objects,
#   3. inspect and verify it, export it and compare the bytes with the original,
#   4. mount it on demand (FUSE + loop, a background agent with the default worker cache under
#      ~/.cache/lazyblock), run a program from it in a chroot, and unmount it.
set -euo pipefail
cd "$(dirname "$0")/.."
unset LAZYBLOCK_STORE LAZYBLOCK_TENANT LAZYBLOCK_KEYS_DIR LAZYBLOCK_CONFIG

need=()
command -v mke2fs >/dev/null || need+=(e2fsprogs)
[[ -x /bin/busybox ]] || need+=(busybox-static)
command -v losetup >/dev/null || need+=(mount)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "== building lazyblock (release)"
cargo build --release -q -p lazyblock
LB="$PWD/target/release/lazyblock"

work="$(mktemp -d /var/tmp/lazyblock-demo.XXXXXX)"
cleanup() {
  if grep -q " $work/mnt " /proc/self/mountinfo 2>/dev/null; then "$LB" umount "$work/mnt" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
echo "== making a sample ext4 image in $work"
mkdir -p "$work/root/etc" "$work/root/usr/bin" "$work/root/var/lib/app"
echo "hello from lazyblock" > "$work/root/etc/motd"
mkdir -p "$work/root/bin"
cp /bin/busybox "$work/root/bin/busybox"   # static: runs in a chroot of the image alone
for applet in sh cat ls; do ln -s busybox "$work/root/bin/$applet"; done
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
echo "== mount demo/sample:v1 on demand and run a program from it"
"$LB" mount demo/sample:v1 "$work/mnt" --tenant demo-b --read-only
out=$(chroot "$work/mnt" /bin/sh -c 'echo "inside the image: $(cat /etc/motd), $(ls /var/lib/app)"')
echo "$out"
[[ "$out" == *"hello from lazyblock"* ]] || { echo "error: the program in the image did not run" >&2; exit 1; }
"$LB" umount "$work/mnt"
echo "demo: OK"
