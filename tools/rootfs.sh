#!/bin/sh
# The image's root filesystem, defined once: the Containerfile's rootfs stage runs it, and
# tests/containerfile_test.ts runs it on this machine and checks what it built.
#
#   sh tools/rootfs.sh DEST BINARY
#
# DEST gets BINARY at /usr/local/bin/spiffe-csi-driver; util-linux mount and umount at the paths
# the permission set allows (/usr/bin/mount, /usr/bin/umount) and nothing else runnable: no shell,
# no busybox; the shared libraries ldd lists for the three, at their own paths; and the driver's
# -cwd-link, /run/spiffe-csi-driver/cwd -> /proc/self/cwd. Run on the target architecture (ldd
# must use the target's loader), from a Debian that has util-linux's mount package.
set -eu
dest=$1
binary=$2
[ -n "$dest" ] && [ -f "$binary" ] || { echo "usage: rootfs.sh DEST BINARY" >&2; exit 2; }

mkdir -p "$dest/usr/local/bin" "$dest/usr/bin" "$dest/run/spiffe-csi-driver"
cp "$binary" "$dest/usr/local/bin/spiffe-csi-driver"
# util-linux, not busybox: busybox resolves remount and umount targets to path strings again.
# Copied without the setuid bit Debian gives them: the driver runs them as root.
for tool in mount umount; do
  /usr/bin/$tool -V | grep -q util-linux || { echo "/usr/bin/$tool is not util-linux" >&2; exit 1; }
  cp /usr/bin/$tool "$dest/usr/bin/$tool"
  chmod 0755 "$dest/usr/bin/$tool"
done
libs=$(for file in "$dest/usr/local/bin/spiffe-csi-driver" "$dest/usr/bin/mount" "$dest/usr/bin/umount"; do
  ldd "$file" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u)
[ -n "$libs" ] || { echo "ldd listed no libraries" >&2; exit 1; }
for lib in $libs; do cp -L --parents "$lib" "$dest/"; done
ln -sfn /proc/self/cwd "$dest/run/spiffe-csi-driver/cwd"
echo "$libs"
