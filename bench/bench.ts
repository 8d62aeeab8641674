// deno-lint-ignore-file no-console
/**
 * Benchmark: the driver under its permission set and V8 flags, real bind mounts in a private mount
 * namespace, driven by one grpc-js client in this process with kubelet-shaped requests.
 *
 *   deno task bench            full run (minutes), writes bench/RESULTS.md
 *   deno task bench --quick    a few seconds, for CI (keeps the harness from rotting)
 *
 * Each driver under test is described by a DriverUnderTest; runs interleave drivers (A B A B ...)
 * so machine drift hits each alike.
 */
import { parseArgs } from "node:util";
import { startDriver } from "../tests/_driver.ts";
import { CsiClient, publishRequest } from "../tests/_csi_client.ts";
import { makeTempTree, type TempTree } from "../tests/_env.ts";
import denoConfig from "../deno.json" with { type: "json" };

interface DriverUnderTest {
  name: string;
  /** Starts the driver on `tree`; resolves once it answers Probe. */
  start(tree: TempTree): Promise<RunningDriver>;
}

interface RunningDriver {
  pid: number;
  stop(): Promise<void>;
}

interface Sizes {
  cycles: number;
  burst: number;
  unrelatedMounts: number;
  starts: number;
  soakCycles: number;
  idleSeconds: number;
  execPairs: number;
}

const FULL: Sizes = {
  cycles: 2000,
  burst: 110,
  unrelatedMounts: 10_000,
  starts: 20,
  soakCycles: 10_000,
  idleSeconds: 60,
  execPairs: 200,
};
const QUICK: Sizes = {
  cycles: 50,
  burst: 20,
  unrelatedMounts: 100,
  starts: 2,
  soakCycles: 100,
  idleSeconds: 1,
  execPairs: 20,
};

const ours: DriverUnderTest = {
  name: `spiffe-csi-driver ${denoConfig.version} (Deno ${Deno.version.deno})`,
  async start(tree) {
    const driver = await startDriver({ ...tree, flags: ["-log-level=warn"] });
    return {
      pid: driver.child.pid,
      async stop() {
        await driver.stop("SIGTERM");
      },
    };
  },
};

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

async function run(command: string, args: string[]): Promise<void> {
  const output = await new Deno.Command(command, { args, stderr: "piped" }).output();
  if (!output.success) {
    throw new Error(`${command} ${args.join(" ")}: ${new TextDecoder().decode(output.stderr)}`);
  }
}

// Deno refuses /proc paths without --allow-all; this process does not need that, so it asks cat.
function readProc(path: string): string {
  return new TextDecoder().decode(
    new Deno.Command("/usr/bin/cat", { args: [path] }).outputSync().stdout,
  );
}

function rssMiB(pid: number): number {
  const status = readProc(`/proc/${pid}/status`);
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

function cpuSeconds(pid: number): number {
  const fields = readProc(`/proc/${pid}/stat`).split(") ")[1]!.split(" ");
  // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after "pid (comm) ".
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function cycle(client: CsiClient, target: string): Promise<number> {
  const started = performance.now();
  await client.ok("NodePublishVolume", publishRequest(target));
  await client.ok("NodeUnpublishVolume", { volume_id: "v", target_path: target });
  return performance.now() - started;
}

async function withDriver<T>(
  driver: DriverUnderTest,
  fn: (tree: TempTree, running: RunningDriver, client: CsiClient) => Promise<T>,
): Promise<T> {
  const tree = await makeTempTree("spiffe-csi-bench-");
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

type Figures = Record<string, number>;

async function measure(
  driver: DriverUnderTest,
  sizes: Sizes,
  unrelatedRoot: string,
): Promise<Figures> {
  const figures: Figures = {};

  await withDriver(driver, async (tree, running, client) => {
    figures["rss after start (MiB)"] = rssMiB(running.pid);
    const target = await tree.target("pod-cycle");
    for (let i = 0; i < 20; i++) await cycle(client, target); // warm-up
    const latencies: number[] = [];
    for (let i = 0; i < sizes.cycles; i++) latencies.push(await cycle(client, target));
    figures["cycle p50 (ms)"] = percentile(latencies, 50);
    figures["cycle p99 (ms)"] = percentile(latencies, 99);

    const targets = await Promise.all(
      Array.from({ length: sizes.burst }, (_, i) => tree.target(`pod-burst-${i}`)),
    );
    const burstStart = performance.now();
    const timed = (fn: () => Promise<unknown>) => {
      const t = performance.now();
      return fn().then(() => performance.now() - t);
    };
    const publishTimes = await Promise.all(
      targets.map((t) => timed(() => client.ok("NodePublishVolume", publishRequest(t)))),
    );
    const unpublishTimes = await Promise.all(
      targets.map((t) =>
        timed(() => client.ok("NodeUnpublishVolume", { volume_id: "v", target_path: t }))
      ),
    );
    figures["burst wall (ms)"] = performance.now() - burstStart;
    figures["burst p99 (ms)"] = percentile([...publishTimes, ...unpublishTimes], 99);

    const cpuBefore = cpuSeconds(running.pid);
    for (let i = 0; i < sizes.soakCycles; i++) await cycle(client, target);
    figures["cpu s / 1,000 cycles"] = ((cpuSeconds(running.pid) - cpuBefore) * 1000) /
      sizes.soakCycles;
    figures[`rss after ${sizes.soakCycles} cycles (MiB)`] = rssMiB(running.pid);
    await new Promise((r) => setTimeout(r, sizes.idleSeconds * 1000));
    figures[`rss after ${sizes.idleSeconds} s idle (MiB)`] = rssMiB(running.pid);
  });

  await withDriver(driver, async (tree, _running, client) => {
    await makeUnrelatedMounts(unrelatedRoot, sizes.unrelatedMounts);
    try {
      const target = await tree.target("pod-crowded");
      for (let i = 0; i < 10; i++) await cycle(client, target);
      const latencies: number[] = [];
      for (let i = 0; i < Math.min(sizes.cycles, 500); i++) {
        latencies.push(await cycle(client, target));
      }
      figures[`cycle p50 with ${sizes.unrelatedMounts} mounts (ms)`] = percentile(latencies, 50);
    } finally {
      await removeUnrelatedMounts(unrelatedRoot, sizes.unrelatedMounts);
    }
  });

  const starts: number[] = [];
  for (let i = 0; i < sizes.starts; i++) {
    const tree = await makeTempTree("spiffe-csi-bench-");
    const started = performance.now();
    const running = await driver.start(tree);
    starts.push(performance.now() - started);
    await running.stop();
    await tree.remove();
  }
  figures["start to first Probe, median (ms)"] = percentile(starts, 50);
  return figures;
}

async function makeUnrelatedMounts(root: string, count: number): Promise<void> {
  await Deno.mkdir(`${root}/src`, { recursive: true });
  for (let i = 0; i < count; i++) {
    await Deno.mkdir(`${root}/m${i}`, { recursive: true });
    await run("/usr/bin/mount", ["--bind", `${root}/src`, `${root}/m${i}`]);
  }
}

async function removeUnrelatedMounts(root: string, count: number): Promise<void> {
  for (let i = 0; i < count; i++) await run("/usr/bin/umount", [`${root}/m${i}`]);
  await Deno.remove(root, { recursive: true });
}

async function execPairCost(pairs: number): Promise<number> {
  const root = await Deno.makeTempDir({ prefix: "spiffe-csi-bench-exec-" });
  await Deno.mkdir(`${root}/src`);
  await Deno.mkdir(`${root}/dst`);
  const times: number[] = [];
  try {
    for (let i = 0; i < pairs; i++) {
      const t = performance.now();
      await run("/usr/bin/mount", ["--bind", `${root}/src`, `${root}/dst`]);
      await run("/usr/bin/umount", [`${root}/dst`]);
      times.push(performance.now() - t);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
  return percentile(times, 50);
}

function table(drivers: DriverUnderTest[], results: Figures[][]): string {
  const names = Object.keys(results[0]?.[0] ?? {});
  const median = (runs: Figures[], key: string) => percentile(runs.map((f) => f[key] ?? NaN), 50);
  const header = `| figure | ${drivers.map((d) => d.name).join(" | ")} |`;
  const rule = `| --- | ${drivers.map(() => "---:").join(" | ")} |`;
  const rows = names.map((key) =>
    `| ${key} | ${drivers.map((_, i) => median(results[i] ?? [], key).toFixed(2)).join(" | ")} |`
  );
  return [header, rule, ...rows].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { quick: { type: "boolean" }, rounds: { type: "string" }, write: { type: "boolean" } },
  });
  const sizes = values.quick ? QUICK : FULL;
  const rounds = Number(values.rounds ?? (values.quick ? 1 : 3));
  const drivers = [ours];
  const results: Figures[][] = drivers.map(() => []);
  const unrelatedRoot = await Deno.makeTempDir({ prefix: "spiffe-csi-bench-unrelated-" });
  for (let round = 0; round < rounds; round++) {
    for (const [i, driver] of drivers.entries()) {
      console.error(`round ${round + 1}/${rounds}: ${driver.name}`);
      results[i]!.push(await measure(driver, sizes, `${unrelatedRoot}/r${round}-${i}`));
    }
  }
  await Deno.remove(unrelatedRoot, { recursive: true }).catch(() => {});
  const exec = await execPairCost(sizes.execPairs);
  const report = [
    table(drivers, results),
    "",
    `one mount --bind + umount exec pair on its own, median of ${sizes.execPairs}: ${
      exec.toFixed(2)
    } ms`,
  ].join("\n");
  console.log(report);
  if (values.write) {
    await Deno.writeTextFile(
      new URL("./RESULTS.md", import.meta.url),
      await resultsPage(report, sizes, rounds),
    );
  }
}

async function resultsPage(report: string, sizes: Sizes, rounds: number): Promise<string> {
  const cpu = readProc("/proc/cpuinfo").match(/model name\s*:\s*(.*)/)?.[1] ??
    "unknown";
  const mem = readProc("/proc/meminfo").match(/MemTotal:\s*(\d+)/)?.[1] ?? "0";
  const mount = new TextDecoder().decode(
    (await new Deno.Command("/usr/bin/mount", { args: ["-V"] }).output()).stdout,
  ).trim();
  return `# Benchmark results

Machine: ${navigator.hardwareConcurrency} cores (${cpu}), ${
    Math.round(Number(mem) / 1024 / 1024)
  } GiB;
Deno ${Deno.version.deno}; ${mount}. Command: \`deno task bench --write\` (${rounds} rounds, median of
rounds; sizes ${JSON.stringify(sizes)}).

${report}
`;
}
