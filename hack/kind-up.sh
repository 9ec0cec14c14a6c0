#!/usr/bin/env bash
# Wanka on kind (needs Docker): four simulated 8-GPU workers, the image built and loaded, the
# chart installed with the agent's file probe, and a demo pool, queue and 2x8 TrainingJob.
# Re-running it is safe: it reuses the cluster and upgrades the release.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
CLUSTER=${KIND_CLUSTER:-wanka}
NS=${WANKA_NAMESPACE:-wanka-system}
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/wanka/Chart.yaml)
IMAGE=ghcr.io/wanka-io/wanka:$VERSION
KIND_VERSION=${KIND_VERSION:-v0.30.0}
GPUS=8

step() { printf '==> %s\n' "$*"; }

command -v docker >/dev/null || { echo "kind-up: docker is required" >&2; exit 1; }
TOOLS=$(hack/install-tools.sh | tail -1)
export PATH="$TOOLS:$PATH"
if ! command -v kind >/dev/null; then
  step "installing kind $KIND_VERSION with go install"
  GOBIN="${HOME}/.cache/wanka/tools/kind-$KIND_VERSION" go install "sigs.k8s.io/kind@$KIND_VERSION"
  export PATH="${HOME}/.cache/wanka/tools/kind-$KIND_VERSION:$PATH"
fi

if kind get clusters | grep -qx "$CLUSTER"; then
  step "kind cluster $CLUSTER exists; reusing it"
else
  step "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "building $IMAGE and loading it into the nodes"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

workers=$(kubectl get nodes -l wanka.io/pool=h100-a -o jsonpath='{.items[*].metadata.name}')
for node in $workers; do
  # Extended resources no device plugin manages survive the kubelet's status updates.
  kubectl patch node "$node" --subresource=status --type=merge \
    -p "{\"status\":{\"capacity\":{\"nvidia.com/gpu\":\"$GPUS\"},\"allocatable\":{\"nvidia.com/gpu\":\"$GPUS\"}}}" >/dev/null
  # The agent's file probe: all 8 devices healthy. Edit it to drill a fault, e.g.
  #   docker exec NODE sh -c 'echo {"count":8,"devices":{"3":{"reason":"XID79"}}} > /var/lib/wanka/faults.json'
  docker exec "$node" sh -c "mkdir -p /var/lib/wanka && chmod 755 /var/lib/wanka \
    && echo '{\"count\": $GPUS}' > /var/lib/wanka/faults.json && chmod 644 /var/lib/wanka/faults.json"
done
step "workers with $GPUS simulated GPUs: $workers"

step "CRDs (server-side apply, also how to upgrade them)"
kubectl apply --server-side -f crds/

step "helm upgrade --install wanka"
helm upgrade --install wanka charts/wanka -n "$NS" --create-namespace \
  --set image.pullPolicy=IfNotPresent \
  --set agent.enabled=true --set agent.probe=file --set agent.interval=10

step "demo: pool h100-a, queue demo, a 2x8 TrainingJob in namespace demo"
kubectl apply -f - <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: wanka.io/v1alpha1
kind: GPUPool
metadata: {name: h100-a}
spec:
  nodeSelector: {matchLabels: {wanka.io/pool: h100-a}}
  accelerator: {resourceName: nvidia.com/gpu, model: H100-80GB, memoryGiB: 80}
  topology: {levels: [wanka.io/rack]}
  health:
    unhealthyConditions: [{type: GPUHealthy, status: "False"}]
    fatalReasons: [XID79, XID48]
---
apiVersion: wanka.io/v1alpha1
kind: TenantQueue
metadata: {name: demo}
spec:
  namespaces: [demo]
  quotas: [{pool: h100-a, gpus: 32}]
YAML
kubectl -n "$NS" rollout status deployment/wanka --timeout=180s
kubectl apply -f - <<'YAML'
apiVersion: wanka.io/v1alpha1
kind: TrainingJob
metadata: {name: hello, namespace: demo}
spec:
  pool: h100-a
  queue: demo
  replicas: 2
  resources: {gpus: 8}
  topology: {level: wanka.io/rack, mode: Required}
  template:
    spec:
      containers:
        - name: train
          image: busybox:1.37
          command: [sh, -c, 'echo "rank $RANK of $WORLD_SIZE, restart $WANKA_RESTART_COUNT"; sleep 3600']
YAML

step "done"
kubectl get gpupools,tenantqueues
kubectl -n demo get trainingjobs,pods -o wide
echo "Tear down with: hack/kind-down.sh"
