#!/bin/sh
# The image's root filesystem, defined once: the Containerfile's rootfs stage runs it, the local
# image the kubelet rig deploys (tools/local_image.ts) runs it, and tests/containerfile_test.ts runs
# it on this machine and checks what it built.
#
#   sh tools/rootfs.sh DEST BINARY              the release image: the compiled driver
#   sh tools/rootfs.sh --sources DEST DENO SRC  the same layout running `deno run` on the sources
#
# DEST gets BINARY at /usr/local/bin/spiffe-csi-driver; util-linux mount and umount at the paths
# the permission set allows (/usr/bin/mount, /usr/bin/umount) and nothing else runnable: no shell,
# no busybox; the shared libraries ldd lists for the three, at their own paths; and the driver's
# -cwd-link, /run/spiffe-csi-driver/cwd -> /proc/self/cwd, with the empty directory of its template
# of the socket dir beside it (the root is read-only at run time). Run on the target architecture (ldd
# must use the target's loader), from a Debian that has util-linux's mount package.
#
# With --sources, DENO takes the binary's place at /usr/local/bin/deno, and the driver's sources
# from the project at SRC (deno.json, deno.lock, main.ts, lib/ without its tests) go to
# /usr/local/lib/spiffe-csi-driver with a DENO_DIR beside them (deno-dir), filled here from the
# lock file. Nothing in either is executable; the image mounts them read-only (DENO_DIR is only
# read at run time). The entrypoint that runs them is tools/local_image.ts's.
set -eu
sources=
if [ "${1:-}" = --sources ]; then
  sources=1
  shift
  [ $# = 3 ] || { echo "usage: rootfs.sh --sources DEST DENO SRC" >&2; exit 2; }
  dest=$1 binary=$2 src=$3
  program=/usr/local/bin/deno
else
  [ $# = 2 ] || { echo "usage: rootfs.sh DEST BINARY" >&2; exit 2; }
  dest=$1 binary=$2
  program=/usr/local/bin/spiffe-csi-driver
fi
[ -n "$dest" ] && [ -f "$binary" ] || { echo "rootfs.sh: no binary at $binary" >&2; exit 2; }
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

mkdir -p "$dest/usr/local/bin" "$dest/usr/bin" "$dest/run/spiffe-csi-driver"
cp "$binary" "$dest$program"
chmod 0755 "$dest$program"
# util-linux, not busybox: busybox resolves remount and umount targets to path strings again.
# Copied without the setuid bit Debian gives them: the driver runs them as root.
for tool in mount umount; do
  /usr/bin/$tool -V | grep -q util-linux || { echo "/usr/bin/$tool is not util-linux" >&2; exit 1; }
  cp /usr/bin/$tool "$dest/usr/bin/$tool"
  chmod 0755 "$dest/usr/bin/$tool"
done
libs=$(for file in "$dest$program" "$dest/usr/bin/mount" "$dest/usr/bin/umount"; do
  ldd "$file" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u)
[ -n "$libs" ] || { echo "ldd listed no libraries" >&2; exit 1; }
for lib in $libs; do cp -L --parents "$lib" "$dest/"; done
ln -sfn /proc/self/cwd "$dest/run/spiffe-csi-driver/cwd"
mkdir -p -m 0700 "$dest/run/spiffe-csi-driver/socket-dir"

if [ -n "$sources" ]; then
  app="$dest/usr/local/lib/spiffe-csi-driver"
  mkdir -p "$app/lib"
  cp "$src/deno.json" "$src/deno.lock" "$src/main.ts" "$app/"
  (cd "$src/lib" && find . -type f ! -name '*_test.ts' -exec cp --parents -t "$app/lib" {} +)
  # The npm packages the lock file pins, as `deno run --cached-only` reads them; the caches deno
  # keeps beside them (keyed by this build's paths) are left out.
  DENO_DIR="$app/deno-dir" DENO_NO_UPDATE_CHECK=1 "$binary" install --frozen --quiet \
    --config "$app/deno.json" --entrypoint "$app/main.ts"
  find "$app/deno-dir" -mindepth 1 -maxdepth 1 ! -name npm -exec rm -rf {} +
  find "$app/deno-dir" -name '.scripts-warned-*' -delete
  find "$app" -type f -exec chmod 0444 {} +
  find "$app" -type d -exec chmod 0555 {} +
fi
echo "$libs"
