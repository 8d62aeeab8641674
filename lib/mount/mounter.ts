/** The Mounter interface and the system mounter: mount/umount through Deno.Command, never a shell. */
import { errorMessage } from "../errors.ts";

/** What mount and umount are pointed at: a pinned directory (dir_pin.ts), named for messages. */
export interface MountTarget {
  /** The absolute path, as the client named it (for messages only). */
  readonly path: string;
  /** Where the child starts: a symlink its chdir follows to the pinned directory itself. */
  readonly cwd: string;
  /** The path the child resolves to its working directory, the pinned directory itself. */
  readonly childPath: string;
  /** Called once the child has started in `cwd`: from then on the pin may move. */
  readonly started?: () => void;
}

/** Bind mounts and unmounts; injected so tests can use a fake. */
export interface Mounter {
  /** Bind-mounts `source` onto the directory `target` names; the bind copies the source's flags. */
  bindMount(source: string, target: MountTarget): Promise<void>;
  /** Sets nosuid,nodev,noexec (and ro when `readOnly`) on the mount whose root `target` names. */
  harden(target: MountTarget, readOnly: boolean): Promise<void>;
  /** Detaches the mount whose root `target` names. */
  unmount(target: MountTarget): Promise<void>;
  /** The mount table as `mount` prints it (for audits, never on the publish path). */
  list(): Promise<string>;
}

/** A mount or umount run that failed. */
export class MountError extends Error {
  override name = "MountError";
}

/** Options for SystemMounter. */
export interface SystemMounterOptions {
  /** Absolute path of util-linux mount. */
  mountPath: string;
  /** Absolute path of util-linux umount. */
  umountPath: string;
  /** Kill a mount/umount that runs longer than this. Default 30 s. */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** The per-mount flags every bind this driver makes carries. */
export const HARDENING = "nosuid,nodev,noexec";

/**
 * The argv for each operation (pure, so tests can check it). The target is always the child's
 * `/proc/self/cwd`, the pinned directory it starts in (see dir_pin.ts for its spelling), which the
 * kernel resolves to the directory itself, and --no-canonicalize hands it to the kernel as is.
 * Only the template (template.ts) is ever remounted: a remount changes one mount and does not
 * propagate, so a publish binds from the hardened template and its bind arrives hardened
 * everywhere. The unmount is lazy because the child's own working directory is inside the mount
 * it detaches.
 */
export function mountArgs(
  operation: "bind" | "harden" | "unmount",
  target: MountTarget,
  source = "",
  readOnly = false,
): string[] {
  switch (operation) {
    case "bind":
      return ["--no-canonicalize", "--bind", source, target.childPath];
    case "harden": {
      // A remount sets the per-mount flags to exactly these: without `ro` it would clear the ro
      // the bind copied from a read-only socket dir. A source ("none", which a remount ignores)
      // keeps libmount from reading the whole mount table to look the target up.
      const flags = readOnly ? `ro,${HARDENING}` : HARDENING;
      return ["--no-canonicalize", "-o", `remount,bind,${flags}`, "none", target.childPath];
    }
    case "unmount":
      return ["--no-canonicalize", "-i", "-n", "-l", target.childPath];
  }
}

/**
 * Rejects with MountError unless `path -V` says util-linux: busybox resolves remount and umount
 * targets to path strings again, which would undo the pin. Why it could not run is the cause.
 */
export async function checkUtilLinux(path: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
  const version = await run(path, ["-V"], { timeoutMs });
  if (!version.includes("util-linux")) {
    const first = version.trim().split("\n")[0] || "no version output";
    throw new MountError(`${path} is not util-linux: ${first}`);
  }
}

/** Runs util-linux mount and umount by absolute path, with an empty environment. */
export class SystemMounter implements Mounter {
  readonly #options: Required<SystemMounterOptions>;

  constructor(options: SystemMounterOptions) {
    this.#options = { timeoutMs: DEFAULT_TIMEOUT_MS, ...options };
  }

  /** Rejects unless mount and umount are util-linux (checkUtilLinux). */
  async check(): Promise<void> {
    await checkUtilLinux(this.#options.mountPath, this.#options.timeoutMs);
    await checkUtilLinux(this.#options.umountPath, this.#options.timeoutMs);
  }

  async bindMount(source: string, target: MountTarget): Promise<void> {
    await run(this.#options.mountPath, mountArgs("bind", target, source), this.#options, target);
  }

  async harden(target: MountTarget, readOnly: boolean): Promise<void> {
    const args = mountArgs("harden", target, "", readOnly);
    await run(this.#options.mountPath, args, this.#options, target);
  }

  async unmount(target: MountTarget): Promise<void> {
    await run(this.#options.umountPath, mountArgs("unmount", target), this.#options, target);
  }

  list(): Promise<string> {
    return run(this.#options.mountPath, [], this.#options);
  }
}

// The child starts in `target.cwd`, the -cwd-link: its chdir(2) follows /proc/self/cwd, its own
// working directory, which it inherited from the driver's pin when it was cloned. Nothing walks
// the pinned directory's path again, and from `started` on the driver may pin elsewhere.
async function run(
  command: string,
  args: string[],
  { timeoutMs }: { timeoutMs: number },
  target?: MountTarget,
): Promise<string> {
  let stdout: ArrayBuffer;
  let stderr: ArrayBuffer;
  let status: Deno.CommandStatus;
  try {
    const cmd = new Deno.Command(command, {
      args,
      // Never the pinned directory's path string (Deno would hand a child getcwd's string).
      cwd: target?.cwd ?? "/",
      clearEnv: true,
      env: { LC_ALL: "C" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    });
    const child = cmd.spawn();
    target?.started?.();
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* already exited */ }
    }, timeoutMs);
    try {
      // Read the pipes ourselves: ChildProcess.output() keeps ~100 KiB per run alive in
      // Deno 2.9 (hundreds of MiB over a few thousand publishes).
      [stdout, stderr, status] = await Promise.all([
        new Response(child.stdout).arrayBuffer(),
        new Response(child.stderr).arrayBuffer(),
        child.status,
      ]);
    } finally {
      clearTimeout(timer);
    }
  } catch (error) {
    throw new MountError(`${command} could not run: ${errorMessage(error)}`, { cause: error });
  }
  if (!status.success) {
    const text = new TextDecoder().decode(stderr).trim().replaceAll("\n", "; ");
    const how = status.signal ? `killed by ${status.signal}` : `exit status ${status.code}`;
    const shown = target ? args.map((a) => a === target.childPath ? target.path : a) : args;
    throw new MountError(`${command} ${shown.join(" ")}: ${how}${text ? `: ${text}` : ""}`);
  }
  return new TextDecoder().decode(stdout);
}
