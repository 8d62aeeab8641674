/**
 * Start-up audit: find published targets with more than one mount layer (upstream #331) and
 * optionally prune them, and harden binds a crash left without nosuid,nodev,noexec.
 */
import type { Mounter } from "./mounter.ts";
import type { Logger } from "../log.ts";
import { layersUnder, type MountEntry, parseMountListing } from "./mount_table.ts";
import { parseTargetPath } from "./target_path.ts";
import { pinnedIs, PinnedTarget } from "./pinned_target.ts";
import { type DirPin, sameFile } from "./dir_pin.ts";

/** A target with stacked layers. */
export interface StackedTarget {
  target: string;
  layers: number;
}

/** Options for findStackedMounts. */
export interface AuditPaths {
  socketDir: string;
  kubeletDir: string;
}

const HARDENING = ["nosuid", "nodev", "noexec"];

/** Targets under `<kubeletDir>/pods` that hold this driver's bind and more than one layer. */
export async function findStackedMounts(
  paths: AuditPaths,
  mounter: Mounter,
): Promise<StackedTarget[]> {
  return stackedIn(parseMountListing(await mounter.list()), paths);
}

function stackedIn(entries: MountEntry[], paths: AuditPaths): StackedTarget[] {
  const stacked: StackedTarget[] = [];
  for (const [target, layers] of layersUnder(entries, `${paths.kubeletDir}/pods`)) {
    if (layers >= 2 && isOurs(target, paths)) stacked.push({ target, layers });
  }
  return stacked;
}

// A valid target path that is a bind of the socket dir (a first check; each action re-pins).
function isOurs(target: string, paths: AuditPaths): boolean {
  try {
    parseTargetPath(target, paths.kubeletDir);
  } catch {
    return false;
  }
  return sameFile(target, paths.socketDir);
}

/** Targets whose top layer is this driver's bind without one of nosuid, nodev, noexec. */
function unhardenedIn(entries: MountEntry[], paths: AuditPaths): string[] {
  const prefix = `${paths.kubeletDir}/pods/`;
  const top = new Map<string, MountEntry>();
  // The listing is in mount order: the last entry on a path is its top layer.
  for (const entry of entries) if (entry.target.startsWith(prefix)) top.set(entry.target, entry);
  return [...top.values()]
    .filter((entry) => HARDENING.some((flag) => !entry.options.includes(flag)))
    .map((entry) => entry.target)
    .filter((target) => isOurs(target, paths));
}

/** Options for auditStackedMounts. */
export interface AuditOptions {
  mounter: Mounter;
  /** The pin every unmount goes through (shared with the node service). */
  pins: DirPin;
  log: Logger;
  /** Unmount the extra layers, leaving one. */
  prune: boolean;
}

/**
 * Logs every stacked target; with prune, unmounts all but one layer of each. Hardens every bind
 * of the socket dir left without nosuid,nodev,noexec (a driver killed between its bind and the
 * hardening remount), so a republish needs no exec. Returns the stacked targets it found.
 */
export async function auditStackedMounts(
  paths: AuditPaths,
  options: AuditOptions,
): Promise<StackedTarget[]> {
  const entries = parseMountListing(await options.mounter.list());
  const unhardened = new Set(unhardenedIn(entries, paths));
  const stacked = stackedIn(entries, paths);
  for (const { target, layers } of stacked) {
    options.log.warn("Stacked mounts on {target_path}: {layers} layers", {
      target_path: target,
      layers,
    });
    if (!options.prune) continue;
    const pinned = new PinnedTarget(target);
    const count = await options.pins.hold(async (pin) => {
      let pruned = 0;
      for (; pruned < layers - 1; pruned++) {
        pinned.enter(pin);
        if (!pinnedIs(pin, paths.socketDir)) break;
        await options.mounter.unmount(pinned.mountTarget(pin));
      }
      return pruned;
    });
    options.log.info("Pruned {count} extra layers on {target_path}", {
      target_path: target,
      count,
    });
    if (count > 0) unhardened.add(target); // the layer now on top was under the listed one
  }
  if (stacked.length === 0) options.log.debug("No stacked mounts under the kubelet pods dir");
  for (const target of unhardened) {
    const pinned = new PinnedTarget(target);
    const hardened = await options.pins.hold(async (pin) => {
      pinned.enter(pin);
      if (!pinnedIs(pin, paths.socketDir)) return false;
      await options.mounter.harden(pinned.mountTarget(pin));
      return true;
    });
    if (hardened) {
      options.log.warn("Hardened {target_path}: it was bound without nosuid,nodev,noexec", {
        target_path: target,
      });
    }
  }
  return stacked;
}
