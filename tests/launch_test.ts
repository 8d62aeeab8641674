/** The start task (`deno task start`, tools/launch.ts) as a user runs it. */
import assert from "node:assert/strict";
import denoConfig from "../deno.json" with { type: "json" };
import { ROOT } from "./_driver.ts";
import { run, type RunResult } from "./_spire.ts";

/** Runs `deno task start ...args` from the project root. */
function startTask(args: string[]): Promise<RunResult> {
  return run(Deno.execPath(), ["task", "start", ...args], { cwd: ROOT });
}

for (const args of [["--help"], ["-h"], ["diagnose", "--help"]]) {
  Deno.test(`deno task start ${args.join(" ")} prints the usage and exits 0`, async () => {
    const { code, stdout, stderr } = await startTask(args);
    assert.equal(code, 0, stderr);
    assert.match(stdout, /^Usage of spiffe-csi-driver:\n/);
    assert.match(stdout, /-workload-api-socket-dir string/);
    assert.doesNotMatch(stderr, /NotCapable|error|\bat /i);
  });
}

Deno.test("deno task start --version prints the version and exits 0", async () => {
  const { code, stdout, stderr } = await startTask(["--version"]);
  assert.equal(code, 0, stderr);
  assert.equal(stdout, `spiffe-csi-driver ${denoConfig.version}\n`);
  assert.doesNotMatch(stderr, /NotCapable|error|\bat /i);
});
