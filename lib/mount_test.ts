import assert from "node:assert/strict";
import { mountArgs } from "./mount.ts";
import type { MountTarget } from "./pinned_target.ts";

const target: MountTarget = {
  path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount",
  pinnedPath: "/proc/self/cwd/mount",
  pin() {},
};

Deno.test("mountArgs() for util-linux: one hardened bind, every step through the pinned path", () => {
  assert.deepEqual(mountArgs("util-linux", "bind", target, "/agent"), [
    "--no-canonicalize",
    "--bind",
    "-o",
    "nosuid,nodev,noexec",
    "/agent",
    "/proc/self/cwd/mount",
  ]);
  assert.deepEqual(mountArgs("util-linux", "harden", target), [
    "--no-canonicalize",
    "-o",
    "remount,bind,nosuid,nodev,noexec",
    "/proc/self/cwd/mount",
  ]);
  assert.deepEqual(mountArgs("util-linux", "unmount", target), [
    "-i",
    "-n",
    "/proc/self/cwd/mount",
  ]);
});

Deno.test("mountArgs() for busybox: bind through the pinned path, harden and unmount by real path", () => {
  assert.deepEqual(mountArgs("busybox", "bind", target, "/agent"), [
    "--bind",
    "/agent",
    "/proc/self/cwd/mount",
  ]);
  assert.deepEqual(mountArgs("busybox", "harden", target), [
    "-o",
    "remount,bind,nosuid,nodev,noexec",
    target.path,
  ]);
  assert.deepEqual(mountArgs("busybox", "unmount", target), [target.path]);
});
