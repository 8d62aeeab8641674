/** The figures phase: one round of every figure that needs no unrelated mounts. */
import { burst } from "./burst.ts";
import { cycleLatency } from "./cycle.ts";
import { idle } from "./idle.ts";
import { republishLatency } from "./republish.ts";
import { restartAfterKill } from "./restart.ts";
import { soak } from "./soak.ts";
import { startTime } from "./start.ts";
import type { DriverUnderTest } from "./_drivers.ts";
import { type Figures, withDriver } from "./_harness.ts";
import { rssMiB } from "./_proc.ts";
import type { Sizes } from "./_sizes.ts";

/** One round for `driver`: one driver for the calls, then fresh ones for start and restart. */
export async function figuresRound(driver: DriverUnderTest, sizes: Sizes): Promise<Figures> {
  const figures: Figures = {};
  await withDriver(driver, async (tree, running, client) => {
    figures["rss after start (MiB)"] = rssMiB(running.pid);
    const target = await tree.target("pod-cycle");
    Object.assign(figures, await cycleLatency(client, target, sizes));
    Object.assign(figures, await republishLatency(client, target, sizes));
    Object.assign(figures, await burst(client, tree, sizes));
    Object.assign(figures, await soak(client, target, running.pid, sizes));
    Object.assign(figures, await idle(running.pid, sizes));
  });
  Object.assign(figures, await startTime(driver, sizes));
  Object.assign(figures, await restartAfterKill(driver, sizes));
  return figures;
}
