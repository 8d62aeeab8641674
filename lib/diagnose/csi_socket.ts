/** Check of the CSI socket: a driver listens on it, or its directory lets the driver create it. */
import { tryConnect } from "../health/socket_dir.ts";
import { type CheckResult, describe, isNotCapable, unknown } from "./_check.ts";

export async function checkCsiSocket(path: string, timeoutMs: number): Promise<CheckResult> {
  const name = "CSI socket dir is writable and no stale socket blocks it";
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  let info: Deno.FileInfo | undefined;
  try {
    info = await Deno.lstat(path);
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, path, error, `ls -l ${path}`);
    if (!(error instanceof Deno.errors.NotFound)) {
      return { name, status: "fail", detail: `${path}: ${describe(error)}` };
    }
  }
  if (info !== undefined) {
    if (!info.isSocket) {
      return {
        name,
        status: "fail",
        detail: `${path} exists and is not a socket`,
        fix: `remove ${path} (the driver replaces only a socket)`,
      };
    }
    const outcome = await tryConnect(path, timeoutMs);
    if (outcome.accepted) {
      return { name, status: "pass", detail: `a driver is listening on ${path}` };
    }
    if (isNotCapable(outcome.error)) return unknown(name, path, outcome.error, `ls -l ${path}`);
    return {
      name,
      status: "fail",
      detail: `${path} is a stale socket: nobody listens on it (${describe(outcome.error)})`,
      fix: `remove ${path}, or start the driver, which replaces a stale socket when it can ` +
        `write to ${dir}`,
    };
  }
  // No socket yet: prove the directory is writable by listening once, then clean up.
  try {
    const listener = Deno.listen({ transport: "unix", path });
    listener.close();
    await Deno.remove(path).catch(() => {});
    return { name, status: "pass", detail: `${dir} is writable (no socket yet)` };
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, path, error, `touch ${dir}/x && rm ${dir}/x`);
    const missing = error instanceof Deno.errors.NotFound;
    return {
      name,
      status: "fail",
      detail: `cannot create ${path}: ${describe(error)}`,
      fix: missing
        ? `create ${dir} (the DaemonSet mounts the host's /var/lib/kubelet/plugins/csi.spiffe.io ` +
          `there, a hostPath with type DirectoryOrCreate)`
        : `make ${dir} writable for the driver: mount it read-write, and do not share it with a ` +
          `read-only volume`,
    };
  }
}
