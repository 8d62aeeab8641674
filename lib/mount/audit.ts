/** Start-up audit: find published targets with more than one mount layer (upstream #331) and optionally prune them. */
import type { Mounter } from "./mounter.ts";
import type { Logger } from "../log.ts";
import { layersUnder, parseMountListing } from "./mount_table.ts";
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

/** Targets under `<kubeletDir>/pods` that hold this driver's bind and more than one layer. */
export async function findStackedMounts(
  paths: AuditPaths,
  mounter: Mounter,
): Promise<StackedTarget[]> {
  const entries = parseMountListing(await mounter.list());
  const stacked: StackedTarget[] = [];
  for (const [target, layers] of layersUnder(entries, `${paths.kubeletDir}/pods`)) {
    if (layers < 2) continue;
    try {
      parseTargetPath(target, paths.kubeletDir);
    } catch {
      continue;
    }
    if (sameFile(target, paths.socketDir)) {
      stacked.push({ target, layers });
    }
  }
  return stacked;
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

/** Logs every stacked target; with prune, unmounts all but one layer of each. Returns what it found. */
export async function auditStackedMounts(
  paths: AuditPaths,
  options: AuditOptions,
): Promise<StackedTarget[]> {
  const stacked = await findStackedMounts(paths, options.mounter);
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
  }
  if (stacked.length === 0) options.log.debug("No stacked mounts under the kubelet pods dir");
  return stacked;
}
