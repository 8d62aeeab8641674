/** What every check returns, and the helpers the checks share (private to lib/diagnose). */
import type { Config } from "../config/flags.ts";

/** How a check ended: UNKNOWN when it could not run (outside the permission set), SKIP when it does not apply. */
export type CheckStatus = "pass" | "fail" | "unknown" | "skip";

/** One line of the checklist. */
export interface CheckResult {
  /** What is checked, as a short sentence. */
  name: string;
  status: CheckStatus;
  /** What was found. */
  detail: string;
  /** How to fix a failure (or how to check by hand when unknown). */
  fix?: string;
}

/** The parts of Config the checks read. */
export type DiagnoseConfig = Pick<
  Config,
  | "socketDir"
  | "socketNames"
  | "csiSocketPath"
  | "kubeletDir"
  | "mountPath"
  | "umountPath"
  | "pluginName"
>;

export function unknown(name: string, path: string, error: unknown, byHand: string): CheckResult {
  return {
    name,
    status: "unknown",
    detail: `${path} is outside the driver's permission set (${describe(error)})`,
    fix: byHand,
  };
}

export function isNotCapable(error: unknown): boolean {
  return error instanceof Deno.errors.NotCapable;
}

export function describe(error: unknown): string {
  if (error instanceof Error) return (error.message.split("\n")[0] ?? error.name).trim();
  return String(error);
}
