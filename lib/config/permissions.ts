/**
 * The driver's permission set. It is written once, in deno.json (`permissions.driver`), for the
 * container layouts the image serves: each path there is one of the well-known places for a role
 * (our Workload API dir and upstream's, kubelet's root on plain Kubernetes, microk8s and k0s, the
 * registration socket of each plugin name the hardened chart's nested layouts use). The role of
 * each entry comes from one table of rules (RULES below). Every set the driver runs under derives
 * from it: the image's keeps every
 * alternative; a set for configured paths (the start task, the tests) replaces all alternatives of
 * a role by the one configured path, so it is as tight as the configuration.
 */
import denoConfig from "../../deno.json" with { type: "json" };
import {
  DEFAULT_SOCKET_NAMES,
  type DriverInvocation,
  type DriverPaths,
  invocationArgs,
  withoutTrailingSlash,
} from "./flags.ts";

/** A permission set: allowlists by kind, as in deno.json. */
export interface PermissionSet {
  read: string[];
  write: string[];
  net: string[];
  env: string[];
  run: string[];
}

type Kind = keyof PermissionSet;
const KINDS: readonly Kind[] = ["read", "write", "net", "env", "run"];

/** What an entry of the declared set is for; `fixed` entries are the same in every set. */
type Role =
  | Exclude<keyof DriverPaths, "socketNames" | "registration">
  | "registrationSocket"
  | "socket"
  | "fixed";

/** The flag that configures each role's path (for messages). */
const ROLE_FLAGS: Record<Exclude<Role, "fixed">, string> = {
  socketDir: "-workload-api-socket-dir",
  socket: "-workload-api-socket-names",
  csiSocketPath: "-csi-socket-path",
  kubeletDir: "-kubelet-dir",
  nodeIdEnv: "-node-id-env",
  mountPath: "-mount-path",
  umountPath: "-umount-path",
  cwdLink: "-cwd-link",
  templateDir: "-cwd-link",
  registrationSocket: "-plugin-name with -plugin-registration-path",
};

/** One entry of a permission set, with the role it plays. */
interface Grant {
  kind: Kind;
  role: Role;
  value: string;
}

/**
 * How deno.json's set is read: for each entry, the first rule of its kind whose pattern matches
 * names its role, and the pattern's group is that role's path. One table, to check by eye against
 * README → Security; an entry no rule matches is refused.
 */
const RULES: readonly { kinds: readonly Kind[]; role: Role; pattern: RegExp }[] = [
  // A Workload API socket dir: connect to each configured socket name in it.
  { kinds: ["net"], role: "socket", pattern: /^unix:(\/.+)\/\*$/ },
  // Built-in registration's socket, one per plugin name the image serves.
  {
    kinds: ["read", "write", "net"],
    role: "registrationSocket",
    pattern: /^(?:unix:)?(\/.+-reg\.sock)$/,
  },
  // The CSI socket: created, served, removed at stop.
  { kinds: ["read", "write", "net"], role: "csiSocketPath", pattern: /^(?:unix:)?(\/.+\.sock)$/ },
  // A kubelet root: publish targets live under its pods dir.
  { kinds: ["read", "write"], role: "kubeletDir", pattern: /^(\/.+)\/pods$/ },
  // The -cwd-link symlink, and the template of the socket dir beside it.
  { kinds: ["read", "write"], role: "cwdLink", pattern: /^(\/.+\/cwd)$/ },
  { kinds: ["read", "write"], role: "templateDir", pattern: /^(\/.+\/socket-dir)$/ },
  // A Workload API socket dir itself: listed and bind-mounted (it must have its `unix:<dir>/*`).
  { kinds: ["read", "write"], role: "socketDir", pattern: /^(\/.+)$/ },
  // gRPC's own settings, and the variable holding the node id.
  { kinds: ["env"], role: "fixed", pattern: /^(GRPC_\*)$/ },
  { kinds: ["env"], role: "nodeIdEnv", pattern: /^([A-Za-z_][A-Za-z0-9_]*)$/ },
  // util-linux mount and umount, by absolute path.
  { kinds: ["run"], role: "mountPath", pattern: /^(\/.*\/mount)$/ },
  { kinds: ["run"], role: "umountPath", pattern: /^(\/.*\/umount)$/ },
];

/** The permission set as written in deno.json. */
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

/** Every well-known container path of each role, as the declared set names them. */
export interface ContainerLayouts {
  socketDirs: string[];
  csiSocketPaths: string[];
  kubeletDirs: string[];
  nodeIdEnv: string;
  mountPath: string;
  umountPath: string;
  cwdLink: string;
  templateDir: string;
  registrationSocketPaths: string[];
}

/** The container paths a declared set (deno.json's by default) is written for, read from the set. */
export function containerLayouts(set: PermissionSet = declaredPermissionSet()): ContainerLayouts {
  const grants = declaredGrants(set);
  const of = (role: Role) => unique(grants.filter((g) => g.role === role).map((g) => g.value));
  const one = (role: Role) => {
    const [value, ...more] = of(role);
    if (value === undefined || more.length > 0) {
      throw new RangeError(`deno.json's permission set must name exactly one ${role}`);
    }
    return value;
  };
  return {
    socketDirs: of("socketDir"),
    csiSocketPaths: of("csiSocketPath"),
    kubeletDirs: of("kubeletDir"),
    nodeIdEnv: one("nodeIdEnv"),
    mountPath: one("mountPath"),
    umountPath: one("umountPath"),
    cwdLink: one("cwdLink"),
    templateDir: one("templateDir"),
    registrationSocketPaths: of("registrationSocket"),
  };
}

/** The paths of the DaemonSet in manifests/base: the first container path of each role. */
export const CONTAINER_PATHS: Readonly<DriverPaths> = Object.freeze(baseLayout());

function baseLayout(): DriverPaths {
  const layouts = containerLayouts();
  return {
    socketDir: layouts.socketDirs[0] ?? "",
    csiSocketPath: layouts.csiSocketPaths[0] ?? "",
    kubeletDir: layouts.kubeletDirs[0] ?? "",
    nodeIdEnv: layouts.nodeIdEnv,
    mountPath: layouts.mountPath,
    umountPath: layouts.umountPath,
    socketNames: [...DEFAULT_SOCKET_NAMES],
    cwdLink: layouts.cwdLink,
    templateDir: layouts.templateDir,
    // manifests/builtin-registration's.
    registration: {
      socketPath: layouts.registrationSocketPaths[0] ?? "",
      endpoint: `${layouts.kubeletDirs[0] ?? ""}/plugins/csi.spiffe.io/csi.sock`,
    },
  };
}

/**
 * The driver's permission set. Each path given replaces every container alternative of its role:
 * all of them for a configured run (tight), none for the image (every well-known layout), only
 * `kubeletDir` for an image built for another kubelet root. Socket names default to the flag's.
 */
export function permissionSet(paths: Partial<DriverPaths> = {}): PermissionSet {
  const set: PermissionSet = { read: [], write: [], net: [], env: [], run: [] };
  for (const grant of grants(paths)) set[grant.kind].push(grant.value);
  return set;
}

/** Deno command-line flags granting exactly `permissionSet(paths)` and nothing else. */
export function permissionFlags(paths: Partial<DriverPaths> = {}): string[] {
  const set = permissionSet(paths);
  const flags = ["--no-prompt"];
  for (const kind of KINDS) {
    if (set[kind].length > 0) flags.push(`--allow-${kind}=${set[kind].join(",")}`);
  }
  return flags;
}

/**
 * One line for each configured path the running process is not granted (asked of
 * Deno.permissions, never guessed), naming the flag and the path; empty when all are granted.
 */
export async function ungrantedPaths(
  paths: DriverPaths,
  query: (descriptor: Deno.PermissionDescriptor) => Promise<Deno.PermissionStatus> = (d) =>
    Deno.permissions.query(d),
): Promise<string[]> {
  const missing = new Map<string, { flag: string; value: string; kinds: Kind[] }>();
  for (const grant of grants(paths)) {
    if (grant.role === "fixed" || grant.kind === "env") continue;
    if ((await query(descriptor(grant))).state === "granted") continue;
    const value = grant.kind === "net" ? grant.value.slice("unix:".length) : grant.value;
    const flag = ROLE_FLAGS[grant.role];
    const key = `${flag} ${value}`;
    const entry = missing.get(key) ?? { flag, value, kinds: [] };
    entry.kinds.push(grant.kind);
    missing.set(key, entry);
  }
  // Sockets in a socket dir that is itself refused need no line of their own.
  const dirRefused = [...missing.values()].some(({ flag }) => flag === ROLE_FLAGS.socketDir);
  return [...missing.values()]
    .filter(({ flag }) => !(dirRefused && flag === ROLE_FLAGS.socket))
    .map(({ flag, value, kinds }) =>
      `${flag}: ${value} is outside the driver's permission set (${kinds.join(", ")})`
    );
}

/**
 * The kubelet root to serve. The SPIFFE hardened chart mounts `<kubeletPath>/pods` at the same
 * path and passes no -kubelet-dir, so on microk8s or k0s the default root is not in the
 * container: then, and only then, the one well-known root of the image's set whose pods dir the
 * container has is served instead. Targets stay confined to a root actually mounted here.
 */
export async function mountedKubeletDir(configured: string): Promise<string> {
  if (configured !== CONTAINER_PATHS.kubeletDir || await isDir(`${configured}/pods`)) {
    return configured;
  }
  const present: string[] = [];
  for (const root of containerLayouts().kubeletDirs) {
    if (await isDir(`${root}/pods`)) present.push(root);
  }
  return present.length === 1 ? present[0] as string : configured;
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false; // missing, or outside the running set
  }
}

/** V8 flags that keep the driver's heap small (used by the start task, tests, bench and compile). */
export const V8_FLAGS = "--max-old-space-size=32,--max-semi-space-size=1";

/** Arguments for `deno run` that run `invocation` of the driver at `entry` under its permission set. */
export function driverRunArgs(invocation: DriverInvocation, entry: string): string[] {
  return [
    "run",
    ...permissionFlags(invocation.config),
    `--v8-flags=${V8_FLAGS}`,
    entry,
    ...invocationArgs(invocation),
  ];
}

function descriptor({ kind, value }: Grant): Deno.PermissionDescriptor {
  switch (kind) {
    case "read":
    case "write":
      return { name: kind, path: value };
    case "net":
      return { name: "net", host: value };
    case "run":
      return { name: "run", command: value };
    case "env":
      return { name: "env", variable: value };
  }
}

/** A declared set's entries with their roles (RULES); throws on an entry no rule explains. */
function declaredGrants(set: PermissionSet): Grant[] {
  const out: Grant[] = [];
  for (const kind of KINDS) {
    for (const entry of set[kind]) {
      const rule = RULES.find((r) => r.kinds.includes(kind) && r.pattern.test(entry));
      const value = rule?.pattern.exec(entry)?.[1];
      if (!rule || value === undefined) {
        throw new RangeError(`deno.json: no role for ${kind} entry ${entry}`);
      }
      out.push({ kind, role: rule.role, value });
    }
  }
  // Every path is read and written alike, and a socket dir is one the driver connects into.
  for (const path of [...set.read, ...set.write]) {
    if (!set.read.includes(path) || !set.write.includes(path)) {
      throw new RangeError(`deno.json: ${path} must be in both read and write`);
    }
  }
  const connectable = new Set(out.filter((g) => g.role === "socket").map((g) => g.value));
  for (const grant of out) {
    if (grant.role === "socketDir" && !connectable.has(grant.value)) {
      throw new RangeError(`deno.json: no role for ${grant.kind} entry ${grant.value}`);
    }
    if (grant.kind === "net" && grant.role !== "socket" && !set.read.includes(grant.value)) {
      throw new RangeError(`deno.json: ${grant.value} must be in both read and write`);
    }
  }
  for (const dir of connectable) {
    if (!set.read.includes(dir)) {
      throw new RangeError(`deno.json: ${dir} must be in both read and write`);
    }
  }
  return out;
}

/** deno.json's grants with `paths` applied, as concrete Deno allowlist entries. */
function grants(paths: Partial<DriverPaths>): Grant[] {
  for (const value of Object.values(paths).flat()) {
    if (typeof value === "string" && value.includes(",")) {
      throw new RangeError(`permission paths must not contain a comma: ${value}`);
    }
  }
  const names = paths.socketNames ?? CONTAINER_PATHS.socketNames;
  const all = declaredGrants(declaredPermissionSet()).flatMap((grant): Grant[] => {
    const { kind, role } = grant;
    if (role === "fixed") return [grant];
    // `unix:<socket dir>/*` stands for each Workload API socket name: Deno allows unix sockets by
    // exact path only, so the driver can connect to exactly the names it is configured with.
    if (role === "socket") {
      const dir = withoutTrailingSlash(paths.socketDir ?? grant.value);
      return names.map((name) => ({ kind, role, value: `unix:${dir}/${name}` }));
    }
    // Built-in registration's socket is granted to a configured driver only when it serves it.
    if (role === "registrationSocket") {
      if (paths.csiSocketPath !== undefined && paths.registration === undefined) return [];
      const value = paths.registration?.socketPath ?? grant.value;
      return [{ kind, role, value: kind === "net" ? `unix:${value}` : value }];
    }
    const value = paths[role] ?? grant.value;
    if (role === "kubeletDir") {
      return [{ kind, role, value: `${withoutTrailingSlash(value)}/pods` }];
    }
    return [{ kind, role, value: kind === "net" ? `unix:${value}` : value }];
  });
  // Alternatives of one role collapse onto the one configured path: keep each entry once.
  return [...new Map(all.map((grant) => [`${grant.kind} ${grant.value}`, grant])).values()];
}

function unique(list: string[]): string[] {
  return [...new Set(list)];
}
