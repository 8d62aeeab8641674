/** Phase: many cycles in a row, for the CPU they cost and the memory they leave. */
import type { CsiClient } from "./_csi.ts";
import { cycle, type Figures } from "./_harness.ts";
import { cpuSeconds, rssMiB } from "./_proc.ts";
import type { Sizes } from "./_sizes.ts";

/** CPU seconds per 1,000 cycles (the driver, and with its mount/umount children), then RSS. */
export async function soak(
  client: CsiClient,
  target: string,
  pid: number,
  sizes: Sizes,
): Promise<Figures> {
  const cpuBefore = cpuSeconds(pid);
  for (let i = 0; i < sizes.soakCycles; i++) await cycle(client, target);
  const cpuAfter = cpuSeconds(pid);
  const per1000 = (s: number) => (s * 1000) / sizes.soakCycles;
  return {
    "cpu s / 1,000 cycles, driver": per1000(cpuAfter.own - cpuBefore.own),
    "cpu s / 1,000 cycles, with children": per1000(cpuAfter.all - cpuBefore.all),
    [`rss after ${sizes.soakCycles} cycles (MiB)`]: rssMiB(pid),
  };
}
