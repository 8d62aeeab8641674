/** The kubelet-shaped directory tree each driver under test runs on. */

/** `<root>/agent` (socket dir), `<root>/kubelet/pods`, `<root>/csi/csi.sock`, and `<root>.run/cwd`. */
export interface BenchTree {
  socketDir: string;
  kubeletDir: string;
  csiSocketPath: string;
  /** `<root>.run/cwd`, a symlink to /proc/self/cwd (the driver's -cwd-link). */
  cwdLink: string;
  /** A pod's target path, `<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/spiffe/mount`. */
  target(uid: string): Promise<string>;
  /** Removes the tree (once the driver has unmounted all it mounted there). */
  remove(): Promise<void>;
}

/** Makes a fresh tree in the temp dir. */
export async function makeTree(): Promise<BenchTree> {
  const root = await Deno.makeTempDir({ prefix: "spiffe-csi-bench-" });
  // The driver's run dir (its -cwd-link, and its template beside it) sits outside the tree.
  const runDir = `${root}.run`;
  const tree: BenchTree = {
    socketDir: `${root}/agent`,
    kubeletDir: `${root}/kubelet`,
    csiSocketPath: `${root}/csi/csi.sock`,
    cwdLink: `${runDir}/cwd`,
    async target(uid) {
      // The volume's directory exists (0750) before the call, as kubelet makes it.
      const volumeDir = `${tree.kubeletDir}/pods/${uid}/volumes/kubernetes.io~csi/spiffe`;
      await Deno.mkdir(volumeDir, { recursive: true, mode: 0o750 });
      return `${volumeDir}/mount`;
    },
    async remove() {
      await Deno.remove(runDir, { recursive: true });
      await Deno.remove(root, { recursive: true });
    },
  };
  for (const dir of [tree.socketDir, `${root}/csi`, `${tree.kubeletDir}/pods`]) {
    await Deno.mkdir(dir, { recursive: true });
  }
  await Deno.mkdir(runDir);
  await Deno.symlink("/proc/self/cwd", tree.cwdLink);
  return tree;
}
