/**
 * The filesystem steps on one publish target, each taken through the pin (dir_pin.ts) so that
 * a symlink swapped into the target's path cannot redirect it: the parent is pinned and verified,
 * the target is created, inspected and removed by name inside the pinned parent, and the target
 * directory itself is pinned for mount and umount.
 */
import { rmdirSync } from "node:fs";
import type { PinnedDir, PinSection } from "./dir_pin.ts";
import { quote, TargetPathError } from "./target_path.ts";

/** Pins the parent of the target `path` (absolute): the only way to work on the target. */
export function pinTarget(section: PinSection, path: string): PinnedTarget {
  const slash = path.lastIndexOf("/");
  if (slash <= 0 || slash === path.length - 1) {
    throw new RangeError(`not a pinnable path: ${path}`);
  }
  return new PinnedTarget(path, section.at(path.slice(0, slash)), path.slice(slash + 1));
}

/** A target named inside its pinned parent; valid as long as the parent's pin is. */
export class PinnedTarget {
  /** The absolute path, as the client named it. */
  readonly path: string;
  readonly #parent: PinnedDir;
  readonly #name: string;

  constructor(path: string, parent: PinnedDir, name: string) {
    this.path = path;
    this.#parent = parent;
    this.#name = name;
  }

  /** Whether the target exists; throws TargetPathError when it is a symlink or not a directory. */
  exists(): boolean {
    const info = lstatOrNull(this.#parent.inside(this.#name));
    if (info === null) return false;
    if (info.isSymlink) throw new TargetPathError(`target path ${quote(this.path)} is a symlink`);
    if (!info.isDirectory) {
      throw new TargetPathError(`target path ${quote(this.path)} is not a directory`);
    }
    return true;
  }

  /** Creates the target 0750 unless it is there. */
  create(): void {
    try {
      Deno.mkdirSync(this.#parent.inside(this.#name), { mode: 0o750 });
    } catch (error) {
      if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
    }
  }

  /** The other directories beside the target, by path (kubelet keeps only the target there). */
  strays(): string[] {
    return [...Deno.readDirSync(this.#parent.inside())]
      .filter((entry) => entry.isDirectory && entry.name !== this.#name)
      .map((entry) => `${this.#parent.path}/${entry.name}`);
  }

  /** Pins the target directory itself: the top mount on it, if any. This handle ends there. */
  enter(): PinnedDir {
    return this.#parent.into(this.#name);
  }

  /**
   * rmdir(2) of the target, never an unlink (Deno.remove checks the type first and unlinks a
   * symlink swapped in after the check; node:fs rmdirSync is rmdir alone). A missing target counts
   * as removed; rmdir on a mount point fails with EBUSY, so "busy" means a mount is on it.
   */
  remove(): "removed" | "busy" | "not-empty" {
    const path = this.#parent.inside(this.#name);
    try {
      rmdirSync(path);
      return "removed";
    } catch (error) {
      switch ((error as { code?: unknown } | null)?.code) {
        case "ENOENT":
          return "removed";
        case "EBUSY":
          return "busy";
        case "ENOTEMPTY":
        case "EEXIST":
          return "not-empty";
        case "ENOTDIR": {
          const what = lstatOrNull(path)?.isSymlink ? "a symlink" : "not a directory";
          throw new TargetPathError(`target path ${quote(this.path)} is ${what}`);
        }
      }
      throw error;
    }
  }
}

/** The target holds a mount that is not a bind of the socket dir: another driver's, left alone. */
export class ForeignMountError extends Error {
  override name = "ForeignMountError";

  constructor(path: string) {
    super(`${path} holds a mount that is not the Workload API socket directory`);
  }
}

function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}
