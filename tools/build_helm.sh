#!/bin/sh
# Builds Helm v4.3.2 into .tools/bin/helm for the kubelet rig's hardened-chart scenario (run only
# when HELM_CHARTS_HARDENED names a checkout of spiffe/helm-charts-hardened). Reused when present.
set -eu
cd "$(dirname "$0")/.."
BIN="$PWD/.tools/bin"
VERSION=v4.3.2
mkdir -p "$BIN"
if [ -x "$BIN/helm" ] && "$BIN/helm" version --short 2>/dev/null | grep -q "^$VERSION"; then
  exit 0
fi
echo "building helm $VERSION" >&2
GOBIN="$BIN" GOFLAGS="-mod=mod -buildvcs=false" go install \
  -ldflags "-X helm.sh/helm/v4/internal/version.version=$VERSION" "helm.sh/helm/v4/cmd/helm@$VERSION"
