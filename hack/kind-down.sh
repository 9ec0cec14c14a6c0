#!/usr/bin/env bash
# Delete the kind cluster hack/kind-up.sh created.
set -euo pipefail
CLUSTER=${KIND_CLUSTER:-wanka}
KIND_VERSION=${KIND_VERSION:-v0.30.0}
export PATH="${HOME}/.cache/wanka/tools/kind-$KIND_VERSION:$PATH"
command -v kind >/dev/null || { echo "kind-down: kind not found" >&2; exit 1; }
kind delete cluster --name "$CLUSTER"
