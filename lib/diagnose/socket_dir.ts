/** Checks of the Workload API socket directory: there, a directory, serving, and not a pod's emptyDir. */
import { inspectSocketDir } from "../health/socket_dir.ts";
import { sameFile } from "../mount/dir_pin.ts";
import { withoutTrailingSlash } from "../config/flags.ts";
import {
  type CheckResult,
  describe,
  type DiagnoseConfig,
  isNotCapable,
  unknown,
} from "./_check.ts";

const EMPTY_DIR = "kubernetes.io~empty-dir";

export async function checkWorkloadApiDir(
  config: DiagnoseConfig,
  timeoutMs: number,
): Promise<CheckResult[]> {
  const dir = config.socketDir;
  const exists = "Workload API dir exists";
  const isDir = "Workload API dir is a directory";
  const accepts = "Workload API socket accepts a connection";
  const notEmptyDir = "Workload API dir is not a pod's emptyDir";
  const skipRest = (why: string): CheckResult[] =>
    [isDir, accepts, notEmptyDir].map((name) => ({ name, status: "skip", detail: why }));

  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (error) {
    if (isNotCapable(error)) {
      return [
        unknown(exists, dir, error, `ls -ld ${dir}`),
        ...skipRest("the directory could not be read"),
      ];
    }
    return [
      {
        name: exists,
        status: "fail",
        detail: `${dir}: ${describe(error)}`,
        fix: `mount the host's SPIRE agent socket directory (e.g. /run/spire/agent-sockets, a ` +
          `hostPath with type DirectoryOrCreate) at ${dir}, or point -workload-api-socket-dir ` +
          `at the directory that holds the agent socket`,
      },
      ...skipRest("the directory does not exist"),
    ];
  }
  const results: CheckResult[] = [{ name: exists, status: "pass", detail: dir }];
  if (!info.isDirectory) {
    results.push({
      name: isDir,
      status: "fail",
      detail: `${dir} is not a directory`,
      fix: `-workload-api-socket-dir must name the directory that holds the agent socket, not ` +
        `the socket itself; point the SPIRE agent's socket_path inside ${dir}`,
    });
    results.push(...skipRest("not a directory").slice(1));
    return results;
  }
  results.push({ name: isDir, status: "pass", detail: dir });

  const health = await inspectSocketDir(dir, { timeoutMs, names: config.socketNames });
  if (health.healthy) {
    results.push({ name: accepts, status: "pass", detail: health.message });
  } else if (/NotCapable|Requires .* access/.test(health.message)) {
    results.push({
      name: accepts,
      status: "unknown",
      detail: `${health.message} (outside the driver's permission set)`,
      fix: `spire-agent healthcheck -socketPath ${dir}/<socket>`,
    });
  } else {
    results.push({
      name: accepts,
      status: "fail",
      detail: `${dir}: ${health.message}`,
      fix: `start the SPIRE agent on this node with its socket_path inside the host directory ` +
        `mounted at ${dir}, then check it with spire-agent healthcheck -socketPath <that socket>`,
    });
  }
  results.push(await checkNotEmptyDir(notEmptyDir, dir, config.kubeletDir));
  return results;
}

/** The broken-mount-after-restart case: the socket dir is (or lies in) a pod's emptyDir. */
async function checkNotEmptyDir(
  name: string,
  dir: string,
  kubeletDir: string,
): Promise<CheckResult> {
  const fix = `give the SPIRE agent and this driver the same hostPath directory (e.g. ` +
    `/run/spire/agent-sockets, type DirectoryOrCreate), never an emptyDir: an emptyDir is ` +
    `deleted when its pod restarts, and every workload's bind mount keeps pointing at the ` +
    `deleted directory (the Workload API socket is gone until the workload restarts)`;
  const real = await Deno.realPath(dir).catch(() => dir);
  const emptyDirPath = new RegExp(
    `^${escapeRegExp(withoutTrailingSlash(kubeletDir))}/pods/[^/]+/volumes/${
      escapeRegExp(EMPTY_DIR)
    }(/|$)`,
  );
  if (emptyDirPath.test(real)) {
    return { name, status: "fail", detail: `${real} is inside a pod's emptyDir`, fix };
  }
  // Inside a container the path says nothing: compare the directory's identity with every
  // emptyDir on the node (they all live under <kubelet>/pods, which the driver mounts).
  let match: string | undefined;
  try {
    match = await findEmptyDirIdentity(dir, `${withoutTrailingSlash(kubeletDir)}/pods`);
  } catch (error) {
    if (isNotCapable(error)) {
      return unknown(name, `${kubeletDir}/pods`, error, `ls -d ${kubeletDir}/pods/*/volumes/*`);
    }
    if (!(error instanceof Deno.errors.NotFound)) {
      return { name, status: "unknown", detail: `cannot list the pods dir: ${describe(error)}` };
    }
  }
  if (match !== undefined) {
    return { name, status: "fail", detail: `${dir} is the emptyDir ${match}`, fix };
  }
  return { name, status: "pass", detail: `${dir} is not under any pod's ${EMPTY_DIR}` };
}

async function findEmptyDirIdentity(dir: string, podsDir: string): Promise<string | undefined> {
  for await (const pod of Deno.readDir(podsDir)) {
    if (!pod.isDirectory) continue;
    const volumes = `${podsDir}/${pod.name}/volumes/${EMPTY_DIR}`;
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(volumes));
    } catch {
      continue;
    }
    for (const entry of entries) {
      const path = `${volumes}/${entry.name}`;
      if (sameFile(path, dir)) return path;
    }
  }
  return undefined;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
