/** Starts the real driver as a child process under its permission set, exactly as the start task does. */
import { fileURLToPath } from "node:url";
import { driverRunArgs } from "../lib/config/permissions.ts";
import { type Config, parseInvocation } from "../lib/config/flags.ts";
import { CsiClient } from "./_csi_client.ts";

/** The project root. */
export const ROOT = fileURLToPath(new URL("..", import.meta.url));
const ENTRY = `${ROOT}main.ts`;

/** Options for startDriver: the driver's paths, plus any extra flags. */
export interface StartOptions {
  socketDir: string;
  csiSocketPath: string;
  kubeletDir: string;
  /** A symlink to /proc/self/cwd (-cwd-link). */
  cwdLink: string;
  nodeId?: string;
  /** More driver flags, e.g. ["-log-level=debug"]. */
  flags?: string[];
  /** Wait for a successful Probe before returning (default true). */
  waitReady?: boolean;
}

/** One line of the driver's JSON log. */
export interface LogRecord {
  level: string;
  message: string;
  properties: Record<string, unknown>;
}

/** The driver's JSON log lines; a line that is not JSON (someone else's output) fails the test. */
export function logRecords(logs: string): LogRecord[] {
  return logs.split("\n").filter((line) => line !== "").map((line) => {
    try {
      return JSON.parse(line) as LogRecord;
    } catch {
      throw new Error(`not a log line of the driver: ${line}`);
    }
  });
}

/** A running driver. */
export interface DriverProcess {
  config: Config;
  child: Deno.ChildProcess;
  /** Everything the driver wrote to stderr so far. */
  logs(): string;
  /** Whether the process is still running. */
  running(): boolean;
  /** Sends `signal` (default SIGTERM) and waits for the exit. */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
  /** Waits for the driver to exit on its own; after `timeoutMs` it is killed (SIGKILL). */
  exit(timeoutMs: number): Promise<Deno.CommandStatus>;
}

/** The driver's Config for these options (parsed by the driver's own flag parser). */
export function driverConfig(options: StartOptions): Config {
  const invocation = parseInvocation([
    `-workload-api-socket-dir=${options.socketDir}`,
    `-csi-socket-path=${options.csiSocketPath}`,
    `-kubelet-dir=${options.kubeletDir}`,
    `-cwd-link=${options.cwdLink}`,
    `-node-id=${options.nodeId ?? "test-node"}`,
    ...(options.flags ?? []),
  ]);
  if (invocation.command !== "run") throw new Error(`unexpected ${invocation.command}`);
  return invocation.config;
}

/** Starts the driver and (by default) waits until it answers Probe. */
export function startDriver(options: StartOptions): Promise<DriverProcess> {
  const config = driverConfig(options);
  return spawnDriver({
    config,
    command: Deno.execPath(),
    args: driverRunArgs({ command: "run", config }, ENTRY),
    waitReady: options.waitReady ?? true,
  });
}

/** How spawnDriver runs the driver. */
export interface SpawnOptions {
  /** The driver's configuration, as the driver parses its arguments. */
  config: Config;
  command: string;
  args: string[];
  /** Extra environment variables (PATH and HOME are always set). */
  env?: Record<string, string>;
  /** Probe this socket (default: the config's CSI socket, as seen from here). */
  probeSocket?: string;
  waitReady: boolean;
}

/** Spawns the driver with an exact command line, and (optionally) waits until it answers Probe. */
export async function spawnDriver(options: SpawnOptions): Promise<DriverProcess> {
  const { config } = options;
  const child = new Deno.Command(options.command, {
    args: options.args,
    cwd: ROOT,
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: Deno.env.get("HOME") ?? "/root",
      ...options.env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let logs = "";
  const decoder = new TextDecoder();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) logs += decoder.decode(chunk, { stream: true });
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  let exited = false;
  const status = child.status.then(async (s) => {
    exited = true;
    await pumps;
    return s;
  });
  const driver: DriverProcess = {
    config,
    child,
    logs: () => logs,
    running: () => !exited,
    async stop(signal: Deno.Signal = "SIGTERM") {
      if (!exited) {
        try {
          child.kill(signal);
        } catch { /* already gone */ }
      }
      return await status;
    },
    async exit(timeoutMs: number) {
      const timer = setTimeout(() => driver.stop("SIGKILL"), timeoutMs);
      try {
        return await status;
      } finally {
        clearTimeout(timer);
      }
    },
  };
  if (options.waitReady) {
    const socket = options.probeSocket ?? config.csiSocketPath;
    const deadline = Date.now() + 20_000;
    while (true) {
      if (exited) throw new Error(`driver exited during start-up:\n${logs}`);
      try {
        await Deno.stat(socket);
        const client = new CsiClient(socket);
        const result = await client.call("Probe", {}, 2000);
        client.close();
        if (result.ok) break;
      } catch { /* not yet */ }
      if (Date.now() > deadline) {
        await driver.stop("SIGKILL");
        throw new Error(`driver did not answer Probe within 20 s:\n${logs}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return driver;
}
