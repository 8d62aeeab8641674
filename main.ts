/** spiffe-csi-driver: parse flags, wire the parts, serve; stop gracefully on SIGTERM/SIGINT. */
import { ConfigError, parseInvocation, VERSION } from "./lib/config/flags.ts";
import { setupLogging } from "./lib/log.ts";
import { SystemMounter } from "./lib/mount/mounter.ts";
import { createIdentityService } from "./lib/csi/identity.ts";
import { createNodeService } from "./lib/csi/node.ts";
import {
  createRegistrationServer,
  createServer,
  CSI_LIMITS,
  listen,
  type Listener,
  REGISTRATION_LIMITS,
  SocketInUseError,
} from "./lib/server.ts";
import { createRegistrationService } from "./lib/registration.ts";
import { acceptsConnection } from "./lib/health/socket_dir.ts";
import { socketDirReadiness } from "./lib/health/readiness.ts";
import { routeGrpcLogs } from "./lib/grpc_log.ts";
import { replaceLeftoverBinds } from "./lib/mount/leftovers.ts";
import { SocketDirTemplate } from "./lib/mount/template.ts";
import { errorMessage } from "./lib/errors.ts";
import { DirPin } from "./lib/mount/dir_pin.ts";
import { mountedKubeletDir, ungrantedPaths } from "./lib/config/permissions.ts";

const SHUTDOWN_GRACE_MS = 10_000;
/** How long a server already on the CSI socket has to accept a connection. */
const IN_USE_TIMEOUT_MS = 1_000;

async function main(args: string[]): Promise<number> {
  let invocation;
  try {
    invocation = parseInvocation(args, { getEnv: readEnv });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    writeLine(Deno.stderr, `spiffe-csi-driver: ${error.message} (see -h)`);
    return 2;
  }
  if (invocation.command === "help" || invocation.command === "version") {
    writeLine(Deno.stdout, invocation.text);
    return 0;
  }
  const { config } = invocation;
  const configuredKubeletDir = config.kubeletDir;
  config.kubeletDir = await mountedKubeletDir(config.kubeletDir);
  // A path outside the permission set would fail later with a misleading error: refuse it now,
  // before anything is created.
  const ungranted = await ungrantedPaths(config);
  for (const line of ungranted) writeLine(Deno.stderr, `spiffe-csi-driver: ${line}`);
  if (ungranted.length > 0) return 2;
  const mounter = new SystemMounter({ mountPath: config.mountPath, umountPath: config.umountPath });
  if (invocation.command === "diagnose") {
    // Loaded only here: a serving driver never needs it.
    const { diagnose } = await import("./lib/diagnose/mod.ts");
    return await diagnose(config, { mounter, registrationDir: invocation.registrationDir });
  }

  const log = await setupLogging({ level: config.logLevel, format: config.logFormat });
  routeGrpcLogs(log);
  if (config.kubeletDir !== configuredKubeletDir) {
    log.info("{configured}/pods is not mounted here: serving the kubelet root {kubelet_dir}", {
      configured: configuredKubeletDir,
      kubelet_dir: config.kubeletDir,
    });
  }
  log.info("Starting spiffe-csi-driver {version}", {
    version: VERSION,
    node_id: config.nodeId,
    plugin_name: config.pluginName,
    csi_socket_path: config.csiSocketPath,
    workload_api_socket_dir: config.socketDir,
    kubelet_dir: config.kubeletDir,
  });
  // Every step on a target goes through the pin; it needs util-linux mount and a working link.
  const pins = new DirPin({ link: config.cwdLink });
  try {
    await mounter.check();
    await pins.check(`${config.kubeletDir}/pods`);
  } catch (error) {
    log.error("Cannot work on targets safely: {error}", { error: errorMessage(error) });
    return 2;
  }
  const template = new SocketDirTemplate({
    socketDir: config.socketDir,
    dir: config.templateDir,
    mounter,
  });
  // Built before serving, so the first publish needs no more than its bind; a socket dir that is
  // not there yet is retried by each publish.
  await pins.hold((pin) => template.ensure(pin)).catch((error) => {
    log.warn("Cannot build the template of {workload_api_socket_dir} yet: {error}", {
      workload_api_socket_dir: config.socketDir,
      error: errorMessage(error),
    });
  });
  const leftovers = Promise.withResolvers<boolean>();
  const node = createNodeService({
    nodeId: config.nodeId,
    socketDir: config.socketDir,
    kubeletDir: config.kubeletDir,
    socketNames: config.socketNames,
    mounter,
    pins,
    template,
    leftoversReplaced: leftovers.promise,
  });
  const server = createServer({
    log,
    identity: createIdentityService({
      pluginName: config.pluginName,
      version: VERSION,
      ready: socketDirReadiness(config.socketDir, log),
    }),
    node,
  });
  // listen() replaces a stale socket; one that a server answers on belongs to a running driver.
  const answers = (path: string) => acceptsConnection(path, IN_USE_TIMEOUT_MS);
  let csi: Listener;
  try {
    csi = await listen(server, config.csiSocketPath, { limits: CSI_LIMITS, log, answers });
  } catch (error) {
    if (error instanceof SocketInUseError) {
      log.error("Another server already serves on {csi_socket_path}: not replacing it", {
        csi_socket_path: config.csiSocketPath,
      });
    } else {
      log.error("Cannot serve CSI on {csi_socket_path}: {error}", {
        csi_socket_path: config.csiSocketPath,
        error: errorMessage(error),
      });
    }
    return 1;
  }
  log.info("Serving CSI on {csi_socket_path}", { csi_socket_path: config.csiSocketPath });
  // After serving: a slow mount table never delays registration. Publishes wait for it (at most
  // 10 s; lib/csi/node.ts), since a republish then needs no exec.
  replaceLeftoverBinds(config, mounter, {
    replace: (path, all) => node.replaceLeftover(path, all),
    log,
    prune: config.pruneStackedMounts,
  }).then(
    () => leftovers.resolve(true),
    (error) => {
      leftovers.resolve(false);
      log.warn("Replacing the binds left by an earlier driver failed: {error}", {
        error: errorMessage(error),
      });
    },
  );

  const stop = Promise.withResolvers<{ signal: string } | { refused: string }>();
  for (const name of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(name, () => stop.resolve({ signal: name }));
  }
  const refuse = (error: string) => stop.resolve({ refused: error });

  // Built-in registration (instead of node-driver-registrar): served once CSI answers, so kubelet's
  // NodeGetInfo right after GetInfo succeeds.
  let registration: Listener | undefined;
  if (config.registration) {
    const { socketPath, endpoint } = config.registration;
    const server = createRegistrationServer(
      createRegistrationService({
        pluginName: config.pluginName,
        endpoint,
        onStatus: ({ registered, error }) => {
          if (registered) log.info("Registered with kubelet as {plugin_name}", fieldsOf(config));
          else refuse(error);
        },
      }),
      log,
    );
    try {
      registration = await listen(server, socketPath, {
        limits: REGISTRATION_LIMITS,
        log,
        answers,
      });
      await Deno.chmod(socketPath, 0o600);
    } catch (error) {
      log.error("Cannot serve registration on {registration_socket}: {error}", {
        registration_socket: socketPath,
        error: errorMessage(error),
      });
      await csi.shutdown(SHUTDOWN_GRACE_MS);
      return 1;
    }
    log.info("Serving kubelet plugin registration on {registration_socket}", {
      registration_socket: socketPath,
      kubelet_registration_path: endpoint,
    });
  }

  const reason = await stop.promise;
  if ("refused" in reason) {
    // As node-driver-registrar: a refused registration ends the process, so the pod restarts.
    log.error("kubelet refused the registration: {error}", { error: reason.refused });
  } else {
    log.info("Received {signal}: draining in-flight calls", { signal: reason.signal });
  }
  await registration?.shutdown(SHUTDOWN_GRACE_MS);
  await csi.shutdown(SHUTDOWN_GRACE_MS);
  await pins.hold((pin) => template.release(pin)).catch(() => {});
  log.info("Stopped; published volumes stay mounted");
  return "refused" in reason ? 1 : 0;
}

function fieldsOf(config: { pluginName: string; nodeId: string }): Record<string, string> {
  return { plugin_name: config.pluginName, node_id: config.nodeId };
}

function writeLine(stream: { writeSync(data: Uint8Array): number }, text: string): void {
  stream.writeSync(new TextEncoder().encode(`${text}\n`));
}

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
