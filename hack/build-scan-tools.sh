#!/usr/bin/env bash
# Builds the pinned chart security scanner (kube-score, from the Go module proxy) into the same
# cache root as the control plane, once per pin. Prints the binary's path on stdout.
#
# kube-score is independent of this project and grades every check of every object as CRITICAL,
# WARNING or OK; tests/security/test_chart_scan.py fails on any CRITICAL finding.
set -euo pipefail

KUBE_SCORE_VERSION="${KUBE_SCORE_VERSION:-v1.20.0}"

cache_root="${LPARKUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lparkube}"
bin_dir="$cache_root/bin/kube-score-$KUBE_SCORE_VERSION"
target="$bin_dir/kube-score"

if [ ! -x "$target" ]; then
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  mkdir -p "$bin_dir"
  echo "build-scan-tools: building kube-score $KUBE_SCORE_VERSION (first time only)" >&2
  # Built into a scratch directory and moved in place, so an interrupted build leaves nothing.
  scratch="$(mktemp -d "$bin_dir/.build.XXXXXX")"
  trap 'rm -rf "$scratch"' EXIT
  CGO_ENABLED=0 GOBIN="$scratch" go install -trimpath \
    -ldflags "-s -w -X main.version=${KUBE_SCORE_VERSION#v}" \
    "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" >&2
  mv "$scratch/kube-score" "$target"
fi
echo "$target"
