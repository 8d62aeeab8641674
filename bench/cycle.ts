/** Phase: publish/unpublish cycle latency at one target, after a warm-up. */
import type { CsiClient } from "./_csi.ts";
import { cycle, type Figures, percentile } from "./_harness.ts";
import type { Sizes } from "./_sizes.ts";

/** Cycle p50 and p99 over `sizes.cycles` cycles. */
export async function cycleLatency(
  client: CsiClient,
  target: string,
  sizes: Sizes,
): Promise<Figures> {
  for (let i = 0; i < 20; i++) await cycle(client, target); // warm-up
  const latencies: number[] = [];
  for (let i = 0; i < sizes.cycles; i++) latencies.push(await cycle(client, target));
  return {
    "cycle p50 (ms)": percentile(latencies, 50),
    "cycle p99 (ms)": percentile(latencies, 99),
  };
}
