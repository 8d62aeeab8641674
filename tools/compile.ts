/**
 * `deno task compile [--target=amd64|arm64|x86_64-unknown-linux-gnu|aarch64-unknown-linux-gnu|all]`:
 * builds the single-binary driver into `dist/<target>/spiffe-csi-driver` with `deno compile`, under
 * the driver's one permission set (lib/config/permissions.ts) and its V8 flags. The proto is embedded
 * through the JSON import in lib/proto.ts, so nothing else is included.
 *
 * `deno compile` downloads Deno's `denort` runtime for the target. Where that download cannot happen
 * (no internet), this task stops with one line saying so and exits non-zero: it never substitutes
 * another runtime.
 */
import type { DriverPaths } from "../lib/config/flags.ts";
import { errorMessage } from "../lib/errors.ts";
import { permissionFlags, V8_FLAGS } from "../lib/config/permissions.ts";

/** The Linux targets the driver is built for. */
export const TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] as const;
/** A supported `deno compile --target`. */
export type Target = typeof TARGETS[number];

/** Container architecture names (Docker's TARGETARCH) for each target. */
export const TARGET_ARCH: Readonly<Record<Target, string>> = Object.freeze({
  "x86_64-unknown-linux-gnu": "amd64",
  "aarch64-unknown-linux-gnu": "arm64",
});

/** Name of the compiled binary inside `dist/<target>/`. */
export const BINARY_NAME = "spiffe-csi-driver";

/** The entry point that is compiled. */
export const ENTRY = "main.ts";

/** Output path of the binary for `target`, relative to the project root. */
export function outputPath(target: Target): string {
  return `dist/${target}/${BINARY_NAME}`;
}

/**
 * Arguments for `deno` that compile the driver for `target` (pure, so a test can check them). The
 * permission set is the image's: every well-known container layout, or only the kubelet root given
 * in `paths` for a kubelet that is none of the well-known ones.
 */
export function compileArgs(target: Target, paths: Partial<DriverPaths> = {}): string[] {
  return [
    "compile",
    // --v8-flags also limits the compiling process, and type checking needs more than 64 MB of
    // heap: the task type-checks first (checkArgs) and compiles without a second check.
    "--no-check",
    "--frozen",
    ...permissionFlags(paths),
    `--v8-flags=${V8_FLAGS}`,
    "--target",
    target,
    "--output",
    outputPath(target),
    ENTRY,
  ];
}

/** Arguments for `deno` that type-check the entry point before compiling. */
export function checkArgs(): string[] {
  return ["check", "--frozen", ENTRY];
}

/** What the compile task was asked to build. */
export interface CompileOptions {
  targets: Target[];
  /** Container paths that replace the well-known ones in the binary's permission set. */
  paths: Partial<DriverPaths>;
}

/**
 * Parses the task's own arguments (`--target`, and `--kubelet-dir` for a kubelet root that is none
 * of the well-known ones: the binary then allows only that root); throws RangeError on a bad one.
 */
export function parseCompileOptions(args: string[]): CompileOptions {
  let wanted = "all";
  let kubeletDir: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    const [name, inline] = arg.startsWith("--") && arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, undefined];
    const value = () => {
      const v = inline ?? args[++i];
      if (v === undefined) throw new RangeError(`Missing value for ${name}`);
      return v;
    };
    if (name === "--target") wanted = value();
    else if (name === "--kubelet-dir") kubeletDir = value();
    else throw new RangeError(`Unexpected argument: ${arg}`);
  }
  if (
    kubeletDir !== undefined &&
    (!/^\/[^,\0\n]*[^/]$/.test(kubeletDir) || kubeletDir.split("/").includes(".."))
  ) {
    throw new RangeError(`--kubelet-dir must be an absolute path: ${kubeletDir}`);
  }
  const paths = kubeletDir === undefined ? {} : { kubeletDir };
  if (wanted === "all") return { targets: [...TARGETS], paths };
  for (const target of TARGETS) {
    if (wanted === target || wanted === TARGET_ARCH[target]) return { targets: [target], paths };
  }
  throw new RangeError(
    `Unknown target: ${wanted} (use all, amd64, arm64, ${TARGETS.join(", ")})`,
  );
}

/** The targets the task's arguments ask for. */
export function parseTargets(args: string[]): Target[] {
  return parseCompileOptions(args).targets;
}

/** True when `deno compile` failed because it could not fetch the denort runtime. */
export function isRuntimeDownloadFailure(stderr: string): boolean {
  return /denort|dl\.deno\.land|Setting up base binary/i.test(stderr);
}

async function typeCheck(): Promise<number> {
  const status = await new Deno.Command("deno", {
    args: checkArgs(),
    cwd: new URL("..", import.meta.url),
    stdin: "null",
  }).spawn().status;
  if (!status.success) say(`deno task compile: type check failed (exit status ${status.code})`);
  return status.success ? 0 : 1;
}

async function compile(target: Target, paths: Partial<DriverPaths>): Promise<number> {
  const output = await new Deno.Command("deno", {
    args: compileArgs(target, paths),
    cwd: new URL("..", import.meta.url),
    stdin: "null",
    stdout: "inherit",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  if (output.success) {
    writeAll(output.stderr);
    return 0;
  }
  if (isRuntimeDownloadFailure(stderr)) {
    say(
      `deno task compile: cannot fetch Deno's denort runtime for ${target} (dl.deno.land is not ` +
        `reachable): compile on a machine with internet access`,
    );
  } else {
    writeAll(output.stderr);
    say(`deno task compile: deno compile failed for ${target} (exit status ${output.code})`);
  }
  return 1;
}

function say(line: string): void {
  writeAll(new TextEncoder().encode(`${line}\n`));
}

function writeAll(data: Uint8Array): void {
  for (let n = 0; n < data.length;) n += Deno.stderr.writeSync(data.subarray(n));
}

if (import.meta.main) {
  let options: CompileOptions;
  try {
    options = parseCompileOptions(Deno.args);
  } catch (error) {
    say(`deno task compile: ${errorMessage(error)}`);
    Deno.exit(2);
  }
  const checked = await typeCheck();
  if (checked !== 0) Deno.exit(checked);
  for (const target of options.targets) {
    const code = await compile(target, options.paths);
    if (code !== 0) Deno.exit(code);
    say(`deno task compile: wrote ${outputPath(target)}`);
  }
}
