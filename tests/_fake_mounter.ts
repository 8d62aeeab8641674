/** A Mounter that records calls and fails on demand (unit tests: no real mounts). */
import { type Mounter, MountError } from "../lib/mount.ts";

/** One recorded call. */
export interface MountCall {
  action: "bind" | "unmount" | "list";
  source?: string;
  target?: string;
}

/** Records every call; set `failBind` / `failUnmount` to make the next calls fail. */
export class FakeMounter implements Mounter {
  calls: MountCall[] = [];
  failBind: string | undefined;
  failUnmount: string | undefined;
  listing = "";

  bindMount(source: string, target: string): Promise<void> {
    this.calls.push({ action: "bind", source, target });
    if (this.failBind) return Promise.reject(new MountError(this.failBind));
    return Promise.resolve();
  }

  unmount(target: string): Promise<void> {
    this.calls.push({ action: "unmount", target });
    if (this.failUnmount) return Promise.reject(new MountError(this.failUnmount));
    return Promise.resolve();
  }

  list(): Promise<string> {
    this.calls.push({ action: "list" });
    return Promise.resolve(this.listing);
  }
}
