/**
 * `spiffe-csi-driver diagnose`: checks a node against the troubleshooting cases and prints a
 * checklist with a fix for each failure. It runs under the driver's own permission set, so a check
 * that needs a path outside that set reports UNKNOWN (with how to check by hand) instead of guessing.
 */
import type { Config } from "../config/flags.ts";
import { isUtilLinux, type Mounter } from "../mount/mounter.ts";
import { findStackedMounts } from "../mount/audit.ts";
import { inspectSocketDir } from "../health/socket_dir.ts";

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

const EMPTY_DIR = "kubernetes.io~empty-dir";

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

// --- Workload API socket directory -------------------------------------------------------------

async function checkWorkloadApiDir(
  config: DiagnoseConfig,
  timeoutMs: number,
): Promise<CheckResult[]> {
  const dir = config.socketDir;
  const exists = "Workload API dir exists";
  const isDir = "Workload API dir is a directory";
  const accepts = "Workload API socket accepts a connection";
  const notEmptyDir = "Workload API dir is not a pod's emptyDir";
  const skipRest = (why: string): CheckResult[] =>
    [isDir, accepts, notEmptyDir].map((name) => ({ name, status: "skip", detail: why }));

  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (error) {
    if (isNotCapable(error)) {
      return [
        unknown(exists, dir, error, `ls -ld ${dir}`),
        ...skipRest("the directory could not be read"),
      ];
    }
    return [
      {
        name: exists,
        status: "fail",
        detail: `${dir}: ${describe(error)}`,
        fix: `mount the host's SPIRE agent socket directory (e.g. /run/spire/agent-sockets, a ` +
          `hostPath with type DirectoryOrCreate) at ${dir}, or point -workload-api-socket-dir ` +
          `at the directory that holds the agent socket`,
      },
      ...skipRest("the directory does not exist"),
    ];
  }
  const results: CheckResult[] = [{ name: exists, status: "pass", detail: dir }];
  if (!info.isDirectory) {
    results.push({
      name: isDir,
      status: "fail",
      detail: `${dir} is not a directory`,
      fix: `-workload-api-socket-dir must name the directory that holds the agent socket, not ` +
        `the socket itself; point the SPIRE agent's socket_path inside ${dir}`,
    });
    results.push(...skipRest("not a directory").slice(1));
    return results;
  }
  results.push({ name: isDir, status: "pass", detail: dir });

  const health = await inspectSocketDir(dir, { timeoutMs, names: config.socketNames });
  if (health.healthy) {
    results.push({ name: accepts, status: "pass", detail: health.message });
  } else if (/NotCapable|Requires .* access/.test(health.message)) {
    results.push({
      name: accepts,
      status: "unknown",
      detail: `${health.message} (outside the driver's permission set)`,
      fix: `spire-agent healthcheck -socketPath ${dir}/<socket>`,
    });
  } else {
    results.push({
      name: accepts,
      status: "fail",
      detail: `${dir}: ${health.message}`,
      fix: `start the SPIRE agent on this node with its socket_path inside the host directory ` +
        `mounted at ${dir}, then check it with spire-agent healthcheck -socketPath <that socket>`,
    });
  }
  results.push(await checkNotEmptyDir(notEmptyDir, dir, config.kubeletDir));
  return results;
}

/** The broken-mount-after-restart case: the socket dir is (or lies in) a pod's emptyDir. */
async function checkNotEmptyDir(
  name: string,
  dir: string,
  kubeletDir: string,
): Promise<CheckResult> {
  const fix = `give the SPIRE agent and this driver the same hostPath directory (e.g. ` +
    `/run/spire/agent-sockets, type DirectoryOrCreate), never an emptyDir: an emptyDir is ` +
    `deleted when its pod restarts, and every workload's bind mount keeps pointing at the ` +
    `deleted directory (the Workload API socket is gone until the workload restarts)`;
  const real = await Deno.realPath(dir).catch(() => dir);
  const emptyDirPath = new RegExp(
    `^${escapeRegExp(trimSlash(kubeletDir))}/pods/[^/]+/volumes/${escapeRegExp(EMPTY_DIR)}(/|$)`,
  );
  if (emptyDirPath.test(real)) {
    return { name, status: "fail", detail: `${real} is inside a pod's emptyDir`, fix };
  }
  // Inside a container the path says nothing: compare the directory's identity with every
  // emptyDir on the node (they all live under <kubelet>/pods, which the driver mounts).
  let match: string | undefined;
  try {
    match = await findEmptyDirIdentity(dir, `${trimSlash(kubeletDir)}/pods`);
  } catch (error) {
    if (isNotCapable(error)) {
      return unknown(name, `${kubeletDir}/pods`, error, `ls -d ${kubeletDir}/pods/*/volumes/*`);
    }
    if (!(error instanceof Deno.errors.NotFound)) {
      return { name, status: "unknown", detail: `cannot list the pods dir: ${describe(error)}` };
    }
  }
  if (match !== undefined) {
    return { name, status: "fail", detail: `${dir} is the emptyDir ${match}`, fix };
  }
  return { name, status: "pass", detail: `${dir} is not under any pod's ${EMPTY_DIR}` };
}

async function findEmptyDirIdentity(dir: string, podsDir: string): Promise<string | undefined> {
  const want = await Deno.stat(dir);
  for await (const pod of Deno.readDir(podsDir)) {
    if (!pod.isDirectory) continue;
    const volumes = `${podsDir}/${pod.name}/volumes/${EMPTY_DIR}`;
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(volumes));
    } catch {
      continue;
    }
    for (const entry of entries) {
      const path = `${volumes}/${entry.name}`;
      const info = await Deno.stat(path).catch(() => undefined);
      if (info && info.dev === want.dev && info.ino !== null && info.ino === want.ino) return path;
    }
  }
  return undefined;
}

// --- CSI socket -------------------------------------------------------------------------------

async function checkCsiSocket(path: string, timeoutMs: number): Promise<CheckResult> {
  const name = "CSI socket dir is writable and no stale socket blocks it";
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  let info: Deno.FileInfo | undefined;
  try {
    info = await Deno.lstat(path);
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, path, error, `ls -l ${path}`);
    if (!(error instanceof Deno.errors.NotFound)) {
      return { name, status: "fail", detail: `${path}: ${describe(error)}` };
    }
  }
  if (info !== undefined) {
    if (!info.isSocket) {
      return {
        name,
        status: "fail",
        detail: `${path} exists and is not a socket`,
        fix: `remove ${path} (the driver replaces only a socket)`,
      };
    }
    const outcome = await tryConnect(path, timeoutMs);
    if (outcome.accepted) {
      return { name, status: "pass", detail: `a driver is listening on ${path}` };
    }
    if (isNotCapable(outcome.error)) return unknown(name, path, outcome.error, `ls -l ${path}`);
    return {
      name,
      status: "fail",
      detail: `${path} is a stale socket: nobody listens on it (${describe(outcome.error)})`,
      fix: `remove ${path}, or start the driver, which replaces a stale socket when it can ` +
        `write to ${dir}`,
    };
  }
  // No socket yet: prove the directory is writable by listening once, then clean up.
  try {
    const listener = Deno.listen({ transport: "unix", path });
    listener.close();
    await Deno.remove(path).catch(() => {});
    return { name, status: "pass", detail: `${dir} is writable (no socket yet)` };
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, path, error, `touch ${dir}/x && rm ${dir}/x`);
    const missing = error instanceof Deno.errors.NotFound;
    return {
      name,
      status: "fail",
      detail: `cannot create ${path}: ${describe(error)}`,
      fix: missing
        ? `create ${dir} (the DaemonSet mounts the host's /var/lib/kubelet/plugins/csi.spiffe.io ` +
          `there, a hostPath with type DirectoryOrCreate)`
        : `make ${dir} writable for the driver: mount it read-write, and do not share it with a ` +
          `read-only volume`,
    };
  }
}

type ConnectOutcome = { accepted: true } | { accepted: false; error: unknown };

async function tryConnect(path: string, timeoutMs: number): Promise<ConnectOutcome> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<ConnectOutcome>((resolve) => {
    timer = setTimeout(
      () => resolve({ accepted: false, error: new Error(`no answer in ${timeoutMs} ms`) }),
      timeoutMs,
    );
  });
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

// --- Binaries, kubelet, registration -----------------------------------------------------------

async function checkBinary(
  binary: string,
  flag: string,
  path: string,
  timeoutMs: number,
): Promise<CheckResult> {
  const name = `${binary} exists at ${flag}`;
  const fix = `install util-linux ${binary} at ${path} (the image ships it there), or pass ` +
    `${flag} with the absolute path of util-linux ${binary} on this node`;
  let version: string;
  try {
    const output = await new Deno.Command(path, {
      args: ["-V"],
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "null",
      signal: AbortSignal.timeout(timeoutMs),
    }).output();
    version = new TextDecoder().decode(output.stdout);
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, path, error, `ls -l ${path}`);
    return { name, status: "fail", detail: `${path}: ${describe(error)}`, fix };
  }
  // The driver refuses any other kind (busybox re-resolves paths the pin must not).
  if (!isUtilLinux(version)) {
    const first = version.trim().split("\n")[0] || "no version output";
    return { name, status: "fail", detail: `${path} is not util-linux: ${first}`, fix };
  }
  return { name, status: "pass", detail: path };
}

async function checkPodsDir(kubeletDir: string): Promise<CheckResult> {
  const name = "kubelet pods dir exists";
  const path = `${trimSlash(kubeletDir)}/pods`;
  try {
    const info = await Deno.stat(path);
    if (info.isDirectory) return { name, status: "pass", detail: path };
    return {
      name,
      status: "fail",
      detail: `${path} is not a directory`,
      fix: podsDirFix(kubeletDir),
    };
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, path, error, `ls -ld ${path}`);
    return {
      name,
      status: "fail",
      detail: `${path}: ${describe(error)}`,
      fix: podsDirFix(kubeletDir),
    };
  }
}

function podsDirFix(kubeletDir: string): string {
  return `set -kubelet-dir to kubelet's --root-dir (now ${kubeletDir}) and mount ` +
    `<root-dir>/pods into the driver container at the same path with mountPropagation: ` +
    `Bidirectional`;
}

async function checkRegistration(
  pluginName: string,
  registrationDir: string | undefined,
): Promise<CheckResult> {
  const name = "registration socket exists";
  if (registrationDir === undefined) {
    return { name, status: "skip", detail: "no -registration-dir given" };
  }
  const path = `${trimSlash(registrationDir)}/${pluginName}-reg.sock`;
  try {
    const info = await Deno.lstat(path);
    if (info.isSocket) return { name, status: "pass", detail: path };
    return {
      name,
      status: "fail",
      detail: `${path} is not a socket`,
      fix: `remove ${path} and restart the node-driver-registrar container`,
    };
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, path, error, `ls -l ${path}`);
    return {
      name,
      status: "fail",
      detail: `${path}: ${describe(error)}`,
      fix: `node-driver-registrar has not registered ${pluginName}: read its log; its ` +
        `--kubelet-registration-path must be the host path of the CSI socket, and its ` +
        `/registration mount must be the host's ${registrationDir}`,
    };
  }
}

async function checkStackedMounts(
  config: DiagnoseConfig,
  mounter: Mounter,
): Promise<CheckResult> {
  const name = "no stacked mounts of the socket dir under the pods dir";
  let stacked;
  try {
    stacked = await findStackedMounts(config, mounter);
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, config.mountPath, error, "mount");
    return {
      name,
      status: "unknown",
      detail: `cannot read the mount table: ${describe(error)}`,
      fix: `mount | grep ${config.kubeletDir}/pods`,
    };
  }
  if (stacked.length === 0) {
    return { name, status: "pass", detail: `no target under ${config.kubeletDir}/pods` };
  }
  const list = stacked.map((s) => `${s.target} (${s.layers} layers)`).join(", ");
  return {
    name,
    status: "fail",
    detail: list,
    fix: `restart the driver with -prune-stacked-mounts, or run umount on each target until ` +
      `one layer remains`,
  };
}

// --- helpers -----------------------------------------------------------------------------------

function unknown(name: string, path: string, error: unknown, byHand: string): CheckResult {
  return {
    name,
    status: "unknown",
    detail: `${path} is outside the driver's permission set (${describe(error)})`,
    fix: byHand,
  };
}

function isNotCapable(error: unknown): boolean {
  return error instanceof Deno.errors.NotCapable;
}

function describe(error: unknown): string {
  if (error instanceof Error) return (error.message.split("\n")[0] ?? error.name).trim();
  return String(error);
}

function trimSlash(path: string): string {
  return path.replace(/\/+$/, "") || "/";
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
