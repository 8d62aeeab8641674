/** The drivers under test: this one, and any binary with upstream's flags; how each is started. */
import { fileURLToPath } from "node:url";
import { parseInvocation } from "../lib/config/flags.ts";
import { driverRunArgs } from "../lib/config/permissions.ts";
import denoConfig from "../deno.json" with { type: "json" };
import { CsiClient } from "./_csi.ts";
import type { BenchTree } from "./_tree.ts";

/** A driver the benchmark measures. */
export interface DriverUnderTest {
  name: string;
  /** Starts the driver on `tree`; resolves once it answers Probe. */
  start(tree: BenchTree): Promise<RunningDriver>;
}

/** A started driver process. */
export interface RunningDriver {
  pid: number;
  /** Sends `signal` (default SIGTERM) and waits for the exit. */
  stop(signal?: Deno.Signal): Promise<void>;
}

/** The project root, where every driver process runs. */
export const ROOT = fileURLToPath(new URL("..", import.meta.url));
const ENTRY = new URL("../main.ts", import.meta.url).pathname;

/** This driver, started as the start task starts it (permission set, V8 flags). */
export const ours: DriverUnderTest = {
  name: `spiffe-csi-driver ${denoConfig.version} (Deno ${Deno.version.deno})`,
  start(tree) {
    return launch(tree, Deno.execPath(), oursRunArgs(tree));
  },
};

/** The deno arguments the start task would run `entry` (main.ts unless given) with on `tree`. */
export function oursRunArgs(tree: BenchTree, entry = ENTRY): string[] {
  const invocation = parseInvocation([
    `-workload-api-socket-dir=${tree.socketDir}`,
    `-csi-socket-path=${tree.csiSocketPath}`,
    `-kubelet-dir=${tree.kubeletDir}`,
    `-cwd-link=${tree.cwdLink}`,
    "-node-id=test-node",
    "-log-level=warn",
  ]);
  if (invocation.command !== "run") throw new Error(`unexpected ${invocation.command}`);
  return driverRunArgs(invocation, entry);
}

/** Any driver binary that takes upstream spiffe-csi's flags (it ignores the kubelet dir). */
export function compared(bin: string): DriverUnderTest {
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

// A driver gets PATH and HOME alone, no stdin, and pipes whose output is kept for errors.
const ISOLATED = { clearEnv: true, stdin: "null", stdout: "piped", stderr: "piped" } as const;

// Runs `command` from the project root; resolves once it answers Probe.
async function launch(tree: BenchTree, command: string, args: string[]): Promise<RunningDriver> {
  const env = {
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    HOME: Deno.env.get("HOME") ?? "/root",
  };
  const child = new Deno.Command(command, { ...ISOLATED, args, cwd: ROOT, env }).spawn();
  let output = "";
  const decoder = new TextDecoder();
  const drained = Promise.all([child.stdout, child.stderr].map(async (stream) => {
    for await (const chunk of stream) output += decoder.decode(chunk, { stream: true });
  }));
  let running = true;
  const exited = child.status.then(() => {
    running = false;
    return drained;
  });
  const stop = async (signal: Deno.Signal = "SIGTERM") => {
    if (running) {
      try {
        child.kill(signal);
      } catch { /* already gone */ }
    }
    await exited;
  };
  try {
    await waitForProbe(tree.csiSocketPath, () => output);
  } catch (error) {
    await stop("SIGKILL");
    throw error;
  }
  return { pid: child.pid, stop };
}

// Polls every 2 ms, so start-up is measured to a few ms.
async function waitForProbe(socket: string, output: () => string): Promise<void> {
  const deadline = performance.now() + 20_000;
  while (performance.now() < deadline) {
    try {
      await Deno.lstat(socket);
      const client = new CsiClient(socket);
      try {
        if (await client.probe(2000)) return;
      } finally {
        client.close();
      }
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error(`driver did not answer Probe within 20 s:\n${output()}`);
}
