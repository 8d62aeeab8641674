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
import { type PinSection, sameFile } from "./dir_pin.ts";

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
  /** In a pinned section: makes sure `path` is a hardened bind of the socket dir as it is now. */
  ensure(section: PinSection): Promise<void>;
}

/** The template bind; every method runs in the caller's pinned section (dir_pin.ts). */
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
  async ensure(section: PinSection): Promise<void> {
    const { socketDir, dir, mounter } = this.#options;
    if (this.#built && sameFile(dir, socketDir)) return;
    this.#built = false;
    ensureDir(dir);
    await this.#unmountAll(section);
    // Probed before the bind: the bind copies whatever the socket dir's mount has now.
    const readOnly = isReadOnlyMount(socketDir);
    await mounter.bindMount(socketDir, section.at(dir).mountTarget());
    const bound = section.at(dir);
    if (!bound.isSame(socketDir)) {
      throw new Error(`the bind of ${socketDir} did not land on ${dir}`);
    }
    await mounter.harden(bound.mountTarget(), readOnly);
    this.#built = true;
  }

  /** Unmounts the template (published binds are mounts of their own and stay). */
  async release(section: PinSection): Promise<void> {
    this.#built = false;
    await this.#unmountAll(section);
  }

  // Only this driver mounts on its template directory: unmount layers until umount says there
  // is none (a leftover of an earlier run in this mount namespace, or a stale template). A
  // template of a socket dir removed since is pinned too: chdir reaches its root, but getcwd
  // cannot name a removed directory. It is still ours to unmount.
  async #unmountAll(section: PinSection): Promise<void> {
    for (let layer = 0; layer < MAX_LEFTOVERS; layer++) {
      const top = section.at(this.#options.dir, { removed: true });
      try {
        await this.#options.mounter.unmount(top.mountTarget());
      } catch {
        return;
      }
    }
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
function isReadOnlyMount(dir: string): boolean {
  const probe = `${dir}/.spiffe-csi-driver-ro-probe`;
  try {
    renameSync(probe, probe);
    return false;
  } catch (error) {
    return (error as { code?: unknown }).code === "EROFS";
  }
}
