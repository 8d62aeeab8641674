// The kubelet rig's own checks, so that the teardown test can fail: compareHost() must notice each
// kind of change it guards against.
import assert from "node:assert/strict";
import { captureHost, compareHost } from "./_kube_rig.ts";

Deno.test("compareHost() reports a changed sysctl, a new cgroup and a covered dir that appeared or went", async () => {
  const now = await captureHost();
  assert.deepEqual(await compareHost(now), []);
  assert.ok(Object.keys(now.sysctls).length === 3, JSON.stringify(now.sysctls));

  const changed = { ...now, sysctls: { ...now.sysctls, "kernel/panic": "12345" } };
  assert.deepEqual(await compareHost(changed), [
    `sysctl kernel/panic is ${now.sysctls["kernel/panic"]}, was 12345`,
  ]);

  if (now.cgroups.length > 0) {
    const [first, ...rest] = now.cgroups;
    assert.deepEqual(await compareHost({ ...now, cgroups: rest }), [
      `cgroup ${first} was left behind`,
    ]);
  }

  const flipped = Object.fromEntries(Object.entries(now.dirs).map(([dir, is]) => [dir, !is]));
  const problems = await compareHost({ ...now, dirs: flipped });
  assert.equal(problems.length, Object.keys(now.dirs).length);
  for (const [dir, existed] of Object.entries(flipped)) {
    assert.ok(problems.includes(`${dir} ${existed ? "is gone" : "was left"}`), problems.join("; "));
  }
});
