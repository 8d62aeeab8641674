import assert from "node:assert/strict";
import { mountArgs, type MountTarget } from "./mounter.ts";

const target: MountTarget = {
  path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount",
  cwd: "/run/spiffe-csi-driver/cwd",
  childPath: "/proc/self/cwd",
};

Deno.test("mountArgs() names the pinned directory only, never the target's path string", () => {
  assert.deepEqual(mountArgs("bind", target, "/agent"), [
    "--no-canonicalize",
    "--bind",
    "/agent",
    "/proc/self/cwd",
  ]);
  assert.deepEqual(mountArgs("harden", target), [
    "--no-canonicalize",
    "-o",
    "remount,bind,nosuid,nodev,noexec",
    "none",
    "/proc/self/cwd",
  ]);
  assert.deepEqual(mountArgs("unmount", target), [
    "--no-canonicalize",
    "-i",
    "-n",
    "-l",
    "/proc/self/cwd",
  ]);
  for (const operation of ["bind", "harden", "unmount"] as const) {
    assert.ok(!mountArgs(operation, target, "/agent").includes(target.path), operation);
  }
});
