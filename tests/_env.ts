/** Test environment facts. */

// In-process handlers pin targets by changing the working directory; put it back afterwards.
const START_DIR = Deno.cwd();

// The listing `mount` prints, `SRC on TARGET type FSTYPE (OPTIONS)`: the driver never reads it
// as fact (lib/mount/leftovers.ts), the tests read their own namespace's with it.

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

/** The mount table of this mount namespace, as `mount` lists it. */
export async function mountTable(): Promise<MountEntry[]> {
  const output = await new Deno.Command("/usr/bin/mount", { stdout: "piped", stderr: "piped" })
    .output();
  if (!output.success) throw new Error(new TextDecoder().decode(output.stderr));
  return parseMountListing(new TextDecoder().decode(output.stdout));
}

/** The mount table's entries at `root` or under it, in table order (oldest first). */
export async function mountEntriesUnder(root: string): Promise<MountEntry[]> {
  return (await mountTable()).filter((entry) =>
    entry.target === root || entry.target.startsWith(`${root}/`)
  );
}

/** A mount as /proc/self/mountinfo lists it: its id, the id of the mount it sits on, and where. */
export interface MountInfo {
  id: number;
  parent: number;
  target: string;
}

/** Parses /proc/self/mountinfo (`ID PARENT MAJ:MIN ROOT TARGET ...`). */
export function parseMountInfo(text: string): MountInfo[] {
  return text.split("\n").filter((line) => line !== "").map((line) => {
    const [id, parent, , , target] = line.split(" ");
    return { id: Number(id), parent: Number(parent), target: unescapeOctal(target ?? "") };
  });
}

/** This mount namespace's table with mount ids (through cat: Deno refuses /proc/self by path). */
export async function mountInfo(): Promise<MountInfo[]> {
  const output = await new Deno.Command("cat", { args: ["/proc/self/mountinfo"], stderr: "piped" })
    .output();
  if (!output.success) throw new Error(new TextDecoder().decode(output.stderr));
  return parseMountInfo(new TextDecoder().decode(output.stdout));
}

/**
 * Whether a mount at `target` sits on another mount at `target`: a stacked layer. Counting lines
 * is not enough: the kernel lists the table in chunks, so an unmount and a new mount at the same
 * path between two chunks show that path twice, both on the same parent.
 */
export function stackedAt(entries: MountInfo[], target: string): boolean {
  const here = entries.filter((entry) => entry.target === target);
  return here.some((upper) => here.some((lower) => upper.parent === lower.id));
}

/** The mount targets at `root` or under it, in table order (oldest first). */
export async function mountsUnder(root: string): Promise<string[]> {
  return (await mountEntriesUnder(root)).map((entry) => entry.target);
}

/** Lazily unmounts every mount at `root` or under it, newest first. */
export async function unmountUnder(root: string): Promise<void> {
  for (let round = 0; round < 100; round++) {
    const targets = (await mountInfo()).map((m) => m.target)
      .filter((target) => target === root || target.startsWith(`${root}/`));
    if (targets.length === 0) return;
    for (const target of targets.reverse()) {
      await new Deno.Command("/usr/bin/umount", { args: ["-l", target], stderr: "null" }).output();
    }
  }
}

/** The per-mount flags of the top mount at `target`, from mountinfo (escaped: never misread). */
export async function mountFlags(target: string, pid: number | "self" = "self"): Promise<string[]> {
  const output = await new Deno.Command("cat", {
    args: [`/proc/${pid}/mountinfo`],
    stderr: "piped",
  }).output();
  if (!output.success) throw new Error(new TextDecoder().decode(output.stderr));
  const lines = new TextDecoder().decode(output.stdout).split("\n")
    .map((line) => line.split(" "))
    .filter((fields) => unescapeOctal(fields[4] ?? "") === target);
  const top = lines.at(-1);
  if (top === undefined) throw new Error(`nothing is mounted at ${target} (pid ${pid})`);
  return (top[5] ?? "").split(",");
}

/** How many mounts are stacked at exactly `target`, by mountinfo (which no mount source can forge). */
export async function layers(target: string): Promise<number> {
  return (await mountInfo()).filter((entry) => entry.target === target).length;
}

/** Writes a line to stdout at once (progress and replay seeds of the long suites). */
export function say(line: string): void {
  Deno.stdout.writeSync(new TextEncoder().encode(`${line}\n`));
}

/** Resolves after `ms`: for backoff and pacing only, never to wait for something to happen. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `attempt` until it returns a value (not undefined), or fails after `timeoutMs` with the last error. */
export async function waitFor<T>(
  what: string,
  attempt: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 30_000,
  intervalMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = undefined;
  while (true) {
    try {
      const value = await attempt();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? `: ${last.message}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await sleep(intervalMs);
  }
}

/** The seed CI runs with when none is given, so a CI run replays exactly. */
export const CI_SEED = 20_261_128;

/**
 * A seed for a randomized test: `variable` from the environment (to replay a run), else CI_SEED
 * when CI is set, else a random one. It is printed either way, so any run can be replayed.
 */
export function testSeed(variable: string, label: string): number {
  const given = Deno.env.get(variable);
  const seed = given !== undefined
    ? Number(given)
    : Deno.env.get("CI")
    ? CI_SEED
    : Math.floor(Math.random() * 2 ** 31);
  if (!Number.isSafeInteger(seed)) throw new RangeError(`${variable} must be an integer: ${given}`);
  say(`${label} seed: ${seed} (replay with ${variable}=${seed})`);
  return seed;
}

/** mulberry32: a small seeded PRNG, so a failing random order or input can be replayed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** True inside tests/run.sh's private mount namespace (root): real-mount tests run. */
export const REAL_MOUNTS = Deno.env.get("SPIFFE_CSI_REAL_MOUNTS") === "1";

/** A kubelet-shaped temp tree: `<root>/agent` (socket dir), `<root>/kubelet/pods`, `<root>/csi/csi.sock`, and `<root>.run/cwd`. */
export interface TempTree {
  root: string;
  socketDir: string;
  kubeletDir: string;
  csiSocketPath: string;
  /** `<root>.run/cwd`, a symlink to /proc/self/cwd (the driver's -cwd-link); its template beside it. */
  cwdLink: string;
  /** `<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<vol>/mount`, with the parent created (0750) as kubelet does. */
  target(uid: string, volume?: string): Promise<string>;
  /** Removes the tree (only after every mount in it is gone). */
  remove(): Promise<void>;
  /** `await using tree = await makeTempTree()` removes it at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Makes a fresh temp tree. */
export async function makeTempTree(prefix = "spiffe-csi-test-"): Promise<TempTree> {
  const root = await Deno.makeTempDir({ prefix });
  // The driver's own run dir (its -cwd-link and, beside it, its template mount) sits outside the
  // tree, so "nothing is mounted under the tree" means the pods and the sockets alone.
  const run = `${root}.run`;
  const tree: TempTree = {
    root,
    socketDir: `${root}/agent`,
    kubeletDir: `${root}/kubelet`,
    csiSocketPath: `${root}/csi/csi.sock`,
    cwdLink: `${run}/cwd`,
    async target(uid, volume = "spiffe") {
      const parent = `${root}/kubelet/pods/${uid}/volumes/kubernetes.io~csi/${volume}`;
      await Deno.mkdir(parent, { recursive: true, mode: 0o750 });
      return `${parent}/mount`;
    },
    [Symbol.asyncDispose]() {
      return this.remove();
    },
    async remove() {
      Deno.chdir(START_DIR);
      // The driver's template (<root>/socket-dir) is a bind of the socket dir: a recursive
      // removal must not descend through it or any other mount left in the tree.
      for (const dir of [run, root]) {
        if (REAL_MOUNTS) await unmountUnder(dir);
        await Deno.remove(dir, { recursive: true });
      }
    },
  };
  await Deno.mkdir(tree.socketDir, { recursive: true });
  await Deno.mkdir(`${root}/csi`, { recursive: true });
  await Deno.mkdir(`${root}/kubelet/pods`, { recursive: true });
  await Deno.mkdir(run);
  await Deno.symlink("/proc/self/cwd", tree.cwdLink);
  return tree;
}

/** Whether anything (file, dir, socket, dangling link) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** Every path under `dir`, relative to it, with its lstat. */
export function walk(dir: string, prefix = ""): Map<string, Deno.FileInfo> {
  const out = new Map<string, Deno.FileInfo>();
  for (const entry of Deno.readDirSync(`${dir}${prefix}`)) {
    const path = `${prefix}/${entry.name}`;
    const info = Deno.lstatSync(`${dir}${path}`);
    out.set(path, info);
    if (info.isDirectory) { for (const [p, i] of walk(dir, path)) out.set(p, i); }
  }
  return out;
}

/** Resolves once every promise callback queued so far has run: a timer fires only after all. */
export function settled(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}
