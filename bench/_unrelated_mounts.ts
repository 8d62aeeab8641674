/** Unrelated mounts, made in bulk, for the scaling phase's crowded mount tables. */
import { run } from "./_harness.ts";

/**
 * Makes `count` unrelated mounts under `root` in about 2·log2(count) execs: a tmpfs at `root`
 * (one mount), then recursive binds of a directory into itself, each doubling what is under it,
 * and recursive binds of the power-of-two subtrees for the remainder.
 */
export async function makeUnrelatedMounts(root: string, count: number): Promise<void> {
  await Deno.mkdir(root, { recursive: true });
  if (count === 0) return;
  await run("/usr/bin/mount", ["-t", "tmpfs", "bench-unrelated", root]);
  const n = count - 1;
  let levels = 0;
  while (2 ** (levels + 1) - 1 <= n) levels++;
  await Deno.mkdir(`${root}/c`);
  await Deno.mkdir(`${root}/e`);
  // After level j, <root>/c holds 2^j - 1 mounts and <root>/c/s<j> a subtree of 2^(j-1).
  for (let j = 1; j <= levels; j++) {
    await Deno.mkdir(`${root}/c/s${j}`);
    await run("/usr/bin/mount", ["--rbind", `${root}/c`, `${root}/c/s${j}`]);
  }
  const rest = n - (2 ** levels - 1);
  for (let bit = 0; bit < levels; bit++) {
    if (((rest >> bit) & 1) === 0) continue;
    await Deno.mkdir(`${root}/e/t${bit}`);
    await run("/usr/bin/mount", ["--rbind", `${root}/c/s${bit + 1}`, `${root}/e/t${bit}`]);
  }
}

/** Unmounts (lazily) and removes what makeUnrelatedMounts made at `root`. */
export async function removeUnrelatedMounts(root: string, count: number): Promise<void> {
  if (count > 0) await run("/usr/bin/umount", ["-l", root]);
  await Deno.remove(root, { recursive: true });
}
