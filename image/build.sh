#!/usr/bin/env bash
# Builds the operator's OCI image without a container engine and without pulling a base image:
# a Debian bookworm root made by mmdebstrap from Debian's mirror (python3, ca-certificates), the project's
# wheel and its dependencies installed into it with that root's own python3 (chroot), slimmed by
# image/slim.sh (the same script operator/Dockerfile runs), packed as an OCI image layout by umoci.
#
#   image/build.sh [OUT]     OUT defaults to build/image; the image is OUT/stockade:<version>
#
# Skipped when OUT/inputs.sha256 matches the inputs (the operator's sources, pyproject.toml, README.md,
# image/): `make test` calls it every run. FORCE=1 rebuilds. Needs root (chroot), mmdebstrap and umoci.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/image}
PYTHON=${PYTHON:-python3}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
SOURCE=$(sed -n 's/^sources: \[\(.*\)\]/\1/p' charts/stockade/Chart.yaml)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
LAYOUT=$OUT/stockade
log() { echo "[image $(date +%T)] $*" >&2; }

inputs_key() {
  { find operator/stockade image -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    sha256sum pyproject.toml README.md; echo "$SUITE $MIRROR $(uname -m)"; } | sha256sum | cut -d' ' -f1
}
KEY=$(inputs_key)
if [ -z "${FORCE:-}" ] && [ -f "$OUT/inputs.sha256" ] && [ "$(cat "$OUT/inputs.sha256")" = "$KEY" ] \
    && [ -f "$LAYOUT/index.json" ]; then
  log "up to date: $LAYOUT:$VERSION (inputs $KEY)"; exit 0
fi
for tool in mmdebstrap umoci chroot; do
  command -v $tool >/dev/null || { echo "image/build.sh needs $tool (make image-deps)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "image/build.sh needs root (mmdebstrap's root mode and chroot)" >&2; exit 1; }

start=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/stockade-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
rm -rf "$LAYOUT" "$OUT/inputs.sha256"

# The wheels, resolved here for the image's interpreter (CPython 3.11 on glibc 2.36, bookworm's), binary
# only, so nothing is compiled in the image and no compiler is ever in it.
log "wheels"
"$PYTHON" -m pip wheel -q --no-deps -w "$WORK/wheels" .
arch=$(uname -m) platforms=()
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done  # pip names each one
"$PYTHON" -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
  --platform "manylinux2014_$arch" "${platforms[@]}" -d "$WORK/wheels" "$WORK"/wheels/stockade-"$VERSION"-*.whl

# The root: Essential packages plus python3, python3-venv and ca-certificates; no apt (mmdebstrap installs
# with the host's apt; merged /usr by the usr-is-merged package, not usrmerge and its perl), no documentation but copyright files, no translations.
log "root filesystem from $MIRROR ($SUITE)"
ROOTFS=$WORK/rootfs
mmdebstrap --quiet --variant=essential --include=python3,python3-venv,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1 \
  || { cat "$WORK/mmdebstrap.log" >&2; exit 1; }

log "install the operator and slim"
mkdir -p "$ROOTFS/tmp/build"
cp -r "$WORK/wheels" image/slim.sh image/sbom.py image/prune.py "$ROOTFS/tmp/build/"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot "$ROOTFS" /tmp/build/slim.sh "$VERSION" "$SOURCE" \
  --no-index --find-links /tmp/build/wheels "stockade==$VERSION"
cp "$ROOTFS/opt/stockade/sbom.spdx.json" "$OUT/sbom.spdx.json"
# What a container runtime provides, as in a Dockerfile stage: empty /dev, empty resolv.conf and hostname
# (mmdebstrap copied this machine's).
find "$ROOTFS/dev" -mindepth 1 -delete
: > "$ROOTFS/etc/resolv.conf"; : > "$ROOTFS/etc/hostname"

# The image: one layer (the whole root), the chart's entrypoint, the chart's user, OCI labels.
log "pack $LAYOUT:$VERSION"
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:$VERSION"
umoci insert --image "$LAYOUT:$VERSION" --history.created_by "image/build.sh: mmdebstrap $SUITE + image/slim.sh" \
  "$ROOTFS" /
labels=(
  "org.opencontainers.image.title=stockade"
  "org.opencontainers.image.description=Stockade, a Kubernetes operator that fences in autonomous AI agents"
  "org.opencontainers.image.source=$SOURCE"
  "org.opencontainers.image.version=$VERSION"
  "org.opencontainers.image.revision=$REVISION"
  "org.opencontainers.image.licenses=Apache-2.0"
  "org.opencontainers.image.created=$created"
  "org.opencontainers.image.base.name=debian:$SUITE"
)
args=()
for label in "${labels[@]}"; do args+=(--config.label "$label" --manifest.annotation "$label"); done
# Keep these in step with operator/Dockerfile (tests/e2e/test_image.py checks this image's config).
umoci config --image "$LAYOUT:$VERSION" --created "$created" --author "stockade" --no-history \
  --config.user 65532:65532 --config.workingdir /tmp \
  --config.env PATH=/opt/stockade/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.env PYTHONUNBUFFERED=1 --config.env HOME=/tmp \
  --config.entrypoint stockade --config.cmd run --config.cmd --json \
  --config.exposedports 8080/tcp --config.exposedports 8081/tcp --config.exposedports 8082/tcp \
  --config.exposedports 8443/tcp --config.exposedports 9443/tcp "${args[@]}"
umoci gc --layout "$LAYOUT"

echo "$KEY" > "$OUT/inputs.sha256"
size=$(du -sb "$LAYOUT/blobs" | cut -f1)
rootsize=$(du -sbx "$ROOTFS" | cut -f1)
log "done in $(( $(date +%s) - start )) s: $LAYOUT:$VERSION, $((size / 1000000)) MB compressed, $((rootsize / 1000000)) MB unpacked"
