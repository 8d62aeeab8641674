/**
 * The driver's permission set. It is written once, in deno.json (`permissions.driver`), for the
 * container layout; this module re-targets those paths to the ones a driver is configured with, so
 * the start task, the tests and the compile task all run the driver under the same set.
 */
import denoConfig from "../deno.json" with { type: "json" };
import { type Config, configToArgs } from "./config.ts";

/** The paths and names the permission set depends on. */
export interface DriverPaths {
  /** Directory holding the Workload API socket (read, and connect for health checks). */
  socketDir: string;
  /** The CSI socket the driver listens on. */
  csiSocketPath: string;
  /** Kubelet's root directory; the driver mounts under `<kubeletDir>/pods`. */
  kubeletDir: string;
  /** Environment variable holding the node id. */
  nodeIdEnv: string;
  /** Absolute path of the mount binary. */
  mountPath: string;
  /** Absolute path of the umount binary. */
  umountPath: string;
  /** Names of the Workload API sockets the driver may connect to (health checks). */
  socketNames: string[];
  /** Built-in registration's socket (`<plugin-registration-path>/<plugin-name>-reg.sock`); unset: none. */
  registrationSocketPath?: string;
}

/** A permission set: allowlists by kind, as in deno.json. */
export interface PermissionSet {
  read: string[];
  write: string[];
  net: string[];
  env: string[];
  run: string[];
}

/** The paths deno.json's permission set is written for (the DaemonSet's container layout). */
export const CONTAINER_PATHS: Readonly<DriverPaths> = Object.freeze({
  socketDir: "/spiffe-workload-api",
  csiSocketPath: "/spiffe-csi/csi.sock",
  kubeletDir: "/var/lib/kubelet",
  nodeIdEnv: "MY_NODE_NAME",
  mountPath: "/usr/bin/mount",
  umountPath: "/usr/bin/umount",
  socketNames: ["api.sock", "spire-agent.sock", "agent.sock"],
  registrationSocketPath: "/registration/csi.spiffe.io-reg.sock",
});

/** The permission set as written in deno.json, for the container layout. */
export function declaredPermissionSet(): PermissionSet {
  const set = denoConfig.permissions.driver;
  return {
    read: [...set.read],
    write: [...set.write],
    net: [...set.net],
    env: [...set.env],
    run: [...set.run],
  };
}

/** The driver's permission set re-targeted to `paths`. */
export function permissionSet(paths: DriverPaths): PermissionSet {
  const keys = Object.keys(CONTAINER_PATHS) as (keyof DriverPaths)[];
  for (const value of keys.flatMap((key) => paths[key] ?? [])) {
    if (value.includes(",")) {
      throw new RangeError(`permission paths must not contain a comma: ${value}`);
    }
  }
  const declared = withRegistration(declaredPermissionSet(), paths.registrationSocketPath);
  const retarget = (entry: string) => retargetPath(entry, paths);
  return {
    read: declared.read.map(retarget),
    write: declared.write.map(retarget),
    // `unix:<socket dir>/*` stands for each Workload API socket name: Deno allows unix sockets by
    // exact path only, so the driver can connect to exactly the names it is configured with.
    net: declared.net.flatMap((entry) => {
      if (!entry.startsWith("unix:")) return [entry];
      const path = retarget(entry.slice(5));
      if (!path.endsWith("/*")) return [`unix:${path}`];
      return paths.socketNames.map((name) => `unix:${path.slice(0, -1)}${name}`);
    }),
    env: declared.env.map((name) => name === CONTAINER_PATHS.nodeIdEnv ? paths.nodeIdEnv : name),
    run: declared.run.map(retarget),
  };
}

/** Deno command-line flags granting exactly `permissionSet(paths)` and nothing else. */
export function permissionFlags(paths: DriverPaths): string[] {
  const set = permissionSet(paths);
  const flags = ["--no-prompt"];
  for (const kind of ["read", "write", "net", "env", "run"] as const) {
    const list = unique(set[kind]);
    if (list.length > 0) flags.push(`--allow-${kind}=${list.join(",")}`);
  }
  return flags;
}

/** V8 flags that keep the driver's heap small (used by the start task, tests, bench and compile). */
export const V8_FLAGS = "--max-old-space-size=32,--max-semi-space-size=1";

/** Arguments for `deno run` that start the driver at `entry` under its permission set. */
export function driverRunArgs(config: Config, entry: string, extraArgs: string[] = []): string[] {
  return [
    "run",
    ...permissionFlags(config),
    `--v8-flags=${V8_FLAGS}`,
    entry,
    ...configToArgs(config),
    ...extraArgs,
  ];
}

// The registration socket is granted only to a driver that serves built-in registration.
function withRegistration(set: PermissionSet, socketPath: string | undefined): PermissionSet {
  if (socketPath !== undefined) return set;
  const declared = CONTAINER_PATHS.registrationSocketPath;
  const keep = (entry: string) => entry !== declared && entry !== `unix:${declared}`;
  return {
    read: set.read.filter(keep),
    write: set.write.filter(keep),
    net: set.net.filter(keep),
    env: set.env,
    run: set.run,
  };
}

function retargetPath(entry: string, paths: DriverPaths): string {
  const pairs: [string, string][] = [
    [CONTAINER_PATHS.csiSocketPath, paths.csiSocketPath],
    [CONTAINER_PATHS.socketDir, paths.socketDir],
    [CONTAINER_PATHS.kubeletDir, paths.kubeletDir],
    [CONTAINER_PATHS.mountPath, paths.mountPath],
    [CONTAINER_PATHS.umountPath, paths.umountPath],
  ];
  if (CONTAINER_PATHS.registrationSocketPath && paths.registrationSocketPath) {
    pairs.push([CONTAINER_PATHS.registrationSocketPath, paths.registrationSocketPath]);
  }
  for (const [from, to] of pairs) {
    if (entry === from) return to;
    if (entry.startsWith(`${from}/`)) return to.replace(/\/+$/, "") + entry.slice(from.length);
  }
  return entry;
}

function unique(list: string[]): string[] {
  return [...new Set(list)];
}
