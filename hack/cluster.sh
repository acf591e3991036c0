#!/usr/bin/env bash
# Starts or stops a real local Kubernetes control plane on loopback, without Docker:
# etcd, kube-apiserver (RBAC and admission on), kube-controller-manager, kube-scheduler and kwok
# playing the kubelet of fake nodes, all from the binaries that hack/build-k8s.sh cached.
#
#   hack/cluster.sh up   [NAME]   idempotent; prints the kubeconfig path on stdout
#   hack/cluster.sh down [NAME]   stops only that cluster's processes
#   hack/cluster.sh kubeconfig [NAME]
#
# NAME defaults to $DIFUSOR_CLUSTER or "difusor". Fake nodes: $DIFUSOR_NODES (default 2).
# DIFUSOR_ENDPOINTS=off starts the controller manager without the Endpoints and EndpointSlice
# controllers (the benches' clusters): host pods have loopback IPs, which an endpoint address
# may not be, and those controllers' updates were refused (422) and retried on every pod change.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${DIFUSOR_CACHE:-$HOME/.cache/difusor}"
BIN="$CACHE/bin"
export KWOK_WORKDIR="${KWOK_WORKDIR:-$CACHE/kwok}"
cmd="${1:-up}"
NAME="${2:-${DIFUSOR_CLUSTER:-difusor}}"
NODES="${DIFUSOR_NODES:-2}"
CLUSTER_DIR="$KWOK_WORKDIR/clusters/$NAME"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig.yaml"

log() { echo "cluster: $*" >&2; }
kctl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

healthy() {
  [[ -f "$KUBECONFIG_PATH" ]] && kctl get --raw /readyz >/dev/null 2>&1
}

stop_stale() {
  # Only processes whose command line names this cluster's directory: a pid file left by a
  # killed cluster may point at an unrelated process by now.
  local f pid
  for f in "$CLUSTER_DIR"/pids/*.pid; do
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"
    if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$CLUSTER_DIR"; then
      kill "$pid" 2>/dev/null || true
    fi
  done
}

up() {
  [[ -x "$BIN/kube-apiserver" && -x "$BIN/kwokctl" ]] || bash "$HERE/build-k8s.sh" >/dev/null
  if healthy; then
    log "cluster $NAME already running"
  else
    if [[ -d "$CLUSTER_DIR" ]]; then
      # Left over from processes that were killed (a finished session, a reboot): its state is
      # disposable, and a fresh cluster starts faster than kwokctl revives a stale one.
      log "cluster $NAME exists but is not healthy; recreating it"
      stop_stale
      rm -rf "$CLUSTER_DIR" "$CLUSTER_DIR.kubeconfig"
    fi
    if ! healthy; then
      log "creating cluster $NAME (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok)"
      local config="$HERE/kwokctl.yaml"
      if [[ "${DIFUSOR_ENDPOINTS:-on}" == off ]]; then
        mkdir -p "$KWOK_WORKDIR"
        config="$KWOK_WORKDIR/kwokctl-$NAME.yaml"
        # componentsPatches is the file's last key: one more patch goes at its end.
        cat "$HERE/kwokctl.yaml" - >"$config" <<'YAML'
  - name: kube-controller-manager
    extraArgs:
      - key: controllers
        value: "*,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller"
YAML
      fi
      "$BIN/kwokctl" --name "$NAME" -c "$config" create cluster \
        --runtime binary \
        --kube-authorization --kube-admission \
        --kubeconfig "$CLUSTER_DIR.kubeconfig" \
        --etcd-binary "$BIN/etcd" \
        --kube-apiserver-binary "$BIN/kube-apiserver" \
        --kube-controller-manager-binary "$BIN/kube-controller-manager" \
        --kube-scheduler-binary "$BIN/kube-scheduler" \
        --kwok-controller-binary "$BIN/kwok" \
        --wait 120s --timeout 300s >&2
    fi
  fi
  # Only kwok's own nodes: a host-pod or real node left by a killed test run stays NotReady and
  # is not this script's to wait for (a live test run may still own it).
  local have fake="kwok.x-k8s.io/kwokctl-scale=node"
  have="$(kctl get nodes -l "$fake" -o name 2>/dev/null | wc -l)"
  if ((have < NODES)); then
    log "scaling to $NODES fake nodes"
    "$BIN/kwokctl" --name "$NAME" scale node --replicas "$NODES" >&2
  fi
  kctl wait --for=condition=Ready node -l "$fake" --timeout=120s >/dev/null
  log "cluster $NAME ready: $(kctl get nodes -o name | wc -l) nodes, kubeconfig $KUBECONFIG_PATH"
  echo "$KUBECONFIG_PATH"
}

down() {
  if [[ -d "$CLUSTER_DIR" ]]; then
    "$BIN/kwokctl" --name "$NAME" delete cluster >&2
    rm -f "$CLUSTER_DIR.kubeconfig" "$KWOK_WORKDIR/kwokctl-$NAME.yaml"
    log "cluster $NAME stopped"
  else
    log "cluster $NAME is not running"
  fi
}

case "$cmd" in
  up) up ;;
  down) down ;;
  kubeconfig) echo "$KUBECONFIG_PATH" ;;
  *) echo "usage: $0 up|down|kubeconfig [NAME]" >&2; exit 2 ;;
esac
