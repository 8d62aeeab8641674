/** Phase: the cost of one mount --bind and umount exec pair alone, the floor under a cycle. */
import { percentile, run } from "./_harness.ts";

/** Median ms of `pairs` bind-mount and unmount exec pairs on a scratch directory. */
export async function execPairCost(pairs: number): Promise<number> {
  const root = await Deno.makeTempDir({ prefix: "spiffe-csi-bench-exec-" });
  await Deno.mkdir(`${root}/src`);
  await Deno.mkdir(`${root}/dst`);
  const times: number[] = [];
  try {
    for (let i = 0; i < pairs; i++) {
      const t = performance.now();
      await run("/usr/bin/mount", ["--bind", `${root}/src`, `${root}/dst`]);
      await run("/usr/bin/umount", [`${root}/dst`]);
      times.push(performance.now() - t);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
  return percentile(times, 50);
}
