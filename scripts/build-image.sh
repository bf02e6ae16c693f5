#!/usr/bin/env bash
# Builds the Rackline OCI image offline: the five binaries statically linked
# (glibc, +crt-static) in target/static, then `podman build` FROM scratch
# (deploy/image/Containerfile). No registry is contacted.
#
#   scripts/build-image.sh [--profile vm|release] [--tag NAME:TAG] [--output FILE]
#
# --profile  cargo profile of the static build. `release` (default): thin LTO,
#            opt-level 3, what production should run. `vm`: opt-level 1, no LTO,
#            the profile the test suite's static-build step already built (CI
#            reuses it instead of building the workspace a second time).
# --tag      image name (default rackline.local/rackline:<workspace version>).
# --output   OCI archive written with `podman save` (default
#            target/image/rackline-<version>.oci.tar); load it with
#            `podman load -i` or `ctr -n k8s.io images import`, or push the
#            tag to your registry.
#
# podman state (storage, run dir, config) stays under target/image/podman, so
# the machine's own podman images and containers are never touched; its layer
# cache makes a rebuild with unchanged binaries a no-op.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
PROFILE=release
TAG="rackline.local/rackline:$VERSION"
OUT_DIR="$ROOT/target/image"
OUTPUT="$OUT_DIR/rackline-$VERSION.oci.tar"
TARGET=x86_64-unknown-linux-gnu
while (($#)); do
    case $1 in
    --profile) PROFILE=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --output) OUTPUT=$2; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v podman >/dev/null || { echo "build-image: podman missing (scripts/install-deps.sh)" >&2; exit 1; }

# Tests build the image from several processes at once: one at a time.
mkdir -p "$OUT_DIR"
exec 9>"$OUT_DIR/.lock"
flock 9

# The same command as scripts/test.sh's static-build step, so with
# --profile vm this is a no-op after it.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile "$PROFILE" \
    --target "$TARGET" -p rackline-cni -p rackline-ipamd -p rackline-netmaster -p rackline-ctl \
    --target-dir target/static
BIN="$ROOT/target/static/$TARGET/$PROFILE"

CTX="$OUT_DIR/context"
rm -rf "$CTX"
mkdir -p "$CTX/bin" "$CTX/rootfs/tmp" "$CTX/rootfs/etc/rackline" "$CTX/rootfs/run/rackline" \
    "$CTX/rootfs/var/lib/rackline"
chmod 1777 "$CTX/rootfs/tmp"
for b in rackline rackline-ipamd rackline-netmaster racklinectl rackline-install; do
    if [[ ! -x $BIN/$b ]]; then
        echo "build-image: $BIN/$b missing after the build" >&2
        exit 1
    fi
    # A copy, not a hard link: the timestamps below must not touch cargo's outputs (an older
    # mtime would make cargo rebuild them). -p keeps the binary's own mtime.
    cp -p "$BIN/$b" "$CTX/bin/$b"
done
cp conf/10-rackline.conflist "$CTX/rootfs/etc/rackline/10-rackline.conflist"
# Reproducible timestamps: an unchanged context gives unchanged layers.
find "$CTX/rootfs" -exec touch -h -d @0 {} +

PODMAN_DIR="$OUT_DIR/podman"
mkdir -p "$PODMAN_DIR/root" "$PODMAN_DIR/run" "$PODMAN_DIR/tmp"
cat >"$PODMAN_DIR/containers.conf" <<CONF
[engine]
events_logger = "none"
cgroup_manager = "cgroupfs"
tmp_dir = "$PODMAN_DIR/tmp"
[network]
network_backend = "cni"
network_config_dir = "$PODMAN_DIR/cni"
default_network = "none"
CONF
cat >"$PODMAN_DIR/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "$PODMAN_DIR/root"
runroot = "$PODMAN_DIR/run"
CONF
export CONTAINERS_CONF="$PODMAN_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$PODMAN_DIR/registries.conf"
: >"$CONTAINERS_REGISTRIES_CONF"

podman build --pull=never --network none --layers -f deploy/image/Containerfile -t "$TAG" "$CTX" >&2
mkdir -p "$(dirname "$OUTPUT")"
# Written aside and renamed: other test processes read the archive without the lock, and a
# rename swaps it atomically where rm + save left a moment with no file at all.
rm -f "$OUTPUT.partial"
podman save --format oci-archive -o "$OUTPUT.partial" "$TAG" >&2
mv -f "$OUTPUT.partial" "$OUTPUT"
size=$(podman image inspect --format '{{.Size}}' "$TAG")
echo "build-image: $TAG ($PROFILE) image $((size / 1024)) KiB, archive $(($(stat -c %s "$OUTPUT") / 1024)) KiB: $OUTPUT"
