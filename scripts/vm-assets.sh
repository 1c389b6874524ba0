#!/usr/bin/env bash
# scripts/vm-assets.sh [DIR]: everything the QEMU guest tests (crates/lazyblock/tests/vm.rs) need.
#
# DIR defaults to ${LAZYBLOCK_VM_DIR:-/var/tmp/lazyblock-vm}. Idempotent: when DIR is complete
# (stamp file DIR/.complete) and the host tools are present it only checks and exits.
#
# 1. Host packages (root, apt): qemu-system-x86 and qemu-utils from bookworm-backports TOGETHER
#    (plain bookworm's qemu-system-x86 7.2 would remove qemu-utils 10 and with it qemu-img,
#    qemu-io and qemu-nbd), busybox-static, cpio, kmod. Backports is added through a private
#    sources list for the duration of the apt calls; /etc/apt is not modified.
# 2. DIR/vmlinux: the uncompressed kernel of the Debian linux-image-6.1.0-*-amd64 package that
#    linux-image-amd64 depends on (PVH direct boot, about 2x faster than the bzImage under TCG).
# 3. DIR/initrd.img: busybox, the virtio-blk and ext4 modules (with their dependencies, in load
#    order) and an /init that mounts /dev/vda read-only (-o ro,noload) at /mnt, runs the
#    base64-encoded shell command of `lazyblock.cmd=` on the kernel command line, prints
#    `LAZYBLOCK-VM-EXIT=<status>` and powers off. Init failures print `LAZYBLOCK-VM-ERROR=<why>`
#    and `LAZYBLOCK-VM-EXIT=255`.
#
# One line per step on stdout; failures are one `vm-assets: error: ...` line on stderr, exit 1.
# Environment: DEBIAN_MIRROR overrides the mirror taken from the apt sources.
set -euo pipefail
export LC_ALL=C

FORMAT=1 # bump when the layout or the /init contract changes: forces a rebuild
DIR=${1:-${LAZYBLOCK_VM_DIR:-/var/tmp/lazyblock-vm}}
STAMP="$DIR/.complete"
# Roots of the module closure; modprobe --show-depends adds their dependencies in load order.
# crc32c_generic: ext4 only soft-depends on "crc32c" and cannot mount metadata_csum without it.
MODULE_ROOTS=(virtio_pci virtio_blk crc32c_generic libcrc32c ext4)
# Soft dependencies that need host CPU features TCG's default CPU lacks (insmod: ENODEV).
MODULE_SKIP='/crc32c-intel\.ko'

step() { echo "vm-assets: $*"; }
die() {
  echo "vm-assets: error: $*" >&2
  exit 1
}

mkdir -p "$DIR" || die "cannot create $DIR"
DIR=$(cd "$DIR" && pwd)
STAMP="$DIR/.complete"
# Concurrent callers (tests run in parallel) wait for each other.
exec 9>"$DIR/.lock" || die "cannot open $DIR/.lock"
flock 9 || die "cannot lock $DIR/.lock"

# ---------------------------------------------------------------------------------------------
# 1. Host packages
# ---------------------------------------------------------------------------------------------
pkg_version() { dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$1" 2>/dev/null | awk '$1=="ii"{print $2}'; }

host_tools_ok() {
  local sys utils
  sys=$(pkg_version qemu-system-x86)
  utils=$(pkg_version qemu-utils)
  [[ -n $sys && $sys == "$utils" ]] || return 1
  [[ -n $(pkg_version busybox-static) && -n $(pkg_version cpio) && -n $(pkg_version kmod) ]] || return 1
  local t
  for t in qemu-system-x86_64 qemu-img qemu-io qemu-nbd busybox cpio depmod modprobe; do
    command -v "$t" >/dev/null || return 1
  done
  qemu-img --version >/dev/null 2>&1 && qemu-system-x86_64 --version >/dev/null 2>&1
}

debian_mirror() {
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local m=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    # The first deb822 stanza that is not the security archive.
    m=$(awk 'BEGIN{RS=""} !/debian-security/ && /Suites:[^\n]*bookworm/ {
            if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { s=substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", s); print s; exit } }' \
      /etc/apt/sources.list.d/*.sources)
  fi
  if [[ -z $m && -f /etc/apt/sources.list ]]; then
    m=$(awk '$1=="deb" && $0 ~ / bookworm / && $0 !~ /security/ { for (i=2;i<=NF;i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

install_host_packages() {
  [[ $(id -u) == 0 ]] || die "host packages missing (qemu-system-x86 + qemu-utils from bookworm-backports, busybox-static, cpio, kmod) and not root: run scripts/vm-assets.sh as root"
  command -v apt-get >/dev/null || die "apt-get not found: install qemu-system-x86 and qemu-utils (same version), busybox-static, cpio and kmod by hand"
  local mirror list
  mirror=$(debian_mirror)
  list=$(mktemp /tmp/lazyblock-vm-sources.XXXXXX)
  # A private copy of the main sources list plus backports (sources.list.d is still read).
  { [[ -f /etc/apt/sources.list ]] && cat /etc/apt/sources.list
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [[ -f $keyring ]]; then
      echo "deb [signed-by=$keyring] $mirror bookworm-backports main"
    else
      echo "deb $mirror bookworm-backports main"
    fi
  } >"$list"
  local apt=(apt-get -q -o "Dir::Etc::sourcelist=$list" -o DPkg::Lock::Timeout=600)
  step "apt-get update (with bookworm-backports from $mirror)"
  if ! "${apt[@]}" update >"$DIR/apt.log" 2>&1; then
    rm -f "$list"
    die "apt-get update failed (log: $DIR/apt.log)"
  fi
  step "installing qemu-system-x86 qemu-utils (bookworm-backports) busybox-static cpio kmod"
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
    -t bookworm-backports qemu-system-x86 qemu-utils busybox-static cpio kmod >>"$DIR/apt.log" 2>&1; then
    rm -f "$list"
    die "apt-get install failed (log: $DIR/apt.log)"
  fi
  rm -f "$list"
  local sys utils
  sys=$(pkg_version qemu-system-x86)
  utils=$(pkg_version qemu-utils)
  [[ -n $sys && $sys == "$utils" ]] || die "qemu-system-x86 ($sys) and qemu-utils ($utils) versions differ"
  qemu-img --version >/dev/null 2>&1 || die "qemu-img --version fails after the install"
  qemu-system-x86_64 --version >/dev/null 2>&1 || die "qemu-system-x86_64 --version fails after the install"
  step "installed qemu $sys"
}

if host_tools_ok; then
  step "host tools present (qemu $(pkg_version qemu-system-x86))"
else
  install_host_packages
fi

if [[ -f $STAMP && $(head -n1 "$STAMP") == "format=$FORMAT" && -s $DIR/vmlinux && -s $DIR/initrd.img ]]; then
  step "$DIR complete ($(sed -n 's/^kernel=//p' "$STAMP"))"
  exit 0
fi
rm -f "$STAMP"

# ---------------------------------------------------------------------------------------------
# 2. Kernel
# ---------------------------------------------------------------------------------------------
WORK="$DIR/.work"
rm -rf "$WORK"
mkdir -p "$WORK/deb" "$WORK/kpkg" "$WORK/initrd"
trap 'rm -rf "$WORK"' EXIT

kernel_package() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG=$(kernel_package)
if [[ -z $KPKG && $(id -u) == 0 ]]; then
  step "apt-get update (no package lists)"
  apt-get -q -o DPkg::Lock::Timeout=600 update >"$WORK/update.log" 2>&1 || die "apt-get update failed: $(tail -n1 "$WORK/update.log")"
  KPKG=$(kernel_package)
fi
[[ -n $KPKG ]] || die "cannot resolve linux-image-amd64 to a linux-image-6.1.0-*-amd64 package (apt-get update?)"
step "downloading $KPKG"
(cd "$WORK/deb" && apt-get -q -o APT::Sandbox::User=root download "$KPKG" >"$WORK/download.log" 2>&1) ||
  die "apt-get download $KPKG failed: $(tail -n1 "$WORK/download.log")"
step "extracting $KPKG"
dpkg-deb -x "$WORK"/deb/*.deb "$WORK/kpkg" || die "dpkg-deb -x failed on $KPKG"
KVER=${KPKG#linux-image-}
VMLINUZ="$WORK/kpkg/boot/vmlinuz-$KVER"
[[ -f $VMLINUZ ]] || die "$KPKG has no boot/vmlinuz-$KVER"

step "extracting vmlinux (PVH boot) from vmlinuz-$KVER"
# The payload is the first xz stream in the bzImage.
OFF=$(grep -obUaP '\xfd7zXZ\x00' "$VMLINUZ" | head -n1 | cut -d: -f1)
[[ -n $OFF ]] || die "no xz payload in $VMLINUZ"
# (tail dies of SIGPIPE when xz stops at the end of the stream: ignore its status)
{ tail -c +$((OFF + 1)) "$VMLINUZ" || :; } | xz -dc --single-stream >"$WORK/vmlinux" 2>/dev/null ||
  die "xz failed to decompress the payload of $VMLINUZ"
[[ $(head -c4 "$WORK/vmlinux" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] || die "extracted vmlinux is not an ELF file"

# ---------------------------------------------------------------------------------------------
# 3. initrd
# ---------------------------------------------------------------------------------------------
step "resolving modules: ${MODULE_ROOTS[*]}"
depmod -b "$WORK/kpkg" "$KVER" 2>"$WORK/depmod.log" || die "depmod failed: $(tail -n1 "$WORK/depmod.log")"
# --show-depends lists each module after its dependencies: "insmod /path/x.ko [params]".
mapfile -t KOS < <(modprobe -d "$WORK/kpkg" -S "$KVER" --show-depends -a "${MODULE_ROOTS[@]}" 2>"$WORK/modprobe.log" |
  awk -v skip="$MODULE_SKIP" '$1=="insmod" && $2 !~ skip && !seen[$2]++ {print $2}')
[[ ${#KOS[@]} -gt 0 ]] || die "modprobe --show-depends failed: $(tail -n1 "$WORK/modprobe.log")"
for root in "${MODULE_ROOTS[@]}"; do
  printf '%s\n' "${KOS[@]}" | grep -q "/$root\.ko" || die "module $root not found in $KPKG"
done

R="$WORK/initrd"
mkdir -p "$R"/{bin,dev,proc,sys,mnt,tmp,lib/modules}
BUSYBOX=$(command -v busybox)
ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is dynamically linked: install busybox-static"
cp "$BUSYBOX" "$R/bin/busybox"
: >"$R/lib/modules/order"
for ko in "${KOS[@]}"; do
  name=$(basename "$ko")
  case $name in
  *.ko.xz) xz -dc "$ko" >"$R/lib/modules/${name%.xz}" ;;
  *.ko) cp "$ko" "$R/lib/modules/$name" ;;
  *) die "unexpected module file $ko" ;;
  esac
  echo "${name%.xz}" >>"$R/lib/modules/order"
done
step "modules in load order: $(sed 's/\.ko$//' "$R/lib/modules/order" | tr '\n' ' ')"

cat >"$R/init" <<'EOF'
#!/bin/busybox sh
# lazyblock VM test init (scripts/vm-assets.sh). Contract: mount /dev/vda read-only at /mnt,
# run the base64 shell command of lazyblock.cmd=, print LAZYBLOCK-VM-EXIT=<status>, power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/
fail() {
  echo "LAZYBLOCK-VM-ERROR=$*"
  echo "LAZYBLOCK-VM-EXIT=255"
  poweroff -f
  exit 1
}
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
while read -r m; do
  insmod "/lib/modules/$m" || fail "insmod $m"
done </lib/modules/order
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ "$i" -gt 300 ] && fail "no /dev/vda"
  sleep 0.1
done
mount -t ext4 -o ro,noload /dev/vda /mnt || fail "mount /dev/vda"
cmd=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
  lazyblock.cmd=*) cmd=$(echo "${arg#lazyblock.cmd=}" | base64 -d) || fail "lazyblock.cmd is not base64" ;;
  esac
done
[ -n "$cmd" ] || fail "no lazyblock.cmd= on the kernel command line"
sh -c "$cmd"
status=$?
umount /mnt
echo "LAZYBLOCK-VM-EXIT=$status"
poweroff -f
EOF
chmod 0755 "$R/init"

step "building initrd.img"
find "$R" -exec touch -h -d @0 {} + # reproducible archive
(cd "$R" && find . -print0 | sort -z | cpio --null --reproducible -o -H newc -R 0:0 --quiet) | gzip -n -1 >"$WORK/initrd.img" ||
  die "cpio/gzip failed"

mv -f "$WORK/vmlinux" "$DIR/vmlinux"
mv -f "$WORK/initrd.img" "$DIR/initrd.img"
printf 'format=%s\nkernel=%s\nmodules=%s\n' "$FORMAT" "$KPKG" "$(tr '\n' ' ' <"$R/lib/modules/order")" >"$STAMP"
step "done: $DIR ($(du -sh --exclude=.work "$DIR" | cut -f1), kernel $KPKG)"
