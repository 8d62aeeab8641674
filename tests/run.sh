#!/bin/sh
# The test suite: unit tests (fake mounter), integration tests over real gRPC with real bind mounts,
# and csi-sanity. Real mounts happen only inside a private mount namespace, so nothing leaks to the
# host's mount table; without root they are skipped (and said so).
set -eu
cd "$(dirname "$0")/.."
deno run tools/deno_version.ts
sh tools/install_peers.sh
FLAGS="--allow-read --allow-write --allow-run --allow-env --allow-net --allow-sys"
if [ "$(id -u)" = 0 ] && unshare --mount --propagation private true 2>/dev/null; then
  exec unshare --mount --propagation private env SPIFFE_CSI_REAL_MOUNTS=1 deno test $FLAGS "$@"
fi
echo "tests/run.sh: not root, so the real-mount tests are skipped" >&2
exec deno test $FLAGS "$@"
