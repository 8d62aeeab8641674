/** What the phases share: figures, percentiles, one publish/unpublish cycle, a driver session. */
import { CsiClient } from "./_csi.ts";
import type { DriverUnderTest, RunningDriver } from "./_drivers.ts";
import { type BenchTree, makeTree } from "./_tree.ts";

/** Measured figures by name, in the order the tables list them. */
export type Figures = Record<string, number>;

/** The `p`th percentile of `values` (nearest rank); NaN for none. */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

/** Runs `command` to completion; throws with its stderr if it fails. */
export async function run(command: string, args: string[]): Promise<void> {
  const output = await new Deno.Command(command, { args, stderr: "piped" }).output();
  if (!output.success) {
    throw new Error(`${command} ${args.join(" ")}: ${new TextDecoder().decode(output.stderr)}`);
  }
}

/** Writes a progress line to stderr (stdout carries the report alone). */
export function progress(line: string): void {
  // deno-lint-ignore no-console
  console.error(line);
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** One publish and unpublish at `target`, in ms. */
export async function cycle(client: CsiClient, target: string): Promise<number> {
  const started = performance.now();
  await client.publish(target);
  await client.unpublish(target);
  return performance.now() - started;
}

/** Runs `fn` against `driver` started on a fresh tree, with a client; stops it and cleans up. */
export async function withDriver<T>(
  driver: DriverUnderTest,
  fn: (tree: BenchTree, running: RunningDriver, client: CsiClient) => Promise<T>,
): Promise<T> {
  const tree = await makeTree();
  const running = await driver.start(tree);
  const client = new CsiClient(tree.csiSocketPath);
  try {
    return await fn(tree, running, client);
  } finally {
    client.close();
    await running.stop();
    await tree.remove();
  }
}
