#!/bin/sh
# Builds the pinned peer programs the tests run against into .tools/bin (ignored by git).
# A binary that is already there is reused, so only the first run pays for the build.
set -eu
cd "$(dirname "$0")/.."
BIN="$PWD/.tools/bin"
mkdir -p "$BIN"
export GOBIN="$BIN" GOFLAGS=-buildvcs=false

# csi-sanity: v5.6.0 carries the fixes for node-only drivers (csi-test PRs #597/#598).
if [ ! -x "$BIN/csi-sanity" ]; then
  echo "building csi-sanity v5.6.0" >&2
  go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@v5.6.0
fi
