#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, with pomona installed, and no Docker:
#
#   ./scripts/local-cluster.sh up       build what is missing, start everything, install the chart
#   ./scripts/local-cluster.sh env      shell exports to use it: eval "$(./scripts/local-cluster.sh env)"
#   ./scripts/local-cluster.sh status   what runs, and the node
#   ./scripts/local-cluster.sh is-up    exits 0 when its API server runs
#   ./scripts/local-cluster.sh down     stop exactly what `up` started (by pid) and remove its state
#
# What runs (each a process of this machine, its pid in $STATE/pids/):
#   etcd, kube-apiserver and kube-controller-manager, built from Kubernetes' Go modules
#     (scripts/tools.sh: ensure_control_plane), with their own CA, client certificates and
#     service-account signing key (openssl), authorization Node,RBAC and the default admission
#     plugins plus NodeRestriction and OwnerReferencesPermissionEnforcement (as OpenShift);
#   pomona-kubelet (tests/src/kubelet/): the one node, which binds pods and runs each container
#     as a local process in a network namespace of its own, on the bridge pomona0
#     (10.244.0.0/16); the node, the API server and S3 answer pods on 10.244.0.1;
#   s3s-fs on 10.244.0.1:9000 with checked credentials, bucket `fruits` seeded with the shared
#     sample's Training images (images/Training/) and the feature model (models/);
#   the Helm chart, release `pomona` in `pomona-system`: the operator as its 2-replica Deployment,
#     its ServiceAccount and RBAC; the runner ServiceAccount in `fruits`, with Secret `fruits-s3`.
#
# `up` twice is harmless: it starts only what is not running. Needs root (network namespaces,
# bind mounts), go, openssl and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

STATE=${POMONA_CLUSTER_DIR:-$POMONA_ROOT/.local-cluster}
NODE_NAME=pomona-local
BRIDGE=pomona0
POD_PREFIX=10.244
NODE_IP=10.244.0.1
API_PORT=6443
ETCD_CLIENT=127.0.0.1:12379
ETCD_PEER=127.0.0.1:12380
S3_PORT=9000
S3_ACCESS_KEY=pomona-local
S3_SECRET_KEY=pomona-local-secret-key
BUCKET=fruits
REGION=eu-west-3
SHARED=${POMONA_SHARED:-$POMONA_ROOT/../shared}
PROFILE_DIR=${CARGO_TARGET_DIR:-$POMONA_ROOT/target}/debug

log() { printf '[local-cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pidfile() { echo "$STATE/pids/$1.pid"; }
# running NAME: its recorded pid is alive and is that program (not a pid reused since).
running() {
    local f pid
    f=$(pidfile "$1")
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$1"* ]]
}

# start NAME COMMAND…: runs COMMAND in its own session, output to $STATE/logs/NAME.log.
start() {
    local name=$1
    shift
    if running "$name"; then
        log "$name already runs (pid $(cat "$(pidfile "$name")"))"
        return
    fi
    setsid "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$name")"
    log "$name started (pid $!, log $STATE/logs/$name.log)"
}

# wait_for WHAT SECONDS COMMAND…: retries COMMAND until it succeeds.
wait_for() {
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what not ready within ${seconds} s (logs in $STATE/logs/)"
        sleep 0.5
    done
}

kubectl_() { "${POMONA_KUBECTL:-$POMONA_TOOLS/bin/kubectl}" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

# ---------------------------------------------------------------------------------------------
# Certificates: a cluster CA, the API server's serving certificate, one client certificate per
# identity, and the service-account signing key.

cert() { # cert NAME SUBJECT [SAN]: a key and a certificate signed by the CA
    local name=$1 subject=$2 san=${3:-}
    local dir="$STATE/pki"
    [ -f "$dir/$name.crt" ] && return
    openssl genrsa -out "$dir/$name.key" 2048 2>/dev/null
    openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$dir/$name.csr" 2>/dev/null
    local ext="$dir/$name.ext"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$san" ]; then
            echo "extendedKeyUsage=serverAuth"
            echo "subjectAltName=$san"
        else
            echo "extendedKeyUsage=clientAuth"
        fi
    } >"$ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 365 -sha256 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
    rm -f "$dir/$name.csr" "$ext"
}

kubeconfig() { # kubeconfig NAME CERT: a kubeconfig for the client certificate CERT
    local name=$1 crt=$2
    cat >"$STATE/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: pomona-local
    cluster:
      server: https://$NODE_IP:$API_PORT
      certificate-authority: $STATE/pki/ca.crt
users:
  - name: $name
    user:
      client-certificate: $STATE/pki/$crt.crt
      client-key: $STATE/pki/$crt.key
contexts:
  - name: $name@pomona-local
    context: { cluster: pomona-local, user: $name }
current-context: $name@pomona-local
EOF
}

pki() {
    local dir="$STATE/pki"
    mkdir -p "$dir"
    if [ ! -f "$dir/ca.crt" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.crt" \
            -days 365 -subj "/CN=pomona-local-ca" 2>/dev/null
    fi
    local san="IP:$NODE_IP,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes"
    san+=",DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cert apiserver "/CN=kube-apiserver" "$san"
    cert admin "/O=system:masters/CN=kubernetes-admin"
    cert controller-manager "/CN=system:kube-controller-manager"
    cert scheduler "/CN=system:kube-scheduler"
    cert node "/O=system:nodes/CN=system:node:$NODE_NAME"
    if [ ! -f "$dir/sa.key" ]; then
        openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
        openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
    fi
    kubeconfig admin admin
    kubeconfig controller-manager controller-manager
    kubeconfig scheduler scheduler
    kubeconfig node node
}

# ---------------------------------------------------------------------------------------------

network() {
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr replace "$NODE_IP/16" dev "$BRIDGE"
    ip link set "$BRIDGE" up
}

images_table() { # the local kubelet's images: what each Dockerfile's image holds, on this host
    local bin=$PROFILE_DIR
    cat >"$STATE/images.json" <<EOF
{
  "ghcr.io/pomona-dev/pomona": {
    "entrypoint": ["/usr/local/bin/pomona"],
    "cmd": ["--help"],
    "user": "65532:65532",
    "env": {
      "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "ORT_DYLIB_PATH": "$ORT_DYLIB_PATH"
    },
    "files": { "/usr/local/bin/pomona": "$bin/pomona" }
  },
  "ghcr.io/pomona-dev/pomona-operator": {
    "entrypoint": ["/usr/local/bin/pomona-operator"],
    "cmd": ["run"],
    "user": "65532:65532",
    "env": { "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" },
    "files": { "/usr/local/bin/pomona-operator": "$bin/pomona-operator" }
  }
}
EOF
}

seed_s3() { # bucket `fruits`: the sample's Training images and the model, as s3s-fs stores them
    local root="$STATE/s3/$BUCKET"
    if [ ! -f "$root/models/mobilenetv2_features.onnx" ]; then
        mkdir -p "$root/images" "$root/models"
        cp -r "$SHARED/data/fruits-360-sample/Training" "$root/images/"
        cp "$SHARED/models/mobilenetv2_features.onnx" "$root/models/"
        chmod -R u+w "$root"
        log "seeded s3://$BUCKET/images/Training/ ($(find "$root/images" -type f | wc -l) images) and s3://$BUCKET/models/"
    fi
}

up() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces and bind mounts for the pods)"
    [ -d "$SHARED/data/fruits-360-sample/Training" ] || die "no shared sample at $SHARED"
    local started=$SECONDS
    ensure_control_plane
    ensure_helm
    ensure_s3s_fs
    ensure_onnxruntime
    log "building pomona, pomona-operator and pomona-kubelet (cargo, debug profile)"
    cargo build --locked --quiet -p pomona-runner -p pomona-operator -p pomona-tests --bins
    mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/kubelet" "$STATE/s3"
    pki
    network
    images_table
    seed_s3

    local cp=$POMONA_CONTROL_PLANE pki=$STATE/pki
    start etcd "$cp/etcd" --name local --data-dir "$STATE/etcd" \
        --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
        --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
        --initial-cluster "local=http://$ETCD_PEER" --log-level warn --unsafe-no-fsync
    wait_for etcd 30 curl -fsS "http://$ETCD_CLIENT/health"

    start kube-apiserver "$cp/kube-apiserver" \
        --etcd-servers "http://$ETCD_CLIENT" \
        --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
        --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction,OwnerReferencesPermissionEnforcement \
        --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true --profiling=false \
        --event-ttl 1h --v 1
    wait_for kube-apiserver 120 kubectl_ get --raw /readyz

    start kube-controller-manager "$cp/kube-controller-manager" \
        --kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port 10257 \
        --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
        --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
        --use-service-account-credentials --leader-elect=false --cluster-name pomona-local \
        --profiling=false --v 1

    start s3s-fs "$POMONA_S3S_FS" --host "$NODE_IP" --port "$S3_PORT" \
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$STATE/s3"
    wait_for s3s-fs 30 curl -s -o /dev/null "http://$NODE_IP:$S3_PORT/"

    start pomona-kubelet "$PROFILE_DIR/pomona-kubelet" \
        --kubeconfig "$STATE/node.kubeconfig" --scheduler-kubeconfig "$STATE/scheduler.kubeconfig" \
        --node-name "$NODE_NAME" --images "$STATE/images.json" --bridge "$BRIDGE" \
        --pod-prefix "$POD_PREFIX" --api-server "$NODE_IP:$API_PORT" --state-dir "$STATE/kubelet" \
        --kubelet-version "$KUBERNETES_VERSION"
    wait_for "node $NODE_NAME" 60 kubectl_ wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
    # The service-account controller makes each namespace's `default` account; wait for it.
    wait_for "the default service account" 60 kubectl_ -n default get serviceaccount default

    kubectl_ create namespace "$BUCKET" --dry-run=client -o yaml | kubectl_ apply -f - >/dev/null
    kubectl_ -n "$BUCKET" create secret generic fruits-s3 \
        --from-literal=AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" \
        --from-literal=AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
        --dry-run=client -o yaml | kubectl_ apply -f - >/dev/null

    log "installing the chart (release pomona in pomona-system)"
    "$POMONA_HELM" --kubeconfig "$STATE/admin.kubeconfig" upgrade --install pomona charts/pomona \
        --namespace pomona-system --create-namespace \
        --set "runner.serviceAccount.namespaces={$BUCKET}" \
        --set "config.allowedEndpoints={http://$NODE_IP:$S3_PORT}" \
        --set image.pullPolicy=Never \
        --wait --timeout 180s >/dev/null
    log "up in $((SECONDS - started)) s: eval \"\$($0 env)\"; kubectl get nodes"
}

env_() {
    local var
    for var in \
        "KUBECONFIG=$STATE/admin.kubeconfig" \
        "AWS_ENDPOINT_URL=http://$NODE_IP:$S3_PORT" \
        "AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY" \
        "AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY" \
        "AWS_REGION=$REGION" \
        "POMONA_E2E_S3_ENDPOINT=http://$NODE_IP:$S3_PORT" \
        "POMONA_E2E_S3_CLUSTER_ENDPOINT=http://$NODE_IP:$S3_PORT" \
        "POMONA_E2E_S3_ACCESS_KEY=$S3_ACCESS_KEY" \
        "POMONA_E2E_S3_SECRET_KEY=$S3_SECRET_KEY" \
        "POMONA_E2E_S3_BUCKET=$BUCKET" \
        "POMONA_E2E_IMAGES=$SHARED/data/fruits-360-sample/Training" \
        "POMONA_E2E_MODEL=$SHARED/models/mobilenetv2_features.onnx" \
        "POMONA_E2E_OPERATOR_NAMESPACE=pomona-system" \
        "POMONA_E2E_RUNNER_SERVICE_ACCOUNT=pomona-runner" \
        "POMONA_E2E_TIMEOUT_SECS=300" \
        "POMONA_E2E_POD_LOGS=$STATE/kubelet/pods" \
        "PATH=$POMONA_TOOLS/bin:$PATH"; do
        printf 'export %s=%q\n' "${var%%=*}" "${var#*=}"
    done
}

is_up() { running kube-apiserver; }

status_() {
    local name
    for name in etcd kube-apiserver kube-controller-manager s3s-fs pomona-kubelet; do
        if running "$name"; then
            printf '%-24s running (pid %s)\n' "$name" "$(cat "$(pidfile "$name")")"
        else
            printf '%-24s stopped\n' "$name"
        fi
    done
    if running kube-apiserver; then
        kubectl_ get nodes -o wide 2>/dev/null || true
        kubectl_ -n pomona-system get deployments,pods 2>/dev/null || true
    fi
}

down() {
    [ "$(id -u)" = 0 ] || die "needs root (it stops root's processes and network namespaces)"
    local name pid
    # The kubelet first: it stops its pods' processes (SIGTERM, then SIGKILL) as it exits.
    for name in pomona-kubelet kube-controller-manager kube-apiserver s3s-fs etcd; do
        if running "$name"; then
            pid=$(cat "$(pidfile "$name")")
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
            log "$name stopped (pid $pid)"
        fi
        rm -f "$(pidfile "$name")"
    done
    # Pods' namespaces the kubelet could not remove (it was killed), and the bridge.
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '/^pomona-pod-/ { print $1 }'); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    # Mount points of the pods' namespaces are gone with them; the state folder goes too.
    rm -rf "$STATE"
    log "down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) env_ ;;
    status) status_ ;;
    is-up) is_up ;;
    *)
        echo "usage: $0 up | down | env | status | is-up" >&2
        exit 2
        ;;
esac
