/**
 * Start-up: the binds of the socket dir an earlier driver left on targets (upstream's, which
 * carry no nosuid,nodev,noexec, an older version's, whose flags never reached the host, or the
 * layers upstream 0.2.7 stacked, upstream #331) are each replaced by one bind from the template,
 * so from then on every bind on the node arrives hardened and a republish runs no exec.
 *
 * The mount listing is read as hints, never as facts: util-linux prints mount sources raw, so a
 * source with a newline in it can forge lines. A forged line can only ADD lines, though; it can
 * neither remove nor change the real line of another mount. So a target is left alone only when
 * exactly one line names it and that line shows nosuid,nodev,noexec (then it is the real line);
 * any target named twice (stacked, or forged) or shown without a flag is replaced, by the node
 * service, which pins it (dir_pin.ts) and acts only while the pin shows a bind of the socket dir.
 */
import { HARDENING, type Mounter } from "./mounter.ts";
import type { Logger } from "../log.ts";
import { parseTargetPath } from "./target_path.ts";
import { PinMovedError, sameFile } from "./dir_pin.ts";
import { errorMessage } from "../errors.ts";
import { withoutTrailingSlash } from "../config/flags.ts";

/** The paths the pass works on. */
export interface LeftoverPaths {
  socketDir: string;
  kubeletDir: string;
}

/** What the listing says of one target: how many lines name it, and the last line's flags. */
export interface Listed {
  lines: number;
  options: string[];
}

/**
 * Every target path under `<kubeletDir>/pods` that a line of `mount`'s listing names (util-linux's
 * `SRC on TARGET type FS (OPTIONS)`, printed raw), with how many lines name it. Each name is
 * checked against the target shape; the listing's escapes are never undone, since util-linux
 * prints none.
 */
function listedTargets(listing: string, kubeletDir: string): Map<string, Listed> {
  const marker = ` on ${withoutTrailingSlash(kubeletDir)}/pods/`;
  const targets = new Map<string, Listed>();
  for (const line of listing.split("\n")) {
    const start = line.indexOf(marker);
    const end = line.lastIndexOf(" type ");
    if (start < 0 || end <= start) continue;
    const target = line.slice(start + 4, end);
    try {
      parseTargetPath(target, kubeletDir);
    } catch {
      continue;
    }
    const options = /\(([^()]*)\)$/.exec(line)?.[1]?.split(",") ?? [];
    targets.set(target, { lines: (targets.get(target)?.lines ?? 0) + 1, options });
  }
  return targets;
}

/** True when the listing may be believed that `listed` is one hardened bind (see above). */
function surelyHardened(listed: Listed): boolean {
  return listed.lines === 1 && HARDENING.split(",").every((flag) => listed.options.includes(flag));
}

/** A target the listing shows with more than one layer, and that is a bind of the socket dir. */
export interface StackedTarget {
  target: string;
  /** Layers as the listing counts them (a hint: see listedTargets). */
  layers: number;
}

/** Targets that look stacked (diagnose's report; nothing acts on it). */
export async function findStackedMounts(
  paths: LeftoverPaths,
  mounter: Mounter,
): Promise<StackedTarget[]> {
  const stacked: StackedTarget[] = [];
  for (const [target, { lines }] of listedTargets(await mounter.list(), paths.kubeletDir)) {
    if (lines >= 2 && sameFile(target, paths.socketDir)) stacked.push({ target, layers: lines });
  }
  return stacked;
}

/** Options for replaceLeftoverBinds. */
export interface LeftoverOptions {
  /**
   * Replaces the bind of the socket dir on a target (with `all`, every layer of it) by one from
   * the template, pinned; the layers unmounted, or undefined when the target holds no bind of the
   * socket dir (the node service's replaceLeftover).
   */
  replace(path: string, all: boolean): Promise<number | undefined>;
  log: Logger;
  /** Unmount every layer of the socket dir on a target before the new bind, not only the top. */
  prune: boolean;
}

/**
 * Replaces the top bind of the socket dir on each target the listing does not surely show as one
 * hardened bind (with prune: all of its layers) by one bind from the template. A replaced target
 * ends with exactly one new bind on top whatever the listing claimed, so a forged count can never
 * take a pod's last bind away. Between the unmount and the new bind (one exec) the target is its
 * bare directory: a container started in that instant would see it empty. Returns how many
 * targets were replaced.
 */
export async function replaceLeftoverBinds(
  paths: LeftoverPaths,
  mounter: Mounter,
  options: LeftoverOptions,
): Promise<number> {
  const { log } = options;
  let replaced = 0;
  for (const [path, listed] of listedTargets(await mounter.list(), paths.kubeletDir)) {
    if (surelyHardened(listed)) continue;
    try {
      const removed = await options.replace(path, options.prune);
      if (removed === undefined) continue;
      replaced++;
      if (listed.lines > 1 && !options.prune) {
        log.warn("Stacked mounts on {target_path}: the mount table lists {layers} layers", {
          target_path: path,
          layers: listed.lines,
        });
      }
      log.info("Replaced {layers} layer(s) on {target_path} by a bind from the template", {
        target_path: path,
        layers: removed,
      });
    } catch (error) {
      // Unpublished meanwhile: nothing left to replace.
      if (error instanceof Deno.errors.NotFound || error instanceof PinMovedError) continue;
      log.warn("Could not replace the bind on {target_path}: {error}", {
        target_path: path,
        error: errorMessage(error),
      });
    }
  }
  log.info("Replaced {count} bind(s) of the socket dir left by an earlier driver", {
    count: replaced,
  });
  return replaced;
}
