#!/bin/sh
# deno task kubelet-e2e: the driver under a real kubelet v1.37.2 on a one-node Kubernetes.
# Builds what is missing (Kubernetes and SPIRE into .tools/bin, reusing the Go caches), installs
# the Debian packages the rig needs if they are missing, then runs tests/kubelet_e2e_test.ts in
# private mount, PID and network namespaces: nothing the rig mounts reaches the machine, every
# process it starts dies with its PID namespace, and the only network is the namespace's own
# loopback (plus one extra loopback address as the node IP). Host settings kubelet changes and the
# rig's cgroups are restored and removed by the tests' teardown; this script checks both again.
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "kubelet-e2e: must run as root (kubelet, containerd and mounts)" >&2
  exit 1
fi

PACKAGES="containerd runc etcd-server buildah busybox-static iproute2 openssl containernetworking-plugins"
missing=""
for pkg in $PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "kubelet-e2e: installing$missing" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
fi

sh tools/install_peers.sh
sh tools/build_kube.sh
sh tools/build_spire_agent_static.sh
# Helm, only for the hardened chart's scenario (its source comes from HELM_CHARTS_HARDENED).
if [ -n "${HELM_CHARTS_HARDENED:-}" ]; then sh tools/build_helm.sh; fi
# The driver's local image (fetches its npm packages, so before the network namespace).
SPIFFE_CSI_RIG_DRIVER_IMAGE=$(deno run --allow-all tools/local_image.ts .tools/kube-images)
export SPIFFE_CSI_RIG_DRIVER_IMAGE

SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops"
saved=""
for name in $SYSCTLS; do saved="$saved $name=$(sysctl -n "$name")"; done

# Two runs: on kubelet's default root (manifests/base) and on microk8s's (manifests/microk8s,
# and the hardened chart's args, which name no kubelet root). KUBELET_ROOTS picks others.
KUBELET_ROOTS=${KUBELET_ROOTS:-"/var/lib/kubelet /var/snap/microk8s/common/var/lib/kubelet"}
rc=0
for root in $KUBELET_ROOTS; do
  echo "kubelet-e2e: the rig with kubelet's root at $root" >&2
  SPIFFE_CSI_RIG_KUBELET_DIR=$root unshare --mount --propagation private --pid --fork --mount-proc --net sh -c '
    ip link set lo up && ip addr add 10.254.0.1/32 dev lo &&
    exec env SPIFFE_CSI_KUBELET_RIG=1 deno test --allow-all tests/kubelet_e2e_test.ts "$@"
  ' sh "$@" || rc=$?
done

# Safety net: whatever the tests did, leave the host settings and cgroups as they were.
for pair in $saved; do
  name=${pair%%=*} value=${pair#*=}
  if [ "$(sysctl -n "$name")" != "$value" ]; then
    echo "kubelet-e2e: restoring $name=$value" >&2
    sysctl -q -w "$name=$value"
    rc=1
  fi
done
for dir in /sys/fs/cgroup/*/spiffe-csi-rig-*; do
  [ -d "$dir" ] || continue
  echo "kubelet-e2e: removing leftover cgroup $dir" >&2
  find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
  rc=1
done
# Outside the namespaces: no mount and no process of the rig may be visible on the machine.
if grep -E ' (/tmp/spiffe-csi-kubelet-|/run/containerd|/var/log/containers|/var/log/pods)' /proc/self/mountinfo >&2; then
  echo "kubelet-e2e: the rig's mounts reached the machine's mount table" >&2
  rc=1
fi
if pgrep -f spiffe-csi-kubelet- >&2; then
  echo "kubelet-e2e: processes of the rig are still running" >&2
  rc=1
fi
exit $rc
