/** Phase: a driver killed with SIGKILL leaves its socket behind; the next one must replace it. */
import type { DriverUnderTest } from "./_drivers.ts";
import { type Figures, percentile } from "./_harness.ts";
import type { Sizes } from "./_sizes.ts";
import { makeTree } from "./_tree.ts";

/** Median time from SIGKILL to the next driver's first Probe, over `sizes.kills` kills. */
export async function restartAfterKill(driver: DriverUnderTest, sizes: Sizes): Promise<Figures> {
  const restarts: number[] = [];
  const tree = await makeTree();
  try {
    let running = await driver.start(tree);
    for (let i = 0; i < sizes.kills; i++) {
      const killed = performance.now();
      await running.stop("SIGKILL");
      running = await driver.start(tree);
      restarts.push(performance.now() - killed);
    }
    await running.stop();
  } finally {
    await tree.remove();
  }
  return { "ready after SIGKILL, kill to Probe, median (ms)": percentile(restarts, 50) };
}
