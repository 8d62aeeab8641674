/** Phase: a burst of pods at once: every publish in flight together, then every unpublish. */
import type { CsiClient } from "./_csi.ts";
import { type Figures, percentile } from "./_harness.ts";
import type { Sizes } from "./_sizes.ts";
import type { BenchTree } from "./_tree.ts";

/** Wall time of a burst of `sizes.burst` pods, and the p99 of its calls. */
export async function burst(client: CsiClient, tree: BenchTree, sizes: Sizes): Promise<Figures> {
  const targets = await Promise.all(
    Array.from({ length: sizes.burst }, (_, i) => tree.target(`pod-burst-${i}`)),
  );
  const burstStart = performance.now();
  const timed = (fn: () => Promise<unknown>) => {
    const t = performance.now();
    return fn().then(() => performance.now() - t);
  };
  const publishTimes = await Promise.all(targets.map((t) => timed(() => client.publish(t))));
  const unpublishTimes = await Promise.all(targets.map((t) => timed(() => client.unpublish(t))));
  return {
    "burst wall (ms)": performance.now() - burstStart,
    "burst p99 (ms)": percentile([...publishTimes, ...unpublishTimes], 99),
  };
}
