/** The report: a table of figures per phase, and the page --write saves with the machine's facts. */
import type { DriverUnderTest } from "./_drivers.ts";
import { type Figures, percentile } from "./_harness.ts";
import { readProc } from "./_proc.ts";
import type { Sizes } from "./_sizes.ts";

/** The figures, the median over rounds for each driver, and (with two drivers) first / second. */
export function table(drivers: DriverUnderTest[], results: Figures[][]): string {
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

/** The results page: the machine, the command line and sizes, then the report. */
export async function resultsPage(
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
