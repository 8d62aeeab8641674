/** Health of a Workload API socket directory: can it be listed, and does a socket in it accept? */
import { errorMessage } from "../errors.ts";

/** What inspectSocketDir found. */
export interface SocketDirHealth {
  healthy: boolean;
  /** Why it is unhealthy, or a short summary when healthy. */
  message: string;
  /** Entries listed in the directory. */
  entries: number;
}

/** Options for inspectSocketDir. */
export interface InspectOptions {
  /** How long to wait for each socket to accept. */
  timeoutMs: number;
  /** Only check that the directory can be listed; do not connect. */
  listOnly?: boolean;
  /** Socket names that may be connected to (the permission set allows exactly these). */
  names?: string[];
  /** What `dir` is, in messages (default "the volume"). */
  subject?: string;
}

/** Lists `dir` and, unless listOnly, connects to each Unix socket in it until one accepts. */
export async function inspectSocketDir(
  dir: string,
  options: InspectOptions,
): Promise<SocketDirHealth> {
  const sockets: string[] = [];
  let entries = 0;
  try {
    for await (const entry of Deno.readDir(dir)) {
      entries++;
      if (!entry.isFile && !entry.isDirectory && !entry.isSymlink) {
        sockets.push(entry.name);
      }
    }
  } catch (error) {
    return {
      healthy: false,
      message: `unable to list ${options.subject ?? "the volume"}: ${errorMessage(error)}`,
      entries,
    };
  }
  if (options.listOnly) return { healthy: true, message: "listed", entries };
  if (sockets.length === 0) {
    return {
      healthy: false,
      message: "no Unix socket in the volume (is the SPIRE agent running?)",
      entries,
    };
  }
  const allowed = sockets.filter((name) => options.names?.includes(name) ?? true);
  if (allowed.length === 0) {
    return {
      healthy: false,
      message: `no Unix socket in the volume has a name listed in -workload-api-socket-names: ${
        JSON.stringify(sockets.slice(0, 5))
      }`,
      entries,
    };
  }
  for (const name of allowed) {
    if (await acceptsConnection(`${dir}/${name}`, options.timeoutMs)) {
      return { healthy: true, message: "a Workload API socket accepts connections", entries };
    }
  }
  return {
    healthy: false,
    message: "no Unix socket in the volume accepts connections (is the SPIRE agent running?)",
    entries,
  };
}

/** How a connection attempt on a Unix socket ended. */
export type ConnectOutcome = { accepted: true } | { accepted: false; error: unknown };

/** Connects to the Unix socket at `path` and closes the connection at once; not accepted after `timeoutMs`. */
export async function tryConnect(path: string, timeoutMs: number): Promise<ConnectOutcome> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<ConnectOutcome>((resolve) => {
    timer = setTimeout(
      () => resolve({ accepted: false, error: new Error(`no answer in ${timeoutMs} ms`) }),
      timeoutMs,
    );
  });
  // A connection that comes after the timeout is closed as well.
  const attempt = Deno.connect({ transport: "unix", path }).then(
    (conn): ConnectOutcome => {
      conn.close();
      return { accepted: true };
    },
    (error: unknown): ConnectOutcome => ({ accepted: false, error }),
  );
  const outcome = await Promise.race([attempt, timeout]);
  clearTimeout(timer);
  return outcome;
}

/** Whether a server accepts a connection on the Unix socket at `path` within `timeoutMs`. */
export async function acceptsConnection(path: string, timeoutMs: number): Promise<boolean> {
  return (await tryConnect(path, timeoutMs)).accepted;
}
