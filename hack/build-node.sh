#!/usr/bin/env bash
# Builds (or reuses) what a real node needs, into the same cache as the control plane:
#
#   containerd, containerd-shim-runc-v2, ctr   go install from the Go module proxy (Debian's
#                                              containerd 1.6 is too old for kubelet >= 1.36)
#   kubelet, kube-proxy                        the same wrapper module as build-k8s.sh
#   CNI plugins bridge, host-local, loopback, portmap   go install into $BIN/cni
#   the pause image                            hack/gobuild/pause, an OCI archive in $CACHE/images
#
# runc comes from Debian (hack/install-deps.sh). Prints the bin directory on stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${DIFUSOR_CACHE:-$HOME/.cache/difusor}"
BIN="$CACHE/bin"
mkdir -p "$BIN/cni" "$CACHE/images"
log() { echo "build-node: $*" >&2; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
JOBS="${DIFUSOR_BUILD_JOBS:-2}"

if [[ -x "$BIN/containerd" && -x "$BIN/containerd-shim-runc-v2" && -x "$BIN/ctr" ]] \
  && "$BIN/containerd" --version 2>/dev/null | grep -q " $CONTAINERD_VERSION "; then
  log "containerd $CONTAINERD_VERSION already built"
else
  log "building containerd $CONTAINERD_VERSION (about a minute warm)"
  mod=github.com/containerd/containerd/v2
  GOBIN="$BIN" go install -p "$JOBS" -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X $mod/version.Version=$CONTAINERD_VERSION" \
    "$mod/cmd/containerd@$CONTAINERD_VERSION" \
    "$mod/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "$mod/cmd/ctr@$CONTAINERD_VERSION"
  log "containerd $CONTAINERD_VERSION built"
fi

if [[ -f "$BIN/cni/.plugins-$CNI_PLUGINS_VERSION" ]]; then
  log "CNI plugins $CNI_PLUGINS_VERSION already built"
else
  log "building the CNI plugins $CNI_PLUGINS_VERSION"
  mod=github.com/containernetworking/plugins/plugins
  GOBIN="$BIN/cni" go install -p "$JOBS" -trimpath -ldflags "-s -w" \
    "$mod/main/bridge@$CNI_PLUGINS_VERSION" "$mod/main/loopback@$CNI_PLUGINS_VERSION" \
    "$mod/ipam/host-local@$CNI_PLUGINS_VERSION" "$mod/meta/portmap@$CNI_PLUGINS_VERSION"
  touch "$BIN/cni/.plugins-$CNI_PLUGINS_VERSION"
fi

node_ok() {
  local b
  for b in kubelet kube-proxy; do
    [[ -x "$BIN/$b" ]] && "$BIN/$b" --version 2>/dev/null | grep -q "$KUBERNETES_VERSION" || return 1
  done
}
if node_ok; then
  log "kubelet and kube-proxy $KUBERNETES_VERSION already built"
else
  log "building kubelet and kube-proxy $KUBERNETES_VERSION (minutes warm, after build-k8s.sh)"
  minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  tmp="$(mktemp -d "$CACHE/nbuild.XXXXXX")"
  (cd "$HERE/gobuild/kubernetes" && GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -p "$JOBS" -trimpath -ldflags "-s -w$ld" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
  mv "$tmp"/* "$BIN/" && rmdir "$tmp"
  node_ok || { log "built kubelet/kube-proxy do not report $KUBERNETES_VERSION"; exit 1; }
fi

# The pod sandbox image: a static pause process on an empty root, no registry needed.
pause_hash="$(cat "$HERE/gobuild/pause/main.go" "$HERE/gobuild/pause/go.mod" "$0" | sha256sum | cut -c1-12)"
pause_tar="$CACHE/images/pause-$pause_hash.oci.tar"
if [[ -s "$pause_tar" ]]; then
  log "pause image already built"
else
  log "building the pause image"
  tmp="$(mktemp -d)"
  go build -C "$HERE/gobuild/pause" -trimpath -ldflags "-s -w" -o "$tmp/pause" .
  B=(buildah --root "$tmp/storage" --runroot "$tmp/run" --storage-driver vfs)
  ctr="$("${B[@]}" from scratch)"
  "${B[@]}" copy --chmod 0755 "$ctr" "$tmp/pause" /pause >/dev/null
  "${B[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  "${B[@]}" commit --quiet --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
  "${B[@]}" push --quiet "$PAUSE_IMAGE" "oci-archive:$pause_tar.tmp:$PAUSE_IMAGE"
  mv "$pause_tar.tmp" "$pause_tar"
  "${B[@]}" rmi --all >/dev/null 2>&1 || true
  rm -rf "$tmp"
fi
ln -sf "$(basename "$pause_tar")" "$CACHE/images/pause.oci.tar"

echo "$BIN"
