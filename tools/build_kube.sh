#!/bin/sh
# Builds kubelet, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl v1.37.2 into
# .tools/bin (ignored by git) from the pinned module in tools/kube. k8s.io/kubernetes cannot be
# installed with `go install ...@v1.37.2` (its go.mod replaces the staging modules with local
# paths), so tools/kube requires it and replaces every staging module with its published v0.37.2.
# A binary that is already there is reused; a rebuild hits the Go build cache. The version is
# stamped so each reports v1.37.2.
set -eu
cd "$(dirname "$0")/.."
BIN="$PWD/.tools/bin"
mkdir -p "$BIN"
VERSION=v1.37.2
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
for cmd in kubelet kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  case $cmd in
    kubectl) version_args="version --client" ;;
    *) version_args="--version" ;;
  esac
  # shellcheck disable=SC2086
  if [ -x "$BIN/$cmd" ] && "$BIN/$cmd" $version_args 2>/dev/null | grep -q " $VERSION\$"; then continue; fi
  echo "building $cmd $VERSION (the first build takes several minutes)" >&2
  (
    cd tools/kube
    CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" go build -ldflags "$LDFLAGS" \
      -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
  )
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
done
