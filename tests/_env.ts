/** Test environment facts. */

// In-process handlers pin targets by changing the working directory; put it back afterwards.
const START_DIR = Deno.cwd();

import { type MountEntry, parseMountListing } from "../lib/mount_table.ts";

/** The mount table of this mount namespace, as `mount` lists it. */
export async function mountTable(): Promise<MountEntry[]> {
  const output = await new Deno.Command("/usr/bin/mount", { stdout: "piped", stderr: "piped" })
    .output();
  if (!output.success) throw new Error(new TextDecoder().decode(output.stderr));
  return parseMountListing(new TextDecoder().decode(output.stdout));
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

/** A kubelet-shaped temp tree: `<root>/agent` (socket dir), `<root>/kubelet/pods`, `<root>/csi/csi.sock`, `<root>/cwd`. */
export interface TempTree {
  root: string;
  socketDir: string;
  kubeletDir: string;
  csiSocketPath: string;
  /** `<root>/cwd`, a symlink to /proc/self/cwd (the driver's -cwd-link). */
  cwdLink: string;
  /** `<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<vol>/mount`, with the parent created (0750) as kubelet does. */
  target(uid: string, volume?: string): Promise<string>;
  /** Removes the tree (only after every mount in it is gone). */
  remove(): Promise<void>;
}

/** Makes a fresh temp tree. */
export async function makeTempTree(prefix = "spiffe-csi-test-"): Promise<TempTree> {
  const root = await Deno.makeTempDir({ prefix });
  const tree: TempTree = {
    root,
    socketDir: `${root}/agent`,
    kubeletDir: `${root}/kubelet`,
    csiSocketPath: `${root}/csi/csi.sock`,
    cwdLink: `${root}/cwd`,
    async target(uid, volume = "spiffe") {
      const parent = `${root}/kubelet/pods/${uid}/volumes/kubernetes.io~csi/${volume}`;
      await Deno.mkdir(parent, { recursive: true, mode: 0o750 });
      return `${parent}/mount`;
    },
    async remove() {
      Deno.chdir(START_DIR);
      await Deno.remove(root, { recursive: true });
    },
  };
  await Deno.mkdir(tree.socketDir, { recursive: true });
  await Deno.mkdir(`${root}/csi`, { recursive: true });
  await Deno.mkdir(`${root}/kubelet/pods`, { recursive: true });
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
