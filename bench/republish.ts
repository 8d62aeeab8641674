/** Phase: publishing again at a target already published (kubelet's retries and re-syncs). */
import type { CsiClient } from "./_csi.ts";
import { type Figures, percentile } from "./_harness.ts";
import type { Sizes } from "./_sizes.ts";

/** Republish p50 over `sizes.republishes` publishes at `target`, published once before. */
export async function republishLatency(
  client: CsiClient,
  target: string,
  sizes: Sizes,
): Promise<Figures> {
  await client.publish(target);
  const republishes: number[] = [];
  for (let i = 0; i < sizes.republishes; i++) {
    const t = performance.now();
    await client.publish(target);
    republishes.push(performance.now() - t);
  }
  await client.unpublish(target);
  return { "republish p50 (ms)": percentile(republishes, 50) };
}
