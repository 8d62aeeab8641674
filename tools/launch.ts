/**
 * `deno task start`: runs the driver under its permission set, re-targeted to the paths given on
 * the command line. Relative paths are resolved here; missing local directories are created so the
 * driver can be tried without a cluster. Signals are passed on; the driver's exit code is returned.
 */
import { ConfigError, parseInvocation } from "../lib/config/flags.ts";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { driverRunArgs, permissionFlags } from "../lib/config/permissions.ts";
import { wrongDeno } from "./deno_version.ts";

const entry = fileURLToPath(new URL("../main.ts", import.meta.url));
const refusal = wrongDeno(Deno.version.deno);
if (refusal !== undefined) {
  Deno.stderr.writeSync(new TextEncoder().encode(`${refusal}\n`));
  Deno.exit(2);
}
let invocation;
try {
  invocation = parseInvocation(Deno.args, {
    getEnv: (name) => Deno.env.get(name),
    cwd: Deno.cwd(),
  });
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  Deno.stderr.writeSync(new TextEncoder().encode(`spiffe-csi-driver: ${error.message} (see -h)\n`));
  Deno.exit(2);
}

let args: string[];
if (invocation.command === "help" || invocation.command === "version") {
  // No paths to re-target: the image's set, which lets grpc-js read its GRPC_* variables at load.
  args = ["run", ...permissionFlags(), entry, ...Deno.args];
} else {
  const { config } = invocation;
  // A local convenience for running the driver; diagnose must see the node as it is.
  if (invocation.command === "run") {
    for (
      const dir of [config.socketDir, dirname(config.csiSocketPath), `${config.kubeletDir}/pods`]
    ) {
      await Deno.mkdir(dir, { recursive: true });
    }
    await ensureCwdLink(config.cwdLink);
  }
  args = driverRunArgs(invocation, entry);
}

const child = new Deno.Command(Deno.execPath(), { args, stdin: "null" }).spawn();
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, () => child.kill(signal));
}
const status = await child.status;
Deno.exit(status.code);

/** Creates the driver's -cwd-link (a symlink to /proc/self/cwd) unless it is already there. */
async function ensureCwdLink(path: string): Promise<void> {
  const target = await Deno.readLink(path).catch(() => undefined);
  if (target === "/proc/self/cwd") return;
  await Deno.mkdir(dirname(path), { recursive: true });
  await Deno.symlink("/proc/self/cwd", path);
}
