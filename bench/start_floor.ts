/**
 * Phase: the floor under start-up, under the driver's own permission set and V8 flags: Deno
 * starting and exiting, and Deno loading what serving needs (grpc-js and node:http2) and exiting.
 */
import { oursRunArgs, ROOT } from "./_drivers.ts";
import { percentile } from "./_harness.ts";
import { makeTree } from "./_tree.ts";

const MODULES = {
  "Deno alone": new URL("./_floor_empty.ts", import.meta.url).pathname,
  "Deno with grpc-js and node:http2": new URL("./_floor_imports.ts", import.meta.url).pathname,
};

/** Median ms from spawn to exit of each floor module, `runs` times each, alternating. */
export async function startFloor(runs: number): Promise<Record<keyof typeof MODULES, number>> {
  const tree = await makeTree();
  try {
    const times = new Map<string, number[]>();
    for (let i = 0; i < runs; i++) {
      for (const [name, entry] of Object.entries(MODULES)) {
        const args = oursRunArgs(tree, entry);
        const started = performance.now();
        const output = await new Deno.Command(Deno.execPath(), { args, cwd: ROOT }).output();
        if (!output.success) throw new Error(new TextDecoder().decode(output.stderr));
        times.set(name, [...(times.get(name) ?? []), performance.now() - started]);
      }
    }
    const medians = Object.keys(MODULES).map((name) => [name, percentile(times.get(name)!, 50)]);
    return Object.fromEntries(medians);
  } finally {
    await tree.remove();
  }
}
