/**
 * A publish target whose filesystem operations cannot be redirected by a symlink swapped into its
 * path. Each step makes the target's parent directory the process's working directory, proves with
 * getcwd that it was reached without a symlink, then works on the last component by relative name.
 * Mount and umount are started while pinned and reach the target through `/proc/self/cwd`, which
 * the kernel resolves to the pinned directory itself, not to the path string again.
 */
import { invalidArgument } from "./csi/errors.ts";
import { quote } from "./target_path.ts";

/** A target that mount/umount can be pointed at without re-resolving its path. */
export interface MountTarget {
  /** The absolute path, as the client named it. */
  readonly path: string;
  /** The path a child started while pinned uses to reach the target through the pinned directory. */
  readonly pinnedPath: string;
  /** Pins the working directory to the target's parent (throws InvalidArgument on a symlink). */
  pin(): void;
}

/** A target path (no trailing slash) worked on relative to its pinned parent. */
export class PinnedTarget implements MountTarget {
  readonly path: string;
  readonly parent: string;
  readonly name: string;

  constructor(path: string) {
    const slash = path.lastIndexOf("/");
    if (slash <= 0 || slash === path.length - 1) {
      throw new RangeError(`not a pinnable path: ${path}`);
    }
    this.path = path;
    this.parent = path.slice(0, slash);
    this.name = path.slice(slash + 1);
  }

  get pinnedPath(): string {
    return `/proc/self/cwd/${this.name}`;
  }

  pin(): void {
    Deno.chdir(this.parent);
    let cwd: string;
    try {
      cwd = Deno.cwd();
    } catch {
      throw invalidArgument(`target path ${quote(this.path)} changed while in use`);
    }
    if (cwd !== this.parent) {
      throw invalidArgument(
        `target path ${quote(this.path)} resolves through a symlink (to ${quote(cwd)})`,
      );
    }
  }

  /**
   * Runs `work` on the target's name with the parent pinned. `work` must be synchronous: an await
   * would let another call move the working directory.
   */
  run<T>(work: (name: string) => T): T {
    this.pin();
    const info = lstatOrNull(this.name);
    if (info?.isSymlink) throw invalidArgument(`target path ${quote(this.path)} is a symlink`);
    return work(this.name);
  }
}

/** lstat that answers null for a missing path. */
export function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}
