/** The Mounter interface and the system mounter: mount/umount through Deno.Command, never a shell. */

/** Bind mounts and unmounts; injected so tests can use a fake. */
export interface Mounter {
  /** Bind-mounts `source` onto `target` (read-write on the host) and hardens it with nosuid,nodev,noexec. */
  bindMount(source: string, target: string): Promise<void>;
  /** Re-applies nosuid,nodev,noexec to the mount at `target` (a crash can fall between bind and hardening). */
  harden?(target: string): Promise<void>;
  /** Unmounts the top mount at `target`. */
  unmount(target: string): Promise<void>;
  /** The mount table as `mount` prints it (for audits, never on the publish path). */
  list(): Promise<string>;
}

/** A mount or umount run that failed. */
export class MountError extends Error {
  override name = "MountError";
}

/** Options for SystemMounter. */
export interface SystemMounterOptions {
  /** Absolute path of mount (util-linux or a busybox symlink). */
  mountPath: string;
  /** Absolute path of umount. */
  umountPath: string;
  /** Kill a mount/umount that runs longer than this. Default 30 s. */
  timeoutMs?: number;
}

/** The argv for a bind mount: a pure function so tests can check it. */
export function bindArgs(source: string, target: string): string[][] {
  return [
    ["--bind", source, target],
    // busybox ignores flags given with --bind, so harden in a second step (util-linux accepts both).
    ["-o", "remount,bind,nosuid,nodev,noexec", target],
  ];
}

/** Runs the system's mount and umount binaries by absolute path, with an empty environment. */
export class SystemMounter implements Mounter {
  readonly #options: Required<SystemMounterOptions>;

  constructor(options: SystemMounterOptions) {
    this.#options = { timeoutMs: 30_000, ...options };
  }

  async bindMount(source: string, target: string): Promise<void> {
    const [bind] = bindArgs(source, target) as [string[]];
    await this.#run(this.#options.mountPath, bind);
    try {
      await this.harden(target);
    } catch (error) {
      await this.#run(this.#options.umountPath, [target]).catch(() => {});
      throw error;
    }
  }

  async harden(target: string): Promise<void> {
    const [, harden] = bindArgs("", target) as [string[], string[]];
    await this.#run(this.#options.mountPath, harden);
  }

  async unmount(target: string): Promise<void> {
    await this.#run(this.#options.umountPath, [target]);
  }

  list(): Promise<string> {
    return this.#run(this.#options.mountPath, []);
  }

  async #run(command: string, args: string[]): Promise<string> {
    let output: Deno.CommandOutput;
    try {
      output = await new Deno.Command(command, {
        args,
        clearEnv: true,
        env: { LC_ALL: "C" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(this.#options.timeoutMs),
      }).output();
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new MountError(`${command} could not run: ${reason}`, { cause: error });
    }
    if (!output.success) {
      const stderr = new TextDecoder().decode(output.stderr).trim().replaceAll("\n", "; ");
      const how = output.signal ? `killed by ${output.signal}` : `exit status ${output.code}`;
      throw new MountError(`${command} ${args.join(" ")}: ${how}${stderr ? `: ${stderr}` : ""}`);
    }
    return new TextDecoder().decode(output.stdout);
  }
}
