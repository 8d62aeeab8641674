// csi-sanity (kubernetes-csi/csi-test, pinned in tools/install_peers.sh) against the real driver
// running under its permission set. Every applicable Identity and Node test must pass.
import assert from "node:assert/strict";
import { ROOT, startDriver } from "./_driver.ts";
import { makeTempTree } from "./_env.ts";

/**
 * The only tests skipped, and why: both call the Controller service's CreateVolume, which a
 * node-only plugin (like upstream spiffe-csi) does not serve, so they fail instead of skipping.
 */
export const SKIPPED: Record<string, string> = {
  "should remove target path": "calls CreateVolume (no Controller service)",
  "should fail when volume does not exist on the specified path":
    "calls CreateVolume (no Controller service)",
};

/** The csi-sanity suites that apply to a node-only plugin (Controller suites do not). */
const APPLICABLE = "Identity Service|Node Service";

const SANITY = `${ROOT}.tools/bin/csi-sanity`;

Deno.test({
  name: "csi-sanity passes every applicable Identity and Node test",
  async fn() {
    await Deno.stat(SANITY).catch(() => {
      throw new Error(`${SANITY} is missing: run tools/install_peers.sh`);
    });
    const tree = await makeTempTree();
    const driver = await startDriver({ ...tree });
    try {
      const report = `${tree.root}/junit.xml`;
      const output = await new Deno.Command(SANITY, {
        args: [
          `-csi.endpoint=unix://${tree.csiSocketPath}`,
          `-csi.mountdir=${tree.root}/sanity-mount`,
          `-csi.stagingdir=${tree.root}/sanity-staging`,
          `-ginkgo.focus=${APPLICABLE}`,
          ...Object.keys(SKIPPED).map((name) => `-ginkgo.skip=${name}`),
          `-ginkgo.junit-report=${report}`,
          "-ginkgo.no-color",
        ],
        stdin: "null",
      }).output();
      const text = new TextDecoder().decode(output.stdout) +
        new TextDecoder().decode(output.stderr);
      const xml = await Deno.readTextFile(report);
      const cases = [...xml.matchAll(/<testcase name="([^"]*)"[^>]*status="([a-z]+)"/g)]
        .map(([, name, status]) => ({ name: (name as string).replace(/^\[It\] /, ""), status }));
      const count = (status: string) => cases.filter((c) => c.status === status).length;
      const failed = cases.filter((c) => c.status === "failed" || c.status === "panicked");
      // deno-lint-ignore no-console
      console.log(
        `csi-sanity: ${count("passed")} passed, ${failed.length} failed, ${
          count("skipped")
        } skipped`,
      );
      assert.deepEqual(failed.map((c) => c.name), [], text.slice(-4000));
      assert.ok(output.success, text.slice(-4000));
      assert.ok(count("passed") >= 13, `too few csi-sanity tests ran:\n${text.slice(-4000)}`);
      for (
        const name of [
          "Identity Service GetPluginInfo should return appropriate information",
          "Identity Service Probe should return appropriate information",
          "Node Service NodeGetInfo should return appropriate values",
          "Node Service NodePublishVolume should fail when no volume capability is provided",
          "Node Service NodeGetVolumeStats should fail when volume is not found",
        ]
      ) {
        assert.ok(cases.some((c) => c.name === name && c.status === "passed"), name);
      }
    } finally {
      await driver.stop();
      await tree.remove();
    }
  },
});
