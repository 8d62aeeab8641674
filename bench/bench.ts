// deno-lint-ignore-file no-console
/**
 * Benchmark: the driver under its permission set and V8 flags, real bind mounts in a private mount
 * namespace, driven by one grpc-js client in this process with kubelet-shaped requests.
 *
 *   deno task bench                    full run (tens of minutes), prints the tables
 *   deno task bench --write            the same, and writes bench/run.md (RESULTS.md is written
 *                                      by hand from such runs, and never overwritten)
 *   deno task bench --compare BIN      adds the driver binary BIN, started with upstream's flags
 *   deno task bench --quick            a few seconds, for CI (keeps the harness from rotting)
 *   --rounds N, --phases figures,scaling, --sizes '{"cycles":500}'   narrow a run
 *
 * Each driver under test is described by a DriverUnderTest; every phase interleaves the drivers
 * (A B A B ...) so machine drift and the other load hit each alike.
 */
import { parseArgs } from "node:util";
import { driverConfig, spawnDriver } from "../tests/_driver.ts";
import { CsiClient, publishRequest } from "../tests/_csi_client.ts";
import { makeTempTree, type TempTree } from "../tests/_env.ts";
import { driverRunArgs } from "../lib/config/permissions.ts";
import denoConfig from "../deno.json" with { type: "json" };

interface DriverUnderTest {
  name: string;
  /** Starts the driver on `tree`; resolves once it answers Probe. */
  start(tree: TempTree): Promise<RunningDriver>;
}

interface RunningDriver {
  pid: number;
  stop(signal?: Deno.Signal): Promise<void>;
}

interface Sizes {
  cycles: number;
  republishes: number;
  burst: number;
  starts: number;
  kills: number;
  soakCycles: number;
  idleSeconds: number;
  execPairs: number;
  /** Unrelated mounts for the scaling phase, and the cycles measured at each count. */
  levels: Array<[mounts: number, cycles: number]>;
}

const FULL: Sizes = {
  cycles: 2000,
  republishes: 1000,
  burst: 110,
  starts: 20,
  kills: 10,
  soakCycles: 10_000,
  idleSeconds: 60,
  execPairs: 200,
  levels: [[0, 300], [1_000, 300], [10_000, 100], [30_000, 40]],
};
const QUICK: Sizes = {
  cycles: 50,
  republishes: 20,
  burst: 20,
  starts: 2,
  kills: 1,
  soakCycles: 100,
  idleSeconds: 1,
  execPairs: 20,
  levels: [[0, 20], [100, 20]],
};

const ENTRY = new URL("../main.ts", import.meta.url).pathname;

/** This driver, started as the start task starts it (permission set, V8 flags). */
const ours: DriverUnderTest = {
  name: `spiffe-csi-driver ${denoConfig.version} (Deno ${Deno.version.deno})`,
  start(tree) {
    const config = driverConfig({ ...tree, flags: ["-log-level=warn"] });
    return launch(tree, Deno.execPath(), driverRunArgs({ command: "run", config }, ENTRY));
  },
};

/** Any driver binary that takes upstream spiffe-csi's flags (it ignores the kubelet dir). */
function compared(bin: string): DriverUnderTest {
  return {
    name: `compared: ${bin}`,
    start(tree) {
      return launch(tree, bin, [
        `-workload-api-socket-dir=${tree.socketDir}`,
        `-csi-socket-path=${tree.csiSocketPath}`,
        "-node-id=bench",
      ]);
    },
  };
}

async function launch(tree: TempTree, command: string, args: string[]): Promise<RunningDriver> {
  const driver = await spawnDriver({ config: driverConfig(tree), command, args, waitReady: false });
  try {
    await waitForProbe(tree.csiSocketPath, () => driver.logs());
  } catch (error) {
    await driver.stop("SIGKILL");
    throw error;
  }
  return {
    pid: driver.child.pid,
    async stop(signal: Deno.Signal = "SIGTERM") {
      await driver.stop(signal);
    },
  };
}

// Polls every 2 ms (not tests/_driver.ts's 50 ms), so start-up is measured to a few ms.
async function waitForProbe(socket: string, logs: () => string): Promise<void> {
  const deadline = performance.now() + 20_000;
  while (performance.now() < deadline) {
    try {
      await Deno.lstat(socket);
      const client = new CsiClient(socket);
      try {
        if ((await client.call("Probe", {}, 2000)).ok) return;
      } finally {
        client.close();
      }
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error(`driver did not answer Probe within 20 s:\n${logs()}`);
}

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

/** CPU seconds of the process itself, and with its waited-for children (mount, umount). */
function cpuSeconds(pid: number): { own: number; all: number } {
  const fields = readProc(`/proc/${pid}/stat`).split(") ")[1]!.split(" ");
  // utime, stime, cutime, cstime are fields 14-17 of stat, i.e. 11-14 after "pid (comm) ".
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(fields[i]) / 100);
  const own = utime! + stime!;
  return { own, all: own + cutime! + cstime! };
}

/** The load average (1, 5, 15 minutes) as /proc/loadavg has it. */
function load(): string {
  return readProc("/proc/loadavg").split(" ").slice(0, 3).join(" ");
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

/** One round of the figures that need no unrelated mounts. */
async function measure(driver: DriverUnderTest, sizes: Sizes): Promise<Figures> {
  const figures: Figures = {};

  await withDriver(driver, async (tree, running, client) => {
    figures["rss after start (MiB)"] = rssMiB(running.pid);
    const target = await tree.target("pod-cycle");
    for (let i = 0; i < 20; i++) await cycle(client, target); // warm-up
    const latencies: number[] = [];
    for (let i = 0; i < sizes.cycles; i++) latencies.push(await cycle(client, target));
    figures["cycle p50 (ms)"] = percentile(latencies, 50);
    figures["cycle p99 (ms)"] = percentile(latencies, 99);

    await client.ok("NodePublishVolume", publishRequest(target));
    const republishes: number[] = [];
    for (let i = 0; i < sizes.republishes; i++) {
      const t = performance.now();
      await client.ok("NodePublishVolume", publishRequest(target));
      republishes.push(performance.now() - t);
    }
    await client.ok("NodeUnpublishVolume", { volume_id: "v", target_path: target });
    figures["republish p50 (ms)"] = percentile(republishes, 50);

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
    const cpuAfter = cpuSeconds(running.pid);
    const per1000 = (s: number) => (s * 1000) / sizes.soakCycles;
    figures["cpu s / 1,000 cycles, driver"] = per1000(cpuAfter.own - cpuBefore.own);
    figures["cpu s / 1,000 cycles, with children"] = per1000(cpuAfter.all - cpuBefore.all);
    figures[`rss after ${sizes.soakCycles} cycles (MiB)`] = rssMiB(running.pid);
    await new Promise((r) => setTimeout(r, sizes.idleSeconds * 1000));
    figures[`rss after ${sizes.idleSeconds} s idle (MiB)`] = rssMiB(running.pid);
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

  // A driver killed with SIGKILL leaves its socket behind; the next one must replace it.
  const restarts: number[] = [];
  const tree = await makeTempTree("spiffe-csi-bench-");
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
  figures["ready after SIGKILL, kill to Probe, median (ms)"] = percentile(restarts, 50);
  return figures;
}

/**
 * Makes `count` unrelated mounts under `root` in about 2·log2(count) execs: a tmpfs at `root`
 * (one mount), then recursive binds of a directory into itself, each doubling what is under it,
 * and recursive binds of the power-of-two subtrees for the remainder.
 */
async function makeUnrelatedMounts(root: string, count: number): Promise<void> {
  await Deno.mkdir(root, { recursive: true });
  if (count === 0) return;
  await run("/usr/bin/mount", ["-t", "tmpfs", "bench-unrelated", root]);
  const n = count - 1;
  let levels = 0;
  while (2 ** (levels + 1) - 1 <= n) levels++;
  await Deno.mkdir(`${root}/c`);
  await Deno.mkdir(`${root}/e`);
  // After level j, <root>/c holds 2^j - 1 mounts and <root>/c/s<j> a subtree of 2^(j-1).
  for (let j = 1; j <= levels; j++) {
    await Deno.mkdir(`${root}/c/s${j}`);
    await run("/usr/bin/mount", ["--rbind", `${root}/c`, `${root}/c/s${j}`]);
  }
  const rest = n - (2 ** levels - 1);
  for (let bit = 0; bit < levels; bit++) {
    if (((rest >> bit) & 1) === 0) continue;
    await Deno.mkdir(`${root}/e/t${bit}`);
    await run("/usr/bin/mount", ["--rbind", `${root}/c/s${bit + 1}`, `${root}/e/t${bit}`]);
  }
}

async function removeUnrelatedMounts(root: string, count: number): Promise<void> {
  if (count > 0) await run("/usr/bin/umount", ["-l", root]);
  await Deno.remove(root, { recursive: true });
}

function mountCount(): number {
  return readProc("/proc/self/mountinfo").split("\n").filter((l) => l !== "").length;
}

/** Cycle p50 at each count of unrelated mounts; the mounts are made once per count, for all. */
async function scaling(
  drivers: DriverUnderTest[],
  sizes: Sizes,
  rounds: number,
  root: string,
): Promise<Figures[][]> {
  const results: Figures[][] = drivers.map(() => Array.from({ length: rounds }, () => ({})));
  const base = mountCount();
  for (const [mounts, cycles] of sizes.levels) {
    const dir = `${root}/n${mounts}`;
    await makeUnrelatedMounts(dir, mounts);
    try {
      const added = mountCount() - base;
      if (added !== mounts) throw new Error(`made ${added} unrelated mounts, not ${mounts}`);
      for (let round = 0; round < rounds; round++) {
        for (const [i, driver] of drivers.entries()) {
          console.error(`scaling ${mounts} mounts, round ${round + 1}/${rounds}: ${driver.name}`);
          await withDriver(driver, async (tree, _running, client) => {
            const target = await tree.target("pod-crowded");
            for (let c = 0; c < 5; c++) await cycle(client, target);
            const latencies: number[] = [];
            for (let c = 0; c < cycles; c++) latencies.push(await cycle(client, target));
            results[i]![round]![`cycle p50 with ${mounts} unrelated mounts (ms)`] = percentile(
              latencies,
              50,
            );
          });
        }
      }
    } finally {
      await removeUnrelatedMounts(dir, mounts);
    }
  }
  return results;
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

/** The figures, the median over rounds for each driver, and (with two drivers) first / second. */
function table(drivers: DriverUnderTest[], results: Figures[][]): string {
  const names = Object.keys(results[0]?.[0] ?? {});
  const median = (runs: Figures[], key: string) => percentile(runs.map((f) => f[key] ?? NaN), 50);
  const ratio = drivers.length === 2;
  const header = `| figure | ${drivers.map((d) => d.name).join(" | ")} |${ratio ? " ratio |" : ""}`;
  const rule = `| --- | ${drivers.map(() => "---:").join(" | ")} |${ratio ? " ---: |" : ""}`;
  const rows = names.map((key) => {
    const values = drivers.map((_, i) => median(results[i] ?? [], key));
    const cells = values.map((v) => v.toFixed(2)).join(" | ");
    return `| ${key} | ${cells} |${ratio ? ` ${(values[0]! / values[1]!).toFixed(2)} |` : ""}`;
  });
  return [header, rule, ...rows].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean" },
      rounds: { type: "string" },
      write: { type: "boolean" },
      compare: { type: "string" },
      sizes: { type: "string" },
      phases: { type: "string" },
    },
  });
  const sizes: Sizes = {
    ...(values.quick ? QUICK : FULL),
    ...(values.sizes ? JSON.parse(values.sizes) as Partial<Sizes> : {}),
  };
  const rounds = Number(values.rounds ?? (values.quick ? 1 : 3));
  const phases = (values.phases ?? "figures,scaling").split(",");
  const drivers = [ours, ...(values.compare ? [compared(values.compare)] : [])];
  const loads = [`start ${load()}`];
  const started = performance.now();
  const results: Figures[][] = drivers.map(() => []);
  for (let round = 0; round < rounds && phases.includes("figures"); round++) {
    for (const [i, driver] of drivers.entries()) {
      console.error(`round ${round + 1}/${rounds}: ${driver.name} (load ${load()})`);
      results[i]!.push(await measure(driver, sizes));
    }
    loads.push(`after round ${round + 1} ${load()}`);
  }
  const unrelatedRoot = await Deno.makeTempDir({ prefix: "spiffe-csi-bench-unrelated-" });
  const scaled = phases.includes("scaling")
    ? await scaling(drivers, sizes, rounds, unrelatedRoot)
    : drivers.map(() => []);
  await Deno.remove(unrelatedRoot, { recursive: true }).catch(() => {});
  loads.push(`after scaling ${load()}`);
  const exec = await execPairCost(sizes.execPairs);
  loads.push(`end ${load()}`);
  const minutes = (performance.now() - started) / 60_000;
  const report = [
    ...(phases.includes("figures") ? [table(drivers, results), ""] : []),
    ...(phases.includes("scaling") ? [table(drivers, scaled), ""] : []),
    `one mount --bind + umount exec pair on its own, median of ${sizes.execPairs}: ${
      exec.toFixed(2)
    } ms`,
    "",
    `${rounds} interleaved rounds, ${minutes.toFixed(1)} min; load average (1 5 15 min): ${
      loads.join("; ")
    }`,
  ].join("\n");
  console.log(report);
  if (values.write) {
    await Deno.writeTextFile(
      new URL("./run.md", import.meta.url),
      await resultsPage(report, sizes, rounds, Deno.args),
    );
  }
}

async function resultsPage(
  report: string,
  sizes: Sizes,
  rounds: number,
  args: string[],
): Promise<string> {
  const cpu = readProc("/proc/cpuinfo").match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown";
  const mem = readProc("/proc/meminfo").match(/MemTotal:\s*(\d+)/)?.[1] ?? "0";
  const mount = new TextDecoder().decode(
    (await new Deno.Command("/usr/bin/mount", { args: ["-V"] }).output()).stdout,
  ).trim();
  return `# Benchmark results

Machine: ${navigator.hardwareConcurrency} cores (${cpu}), ${
    Math.round(Number(mem) / 1024 / 1024)
  } GiB; Deno ${Deno.version.deno}; ${mount}.
Command: \`deno task bench ${args.join(" ")}\` (${rounds} rounds, median of rounds; sizes
${JSON.stringify(sizes)}).

${report}
`;
}
