#!/usr/bin/env bash
# difusor on a kind cluster, for machines with Docker (real pods, real images):
#
#   hack/kind.sh up     kind cluster + Traefik (Ingress, IngressClass default) + the images built
#                       by hack/image.sh (docker build) and loaded + the chart installed + a
#                       sample SFTP key Secret + minimal.yaml
#   hack/kind.sh down   delete the cluster
#   hack/kind.sh test   the test suite against it (DIFUSOR_TEST_KUBECONFIG); the node tier's
#                       clients enter the kind node's network namespace (nsenter: Linux, root)
#
# Needs docker, kind, helm and kubectl on PATH. Web on http://localhost:8080 (Host: prep.example.mx).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${KIND_CLUSTER:-difusor}"
export IMAGE="${IMAGE:-ghcr.io/difusor/difusor:dev}"
export NGINX_IMAGE="${NGINX_IMAGE:-ghcr.io/difusor/difusor-nginx:dev}"
TRAEFIK_CHART_VERSION="${TRAEFIK_CHART_VERSION:-34.4.1}"
OUT="$ROOT/_out/kind"
KUBECONFIG_PATH="$OUT/kubeconfig"
log() { echo "kind: $*" >&2; }

up() {
  mkdir -p "$OUT"
  if ! kind get clusters 2>/dev/null | grep -qx "$NAME"; then
    log "creating cluster $NAME"
    kind create cluster --name "$NAME" --wait 120s --config - <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraPortMappings:
      - {containerPort: 30080, hostPort: 8080, listenAddress: 127.0.0.1}
      - {containerPort: 30443, hostPort: 8443, listenAddress: 127.0.0.1}
      - {containerPort: 30022, hostPort: 2222, listenAddress: 127.0.0.1}
YAML
  fi
  kind get kubeconfig --name "$NAME" >"$KUBECONFIG_PATH"
  export KUBECONFIG="$KUBECONFIG_PATH"

  log "installing Traefik $TRAEFIK_CHART_VERSION (Ingress and Gateway API providers)"
  helm upgrade --install traefik traefik --repo https://traefik.github.io/charts \
    --version "$TRAEFIK_CHART_VERSION" --namespace traefik --create-namespace --wait \
    --set service.type=NodePort \
    --set ports.web.nodePort=30080 --set ports.websecure.nodePort=30443 \
    --set ingressClass.isDefaultClass=true \
    --set providers.kubernetesGateway.enabled=true

  log "building and loading $IMAGE and $NGINX_IMAGE"
  bash "$ROOT/hack/image.sh" >/dev/null
  kind load docker-image "$IMAGE" "$NGINX_IMAGE" --name "$NAME"

  log "installing the difusor chart"
  helm upgrade --install difusor "$ROOT/charts/difusor" --namespace difusor-system \
    --create-namespace --wait --timeout 5m \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
    --set nginxImage="$NGINX_IMAGE"

  log "creating namespace difusor, the sample SFTP key and the minimal publication"
  kubectl create namespace difusor --dry-run=client -o yaml | kubectl apply -f -
  [[ -f "$OUT/iem_key" ]] || ssh-keygen -q -t ed25519 -N "" -C iem-sample -f "$OUT/iem_key"
  kubectl -n difusor create secret generic iem-keys \
    --from-file=authorized_keys="$OUT/iem_key.pub" --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -f "$ROOT/manifests/examples/minimal.yaml"
  # A fixed node port, which the kind node maps to 127.0.0.1:2222 (no LoadBalancer in kind).
  kubectl -n difusor patch prep prep-minimal --type merge \
    -p '{"spec":{"sftp":{"service":{"nodePort":30022}}}}'
  kubectl -n difusor get prep
  log "ready: export KUBECONFIG=$KUBECONFIG_PATH; sftp -P 2222 -i $OUT/iem_key prep@127.0.0.1;" \
    "curl -H 'Host: prep.example.mx' http://127.0.0.1:8080/json/main.json once a cut is promoted"
}

down() {
  kind delete cluster --name "$NAME"
  rm -f "$KUBECONFIG_PATH"
}

run_tests() {
  [[ -f "$KUBECONFIG_PATH" ]] || { log "no cluster: run hack/kind.sh up first"; exit 1; }
  make -C "$ROOT" venv
  cd "$ROOT"
  local args=()
  read -ra args <<<"${PYTEST_ARGS:-}"
  DIFUSOR_TEST_KUBECONFIG="$KUBECONFIG_PATH" \
    DIFUSOR_NODE_NAME="$NAME-control-plane" \
    DIFUSOR_NODE_PID="$(docker inspect -f '{{.State.Pid}}' "$NAME-control-plane")" \
    .venv/bin/python -m pytest "${args[@]}"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  test) run_tests ;;
  *) echo "usage: $0 up|down|test" >&2; exit 2 ;;
esac
