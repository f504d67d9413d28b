#!/usr/bin/env bash
# Builds the pinned local control plane (etcd, kube-apiserver, kube-controller-manager) and helm
# from Go modules into a cache outside the repository. Rebuilds only what is missing or when a
# pin changes: each pin set gets its own directory. Prints the bin directory on stdout.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.19.2}"
KUBECTL_MIN_MINOR="${KUBECTL_MIN_MINOR:-30}"

cache_root="${LPARKUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lparkube}"
bin_dir="$cache_root/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
work_dir="$cache_root/work"
mkdir -p "$bin_dir" "$work_dir"

log() { echo "build-control-plane: $*" >&2; }
staging_version="v0.${K8S_VERSION#v1.}"

build_kubernetes() {
  local mod="$work_dir/kubernetes-$K8S_VERSION"
  mkdir -p "$mod"
  cd "$mod"
  if [ ! -f go.mod ]; then
    go mod init lparkube.local/controlplane >&2
    # Every staging module k8s.io/kubernetes replaces with ./staging/... gets its published twin.
    local modfile
    modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
    awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&$1 ~ /^k8s.io\//{print $1}' "$modfile" | while read -r m; do
      go mod edit -replace="$m=$m@$staging_version"
    done
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
  fi
  local pkg="k8s.io/component-base/version"
  local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1"
  ldflags+=" -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  for cmd in kube-apiserver kube-controller-manager; do
    [ -x "$bin_dir/$cmd" ] && continue
    log "building $cmd $K8S_VERSION (first time only)"
    go get "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION" >&2
    CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin_dir/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2
    mv "$bin_dir/$cmd.tmp" "$bin_dir/$cmd"
  done
}

build_etcd() {
  [ -x "$bin_dir/etcd" ] && return
  local mod="$work_dir/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  cd "$mod"
  [ -f go.mod ] || go mod init lparkube.local/etcd >&2
  log "building etcd $ETCD_VERSION (first time only)"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
  mv "$bin_dir/etcd.tmp" "$bin_dir/etcd"
}

build_helm() {
  [ -x "$bin_dir/helm" ] && return
  log "building helm $HELM_VERSION (first time only)"
  CGO_ENABLED=0 GOBIN="$bin_dir" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
}

kubectl_usable() {
  command -v kubectl >/dev/null || return 1
  local minor
  minor=$(kubectl version --client -o json 2>/dev/null | sed -n 's/.*"minor": "\([0-9]*\).*/\1/p' | head -1)
  [ -n "$minor" ] && [ "$minor" -ge "$KUBECTL_MIN_MINOR" ]
}

build_kubectl() {
  [ -x "$bin_dir/kubectl" ] && return
  kubectl_usable && return
  log "building kubectl $K8S_VERSION (the machine has none)"
  cd "$work_dir/kubernetes-$K8S_VERSION"
  go get "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION" >&2
  CGO_ENABLED=0 go build -trimpath -o "$bin_dir/kubectl.tmp" "k8s.io/kubernetes/cmd/kubectl" >&2
  mv "$bin_dir/kubectl.tmp" "$bin_dir/kubectl"
}

build_etcd
build_kubernetes
build_helm
build_kubectl
echo "$bin_dir"
