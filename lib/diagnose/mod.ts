/**
 * `spiffe-csi-driver diagnose`: checks a node against the troubleshooting cases and prints a
 * checklist with a fix for each failure. It runs under the driver's own permission set, so a check
 * that needs a path outside that set reports UNKNOWN (with how to check by hand) instead of guessing.
 */
import type { Config } from "../config/flags.ts";
import type { Mounter } from "../mount/mounter.ts";
import type { CheckResult, CheckStatus, DiagnoseConfig } from "./_check.ts";
import { checkWorkloadApiDir } from "./socket_dir.ts";
import { checkCsiSocket } from "./csi_socket.ts";
import { checkBinary, checkStackedMounts } from "./mounts.ts";
import { checkPodsDir, checkRegistration } from "./kubelet.ts";

export type { CheckResult, CheckStatus, DiagnoseConfig };

/** Options for runChecks. */
export interface CheckOptions {
  /** Lists the mount table (stacked-mount check). */
  mounter: Mounter;
  /** Kubelet's plugin registration directory; the registration socket check is skipped without it. */
  registrationDir: string | undefined;
  /** How long to wait for a socket to accept or a binary to answer. Default 2000 ms. */
  timeoutMs?: number;
}

/** Options for diagnose. */
export interface DiagnoseOptions extends CheckOptions {
  /** Where checklist lines go (default: standard output). */
  write?: (line: string) => void;
}

/** Runs every check and returns the checklist; never throws for a node problem. */
export async function runChecks(
  config: DiagnoseConfig,
  options: CheckOptions,
): Promise<CheckResult[]> {
  const timeoutMs = options.timeoutMs ?? 2000;
  const results: CheckResult[] = [];
  results.push(...await checkWorkloadApiDir(config, timeoutMs));
  results.push(await checkCsiSocket(config.csiSocketPath, timeoutMs));
  results.push(await checkBinary("mount", "-mount-path", config.mountPath, timeoutMs));
  results.push(await checkBinary("umount", "-umount-path", config.umountPath, timeoutMs));
  results.push(await checkPodsDir(config.kubeletDir));
  results.push(await checkRegistration(config.pluginName, options.registrationDir));
  results.push(await checkStackedMounts(config, options.mounter));
  return results;
}

/** The checklist as printable lines: one per check, plus a fix line under each failure. */
export function formatChecklist(results: CheckResult[]): string[] {
  const label: Record<CheckStatus, string> = {
    pass: "PASS   ",
    fail: "FAIL   ",
    unknown: "UNKNOWN",
    skip: "SKIP   ",
  };
  const lines: string[] = [];
  for (const result of results) {
    lines.push(`${label[result.status]} ${result.name}: ${result.detail}`);
    if (result.fix !== undefined && result.status !== "pass") {
      lines.push(`        ${result.status === "fail" ? "fix" : "check by hand"}: ${result.fix}`);
    }
  }
  const count = (status: CheckStatus) => results.filter((r) => r.status === status).length;
  lines.push(
    `diagnose: ${count("pass")} of ${results.length} checks passed ` +
      `(${count("fail")} failing, ${count("unknown")} could not run, ${count("skip")} skipped)`,
  );
  return lines;
}

/** Exit code for a checklist: 0 only when nothing failed and nothing was left unchecked. */
export function exitCode(results: CheckResult[]): number {
  return results.every((r) => r.status === "pass" || r.status === "skip") ? 0 : 1;
}

/** Runs the checks, writes the checklist, and returns the exit code (0 only when all checks pass). */
export async function diagnose(config: Config, options: DiagnoseOptions): Promise<number> {
  const write = options.write ?? writeStdout;
  const results = await runChecks(config, options);
  for (const line of formatChecklist(results)) write(line);
  return exitCode(results);
}

function writeStdout(line: string): void {
  Deno.stdout.writeSync(new TextEncoder().encode(`${line}\n`));
}
