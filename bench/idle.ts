/** Phase: the driver left idle, for the memory it gives back. */
import { type Figures, sleep } from "./_harness.ts";
import { rssMiB } from "./_proc.ts";
import type { Sizes } from "./_sizes.ts";

/** RSS after `sizes.idleSeconds` with no calls. */
export async function idle(pid: number, sizes: Sizes): Promise<Figures> {
  await sleep(sizes.idleSeconds * 1000);
  return { [`rss after ${sizes.idleSeconds} s idle (MiB)`]: rssMiB(pid) };
}
