/**
 * A real SPIRE server and agent for end-to-end tests: sqlite datastore, join_token node attestation,
 * the unix workload attestor, loopback only, everything under one temp directory.
 */
import { X509Certificate } from "node:crypto";
import { ROOT } from "./_driver.ts";
import { waitFor } from "./_env.ts";

export { waitFor };

/** Where tools/install_peers.sh puts the SPIRE binaries. */
export const SPIRE_BIN = `${ROOT}.tools/bin`;
/** The trust domain of the test deployment. */
export const TRUST_DOMAIN = "example.org";
/** The SPIFFE ID given to the agent's node (the parent of every workload entry). */
export const NODE_SPIFFE_ID = `spiffe://${TRUST_DOMAIN}/node1`;

/** A command's outcome. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options for run. */
export interface RunOptions {
  /** Kill the command after this long. Default 30 s. */
  timeoutMs?: number;
  /** Run as this uid and gid, with no supplementary groups (through setpriv). */
  uid?: number;
  /** Working directory. */
  cwd?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
}

/** Runs `command` to completion and never throws for a non-zero exit. */
export async function run(
  command: string,
  args: string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const [cmd, argv] = options.uid === undefined ? [command, args] : [
    "setpriv",
    [
      `--reuid=${options.uid}`,
      `--regid=${options.uid}`,
      "--clear-groups",
      "--",
      command,
      ...args,
    ],
  ];
  const output = await new Deno.Command(cmd, {
    args: argv,
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    ...(options.env === undefined ? {} : { env: options.env }),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(options.timeoutMs ?? 30_000),
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Like run, but throws (with the output) unless the command exits 0. */
export async function runOk(
  command: string,
  args: string[],
  options: RunOptions = {},
): Promise<string> {
  const result = await run(command, args, options);
  if (result.code !== 0) {
    throw new Error(
      `${command} ${args.join(" ")} exited ${result.code}:\n${result.stdout}${result.stderr}`,
    );
  }
  return result.stdout;
}

/** A long-running child process whose stdout and stderr are kept for failure reports. */
export class LoggedProcess {
  readonly name: string;
  readonly #child: Deno.ChildProcess;
  readonly #status: Promise<Deno.CommandStatus>;
  #logs = "";
  #exited = false;

  constructor(name: string, command: string, args: string[]) {
    this.name = name;
    this.#child = new Deno.Command(command, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const decoder = new TextDecoder();
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) {
        this.#logs += decoder.decode(chunk, { stream: true });
        // Keep the tail: DEBUG logs of a long run can be large.
        if (this.#logs.length > 400_000) this.#logs = this.#logs.slice(-200_000);
      }
    };
    const pumps = Promise.all([pump(this.#child.stdout), pump(this.#child.stderr)]);
    this.#status = this.#child.status.then(async (status) => {
      this.#exited = true;
      await pumps;
      return status;
    });
  }

  /** True once the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Everything the process wrote so far. */
  logs(): string {
    return this.#logs;
  }

  /** Sends `signal`, escalates to SIGKILL after `graceMs`, and waits for the exit. */
  async stop(signal: Deno.Signal = "SIGTERM", graceMs = 5_000): Promise<Deno.CommandStatus> {
    if (!this.#exited) {
      try {
        this.#child.kill(signal);
      } catch { /* already gone */ }
    }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, graceMs);
    try {
      return await this.#status;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Options for startSpire. */
export interface SpireOptions {
  /** A private directory for configs, data and the server socket. */
  dir: string;
  /** The agent's Workload API socket directory (plays /run/spire/agent-sockets). */
  socketDir: string;
  /** Registration entries to create before the agent starts (its first sync then has them). */
  entries?: WorkloadEntry[];
  /** The agent's workload attestor plugin blocks (default: the unix attestor). */
  workloadAttestors?: string;
}

/** A registration entry: a workload running as a Unix uid, or one matched by other selectors. */
export type WorkloadEntry =
  | { spiffeId: string; uid: number }
  | { spiffeId: string; selectors: string[] };

/** A running SPIRE server and agent. */
export interface Spire {
  /** The server's admin API socket. */
  serverSocket: string;
  /** The agent's Workload API socket (`<socketDir>/api.sock`). */
  agentSocket: string;
  /** The trust bundle the agent was bootstrapped with (PEM). */
  bundlePath: string;
  /** Creates a registration entry under the node. */
  createEntry(entry: WorkloadEntry): Promise<void>;
  /** Starts the agent (it reuses its stored SVID after the first start). */
  startAgent(): Promise<void>;
  /** Stops the agent (SIGTERM). */
  stopAgent(): Promise<void>;
  /** The server's and the agent's logs, labelled. */
  logs(): string;
  /** Stops both. */
  stop(): Promise<void>;
}

/** Starts a SPIRE server, creates the entries, then starts an agent attested with a join token. */
export async function startSpire(options: SpireOptions): Promise<Spire> {
  const { dir, socketDir } = options;
  const server = `${SPIRE_BIN}/spire-server`;
  const agent = `${SPIRE_BIN}/spire-agent`;
  const serverSocket = `${dir}/server/api.sock`;
  const agentSocket = `${socketDir}/api.sock`;
  const bundlePath = `${dir}/bundle.pem`;
  const port = freeLoopbackPort();
  await Deno.mkdir(`${dir}/server/data`, { recursive: true });
  await Deno.mkdir(`${dir}/agent/data`, { recursive: true });
  await Deno.writeTextFile(
    `${dir}/server.conf`,
    `server {
  bind_address = "127.0.0.1"
  bind_port = "${port}"
  socket_path = "${serverSocket}"
  trust_domain = "${TRUST_DOMAIN}"
  data_dir = "${dir}/server/data"
  log_level = "DEBUG"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "${dir}/server/data/datastore.sqlite3"
    }
  }
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
}
`,
  );
  await Deno.writeTextFile(
    `${dir}/agent.conf`,
    `agent {
  data_dir = "${dir}/agent/data"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "${port}"
  socket_path = "${agentSocket}"
  trust_domain = "${TRUST_DOMAIN}"
  trust_bundle_path = "${bundlePath}"
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "disk" { plugin_data { directory = "${dir}/agent/data" } }
  ${options.workloadAttestors ?? 'WorkloadAttestor "unix" { plugin_data {} }'}
}
`,
  );

  const processes: { server?: LoggedProcess; agent?: LoggedProcess } = {};
  let token = "";
  const spire: Spire = {
    serverSocket,
    agentSocket,
    bundlePath,
    async createEntry(entry) {
      await runOk(server, [
        "entry",
        "create",
        "-socketPath",
        serverSocket,
        "-parentID",
        NODE_SPIFFE_ID,
        "-spiffeID",
        entry.spiffeId,
        ...("uid" in entry ? [`unix:uid:${entry.uid}`] : entry.selectors).flatMap((s) => [
          "-selector",
          s,
        ]),
      ]);
    },
    async startAgent() {
      if (processes.agent && !processes.agent.exited) throw new Error("the agent is running");
      const child = new LoggedProcess("spire-agent", agent, [
        "run",
        "-config",
        `${dir}/agent.conf`,
        "-joinToken",
        token,
      ]);
      processes.agent = child;
      await waitFor("the SPIRE agent to become healthy", async () => {
        if (child.exited) throw new Error(`spire-agent exited:\n${child.logs()}`);
        const result = await run(agent, ["healthcheck", "-socketPath", agentSocket], {
          timeoutMs: 5_000,
        });
        return result.code === 0 ? true : undefined;
      });
    },
    async stopAgent() {
      await processes.agent?.stop();
    },
    logs() {
      return [processes.server, processes.agent]
        .filter((p): p is LoggedProcess => p !== undefined)
        .map((p) => `----- ${p.name} -----\n${p.logs()}`)
        .join("\n");
    },
    async stop() {
      await processes.agent?.stop();
      await processes.server?.stop();
    },
  };

  try {
    const child = new LoggedProcess("spire-server", server, [
      "run",
      "-config",
      `${dir}/server.conf`,
    ]);
    processes.server = child;
    await waitFor("the SPIRE server to become healthy", async () => {
      if (child.exited) throw new Error(`spire-server exited:\n${child.logs()}`);
      const result = await run(server, ["healthcheck", "-socketPath", serverSocket], {
        timeoutMs: 5_000,
      });
      return result.code === 0 ? true : undefined;
    });
    await Deno.writeTextFile(
      bundlePath,
      await runOk(server, ["bundle", "show", "-socketPath", serverSocket]),
    );
    const generated = await runOk(server, [
      "token",
      "generate",
      "-socketPath",
      serverSocket,
      "-spiffeID",
      NODE_SPIFFE_ID,
    ]);
    const match = /Token: (\S+)/.exec(generated);
    if (!match) throw new Error(`unexpected token output: ${generated}`);
    token = match[1] as string;
    for (const entry of options.entries ?? []) await spire.createEntry(entry);
    await spire.startAgent();
    return spire;
  } catch (error) {
    const logs = spire.logs();
    await spire.stop();
    throw new Error(`SPIRE did not start: ${String(error)}\n${logs}`, { cause: error });
  }
}

/** What a workload got from the Workload API. */
export interface FetchedSvid {
  /** The SVID's SPIFFE ID (its URI SAN). */
  spiffeId: string;
  svid: X509Certificate;
  bundle: X509Certificate;
}

/** Options for fetchX509. */
export interface FetchOptions {
  /** The spire-agent binary (a copy `uid` can execute). Default: the one in SPIRE_BIN. */
  agentBin?: string;
  /** The directory holding the Workload API socket, as the workload sees it. */
  socketDir: string;
  /** The workload's Unix uid (and gid). */
  uid: number;
  /** Where the SVID, key and bundle are written; `uid` must be able to write there. */
  outDir: string;
  /** How long the fetch may take. Default 5 s. */
  timeoutMs?: number;
}

/** Runs `spire-agent api fetch x509` as a workload; on success also returns the parsed SVID. */
export async function fetchX509(
  options: FetchOptions,
): Promise<{ result: RunResult; svid?: FetchedSvid }> {
  const timeoutMs = options.timeoutMs ?? 5_000;
  const result = await run(
    options.agentBin ?? `${SPIRE_BIN}/spire-agent`,
    [
      "api",
      "fetch",
      "x509",
      "-socketPath",
      `${options.socketDir}/api.sock`,
      "-timeout",
      `${Math.max(1, Math.ceil(timeoutMs / 1000))}s`,
      "-write",
      options.outDir,
    ],
    { uid: options.uid, timeoutMs: timeoutMs + 5_000 },
  );
  if (result.code !== 0) return { result };
  const svid = new X509Certificate(await Deno.readTextFile(`${options.outDir}/svid.0.pem`));
  const bundle = new X509Certificate(await Deno.readTextFile(`${options.outDir}/bundle.0.pem`));
  const uri = /URI:(spiffe:\/\/[^,\s]+)/.exec(svid.subjectAltName ?? "");
  return { result, svid: { spiffeId: uri?.[1] ?? "", svid, bundle } };
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago, not in `taken` (which it joins), and below
 * the kernel's ephemeral range (32768 up): a port the kernel handed out once can be handed out
 * again as the local port of someone's outgoing connection before its server binds it (seen:
 * kubelet's healthz "address already in use").
 */
export function freeLoopbackPort(taken = new Set<number>()): number {
  for (let attempt = 0; attempt < 1000; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (taken.has(port)) continue;
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
    } catch {
      continue;
    }
    taken.add(port);
    return port;
  }
  throw new Error("no free port below the ephemeral range");
}
