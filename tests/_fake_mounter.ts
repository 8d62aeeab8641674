/** A Mounter that records calls and fails on demand (unit tests: no real mounts). */
import { type Mounter, MountError } from "../lib/mount/mounter.ts";
import type { MountTarget } from "../lib/mount/pinned_target.ts";

/** One recorded call. */
export interface MountCall {
  action: "bind" | "harden" | "unmount" | "list";
  source?: string;
  target?: string;
}

/** Records every call; set `failBind` / `failUnmount` to make the next calls fail. */
export class FakeMounter implements Mounter {
  calls: MountCall[] = [];
  failBind: string | undefined;
  failUnmount: string | undefined;
  listing = "";

  bindMount(source: string, target: MountTarget): Promise<void> {
    this.calls.push({ action: "bind", source, target: target.path });
    if (this.failBind) return Promise.reject(new MountError(this.failBind));
    return Promise.resolve();
  }

  harden(target: MountTarget): Promise<void> {
    this.calls.push({ action: "harden", target: target.path });
    return Promise.resolve();
  }

  unmount(target: MountTarget): Promise<void> {
    this.calls.push({ action: "unmount", target: target.path });
    if (this.failUnmount) return Promise.reject(new MountError(this.failUnmount));
    return Promise.resolve();
  }

  list(): Promise<string> {
    this.calls.push({ action: "list" });
    return Promise.resolve(this.listing);
  }
}
