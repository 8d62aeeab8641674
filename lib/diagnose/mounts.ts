/** Checks of mount and umount: util-linux at the configured paths, no stacked layers under the pods dir. */
import { checkUtilLinux, type Mounter } from "../mount/mounter.ts";
import { findStackedMounts } from "../mount/leftovers.ts";
import type { CheckResult, DiagnoseConfig } from "./_check.ts";
import { describe, isNotCapable, unknown } from "./_check.ts";

export async function checkBinary(
  binary: string,
  flag: string,
  path: string,
  timeoutMs: number,
): Promise<CheckResult> {
  const name = `${binary} exists at ${flag}`;
  const fix = `install util-linux ${binary} at ${path} (the image ships it there), or pass ` +
    `${flag} with the absolute path of util-linux ${binary} on this node`;
  try {
    await checkUtilLinux(path, timeoutMs);
  } catch (error) {
    const cause = error instanceof Error ? error.cause : undefined;
    if (isNotCapable(cause)) return unknown(name, path, cause, `ls -l ${path}`);
    return { name, status: "fail", detail: describe(error), fix };
  }
  return { name, status: "pass", detail: path };
}

export async function checkStackedMounts(
  config: DiagnoseConfig,
  mounter: Mounter,
): Promise<CheckResult> {
  const name = "no stacked mounts of the socket dir under the pods dir";
  let stacked;
  try {
    stacked = await findStackedMounts(config, mounter);
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, config.mountPath, error, "mount");
    return {
      name,
      status: "unknown",
      detail: `cannot read the mount table: ${describe(error)}`,
      fix: `mount | grep ${config.kubeletDir}/pods`,
    };
  }
  if (stacked.length === 0) {
    return { name, status: "pass", detail: `no target under ${config.kubeletDir}/pods` };
  }
  const list = stacked.map((s) => `${s.target} (${s.layers} layers)`).join(", ");
  return {
    name,
    status: "fail",
    detail: list,
    fix: `restart the driver with -prune-stacked-mounts, or run umount on each target until ` +
      `one layer remains`,
  };
}
