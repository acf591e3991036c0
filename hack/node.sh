#!/usr/bin/env bash
# Joins a real node to the local control plane (hack/cluster.sh), without Docker:
# containerd + runc + CNI bridge + kubelet + kube-proxy (nftables), all inside a network
# namespace made here, running the project's images imported without a registry.
#
#   hack/node.sh up   [CLUSTER]   idempotent; prints "<node name> <network namespace>" on stdout
#   hack/node.sh down [CLUSTER]   stops everything `up` started and removes what it made
#   hack/node.sh exec [CLUSTER] -- CMD...   runs CMD inside the node's network namespace
#
# CLUSTER defaults to $DIFUSOR_CLUSTER or "difusor".
#
# The network: namespace difusor-node-<CLUSTER> holds the node's address ($DIFUSOR_NODE_IP,
# 198.18.0.1: the benchmarking range, never routed), the pod bridge cni0 ($DIFUSOR_POD_CIDR,
# 10.244.0.0/24), kube-proxy's rules for the Service range and a route for that range onto the
# node's interface (a veth pair whose both ends are inside), and nothing else: no link to the
# host, no default route, so nothing leaves it.
# The API server stays on 127.0.0.1 in the host's namespace. socat bridges it through a unix
# socket (file system paths cross network namespaces): inside, it listens on the API server's
# port, on the node's loopback and on the address the API server advertises for the `kubernetes`
# Service (also given to the node's interface), so kubelet, kube-proxy and in-cluster clients in
# pods (through the Service's ClusterIP) reach the real API server, and nothing else crosses.
#
# What this machine refuses, and the configuration around it (../shared/reference/real-node.md):
# no CAP_SYS_RESOURCE (containerd restrict_oom_score_adj), cgroup v1 controllers (kubelet
# cgroupDriver cgroupfs, failCgroupV1 false, a cgroup root of its own), a loopback node IP
# (the namespace's own address), no registry (images imported with ctr, a local pause image).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${DIFUSOR_CACHE:-$HOME/.cache/difusor}"
BIN="$CACHE/bin"
cmd="${1:-up}"
NAME="${2:-${DIFUSOR_CLUSTER:-difusor}}"
NODE="$NAME-node"
NS="difusor-node-$NAME"
NODE_IP="${DIFUSOR_NODE_IP:-198.18.0.1}"
POD_CIDR="${DIFUSOR_POD_CIDR:-10.244.0.0/24}"
DIR="/var/lib/difusor-node/$NAME"
RUN="/run/difusor-node/$NAME"
LOGS="$CACHE/node-logs/$NAME"
CGROOT="difusor-node-$NAME"
SOCK="$RUN/containerd.sock"
export KWOK_WORKDIR="${KWOK_WORKDIR:-$CACHE/kwok}"
CLUSTER_DIR="$KWOK_WORKDIR/clusters/$NAME"
#: Taint of the node: only pods that tolerate it (the node tier's) run on it.
TAINT_KEY="difusor.io/real-node"

log() { echo "node: $*" >&2; }
kctl() { "$BIN/kubectl" --kubeconfig "$CLUSTER_DIR/kubeconfig.yaml" "$@"; }
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }
NSENTER=(nsenter --net="/run/netns/$NS")

# Starts a daemon in the background with its log and a pid file.
start() {
  local name="$1"; shift
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/pids/$name.pid"
}

# Only processes whose command line names this node's directories (a stale pid file may point
# at an unrelated process by now).
ours() {
  local pid="$1"
  [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE "$DIR|$RUN"
}

healthy() {
  [[ -f "$RUN/pids/kubelet.pid" ]] && ours "$(cat "$RUN/pids/kubelet.pid")" \
    && [[ -f "$RUN/pids/kube-proxy.pid" ]] && ours "$(cat "$RUN/pids/kube-proxy.pid")" \
    && [[ "$(kctl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

wait_until() {
  local what="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "timed out after ${seconds}s waiting for $what; logs in $LOGS"
      return 1
    fi
    sleep 0.5
  done
}

client_cert() {
  local name="$1" subject="$2"
  openssl req -new -newkey rsa:2048 -nodes -subj "$subject" \
    -keyout "$DIR/pki/$name.key" -out "$DIR/pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$DIR/pki/$name.csr" -CA "$CLUSTER_DIR/pki/ca.crt" \
    -CAkey "$CLUSTER_DIR/pki/ca.key" -CAcreateserial -days 7 -out "$DIR/pki/$name.crt" 2>/dev/null
  cat >"$DIR/$name.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$CLUSTER_DIR/pki/ca.crt"}
users:
  - name: $name
    user: {client-certificate: "$DIR/pki/$name.crt", client-key: "$DIR/pki/$name.key"}
contexts:
  - name: $name
    context: {cluster: local, user: $name}
current-context: $name
YAML
}

write_configs() {
  mkdir -p "$DIR/cni/net.d" "$DIR/volumes" "$DIR/pki"
  cat >"$DIR/containerd.toml" <<TOML
version = 3
root = "$DIR/containerd"
state = "$RUN/containerd"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/opt"
# NRI's socket is machine-wide (/var/run/nri): another node on the machine would collide.
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  # Without CAP_SYS_RESOURCE an OOM score cannot be lowered, and runc fails every sandbox with
  # "can't get final child's PID from pipe: EOF" unless containerd keeps scores at or above its own.
  restrict_oom_score_adj = true
  # Pods' network namespaces under this node's state directory, not the machine's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$BIN/cni"]
    conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "$(command -v runc || echo /usr/sbin/runc)"
      SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML
  cat >"$DIR/cni/net.d/10-difusor.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "difusor-node",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  cat >"$DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCK
# This machine's controllers are cgroup v1 hierarchies and there is no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: /$CGROOT
failSwapOn: false
# No cluster DNS: pods get an empty resolv.conf instead of the host's.
resolvConf: ""
address: $NODE_IP
readOnlyPort: 0
# Containers' logs outside the node's directory, so they outlive node-down (the API server cannot
# reach this kubelet for kubectl logs: read them here).
podLogsDir: $LOGS/pods
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
podCIDR: $POD_CIDR
maxPods: 40
registerWithTaints:
  - {key: $TAINT_KEY, value: "true", effect: NoSchedule}
# The disk is shared with the rest of the machine: evict only when it is really full.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
YAML
  cat >"$DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: $NODE
clusterCIDR: $POD_CIDR
clientConnection: {kubeconfig: "$DIR/kube-proxy.kubeconfig"}
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Zero leaves the machine's conntrack sysctls alone (they are not this namespace's to change).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

import_images() {
  local ref archive
  ctr_() { "$BIN/ctr" --address "$SOCK" -n k8s.io "$@"; }
  ctr_ images import "$CACHE/images/pause.oci.tar" >/dev/null
  while read -r ref archive; do
    [[ -n "$archive" ]] || continue
    ctr_ images import "$archive" >/dev/null
    log "imported $ref"
  done < <(bash "$HERE/image.sh")
}

up() {
  local start=$SECONDS
  for tool in runc nft socat nsenter openssl; do
    command -v "$tool" >/dev/null || { log "$tool is missing (make deps installs it)"; exit 1; }
  done
  bash "$HERE/build-node.sh" >/dev/null
  bash "$HERE/cluster.sh" up "$NAME" >/dev/null
  if healthy; then
    # The images may have been rebuilt since: importing an unchanged one costs a few seconds.
    import_images
    log "node $NODE already up"
    echo "$NODE $NS"
    return
  fi
  down_local
  rm -rf "$LOGS"
  mkdir -p "$DIR" "$RUN/pids" "$LOGS"

  local server
  server="$(kctl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  API_PORT="${server##*:}"
  local advertised service_cidr
  advertised="$(kctl get endpointslices -n default -l kubernetes.io/service-name=kubernetes \
    -o jsonpath='{.items[0].endpoints[0].addresses[0]}')"
  service_cidr="$(kctl get servicecidr kubernetes -o jsonpath='{.spec.cidrs[0]}')"
  local cluster_ip
  cluster_ip="$(kctl get service kubernetes -n default -o jsonpath='{.spec.clusterIP}')"
  if ! openssl x509 -in "$CLUSTER_DIR/pki/admin.crt" -noout -ext subjectAltName 2>/dev/null \
    | grep -q "IP Address:$cluster_ip\b"; then
    log "the API server's certificate lacks $cluster_ip (the kubernetes Service), so pods could" \
      "not verify it: recreate the cluster (hack/cluster.sh down $NAME) with hack/kwokctl.yaml's SANs"
    exit 1
  fi
  log "API server 127.0.0.1:$API_PORT, advertised as $advertised; Services $service_cidr"

  ip netns add "$NS"
  ip -n "$NS" link set lo up
  # The node's interface: a veth pair with both ends inside (no module can be loaded here, and
  # `dummy` is not built in; veth is, as the CNI bridge needs it). What is routed out of node0
  # reaches node0-end, which has no address and forwards nothing.
  ip -n "$NS" link add node0 type veth peer name node0-end
  ip -n "$NS" addr add "$NODE_IP/32" dev node0
  ip -n "$NS" addr add "$advertised/32" dev node0
  ip -n "$NS" link set node0-end up
  ip -n "$NS" link set node0 up
  # Locally sent packets to a ClusterIP need a route before kube-proxy's DNAT rewrites them.
  ip -n "$NS" route add "$service_cidr" dev node0
  in_ns sysctl -q -w net.ipv4.ip_forward=1

  start apiserver-host socat "UNIX-LISTEN:$RUN/apiserver.sock,fork,unlink-early" "TCP:127.0.0.1:$API_PORT"
  wait_until "the API server bridge" 10 test -S "$RUN/apiserver.sock"
  start apiserver-ns "${NSENTER[@]}" socat "TCP-LISTEN:$API_PORT,bind=0.0.0.0,fork,reuseaddr" "UNIX-CONNECT:$RUN/apiserver.sock"

  write_configs
  client_cert kubelet "/O=system:nodes/CN=system:node:$NODE"
  client_cert kube-proxy "/CN=system:kube-proxy"

  # Pods' cgroups go under a root of this node's own in every v1 hierarchy (kubelet requires it
  # to exist); a new cpuset cgroup starts empty and takes its parent's CPUs and memory nodes.
  local ctrl
  for ctrl in /sys/fs/cgroup/*/; do
    [[ "$ctrl" == */unified/ ]] && continue
    mkdir -p "$ctrl$CGROOT"
  done
  if [[ -d /sys/fs/cgroup/cpuset/$CGROOT ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROOT/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROOT/cpuset.mems"
  fi
  start containerd "${NSENTER[@]}" "$BIN/containerd" --config "$DIR/containerd.toml"
  wait_until containerd 30 "$BIN/ctr" --address "$SOCK" version
  import_images

  start kubelet "${NSENTER[@]}" "$BIN/kubelet" --config "$DIR/kubelet.yaml" \
    --kubeconfig "$DIR/kubelet.kubeconfig" --root-dir "$DIR/kubelet" --cert-dir "$DIR/pki/kubelet" \
    --node-ip "$NODE_IP" --hostname-override "$NODE" --node-labels "$TAINT_KEY=true" --v=1
  start kube-proxy "${NSENTER[@]}" "$BIN/kube-proxy" --config "$DIR/kube-proxy.yaml" --v=1
  wait_until "node $NODE Ready" 120 healthy
  log "node $NODE up in $((SECONDS - start)) s (network namespace $NS, logs in $LOGS)"
  echo "$NODE $NS"
}

# Stops this node's processes and removes what `up` made on the machine (not the Node object).
down_local() {
  local f pid
  # Every step goes on whatever the one before found: under `set -e` a kill of a process that
  # just exited, or a find over cgroups that containers leave meanwhile, ended the script here
  # and left containerd and every container of the node running.
  for f in kubelet kube-proxy; do
    [[ -f "$RUN/pids/$f.pid" ]] && pid="$(cat "$RUN/pids/$f.pid")" && ours "$pid" && kill "$pid" 2>/dev/null || true
  done
  # Every container process, whatever its state: they all live in this node's cgroup root.
  local ctrl procs
  for ctrl in /sys/fs/cgroup/pids /sys/fs/cgroup/memory /sys/fs/cgroup/cpu; do
    [[ -d "$ctrl/$CGROOT" ]] || continue
    procs="$(find "$ctrl/$CGROOT" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)" || true
    [[ -z "$procs" ]] || kill -9 $procs 2>/dev/null || true
  done
  # The runc shims of this node's containerd (their command line names its socket).
  for pid in $(pgrep -f "containerd-shim-runc-v2.*-address $SOCK" || true); do
    kill -9 "$pid" 2>/dev/null || true
  done
  for f in containerd apiserver-ns apiserver-host; do
    [[ -f "$RUN/pids/$f.pid" ]] && pid="$(cat "$RUN/pids/$f.pid")" && ours "$pid" && kill "$pid" 2>/dev/null || true
  done
  sleep 1
  # Mounts left under the node's directories (volumes, rootfs, pods' netns), deepest first.
  local mnt
  while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done < <(awk '{print $5}' /proc/self/mountinfo | grep -E "^($DIR|$RUN)(/|$)" | sort -r)
  ip netns del "$NS" 2>/dev/null || true
  for ctrl in /sys/fs/cgroup/*/; do
    [[ -d "$ctrl$CGROOT" ]] && find "$ctrl$CGROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$DIR" "$RUN"
}

down() {
  down_local
  if [[ -f "$CLUSTER_DIR/kubeconfig.yaml" ]]; then
    kctl delete node "$NODE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  log "node $NODE down"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  exec)
    shift 2 || true
    [[ "${1:-}" == "--" ]] && shift
    in_ns "$@"
    ;;
  *) echo "usage: $0 up|down|exec [CLUSTER] [-- CMD...]" >&2; exit 2 ;;
esac
