/** The Mounter interface and the system mounter: mount/umount through Deno.Command, never a shell. */
import type { MountTarget } from "./pinned_target.ts";
import { CsiError, errorMessage } from "./csi/errors.ts";

/** Bind mounts and unmounts; injected so tests can use a fake. */
export interface Mounter {
  /** Bind-mounts `source` onto `target` (read-write on the host) and hardens it with nosuid,nodev,noexec. */
  bindMount(source: string, target: MountTarget): Promise<void>;
  /** Re-applies nosuid,nodev,noexec to the mount at `target` (a crash can fall between bind and hardening). */
  harden(target: MountTarget): Promise<void>;
  /** Unmounts the top mount at `target`. */
  unmount(target: MountTarget): Promise<void>;
  /** The mount table as `mount` prints it (for audits, never on the publish path). */
  list(): Promise<string>;
}

/** A mount or umount run that failed. */
export class MountError extends Error {
  override name = "MountError";
}

/** Which mount/umount implementation runs: they differ in the arguments they take. */
export type MountFlavor = "util-linux" | "busybox";

/** Options for SystemMounter. */
export interface SystemMounterOptions {
  /** Absolute path of mount (util-linux, or a busybox symlink). */
  mountPath: string;
  /** Absolute path of umount. */
  umountPath: string;
  /** Kill a mount/umount that runs longer than this. Default 30 s. */
  timeoutMs?: number;
}

const HARDENING = "nosuid,nodev,noexec";

/**
 * The argv for each operation (pure, so tests can check it). util-linux takes the pinned path and,
 * with --no-canonicalize, hands it to the kernel as is; it also applies the hardening flags in the
 * same run as the bind (two mount calls, one exec). busybox binds through the pinned path too, but
 * ignores flags given with --bind, and looks remount and umount targets up in the mount table by
 * their real path, so those get the absolute path.
 */
export function mountArgs(
  flavor: MountFlavor,
  operation: "bind" | "harden" | "unmount",
  target: MountTarget,
  source = "",
): string[] {
  if (flavor === "util-linux") {
    switch (operation) {
      case "bind":
        return ["--no-canonicalize", "--bind", "-o", HARDENING, source, target.pinnedPath];
      case "harden":
        return ["--no-canonicalize", "-o", `remount,bind,${HARDENING}`, target.pinnedPath];
      case "unmount":
        // -i -n takes libmount's fast path: umount2() on the path as given, without reading the
        // whole mount table (which costs ~17 ms at 10,000 mounts) and without canonicalizing.
        return ["-i", "-n", target.pinnedPath];
    }
  }
  switch (operation) {
    case "bind":
      return ["--bind", source, target.pinnedPath];
    case "harden":
      return ["-o", `remount,bind,${HARDENING}`, target.path];
    case "unmount":
      return [target.path];
  }
}

/** Runs the system's mount and umount binaries by absolute path, with an empty environment. */
export class SystemMounter implements Mounter {
  readonly #options: Required<SystemMounterOptions>;
  #flavor: Promise<MountFlavor> | undefined;

  constructor(options: SystemMounterOptions) {
    this.#options = { timeoutMs: 30_000, ...options };
  }

  /** util-linux or busybox, found out once by asking mount for its version. */
  flavor(): Promise<MountFlavor> {
    this.#flavor ??= this.#run(this.#options.mountPath, ["-V"]).then(
      (out) => out.includes("util-linux") ? "util-linux" : "busybox",
      () => "busybox",
    );
    return this.#flavor;
  }

  async bindMount(source: string, target: MountTarget): Promise<void> {
    const flavor = await this.flavor();
    await this.#run(this.#options.mountPath, mountArgs(flavor, "bind", target, source), target);
    if (flavor === "util-linux") return;
    try {
      await this.harden(target);
    } catch (error) {
      await this.unmount(target).catch(() => {});
      throw error;
    }
  }

  async harden(target: MountTarget): Promise<void> {
    const flavor = await this.flavor();
    await this.#run(this.#options.mountPath, mountArgs(flavor, "harden", target), target);
  }

  async unmount(target: MountTarget): Promise<void> {
    const flavor = await this.flavor();
    await this.#run(this.#options.umountPath, mountArgs(flavor, "unmount", target), target);
  }

  list(): Promise<string> {
    return this.#run(this.#options.mountPath, []);
  }

  // With a target, the child is spawned synchronously right after pinning, so it inherits the
  // pinned working directory before anything else can move it.
  async #run(command: string, args: string[], target?: MountTarget): Promise<string> {
    let stdout: ArrayBuffer;
    let stderr: ArrayBuffer;
    let status: Deno.CommandStatus;
    try {
      const cmd = new Deno.Command(command, {
        args,
        clearEnv: true,
        env: { LC_ALL: "C" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      });
      target?.pin();
      const child = cmd.spawn();
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* already exited */ }
      }, this.#options.timeoutMs);
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
      if (error instanceof CsiError) throw error;
      throw new MountError(`${command} could not run: ${errorMessage(error)}`, { cause: error });
    }
    if (!status.success) {
      const text = new TextDecoder().decode(stderr).trim().replaceAll("\n", "; ");
      const how = status.signal ? `killed by ${status.signal}` : `exit status ${status.code}`;
      const shown = target ? args.map((a) => a === target.pinnedPath ? target.path : a) : args;
      throw new MountError(`${command} ${shown.join(" ")}: ${how}${text ? `: ${text}` : ""}`);
    }
    return new TextDecoder().decode(stdout);
  }
}
