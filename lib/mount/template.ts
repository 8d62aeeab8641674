/**
 * The hardened template of the socket dir, the one source every publish binds from.
 *
 * A bind copies the per-mount flags (ro, nosuid, nodev, noexec) of the mount it is made from, and
 * the copies that propagate to other mount namespaces (the host's, through `Bidirectional`) are
 * made from it at the same moment. A remount changes one mount in one namespace and never
 * propagates. So the driver binds the socket dir once onto a directory of its own, remounts that
 * template nosuid,nodev,noexec (and ro where the socket dir is mounted ro), and each publish is
 * then one `mount --bind <template> <target>` whose bind arrives hardened on the host too.
 *
 * The template lives beside `-cwd-link` (`<dir of -cwd-link>/socket-dir`): in the image that is
 * the container's own read-only root, a mount namespace no other process shares.
 */
import { renameSync } from "node:fs";
import type { Mounter } from "./mounter.ts";
import { type Pin, PinMovedError, sameFile } from "./dir_pin.ts";
import type { MountTarget } from "./pinned_target.ts";

/** Most leftover layers a (re)build unmounts from the template directory. */
const MAX_LEFTOVERS = 100;

/** Options for SocketDirTemplate. */
export interface TemplateOptions {
  /** The Workload API socket directory. */
  socketDir: string;
  /** The template's directory (`templateDirFor` in lib/config/flags.ts). */
  dir: string;
  mounter: Mounter;
}

/** What a publish needs of the template (unit tests pass a stand-in). */
export interface Template {
  /** The source of every publish bind. */
  readonly path: string;
  /** With the pin held: makes sure `path` is a hardened bind of the socket dir as it is now. */
  ensure(pin: Pin): Promise<void>;
}

/** The template bind; every method runs with the caller's pin held (dir_pin.ts). */
export class SocketDirTemplate implements Template {
  readonly #options: TemplateOptions;
  /** Built and hardened by this process (a leftover of an earlier one may lack its flags). */
  #built = false;

  constructor(options: TemplateOptions) {
    this.#options = options;
  }

  /** The template's path: the source of every publish bind. */
  get path(): string {
    return this.#options.dir;
  }

  /**
   * Makes sure the template is a hardened bind of the socket dir as it is now (two stats when it
   * is), else (re)builds it: first in each process, and after the socket dir was replaced or
   * mounted over.
   */
  async ensure(pin: Pin): Promise<void> {
    const { socketDir, dir, mounter } = this.#options;
    if (this.#built && sameFile(dir, socketDir)) return;
    this.#built = false;
    ensureDir(dir);
    await this.#unmountAll(pin);
    // Probed before the bind: the bind copies whatever the socket dir's mount has now.
    const readOnly = isReadOnlyMount(socketDir);
    pin.at(dir);
    await mounter.bindMount(socketDir, this.#target(pin));
    pin.at(dir);
    if (!sameFile(pin.path(), socketDir)) {
      throw new Error(`the bind of ${socketDir} did not land on ${dir}`);
    }
    await mounter.harden(this.#target(pin), readOnly);
    this.#built = true;
  }

  /** Unmounts the template (published binds are mounts of their own and stay). */
  async release(pin: Pin): Promise<void> {
    this.#built = false;
    await this.#unmountAll(pin);
  }

  // Only this driver mounts on its template directory: unmount layers until umount says there
  // is none (a leftover of an earlier run in this mount namespace, or a stale template).
  async #unmountAll(pin: Pin): Promise<void> {
    for (let layer = 0; layer < MAX_LEFTOVERS; layer++) {
      try {
        pin.at(this.#options.dir);
      } catch (error) {
        // A template of a socket dir that was removed since: chdir reached its root, but getcwd
        // cannot name a removed directory. It is still ours to unmount.
        if (!(error instanceof PinMovedError && error.actual === undefined)) throw error;
      }
      try {
        await this.#options.mounter.unmount(this.#target(pin));
      } catch {
        return;
      }
    }
  }

  #target(pin: Pin): MountTarget {
    return { path: this.#options.dir, childPath: pin.childPath() };
  }
}

/** Creates the template directory 0700 unless it is there (the image ships it). */
function ensureDir(dir: string): void {
  try {
    Deno.mkdirSync(dir, { mode: 0o700 });
  } catch (error) {
    if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
  }
}

/**
 * Whether the mount `dir` is on is read-only, asked of the kernel without changing anything:
 * rename(2) of a name onto itself checks for a writable mount before it looks the name up, so it
 * fails EROFS on a read-only mount, and otherwise ENOENT or (the name exists) does nothing.
 */
export function isReadOnlyMount(dir: string): boolean {
  const probe = `${dir}/.spiffe-csi-driver-ro-probe`;
  try {
    renameSync(probe, probe);
    return false;
  } catch (error) {
    return (error as { code?: unknown }).code === "EROFS";
  }
}
