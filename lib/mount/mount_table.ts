/**
 * Reading the mount table without /proc (Deno refuses /proc under a tight permission set): the
 * listing printed by `mount` with no arguments, `SRC on TARGET type FSTYPE (OPTIONS)`.
 */

/** One line of the mount listing. */
export interface MountEntry {
  source: string;
  target: string;
  fsType: string;
  options: string[];
}

// Source is lazy, target greedy: a target containing " on " still parses; the fs type and options
// are anchored at the end of the line, so a target containing " type " parses too.
const LINE = /^(.*?) on (.*) type (\S+) \(([^()]*)\)$/;

/** Parses `mount` output (util-linux and busybox print the same shape). Unparsable lines are skipped. */
export function parseMountListing(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split("\n")) {
    const match = LINE.exec(line);
    if (!match) continue;
    entries.push({
      source: unescapeOctal(match[1] as string),
      target: unescapeOctal(match[2] as string),
      fsType: match[3] as string,
      options: (match[4] as string).split(",").filter((option) => option !== ""),
    });
  }
  return entries;
}

/** How many mounts are stacked on each target, for targets under `root`. */
export function layersUnder(entries: MountEntry[], root: string): Map<string, number> {
  const prefix = root.endsWith("/") ? root : `${root}/`;
  const layers = new Map<string, number>();
  for (const entry of entries) {
    if (!entry.target.startsWith(prefix)) continue;
    layers.set(entry.target, (layers.get(entry.target) ?? 0) + 1);
  }
  return layers;
}

/** Number of mounts stacked on exactly `target`. */
export function layersAt(entries: MountEntry[], target: string): number {
  return entries.filter((entry) => entry.target === target).length;
}

/** Undoes the octal escapes of space, tab, newline and backslash (\040 \011 \012 \134). */
export function unescapeOctal(text: string): string {
  return text.replace(
    /\\(0[0-7]{2}|1[0-7]{2})/g,
    (_, code: string) => String.fromCharCode(parseInt(code, 8)),
  );
}
