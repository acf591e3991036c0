#!/usr/bin/env bash
# Builds the project's images (Dockerfile: the difusor image, and its `nginx` target) without
# Docker and without a registry, or with Docker where there is one:
#
#   hack/image.sh          prints "<reference> <OCI archive>" for each image, one per line
#
# No Docker daemon: a Debian bookworm root file system made by mmdebstrap from Debian's archive is
# the Dockerfile's BASE_IMAGE, buildah (vfs storage, chroot isolation: no overlay mounts nor user
# namespaces in a container) builds both targets, and each is exported as an OCI archive
# (`ctr images import`, `podman load`, `skopeo copy oci-archive:...`). Archives are cached in
# $DIFUSOR_CACHE/images by a hash of every input of the build, so an unchanged tree reuses them.
# With a Docker daemon: `docker build` of both targets (then `kind load docker-image`), no archive.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/hack/versions.env"
CACHE="${DIFUSOR_CACHE:-$HOME/.cache/difusor}"
OUT="$CACHE/images"
IMAGE="${IMAGE:-ghcr.io/difusor/difusor:dev}"
NGINX_IMAGE="${NGINX_IMAGE:-ghcr.io/difusor/difusor-nginx:dev}"
log() { echo "image: $*" >&2; }
# This machine's CA bundle, lent to the build's downloads from PyPI (egress proxies that re-sign
# TLS have their CA there); a build secret, so it never lands in an image.
CA_BUNDLE="${DIFUSOR_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
secret=()
[[ -s "$CA_BUNDLE" ]] && secret=(--secret "id=ca-certificates,src=$CA_BUNDLE")

if [[ "${DIFUSOR_IMAGE_BUILDER:-}" != buildah ]] && command -v docker >/dev/null 2>&1 \
  && docker info >/dev/null 2>&1; then
  log "building $IMAGE and $NGINX_IMAGE with docker"
  DOCKER_BUILDKIT=1 docker build "${secret[@]}" -t "$IMAGE" "$ROOT" >&2
  DOCKER_BUILDKIT=1 docker build --target nginx -t "$NGINX_IMAGE" "$ROOT" >&2
  echo "$IMAGE"
  echo "$NGINX_IMAGE"
  exit 0
fi

for tool in mmdebstrap buildah; do
  command -v "$tool" >/dev/null || { log "$tool is missing (make deps installs it)"; exit 1; }
done
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

# The Debian base: same recipe, same tarball (security updates arrive when the recipe changes or
# the tarball is deleted).
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
base_args=(
  --variant=minbase --format=tar
  "--aptopt=APT::Install-Recommends \"false\""
  # As in debian:bookworm-slim: no manuals, docs (but their copyright) nor translations.
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
)
sources=(
  "deb $MIRROR $DEBIAN_SUITE main"
  "deb $MIRROR $DEBIAN_SUITE-updates main"
  "deb $SECURITY_MIRROR $DEBIAN_SUITE-security main"
)
base_hash="$(printf '%s\n' "${base_args[@]}" "${sources[@]}" | sha256sum | cut -c1-12)"
base_tar="$OUT/debian-$DEBIAN_SUITE-$base_hash.tar"
base_ref="localhost/difusor-base:$DEBIAN_SUITE-$base_hash"

# Every file the build reads: the Dockerfile, the context it lets in, this script.
inputs_hash="$(
  cd "$ROOT"
  {
    printf '%s\n' "$base_hash" "$IMAGE" "$NGINX_IMAGE"
    find Dockerfile .dockerignore pyproject.toml uv.lock operator hack/image.sh \
      hack/versions.env -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
      | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)"
image_tar="$OUT/difusor-$inputs_hash.oci.tar"
nginx_tar="$OUT/difusor-nginx-$inputs_hash.oci.tar"

if [[ -s "$image_tar" && -s "$nginx_tar" ]]; then
  log "images for inputs $inputs_hash already built"
else
  start=$(date +%s)
  B=(buildah --root "$CACHE/buildah/storage" --runroot "/run/difusor-buildah" --storage-driver vfs)
  # vfs keeps a full copy of every layer: the cached layers (which make a rebuild after a code
  # change take a minute or two instead of ten) are dropped when they pass 8 GiB.
  if (($(du -sm "$CACHE/buildah" 2>/dev/null | cut -f1 || echo 0) > 8192)); then
    "${B[@]}" rmi --all --force >/dev/null 2>&1 || true
  fi
  if [[ ! -s "$base_tar" ]]; then
    log "making the Debian $DEBIAN_SUITE base with mmdebstrap"
    mmdebstrap "${base_args[@]}" "$DEBIAN_SUITE" "$base_tar.tmp" "${sources[@]}" >&2
    mv "$base_tar.tmp" "$base_tar"
  fi
  if ! "${B[@]}" inspect --type image "$base_ref" >/dev/null 2>&1; then
    ctr="$("${B[@]}" from scratch)"
    "${B[@]}" add "$ctr" "$base_tar" / >&2
    "${B[@]}" config --cmd /bin/bash "$ctr" >&2
    "${B[@]}" commit --quiet --rm "$ctr" "$base_ref" >&2
  fi
  build=("${B[@]}" build --isolation chroot --network host --pull=never --layers "${secret[@]}"
    --build-arg "BASE_IMAGE=$base_ref" -f "$ROOT/Dockerfile")
  log "building $IMAGE and $NGINX_IMAGE with buildah"
  "${build[@]}" --target nginx -t "$NGINX_IMAGE" "$ROOT" >&2
  "${build[@]}" -t "$IMAGE" "$ROOT" >&2
  "${B[@]}" push --quiet "$NGINX_IMAGE" "oci-archive:$nginx_tar.tmp:$NGINX_IMAGE" >&2
  "${B[@]}" push --quiet "$IMAGE" "oci-archive:$image_tar.tmp:$IMAGE" >&2
  mv "$nginx_tar.tmp" "$nginx_tar"
  mv "$image_tar.tmp" "$image_tar"
  find "$OUT" -maxdepth 1 -name 'difusor-*.oci.tar' ! -name "*-$inputs_hash.oci.tar" \
    -mmin +60 -delete
  log "built in $(($(date +%s) - start)) s: $image_tar ($(du -h "$image_tar" | cut -f1))"
fi
echo "$IMAGE $image_tar"
echo "$NGINX_IMAGE $nginx_tar"
