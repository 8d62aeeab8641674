/** The scaling phase: cycle latency as the node's mount table grows with unrelated mounts. */
import type { DriverUnderTest } from "./_drivers.ts";
import { cycle, type Figures, percentile, progress, withDriver } from "./_harness.ts";
import { mountCount } from "./_proc.ts";
import type { Sizes } from "./_sizes.ts";
import { makeUnrelatedMounts, removeUnrelatedMounts } from "./_unrelated_mounts.ts";

/** Cycle p50 at each count of unrelated mounts; the mounts are made once per count, for all. */
export async function scaling(
  drivers: DriverUnderTest[],
  sizes: Sizes,
  rounds: number,
  root: string,
): Promise<Figures[][]> {
  const results: Figures[][] = drivers.map(() => Array.from({ length: rounds }, () => ({})));
  const base = mountCount();
  for (const [mounts, cycles] of sizes.levels) {
    const dir = `${root}/n${mounts}`;
    await makeUnrelatedMounts(dir, mounts);
    try {
      const added = mountCount() - base;
      if (added !== mounts) throw new Error(`made ${added} unrelated mounts, not ${mounts}`);
      for (let round = 0; round < rounds; round++) {
        for (const [i, driver] of drivers.entries()) {
          progress(`scaling ${mounts} mounts, round ${round + 1}/${rounds}: ${driver.name}`);
          results[i]![round]![`cycle p50 with ${mounts} unrelated mounts (ms)`] =
            await crowdedCycle(driver, cycles);
        }
      }
    } finally {
      await removeUnrelatedMounts(dir, mounts);
    }
  }
  return results;
}

// Cycle p50 over `cycles` cycles, after 5 to warm up, on a driver started among the mounts.
function crowdedCycle(driver: DriverUnderTest, cycles: number): Promise<number> {
  return withDriver(driver, async (tree, _running, client) => {
    const target = await tree.target("pod-crowded");
    for (let c = 0; c < 5; c++) await cycle(client, target);
    const latencies: number[] = [];
    for (let c = 0; c < cycles; c++) latencies.push(await cycle(client, target));
    return percentile(latencies, 50);
  });
}
