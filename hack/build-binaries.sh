#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager, etcd, kwok) from Go
# modules into a cache outside the repo, keyed by the pinned versions; reuses it when present.
# Prints the directory holding the binaries on its last line.
#
#   hack/build-binaries.sh               the control plane the tests and the demo need
#   hack/build-binaries.sh --scheduler   also kube-scheduler of the same release (only
#                                        bench/bench_scale.py uses it, as the peer to beat)
set -euo pipefail

WITH_SCHEDULER=0
for arg in "$@"; do
  case "$arg" in
    --scheduler) WITH_SCHEDULER=1 ;;
    *) echo "usage: $0 [--scheduler]" >&2; exit 2 ;;
  esac
done

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CACHE_ROOT="${WANKA_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wanka/bin}"
OUT="$CACHE_ROOT/k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
BINARIES=(kube-apiserver kube-controller-manager etcd kwok)

START=$(date +%s)
elapsed() { local s=$(( $(date +%s) - START )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
log() { echo "[build-binaries $(elapsed)] $*" >&2; }

# Runs a long command, saying every HEARTBEAT seconds that it is still at work (go build itself
# prints nothing for minutes); its own output goes to stderr as it comes.
HEARTBEAT="${WANKA_BUILD_HEARTBEAT:-15}"
step() {
  local what="$1"; shift
  log "$what: $*"
  local t0; t0=$(date +%s)
  "$@" >&2 &
  local pid=$!
  while ! wait_for_pid "$pid" "$HEARTBEAT"; do
    log "$what: still running ($(( $(date +%s) - t0 ))s in this step)"
  done
  wait "$pid" || { log "$what failed"; return 1; }
  log "$what: done in $(( $(date +%s) - t0 ))s"
}
# True once `pid` has exited, false if it is still running after `seconds`.
wait_for_pid() {
  local pid="$1" i
  for (( i = 0; i < $2 * 5; i++ )); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  ! kill -0 "$pid" 2>/dev/null
}

[ "$WITH_SCHEDULER" = 1 ] && BINARIES+=(kube-scheduler)

have_all() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || return 1; done
}

if have_all; then
  log "reusing $OUT"
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { log "go is required (https://go.dev); none on PATH"; exit 1; }
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

build_etcd() {
  [ -x "$OUT/etcd" ] && return 0
  log "building etcd $ETCD_VERSION"
  mkdir -p "$WORK/etcd" && cd "$WORK/etcd"
  go mod init wanka.local/etcdbin >/dev/null 2>&1
  step "etcd: download modules" go get -tool "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
  step "etcd: compile" go build -trimpath -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$OUT/etcd.tmp" "$OUT/etcd"
}

build_kwok() {
  [ -x "$OUT/kwok" ] && return 0
  log "building kwok $KWOK_VERSION"
  step "kwok: download and compile" env GOBIN="$WORK/kwokbin" go install "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
  mv "$WORK/kwokbin/kwok" "$OUT/kwok"
}

build_kube() {
  local cmds=(kube-apiserver kube-controller-manager) c missing=()
  [ "$WITH_SCHEDULER" = 1 ] && cmds+=(kube-scheduler)
  for c in "${cmds[@]}"; do [ -x "$OUT/$c" ] || missing+=("$c"); done
  [ "${#missing[@]}" = 0 ] && return 0
  log "building ${missing[*]} $KUBE_VERSION"
  local staging="v0${KUBE_VERSION#v1}"   # v1.34.4 -> v0.34.4
  mkdir -p "$WORK/kube" && cd "$WORK/kube"
  local upstream
  upstream="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module wanka.local/kubebins"
    grep -E '^go [0-9]' "$upstream"
    grep -E '^godebug ' "$upstream" || true
    echo "require k8s.io/kubernetes ${KUBE_VERSION}"
    # Every staging module the upstream go.mod pins at v0.0.0 is replaced by its published release.
    grep -E '=>[[:space:]]*\./staging/' "$upstream" | sed -E 's/^[[:space:]]*(replace[[:space:]]+)?//' |
      awk '{print $1}' | sort -u |
      while read -r mod; do echo "replace $mod => $mod $staging"; done
  } > go.mod
  log "$(grep -c '^replace' go.mod) staging modules replaced with $staging"
  local pkgs=() tools=()
  for c in "${missing[@]}"; do
    pkgs+=("k8s.io/kubernetes/cmd/$c")
    tools+=("k8s.io/kubernetes/cmd/$c@${KUBE_VERSION}")
  done
  step "kube: download modules" go get -tool "${tools[@]}"
  step "kube: go mod tidy" go mod tidy
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  step "kube: compile (the longest step, often 10+ minutes)" go build -trimpath -ldflags "-s -w${ldflags}" -o "$WORK/kubeout/" \
    "${pkgs[@]}"
  for c in "${missing[@]}"; do mv "$WORK/kubeout/$c" "$OUT/"; done
}

log "building into $OUT (one time; later runs reuse it)"
build_etcd
build_kwok
build_kube
have_all || { log "some binaries are missing in $OUT"; exit 1; }
log "all built"
echo "$OUT"
