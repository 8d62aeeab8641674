/** Small filesystem probes shared by the handlers: identity comparison and layer removal. */
import type { PinnedTarget } from "./pinned_target.ts";

/**
 * True when `a` and `b` are the same directory (same device and inode), i.e. `a` is a bind of `b`;
 * false when either cannot be stat'ed. Synchronous, for use while a target is pinned.
 */
export function sameFile(a: string, b: string): boolean {
  try {
    const x = Deno.statSync(a);
    const y = Deno.statSync(b);
    return x.dev === y.dev && x.ino !== null && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** True for an error that says the path is a mount point (rmdir gives EBUSY). */
export function isBusy(error: unknown): boolean {
  return error instanceof Deno.errors.Busy || errorCode(error) === "EBUSY";
}

/** True for an error that says a directory is not empty. */
export function isNotEmpty(error: unknown): boolean {
  return errorCode(error) === "ENOTEMPTY";
}

function errorCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/** How a removal ended. */
export interface RemoveResult {
  /** Mount layers unmounted on the way. */
  unmounted: number;
  /** The directory is gone (false: it stays because it is not empty and not a mount point). */
  removed: boolean;
}

type Attempt = "removed" | "busy" | "not-empty";

function tryRemove(name: string): Attempt {
  try {
    Deno.removeSync(name);
    return "removed";
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return "removed";
    if (isNotEmpty(error)) return "not-empty";
    if (isBusy(error)) return "busy";
    throw error;
  }
}

/**
 * Removes the target directory, unmounting every layer stacked on it first. rmdir on a mount point
 * fails with EBUSY, so each EBUSY means one more layer to unmount: no mount table scan and no extra
 * exec when the path is a plain directory. A path that does not exist counts as removed.
 */
export async function unmountAndRemove(
  target: PinnedTarget,
  unmount: (target: PinnedTarget) => Promise<void>,
  maxLayers: number,
): Promise<RemoveResult> {
  let unmounted = 0;
  while (true) {
    const attempt = target.run(tryRemove);
    if (attempt !== "busy") return { unmounted, removed: attempt === "removed" };
    if (unmounted >= maxLayers) {
      throw new Error(`still a mount point after ${unmounted} unmounts`);
    }
    await unmount(target);
    unmounted++;
  }
}
