#!/usr/bin/env bash
# A real local Kubernetes control plane for tests and `make run`.
#
#   e2e/cluster.sh build    build the pinned binaries from their Go modules into the cache (once)
#   e2e/cluster.sh up       build if needed, start a kwok cluster, add fake CPU/GPU nodes (idempotent)
#   e2e/cluster.sh down     stop every process it started and remove its state
#   e2e/cluster.sh status   say whether the cluster is up
#   e2e/cluster.sh env      print `export KUBECONFIG=...` (eval it) and the binary dir for PATH
#   e2e/cluster.sh auditlog print the API server's audit log path (a cluster started with STOCKADE_AUDIT_POLICY)
#   e2e/cluster.sh tool N   build e2e/tools/N (a small Go program of ours) if needed; print its path
#   e2e/cluster.sh dataplane up|down   a real NetworkPolicy dataplane for the wire tests (e2e/dataplane.py):
#                           the node's network namespace, kube-router firewall-only, the API relay
#   e2e/cluster.sh established KUBECTL OBJECT...   wait until each CRD (or any object with conditions) has
#                           condition Established, tolerating the empty status right after an apply
#   e2e/cluster.sh component pause|restart|revive NAME   SIGSTOP one control-plane process (etcd,
#                           kube-apiserver, ...), or SIGKILL it and start it again with the same command line;
#                           revive starts whatever exited meanwhile (fault tests)
#
# No Docker here, so kind cannot run: the control plane is real (kube-apiserver, controller-manager,
# scheduler, etcd) and the nodes are kwok's fakes, so pods get scheduled and become Running without a
# kubelet. With STOCKADE_CLUSTER=kind (a user's machine with Docker) a kind cluster is used instead.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
CYCLONUS_VERSION=${CYCLONUS_VERSION:-v0.5.6}
# kube-router's network policy controller enforces NetworkPolicies on the wire for e2e/test_wire.py
# (see e2e/dataplane.py). v2.1.0 is the only version the Go module proxy serves here; it carries a security
# advisory, acceptable because it runs only inside the test's private network namespace, with no route out
# of the machine, against the loopback API server of a throwaway cluster. Not in VERSIONS_KEY (that would
# rebuild the whole control plane): the version is in the binary's name instead.
KUBE_ROUTER_VERSION=${KUBE_ROUTER_VERSION:-v2.1.0}

CLUSTER_NAME=${STOCKADE_CLUSTER_NAME:-stockade}
CACHE_ROOT=${STOCKADE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stockade}
VERSIONS_KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_cyclonus-${CYCLONUS_VERSION}"
BIN_DIR="$CACHE_ROOT/$VERSIONS_KEY/bin"
SRC_DIR="$CACHE_ROOT/$VERSIONS_KEY/src"
export KWOK_WORKDIR="$CACHE_ROOT/kwok"
KUBECONFIG_FILE="$CACHE_ROOT/$CLUSTER_NAME.kubeconfig"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

export GOTOOLCHAIN=local CGO_ENABLED=0
GOFLAGS_BUILD=(-trimpath)

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_go() {
  command -v go >/dev/null || { log "go is required to build the control plane (apt-get install golang or https://go.dev)"; exit 1; }
}

have_all_binaries() {
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl helm cyclonus; do
    [ -x "$BIN_DIR/$b" ] || return 1
  done
}

build_kubernetes() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=0 n
  for n in "${names[@]}"; do [ -x "$BIN_DIR/$n" ] || missing=1; done
  [ "$missing" = 1 ] || return 0
  local mod="$SRC_DIR/kubernetes" minor
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  mkdir -p "$mod"
  log "kubernetes $K8S_VERSION: resolving the module (staging modules replaced by v0.${K8S_VERSION#v1.})"
  (
    cd "$mod"
    rm -f go.mod go.sum
    go mod init stockade.local/k8s-tools >/dev/null 2>&1
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
    [ -f "$gomod" ] || { log "could not download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
    # Every module the real go.mod points at ./staging/src/... becomes the same module at v0.<minor>.<patch>.
    local args=(-require="k8s.io/kubernetes@$K8S_VERSION") staging
    while read -r staging; do
      args+=(-replace="$staging=$staging@v0.${K8S_VERSION#v1.}")
    done < <(grep -E '^[[:space:]]*[^[:space:]]+[[:space:]]+=>[[:space:]]+\./staging/' "$gomod" | awk '{print $1}')
    log "kubernetes: ${#args[@]} requirements and replacements derived from $gomod"
    go mod edit "${args[@]}"
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    log "kubernetes: go mod tidy (downloads about 2 GB of modules on a cold cache)"
    go mod tidy
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
    for n in "${names[@]}"; do
      [ -x "$BIN_DIR/$n" ] && continue
      log "kubernetes: building $n (kube-apiserver takes about 6 minutes cold on 2 cores)"
      go build "${GOFLAGS_BUILD[@]}" -ldflags "$ld" -o "$BIN_DIR/$n.tmp" "k8s.io/kubernetes/cmd/$n"
      mv "$BIN_DIR/$n.tmp" "$BIN_DIR/$n"
    done
  )
}

build_etcd() {
  [ -x "$BIN_DIR/etcd" ] && return 0
  local mod="$SRC_DIR/etcd"
  mkdir -p "$mod"
  log "etcd $ETCD_VERSION: building"
  (
    cd "$mod"
    rm -f go.mod go.sum
    go mod init stockade.local/etcd-tools >/dev/null 2>&1
    cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy
    go build "${GOFLAGS_BUILD[@]}" -ldflags "-s -w" -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
  )
}

go_install() { # name package@version [more ldflags]
  [ -x "$BIN_DIR/$1" ] && return 0
  log "$1: go install $2"
  GOBIN="$BIN_DIR" go install "${GOFLAGS_BUILD[@]}" -ldflags "-s -w ${3:-}" "$2"
}

# Helm's version flags, as Helm's own Makefile sets them: without them `helm version` says v3.22 and
# `helm template` assumes Kubernetes v1.20, below the charts' kubeVersion, so every render needed
# --kube-version. The Kubernetes version assumed is the one this cluster runs.
helm_ldflags() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local v
  for v in pkg/chartutil pkg/lint/rules; do
    printf -- '-X helm.sh/helm/v3/%s.k8sVersionMajor=1 -X helm.sh/helm/v3/%s.k8sVersionMinor=%s ' "$v" "$v" "$minor"
  done
  printf -- '-X helm.sh/helm/v3/internal/version.version=%s' "$HELM_VERSION"
}

build_kube_router() { # cold about 9.5 minutes on 2 cores
  local out="$BIN_DIR/kube-router-$KUBE_ROUTER_VERSION" mod="$SRC_DIR/kube-router"
  [ -x "$out" ] && return 0
  log "kube-router $KUBE_ROUTER_VERSION: building (network policy controller for the wire tests)"
  mkdir -p "$mod"
  (
    cd "$mod"
    GOBIN="$mod/bin" go install "${GOFLAGS_BUILD[@]}" -ldflags "-s -w" \
      "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
    mv "$mod/bin/kube-router" "$out"
  )
}

# `build` makes everything, the wire tests' kube-router included; `up` needs only the control plane.
cmd_build() {
  # A helm built before its version flags were set (it says v3.22, not v3.22.0) is built again.
  if [ -x "$BIN_DIR/helm" ] && [ "$("$BIN_DIR/helm" version --template '{{.Version}}')" != "$HELM_VERSION" ]; then
    rm -f "$BIN_DIR/helm"
  fi
  build_control_plane
  [ -x "$BIN_DIR/kube-router-$KUBE_ROUTER_VERSION" ] || { need_go; build_kube_router; }
}

build_control_plane() {
  if have_all_binaries; then log "binaries present in $BIN_DIR"; return 0; fi
  need_go
  mkdir -p "$BIN_DIR" "$SRC_DIR"
  local start=$SECONDS
  go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  go_install kwokctl "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  build_etcd
  go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$(helm_ldflags)"
  go_install cyclonus "github.com/mattfenwick/cyclonus/cmd/cyclonus@$CYCLONUS_VERSION"
  build_kubernetes
  log "build done in $((SECONDS - start)) s: $BIN_DIR"
}

# Our own Go helpers (e2e/tools/NAME: main.go, go.mod, go.sum), cached by a hash of their sources so
# an edit rebuilds them and nothing else.
cmd_tool() {
  local name=${1:?usage: cluster.sh tool NAME} src hash out
  src="$HERE/tools/$name"
  [ -f "$src/go.mod" ] || die "no Go module at $src"
  hash=$(cat "$src"/go.mod "$src"/go.sum "$src"/*.go | sha256sum | cut -c1-16)
  out="$CACHE_ROOT/tools/$name-$hash/$name"
  if [ ! -x "$out" ]; then
    need_go
    log "building $name from e2e/tools/$name (first time: downloads its modules, about 2 minutes)"
    mkdir -p "$(dirname "$out")"
    (cd "$src" && go build -mod=readonly "${GOFLAGS_BUILD[@]}" -ldflags "-s -w" -o "$out.tmp" .) && mv "$out.tmp" "$out"
    log "built $out"
  fi
  echo "$out"
}

kubectl_() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

cluster_up_p() {
  [ -f "$KUBECONFIG_FILE" ] && kubectl_ get --raw=/readyz >/dev/null 2>&1
}

cmd_up() {
  if [ "${STOCKADE_CLUSTER:-kwok}" = kind ]; then kind_up; return; fi
  build_control_plane
  local start=$SECONDS
  if cluster_up_p; then
    log "cluster $CLUSTER_NAME already up"
    [ -z "${STOCKADE_AUDIT_POLICY:-}" ] || [ -f "$KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs/audit.log" ] ||
      log "it was started without an audit log: STOCKADE_AUDIT_POLICY applies from its next start"
  else
    # A stale cluster (processes gone after a reboot) is removed before a clean start.
    "$BIN_DIR/kwokctl" delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
    log "starting kwok cluster $CLUSTER_NAME"
    # STOCKADE_AUDIT_POLICY (a policy file, e.g. bench/audit-policy.yaml): the API server writes an audit log,
    # which `make bench` reads to count each client's requests per run (apiserver_request_total has no user).
    local audit=()
    [ -z "${STOCKADE_AUDIT_POLICY:-}" ] || audit=(--kube-audit-policy "$(realpath "$STOCKADE_AUDIT_POLICY")")
    PATH="$BIN_DIR:$PATH" "$BIN_DIR/kwokctl" --config "$HERE/cluster/kwokctl.yaml" \
      create cluster --name "$CLUSTER_NAME" --runtime binary "${audit[@]}" \
      --kube-apiserver-binary "$BIN_DIR/kube-apiserver" \
      --kube-controller-manager-binary "$BIN_DIR/kube-controller-manager" \
      --kube-scheduler-binary "$BIN_DIR/kube-scheduler" \
      --kwok-controller-binary "$BIN_DIR/kwok" \
      --etcd-binary "$BIN_DIR/etcd" \
      --kubeconfig "$KUBECONFIG_FILE" \
      --wait 180s >&2
  fi
  # Pods need their namespace's default ServiceAccount, which the controllers (each with its own
  # ServiceAccount, see cluster/kwokctl.yaml) make a few seconds after a cold start.
  local tries=0
  until kubectl_ get serviceaccount default --namespace kube-system >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -le 120 ] || die "kube-system/default ServiceAccount did not appear in 60 s"
    sleep 0.5
  done
  kubectl_ apply -f "$HERE/cluster/nodes.yaml" >/dev/null
  # Node status is a subresource: advertise capacity (GPUs included) with a status patch.
  local node
  for node in $(kubectl_ get nodes -l stockade.io/fake-node=true -o name); do
    kubectl_ patch "$node" --subresource=status --type=merge \
      -p "$(kubectl_ get "$node" -o jsonpath='{.metadata.annotations.stockade\.io/capacity}')" >/dev/null
  done
  log "cluster ready in $((SECONDS - start)) s; KUBECONFIG=$KUBECONFIG_FILE"
  echo "$KUBECONFIG_FILE"
}

kind_up() {
  # Users' machines with Docker only: this cannot run where no Docker engine exists.
  command -v kind >/dev/null || { log "STOCKADE_CLUSTER=kind needs kind and Docker"; exit 1; }
  kind get clusters | grep -qx "$CLUSTER_NAME" || kind create cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE"
  kubectl --kubeconfig "$KUBECONFIG_FILE" apply -f "$HERE/cluster/kind-labels.yaml"
  echo "$KUBECONFIG_FILE"
}

cmd_down() {
  if [ "${STOCKADE_CLUSTER:-kwok}" = kind ]; then kind delete cluster --name "$CLUSTER_NAME"; rm -f "$KUBECONFIG_FILE"; return; fi
  dataplane_down
  if [ -x "$BIN_DIR/kwokctl" ]; then
    "$BIN_DIR/kwokctl" delete cluster --name "$CLUSTER_NAME" >&2 || true
  fi
  # A component the fault tests restarted (cmd_component) can outlive kwokctl's delete: stop whatever still
  # runs from this cluster's binaries, so no API server keeps a core busy after the cluster is gone.
  pkill -KILL -f "^$KWOK_WORKDIR/clusters/$CLUSTER_NAME/bin/" 2>/dev/null || true
  rm -rf "$KWOK_WORKDIR/clusters/$CLUSTER_NAME" "$KUBECONFIG_FILE"
  log "cluster $CLUSTER_NAME down"
}

cmd_status() {
  if cluster_up_p; then echo "up: KUBECONFIG=$KUBECONFIG_FILE"; else echo "down"; return 1; fi
}

cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
  echo "export STOCKADE_BIN=$BIN_DIR"
  echo "export PATH=$BIN_DIR:\$PATH"
}

# One control-plane component of the kwok cluster out and back, as a hang and a crash would (kwokctl only
# stops and starts whole clusters). "pause" is SIGSTOP: the process stops answering but keeps its ports;
# "restart" is SIGKILL and a start with the same command line at once. A component is never left down:
# other clusters on this machine take free ports when they start, and this one's would be gone. The
# controller-manager and scheduler exit when they lose their leader lease during an outage (a kubelet
# would restart them): "restart" starts again every component that is gone, from the command line that
# "pause" saved.
_component_start() { # dir name saved-cmdline-file
  local args=()
  mapfile -d '' -t args < "$3"
  (cd "$1" && exec setsid "${args[@]}" >>"$1/logs/$2.log" 2>&1 </dev/null) &
  echo $! > "$1/pids/$2.pid"
}

_component_revive() { # dir: start again every component that exited (and whose command line was saved)
  local other p
  for other in "$1"/pids/*.pid; do
    p=$(cat "$other")
    kill -0 "$p" 2>/dev/null || [ ! -s "${other%.pid}.cmdline" ] || {
      _component_start "$1" "$(basename "${other%.pid}")" "${other%.pid}.cmdline"
      log "$(basename "${other%.pid}") had exited; started again"
    }
  done
}

# Right after an apply a CRD has `status.conditions: null` until the apiextensions controller names it, and
# `kubectl wait --for=condition=Established` then fails at once (".status.conditions accessor error: <nil> is
# of the type <nil>"), about one fresh cluster in four (issue 11). So ask again, about 90 s at most, and let
# the last try print its error. KUBECTL is an argument: `make run` uses the user's kubectl with their cluster.
cmd_established() { # kubectl object...
  local kubectl=$1; shift
  [ $# -gt 0 ] || die "usage: cluster.sh established KUBECTL OBJECT..."
  local tries=${STOCKADE_ESTABLISHED_TRIES:-30} i
  for ((i = 1; i < tries; i++)); do
    "$kubectl" wait --for=condition=Established "$@" --timeout=2s >/dev/null 2>&1 && return 0
    sleep 1
  done
  "$kubectl" wait --for=condition=Established "$@" --timeout=2s >/dev/null
}

cmd_component() {
  local usage="usage: cluster.sh component pause|restart|revive NAME"
  local action=${1:?$usage} name=${2:?$usage}
  local dir="$KWOK_WORKDIR/clusters/$CLUSTER_NAME" pid other p
  [ -f "$dir/pids/$name.pid" ] || die "no component $name in cluster $CLUSTER_NAME"
  pid=$(cat "$dir/pids/$name.pid")
  case "$action" in
    pause)
      [ -r "/proc/$pid/cmdline" ] || die "$name (pid $pid) is not running"
      for other in "$dir"/pids/*.pid; do
        p=$(cat "$other")
        [ -r "/proc/$p/cmdline" ] && cp "/proc/$p/cmdline" "${other%.pid}.cmdline"
      done
      kill -STOP "$pid"
      log "$name paused (pid $pid)" ;;
    restart)
      [ -r "/proc/$pid/cmdline" ] && cp "/proc/$pid/cmdline" "$dir/pids/$name.cmdline"
      kill -KILL "$pid" 2>/dev/null || true
      kill -CONT "$pid" 2>/dev/null || true  # a paused process dies only once it runs again
      while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
      _component_start "$dir" "$name" "$dir/pids/$name.cmdline"
      log "$name restarted (pid $pid -> $(cat "$dir/pids/$name.pid"))"
      _component_revive "$dir" ;;
    revive) _component_revive "$dir" ;;
    *) die "$usage" ;;
  esac
}

# The wire tests' dataplane. Everything lives in network namespaces named after the cluster
# (stockade-<cluster>-*), so clusters on one machine never meet: "node" holds a bridge, the routes to
# the pods' and test hosts' namespaces (e2e/dataplane.py adds those), kube-router's iptables rules,
# ipsets and conntrack. It has no default route, so nothing leaves the machine. The only thing in the
# machine's own namespace is one socat listening on a unix socket: kube-router reaches the loopback
# API server through it and a second socat inside the node namespace, on the API server's own port
# (so the cluster's kubeconfig serves unchanged).
NETNS_PREFIX="stockade-$CLUSTER_NAME"
NODE_NS="$NETNS_PREFIX-node"
NODE_IP=10.250.0.1  # every fake node's InternalIP (cluster/nodes.yaml)
GATEWAY=169.254.1.1  # the pods' and hosts' link-local default gateway, on the node's bridge
DP_DIR="$CACHE_ROOT/dataplane/$CLUSTER_NAME"

_dp_kill() { # pidfile: stop that process (and what it forked), if it is still the one we started
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

_dp_spawn() { # name command...: start it in its own process group, remember its pid
  local name=$1; shift
  setsid "$@" >>"$DP_DIR/$name.log" 2>&1 </dev/null &
  echo $! > "$DP_DIR/$name.pid"
}

dataplane_up() {
  cluster_up_p || die "cluster $CLUSTER_NAME is not up (e2e/cluster.sh up)"
  local kr="$BIN_DIR/kube-router-$KUBE_ROUTER_VERSION" start=$SECONDS
  [ -x "$kr" ] || { need_go; mkdir -p "$BIN_DIR" "$SRC_DIR"; build_kube_router; }
  local tool
  for tool in iptables ipset conntrack socat; do
    command -v "$tool" >/dev/null || die "$tool is missing (make deps installs it)"
  done
  if [ -f "$DP_DIR/kube-router.pid" ] && kill -0 "$(cat "$DP_DIR/kube-router.pid")" 2>/dev/null; then
    log "dataplane $NODE_NS already up"; return 0
  fi
  dataplane_down >/dev/null 2>&1 || true
  mkdir -p "$DP_DIR"
  ip netns add "$NODE_NS"
  ip -n "$NODE_NS" link set lo up
  # A fixed MAC: a bridge otherwise takes its lowest port's, which changes as veths come and go, and the
  # namespaces' static neighbour entries for the gateway would then point nowhere.
  ip -n "$NODE_NS" link add br0 address 02:53:4b:00:00:01 type bridge
  ip -n "$NODE_NS" addr add "$NODE_IP/32" dev br0
  ip -n "$NODE_NS" addr add "$GATEWAY/32" dev br0
  ip -n "$NODE_NS" link set br0 up
  # A policy's deny is a REJECT (an ICMP port unreachable from the node): unthrottled, so that a burst of
  # probes reads "refused" every time, never a timeout where the kernel's ICMP rate limit dropped one.
  ip netns exec "$NODE_NS" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.icmp_ratemask=0
  # IPv4 only (see e2e/dataplane.py): no IPv6 in any of our namespaces.
  ip netns exec "$NODE_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  local server port
  server=$(kubectl_ config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  port=${server##*:}
  _dp_spawn relay-host socat "UNIX-LISTEN:$DP_DIR/api.sock,fork,unlink-early,mode=600" "TCP:127.0.0.1:$port"
  _dp_spawn relay-node ip netns exec "$NODE_NS" socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" \
    "UNIX-CONNECT:$DP_DIR/api.sock"
  # The advisory on this version: see KUBE_ROUTER_VERSION. It listens only inside the node namespace.
  _dp_spawn kube-router ip netns exec "$NODE_NS" "$kr" --run-firewall=true --run-router=false \
    --run-service-proxy=false --hostname-override=cpu-0 --enable-ipv4=true --enable-ipv6=false \
    --service-cluster-ip-range=10.0.0.0/24 --kubeconfig "$KUBECONFIG_FILE" --health-port=20244 --metrics-port=0 -v 1
  # Enforcing once its top-level chain is hooked into FORWARD.
  local tries=0
  until ip netns exec "$NODE_NS" iptables -S FORWARD 2>/dev/null | grep -q KUBE-ROUTER-FORWARD; do
    tries=$((tries + 1))
    kill -0 "$(cat "$DP_DIR/kube-router.pid")" 2>/dev/null || die "kube-router exited: $(tail -5 "$DP_DIR/kube-router.log")"
    [ "$tries" -le 300 ] || die "kube-router did not install its chains in 60 s: $(tail -5 "$DP_DIR/kube-router.log")"
    sleep 0.2
  done
  log "dataplane up in $((SECONDS - start)) s: netns $NODE_NS, kube-router pid $(cat "$DP_DIR/kube-router.pid")"
}

dataplane_down() {
  _dp_kill "$DP_DIR/kube-router.pid"
  _dp_kill "$DP_DIR/relay-node.pid"
  _dp_kill "$DP_DIR/relay-host.pid"
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NETNS_PREFIX-" || true); do
    # Whatever a test left running in a namespace (listeners, clients) goes with it.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
  rm -rf "$DP_DIR"
  log "dataplane of $CLUSTER_NAME down"
}

cmd_dataplane() {
  case "${1:-}" in
    up) dataplane_up ;;
    down) dataplane_down ;;
    *) die "usage: cluster.sh dataplane up|down" ;;
  esac
}

case "${1:-}" in
  build) cmd_build ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  bindir) echo "$BIN_DIR" ;;
  kubeconfig) echo "$KUBECONFIG_FILE" ;;
  auditlog) f="$KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs/audit.log"; [ -f "$f" ] || die "no audit log: start the cluster with STOCKADE_AUDIT_POLICY"; echo "$f" ;;
  tool) shift; cmd_tool "$@" ;;
  component) shift; cmd_component "$@" ;;
  established) shift; cmd_established "$@" ;;
  dataplane) shift; cmd_dataplane "$@" ;;
  *) echo "usage: $0 build|up|down|status|env|bindir|kubeconfig|auditlog|tool NAME|component pause|restart|revive NAME|dataplane up|down|established KUBECTL OBJECT..." >&2; exit 2 ;;
esac
