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
 * (A B A B ...) so machine drift and the other load hit each alike. The phases run in order:
 * figures (figures.ts), scaling (scaling.ts), then the exec pair on its own (exec_pair.ts).
 */
import { parseArgs } from "node:util";
import { compared, ours } from "./_drivers.ts";
import { startFloor } from "./start_floor.ts";
import { type Figures, progress } from "./_harness.ts";
import { load } from "./_proc.ts";
import { resultsPage, table } from "./_report.ts";
import { FULL, QUICK, type Sizes } from "./_sizes.ts";
import { execPairCost } from "./exec_pair.ts";
import { figuresRound } from "./figures.ts";
import { scaling } from "./scaling.ts";

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
      progress(`round ${round + 1}/${rounds}: ${driver.name} (load ${load()})`);
      results[i]!.push(await figuresRound(driver, sizes));
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
  const floor = await startFloor(sizes.starts);
  loads.push(`end ${load()}`);
  const minutes = (performance.now() - started) / 60_000;
  const report = [
    ...(phases.includes("figures") ? [table(drivers, results), ""] : []),
    ...(phases.includes("scaling") ? [table(drivers, scaled), ""] : []),
    `one mount --bind + umount exec pair on its own, median of ${sizes.execPairs}: ${
      exec.toFixed(2)
    } ms`,
    `start-up floor, spawn to exit under the driver's permission set, median of ${sizes.starts}: ${
      Object.entries(floor).map(([name, ms]) => `${name} ${ms.toFixed(2)} ms`).join(", ")
    }`,
    "",
    `${rounds} interleaved rounds, ${minutes.toFixed(1)} min; load average (1 5 15 min): ${
      loads.join("; ")
    }`,
  ].join("\n");
  // deno-lint-ignore no-console
  console.log(report);
  if (values.write) {
    await Deno.writeTextFile(
      new URL("./run.md", import.meta.url),
      await resultsPage(report, sizes, rounds, Deno.args),
    );
  }
}
