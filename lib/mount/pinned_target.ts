/**
 * The filesystem steps on one publish target, each taken through the pin (dir_pin.ts) so that
 * a symlink swapped into the target's path cannot redirect it: the parent is pinned and verified,
 * the target is created, inspected and removed by name inside the pinned parent, and mount/umount
 * act on the pinned target directory itself.
 */
import { rmdirSync } from "node:fs";
import { type Pin, sameFile } from "./dir_pin.ts";
import { quote, TargetPathError } from "./target_path.ts";

/** What mount and umount are pointed at: the pinned directory, named for messages by its path. */
export interface MountTarget {
  /** The absolute path, as the client named it (for messages only). */
  readonly path: string;
  /** The path the child resolves to the pinned directory itself. */
  readonly childPath: string;
}

/** A target path split into the parent the pin holds and the name worked on inside it. */
export class PinnedTarget {
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

  /** The pinned target directory, for the mounter (call after `enter`). */
  mountTarget(pin: Pin): MountTarget {
    return { path: this.path, childPath: pin.childPath() };
  }

  /**
   * Pins the parent and reports whether the target exists; throws TargetPathError when it is a
   * symlink or not a directory, and NotFound when the parent is missing.
   */
  exists(pin: Pin): boolean {
    pin.at(this.parent);
    const info = lstatOrNull(pin.path(this.name));
    if (info === null) return false;
    if (info.isSymlink) throw new TargetPathError(`target path ${quote(this.path)} is a symlink`);
    if (!info.isDirectory) {
      throw new TargetPathError(`target path ${quote(this.path)} is not a directory`);
    }
    return true;
  }

  /** Creates the target 0750 inside the pinned parent (after `exists`); false when it already exists. */
  create(pin: Pin): boolean {
    try {
      Deno.mkdirSync(pin.path(this.name), { mode: 0o750 });
      return true;
    } catch (error) {
      if (error instanceof Deno.errors.AlreadyExists) return false;
      throw error;
    }
  }

  /** Pins the parent and lists the other directories in it (kubelet keeps only the target there). */
  strays(pin: Pin): string[] {
    pin.at(this.parent);
    return [...Deno.readDirSync(pin.path())]
      .filter((entry) => entry.isDirectory && entry.name !== this.name)
      .map((entry) => entry.name);
  }

  /** Pins the target directory itself: the top mount on it, if any. */
  enter(pin: Pin): void {
    pin.at(this.parent);
    pin.into(this.name);
  }

  /**
   * Removes the target, unmounting every layer stacked on it first, as long as `isOurs` says the
   * pinned top layer is one this driver may unmount; any other layer throws ForeignMountError and
   * stays. rmdir on a mount point fails with EBUSY, so each EBUSY means one more layer: no mount
   * table scan and no exec for a plain directory. A missing target counts as removed; a missing
   * parent throws NotFound. True when the directory is gone (false: not empty, not a mount).
   */
  async clear(
    pin: Pin,
    unmount: (target: MountTarget) => Promise<void>,
    maxLayers: number,
    isOurs: (pin: Pin) => boolean,
  ): Promise<boolean> {
    for (let unmounted = 0;; unmounted++) {
      pin.at(this.parent);
      const attempt = this.remove(pin);
      if (attempt !== "busy") return attempt === "removed";
      if (unmounted >= maxLayers) {
        throw new Error(`still a mount point after ${unmounted} unmounts`);
      }
      pin.into(this.name);
      if (!isOurs(pin)) throw new ForeignMountError(this.path);
      await unmount(this.mountTarget(pin));
    }
  }

  /**
   * With the pin at the parent: rmdir(2) of the target, never an unlink (Deno.remove checks the
   * type first and unlinks a symlink swapped in after the check; node:fs rmdirSync is rmdir alone).
   */
  remove(pin: Pin): "removed" | "busy" | "not-empty" {
    try {
      rmdirSync(pin.path(this.name));
      return "removed";
    } catch (error) {
      switch (errorCode(error)) {
        case "ENOENT":
          return "removed";
        case "EBUSY":
          return "busy";
        case "ENOTEMPTY":
        case "EEXIST":
          return "not-empty";
        case "ENOTDIR": {
          const what = lstatOrNull(pin.path(this.name))?.isSymlink
            ? "a symlink"
            : "not a directory";
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
  /** The target path, as the client named it. */
  readonly path: string;

  constructor(path: string) {
    super(`${path} holds a mount that is not the Workload API socket directory`);
    this.path = path;
  }
}

/** True when the pinned directory is `dir` (same device and inode): the target is a bind of it. */
export function pinnedIs(pin: Pin, dir: string): boolean {
  return sameFile(pin.path(), dir);
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

function errorCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}
