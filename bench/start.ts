/** Phase: start-up, from spawning the driver on a fresh tree to its first answered Probe. */
import type { DriverUnderTest } from "./_drivers.ts";
import { type Figures, percentile } from "./_harness.ts";
import type { Sizes } from "./_sizes.ts";
import { makeTree } from "./_tree.ts";

/** Median start to first Probe over `sizes.starts` starts. */
export async function startTime(driver: DriverUnderTest, sizes: Sizes): Promise<Figures> {
  const starts: number[] = [];
  for (let i = 0; i < sizes.starts; i++) {
    const tree = await makeTree();
    const started = performance.now();
    const running = await driver.start(tree);
    starts.push(performance.now() - started);
    await running.stop();
    await tree.remove();
  }
  return { "start to first Probe, median (ms)": percentile(starts, 50) };
}
