// The kubelet rig's own check, so that its teardown test can fail: compareHost() must notice each
// kind of change it guards against.
import assert from "node:assert/strict";
import { compareHost, type HostState } from "./_kube_rig.ts";

const FOUND: HostState = {
  sysctls: { "vm/overcommit_memory": "0", "kernel/panic": "1", "kernel/panic_on_oops": "0" },
  cgroups: ["memory/system.slice", "pids/user.slice"],
  dirs: { "/run/containerd": false, "/var/log/pods": true },
};

Deno.test("compareHost() finds nothing when the machine is as found", () => {
  assert.deepEqual(compareHost(FOUND, structuredClone(FOUND)), []);
});

Deno.test("compareHost() reports a changed sysctl, a cgroup left behind and a covered dir that appeared or went", () => {
  const now: HostState = {
    sysctls: { ...FOUND.sysctls, "vm/overcommit_memory": "1", "kernel/panic": "10" },
    cgroups: [...FOUND.cgroups, "memory/spiffe-csi-rig-1234", "pids/kubepods"],
    dirs: { "/run/containerd": true, "/var/log/pods": false },
  };
  assert.deepEqual(compareHost(FOUND, now), [
    "sysctl vm/overcommit_memory is 1, was 0",
    "sysctl kernel/panic is 10, was 1",
    "cgroup memory/spiffe-csi-rig-1234 was left behind",
    "cgroup pids/kubepods was left behind",
    "/run/containerd was left",
    "/var/log/pods is gone",
  ]);
});
