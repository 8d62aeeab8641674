#!/bin/sh
# Builds the pinned peer programs the tests run against, and the race test's swapper, into
# .tools/bin (ignored by git).
# A binary that is already there is reused, so only the first run pays for the build.
set -eu
cd "$(dirname "$0")/.."
BIN="$PWD/.tools/bin"
mkdir -p "$BIN"
export GOBIN="$BIN" GOFLAGS=-buildvcs=false

# The race test's swapper (our own, tests/fixtures/swapper.c): renameat2 has no Deno binding.
if [ ! -x "$BIN/swapper" ] || [ tests/fixtures/swapper.c -nt "$BIN/swapper" ]; then
  cc -O2 -Wall -Werror -o "$BIN/swapper" tests/fixtures/swapper.c
fi

# csi-sanity: v5.6.0 carries the fixes for node-only drivers (csi-test PRs #597/#598).
if [ ! -x "$BIN/csi-sanity" ]; then
  echo "building csi-sanity v5.6.0" >&2
  go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@v5.6.0
fi

# SPIRE server and agent v1.15.3, from the tool module in tools/peers (go.mod + go.sum pin every
# dependency). Its replace directive pins github.com/Keyfactor/ejbca-go-client-sdk to v1.0.2, as the
# module proxy does not serve the v1.1.0 that spire v1.15.3 asks for; for the same reason the module
# cannot be installed with `go install ...@v1.15.3`. The module is copied so go never writes into
# tools/peers. The server's sqlite datastore needs cgo.
if [ ! -x "$BIN/spire-server" ] || [ ! -x "$BIN/spire-agent" ]; then
  echo "building spire-server and spire-agent v1.15.3" >&2
  MOD="$PWD/.tools/peers-module"
  rm -rf "$MOD"
  mkdir -p "$MOD"
  cp tools/peers/go.mod tools/peers/go.sum "$MOD/"
  (
    cd "$MOD"
    CGO_ENABLED=1 GOFLAGS="$GOFLAGS -mod=readonly" go install \
      github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
  )
  rm -rf "$MOD"
fi

# grpcurl: the generic client README's copy-paste example uses (tests/docs_test.ts runs it).
if [ ! -x "$BIN/grpcurl" ]; then
  echo "building grpcurl v1.9.3" >&2
  go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
fi
