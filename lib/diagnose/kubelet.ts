/** Checks of kubelet's side: its pods dir, and the registration socket it watches for. */
import { registrationSocketPath, withoutTrailingSlash } from "../config/flags.ts";
import { type CheckResult, describe, isNotCapable, unknown } from "./_check.ts";

export async function checkPodsDir(kubeletDir: string): Promise<CheckResult> {
  const name = "kubelet pods dir exists";
  const path = `${withoutTrailingSlash(kubeletDir)}/pods`;
  try {
    const info = await Deno.stat(path);
    if (info.isDirectory) return { name, status: "pass", detail: path };
    return {
      name,
      status: "fail",
      detail: `${path} is not a directory`,
      fix: podsDirFix(kubeletDir),
    };
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, path, error, `ls -ld ${path}`);
    return {
      name,
      status: "fail",
      detail: `${path}: ${describe(error)}`,
      fix: podsDirFix(kubeletDir),
    };
  }
}

function podsDirFix(kubeletDir: string): string {
  return `set -kubelet-dir to kubelet's --root-dir (now ${kubeletDir}) and mount ` +
    `<root-dir>/pods into the driver container at the same path with mountPropagation: ` +
    `Bidirectional`;
}

export async function checkRegistration(
  pluginName: string,
  registrationDir: string | undefined,
): Promise<CheckResult> {
  const name = "registration socket exists";
  if (registrationDir === undefined) {
    return { name, status: "skip", detail: "no -registration-dir given" };
  }
  const path = registrationSocketPath(registrationDir, pluginName);
  try {
    const info = await Deno.lstat(path);
    if (info.isSocket) return { name, status: "pass", detail: path };
    return {
      name,
      status: "fail",
      detail: `${path} is not a socket`,
      fix: `remove ${path} and restart the node-driver-registrar container`,
    };
  } catch (error) {
    if (isNotCapable(error)) return unknown(name, path, error, `ls -l ${path}`);
    return {
      name,
      status: "fail",
      detail: `${path}: ${describe(error)}`,
      fix: `node-driver-registrar has not registered ${pluginName}: read its log; its ` +
        `--kubelet-registration-path must be the host path of the CSI socket, and its ` +
        `/registration mount must be the host's ${registrationDir}`,
    };
  }
}
