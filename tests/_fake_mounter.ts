/** A Mounter that records calls and fails on demand (unit tests: no real mounts). */
import { type Mounter, MountError, type MountTarget } from "../lib/mount/mounter.ts";
import type { PinnedDir } from "../lib/mount/dir_pin.ts";

/** One recorded call. */
export interface MountCall {
  action: "bind" | "harden" | "unmount" | "list";
  source?: string;
  target?: string;
}

/**
 * Records every call; set `failBind` to make the next binds fail. It mounts
 * nothing, but keeps the targets its binds would cover in `bound`, so `isBind` can stand in for
 * the node service's device-and-inode check (`isSocketDirBind`).
 */
export class FakeMounter implements Mounter {
  calls: MountCall[] = [];
  failBind: string | undefined;
  /** Target paths a bind covers now. */
  bound = new Set<string>();
  /** Set false to make binds not land (as when the directory moved during the mount). */
  bindsLand = true;

  bindMount(source: string, target: MountTarget): Promise<void> {
    this.calls.push({ action: "bind", source, target: target.path });
    if (this.failBind) return Promise.reject(new MountError(this.failBind));
    if (this.bindsLand) this.bound.add(target.path);
    return Promise.resolve();
  }

  /** Whether a bind covers the pinned directory (use as `isSocketDirBind`). */
  isBind(dir: PinnedDir): boolean {
    return this.bound.has(dir.path);
  }

  harden(target: MountTarget, _readOnly: boolean): Promise<void> {
    this.calls.push({ action: "harden", target: target.path });
    return Promise.resolve();
  }

  /** Set to make unmounts wait for it, as a umount child runs (counted in `unmounting`). */
  unmountGate: Promise<void> | undefined;
  /** Unmounts waiting for `unmountGate` now. */
  unmounting = 0;

  unmount(target: MountTarget): Promise<void> {
    this.calls.push({ action: "unmount", target: target.path });
    this.bound.delete(target.path);
    target.started?.();
    if (!this.unmountGate) return Promise.resolve();
    this.unmounting++;
    return this.unmountGate.then(() => void this.unmounting--);
  }

  list(): Promise<string> {
    this.calls.push({ action: "list" });
    return Promise.resolve("");
  }
}
