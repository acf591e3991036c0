#!/usr/bin/env bash
# `make demo`: the local control plane, the operator and the example publication, on loopback.
#   hack/demo.sh up     start everything (idempotent) and print where things are
#   hack/demo.sh down   stop the operator and the cluster that `up` started
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE="${DIFUSOR_CACHE:-$HOME/.cache/difusor}"
STATE="$CACHE/demo"
BIN="$CACHE/bin"
NAME=difusor
mkdir -p "$STATE"

log() { echo "demo: $*" >&2; }

up() {
  local kc
  kc="$(bash "$HERE/cluster.sh" up "$NAME")"
  export KUBECONFIG="$kc"
  k() { "$BIN/kubectl" "$@"; }
  k apply --server-side --force-conflicts -f "$REPO/crds/" >/dev/null
  k wait --for=condition=Established crd/preppublications.prep.difusor.io crd/prepcuts.prep.difusor.io >/dev/null
  k get namespace difusor >/dev/null 2>&1 || k create namespace difusor >/dev/null
  if [[ ! -f "$STATE/uploader" ]]; then
    ssh-keygen -q -t ed25519 -N '' -C difusor-demo-uploader -f "$STATE/uploader"
  fi
  k -n difusor create secret generic iem-keys --from-file=authorized_keys="$STATE/uploader.pub" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  if [[ -f "$STATE/operator.pid" ]] && kill -0 "$(cat "$STATE/operator.pid")" 2>/dev/null; then
    log "operator already running (pid $(cat "$STATE/operator.pid"))"
  else
    KUBECONFIG="$kc" DIFUSOR_KUBECONFIG="$kc" nohup "$REPO/.venv/bin/difusor" operator --liveness "" \
      >"$STATE/operator.log" 2>&1 &
    echo $! >"$STATE/operator.pid"
    log "operator started (pid $!, log $STATE/operator.log)"
  fi
  k apply -f "$REPO/manifests/examples/minimal.yaml" >/dev/null
  k -n difusor wait --for=jsonpath='{.status.observedGeneration}'=1 prep/prep-minimal --timeout=120s >/dev/null
  echo
  echo "The local control plane is up; the operator reconciled manifests/examples/minimal.yaml:"
  echo
  k -n difusor get prep,statefulsets,services,ingresses
  echo
  echo "  export KUBECONFIG=$kc"
  echo "  kubectl -n difusor get prep,cuts,pods"
  echo "  operator log: $STATE/operator.log      stop everything: make demo-down"
}

down() {
  if [[ -f "$STATE/operator.pid" ]]; then
    kill "$(cat "$STATE/operator.pid")" 2>/dev/null || true
    rm -f "$STATE/operator.pid"
    log "operator stopped"
  fi
  bash "$HERE/cluster.sh" down "$NAME"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
