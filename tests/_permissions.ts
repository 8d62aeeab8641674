/** Answers to Deno.permissions.query for a permission set, without running under it. */
import { withoutTrailingSlash } from "../lib/config/flags.ts";
import type { PermissionSet } from "../lib/config/permissions.ts";

/** `path` is `root` or lies under it, as Deno's path permissions count it. */
export function within(path: string, root: string): boolean {
  return path === root || path.startsWith(`${withoutTrailingSlash(root)}/`);
}

/** A query that grants exactly what `set` grants (for ungrantedPaths). */
export function grantedBy(
  set: PermissionSet,
): (d: Deno.PermissionDescriptor) => Promise<Deno.PermissionStatus> {
  return (d) => {
    const granted = d.name === "read" || d.name === "write"
      ? set[d.name].some((entry) => within(String(d.path), entry))
      : d.name === "net"
      ? set.net.includes(String(d.host))
      : d.name === "run"
      ? set.run.includes(String(d.command))
      : false;
    return Promise.resolve({ state: granted ? "granted" : "prompt" } as Deno.PermissionStatus);
  };
}
