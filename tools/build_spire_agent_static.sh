#!/bin/sh
# Builds a static spire-agent v1.15.3 (no cgo) into .tools/bin/spire-agent-static for the kubelet
# rig's workload image, from the same pinned module as tools/install_peers.sh (tools/peers). Reused
# when present. The module is copied so go never writes into tools/peers.
set -eu
cd "$(dirname "$0")/.."
BIN="$PWD/.tools/bin"
mkdir -p "$BIN"
[ -x "$BIN/spire-agent-static" ] && exit 0
echo "building a static spire-agent v1.15.3" >&2
MOD="$PWD/.tools/peers-module-static"
rm -rf "$MOD"
mkdir -p "$MOD"
cp tools/peers/go.mod tools/peers/go.sum "$MOD/"
(
  cd "$MOD"
  CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" go build -ldflags "-s -w" \
    -o "$BIN/spire-agent-static.tmp" github.com/spiffe/spire/cmd/spire-agent
)
mv "$BIN/spire-agent-static.tmp" "$BIN/spire-agent-static"
rm -rf "$MOD"
