#!/usr/bin/env bash
# lazyblock test corpus: five realistic multi-layer OCI images that share base layers,
# built from Debian packages and PyPI wheels only (no container registry involved).
#
#   scripts/make-corpus.sh OUT_DIR
#
# Produces (OUT_DIR must be outside the repository; corpus data is never committed):
#   OUT_DIR/oci/                 OCI image layout (gzip layers), tags:
#       debian-minbase                 1 layer   Debian bookworm, debootstrap --variant=minbase
#       python3                        +1 layer  apt: python3
#       python3-numpy-pandas           +1 layer  pip: numpy pandas
#       python3-numpy-pandas-flaskapp  +1 layer  pip: flask + /app/app.py, workdir /app, cmd
#       nodejs                         +1 layer  on debian-minbase, apt: nodejs
#   OUT_DIR/oci-zstd/            the same five tags re-compressed with zstd (skopeo)
#   OUT_DIR/docker/nodejs.tar    the nodejs image as a docker-archive tarball (skopeo)
#   OUT_DIR/CORPUS.txt           what was built (tags, manifest digests, layer sizes)
#
# Needs root (debootstrap, chroot, bind mounts). About 3-5 minutes on 2 cores.
# Idempotent: every part that is already complete is left alone; a partial run leaves
# nothing behind but its (removed) scratch directory.
# The zstd layout and docker archive are extras: if skopeo cannot be installed they are
# skipped with a warning and the tests that use them skip too.
set -euo pipefail

out=${1:?usage: make-corpus.sh OUT_DIR}
out=$(realpath -m "$out")
here=$(cd "$(dirname "$0")/.." && pwd -P)
case "$out/" in
  "$here"/*) echo "make-corpus: refusing to write corpus data inside the repository ($here)" >&2; exit 2 ;;
esac
mkdir -p "$out"
[ "$(id -u)" = 0 ] || { echo "make-corpus: needs root (debootstrap, chroot)" >&2; exit 2; }

tags="debian-minbase python3 python3-numpy-pandas python3-numpy-pandas-flaskapp nodejs"
export SOURCE_DATE_EPOCH=1700000000
t0=$(date +%s)
step() { echo "[make-corpus $(( $(date +%s) - t0 ))s] $*"; }

# ---- tools -------------------------------------------------------------------------
apt_updated=""
apt_install() { # packages...
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
need=""
for c in debootstrap umoci; do command -v "$c" >/dev/null || need="$need $c"; done
command -v python3 >/dev/null || need="$need python3"
python3 -m pip --version >/dev/null 2>&1 || need="$need python3-pip"
# shellcheck disable=SC2086
[ -z "$need" ] || { step "installing:$need"; apt_install $need; }

have_tags() { # layout -> 0 when it holds exactly $tags
  [ -f "$1/index.json" ] || return 1
  local have want
  have=$(umoci ls --layout "$1" 2>/dev/null | sort | tr '\n' ' ')
  want=$(printf '%s\n' $tags | sort | tr '\n' ' ')
  [ "$have" = "$want" ]
}

# ---- scratch area, always cleaned up -----------------------------------------------
work=$(mktemp -d "$out/.work.XXXXXX")
cleanup() {
  # unmount anything still mounted below the scratch dir (deepest first), then remove it
  for m in $(awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

# ---- the five gzip images ----------------------------------------------------------
if have_tags "$out/oci"; then
  step "oci layout already complete in $out/oci"
else
  # The Debian mirror apt is configured with (deb822 or one-line sources).
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "make-corpus: no Debian mirror found in the apt sources" >&2; exit 1; }

  debootstrap --variant=minbase bookworm rootfs-minbase "$mirror" >/dev/null
  rm -rf rootfs-minbase/var/cache/apt/archives/*.deb rootfs-minbase/var/lib/apt/lists/*
  step "debootstrap bookworm minbase done"

  in_chroot_apt() { # rootfs packages...
    local r=$1; shift
    mount --bind /dev "$r/dev"
    mount -t proc proc "$r/proc"
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
    chmod 755 "$r/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
    chroot "$r" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends $* >/dev/null && apt-get clean && \
      rm -rf /var/lib/apt/lists/*"
    rm -f "$r/usr/sbin/policy-rc.d"
    umount "$r/proc" "$r/dev"
  }

  L=layout
  umoci init --layout $L
  umoci new --image $L:debian-minbase
  umoci unpack --image $L:debian-minbase bundle-base >/dev/null
  cp -a rootfs-minbase/. bundle-base/rootfs/
  umoci repack --image $L:debian-minbase bundle-base
  rm -rf rootfs-minbase bundle-base
  step "debian-minbase"

  umoci unpack --image $L:debian-minbase bundle-py >/dev/null
  in_chroot_apt bundle-py/rootfs python3
  pyver=$(chroot bundle-py/rootfs python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  umoci repack --image $L:python3 bundle-py
  rm -rf bundle-py
  step "python3 (python $pyver)"

  site=usr/local/lib/python$pyver/dist-packages
  umoci unpack --image $L:python3 bundle-np >/dev/null
  python3 -m pip install -q --disable-pip-version-check --python-version "$pyver" \
    --only-binary=:all: --target "bundle-np/rootfs/$site" numpy pandas
  chroot bundle-np/rootfs python3 -c 'import numpy, pandas'
  umoci repack --image $L:python3-numpy-pandas bundle-np
  rm -rf bundle-np
  step "python3-numpy-pandas"

  umoci unpack --image $L:python3-numpy-pandas bundle-app >/dev/null
  python3 -m pip install -q --disable-pip-version-check --python-version "$pyver" \
    --only-binary=:all: --target "bundle-app/rootfs/$site" flask
  mkdir -p bundle-app/rootfs/app
  cat >bundle-app/rootfs/app/app.py <<'PY'
import flask, numpy, pandas

app = flask.Flask(__name__)


@app.get("/")
def index():
    return {"sum": int(pandas.DataFrame({"x": numpy.arange(10)}).x.sum())}
PY
  umoci repack --image $L:python3-numpy-pandas-flaskapp bundle-app
  rm -rf bundle-app
  umoci config --image $L:python3-numpy-pandas-flaskapp --config.workingdir /app \
    --config.cmd python3 --config.cmd -c --config.cmd 'import app; print(app.index())' >/dev/null
  step "python3-numpy-pandas-flaskapp"

  umoci unpack --image $L:debian-minbase bundle-node >/dev/null
  in_chroot_apt bundle-node/rootfs nodejs
  umoci repack --image $L:nodejs bundle-node
  rm -rf bundle-node
  step "nodejs"

  umoci gc --layout $L
  have_tags $L || { echo "make-corpus: built layout lacks some tags" >&2; exit 1; }
  rm -rf "$out/oci" "$out/oci-zstd" "$out/docker"  # extras derive from the layout
  mv $L "$out/oci"
  step "oci layout ready in $out/oci"
fi

# ---- extras: zstd layout and docker-archive (skopeo) -------------------------------
command -v skopeo >/dev/null || { step "installing: skopeo"; apt_install skopeo || true; }
if ! command -v skopeo >/dev/null; then
  echo "make-corpus: WARNING skopeo unavailable, skipping oci-zstd and docker archive" >&2
else
  if have_tags "$out/oci-zstd" 2>/dev/null; then
    step "zstd layout already complete in $out/oci-zstd"
  else
    rm -rf zstd-layout
    for t in $tags; do
      skopeo copy -q --dest-compress --dest-compress-format zstd \
        "oci:$out/oci:$t" "oci:zstd-layout:$t"
    done
    rm -rf "$out/oci-zstd" && mv zstd-layout "$out/oci-zstd"
    step "zstd layout ready in $out/oci-zstd"
  fi
  if [ -s "$out/docker/nodejs.tar" ]; then
    step "docker archive already present in $out/docker/nodejs.tar"
  else
    mkdir -p "$out/docker"
    skopeo copy -q "oci:$out/oci:nodejs" "docker-archive:$work/nodejs.tar:lazyblock/nodejs:latest"
    mv "$work/nodejs.tar" "$out/docker/nodejs.tar"
    step "docker archive ready in $out/docker/nodejs.tar"
  fi
fi

# ---- report ------------------------------------------------------------------------
python3 - "$out" >"$out/CORPUS.txt" <<'PY'
import json, os, sys

out = sys.argv[1]
for name in ("oci", "oci-zstd"):
    lay = os.path.join(out, name)
    if not os.path.isfile(os.path.join(lay, "index.json")):
        continue
    def blob(d):
        alg, hexd = d.split(":", 1)
        with open(os.path.join(lay, "blobs", alg, hexd)) as f:
            return json.load(f)
    print(f"{name}/")
    for m in json.load(open(os.path.join(lay, "index.json")))["manifests"]:
        tag = m.get("annotations", {}).get("org.opencontainers.image.ref.name", "?")
        layers = blob(m["digest"])["layers"]
        total = sum(l["size"] for l in layers)
        print(f"  {tag:32} {m['digest'][:19]}  {len(layers)} layers  {total / 1e6:7.1f} MB compressed")
        for l in layers:
            print(f"      {l['digest'][:19]}  {l['size'] / 1e6:7.1f} MB  {l['mediaType']}")
dock = os.path.join(out, "docker", "nodejs.tar")
if os.path.isfile(dock):
    print(f"docker/nodejs.tar  {os.path.getsize(dock) / 1e6:.1f} MB")
PY
cat "$out/CORPUS.txt"
step "corpus ready in $out"
