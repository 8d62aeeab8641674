/** Command-line flags and environment -> Config. Pure: no I/O beyond what the caller passes in. */
import { dirname, isAbsolute, resolve } from "node:path";
import denoConfig from "../../deno.json" with { type: "json" };

/** Log levels accepted by `-log-level`. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
/** A log level. */
export type LogLevel = typeof LOG_LEVELS[number];
/** Log formats accepted by `-log-format`. */
export const LOG_FORMATS = ["json", "text"] as const;
/** A log format. */
export type LogFormat = typeof LOG_FORMATS[number];

/**
 * Default `-workload-api-socket-names`: the names SPIRE agents use for the Workload API socket,
 * and `socket`, the name Istio's SPIRE integration gives it (in /run/secrets/workload-spiffe-uds).
 */
export const DEFAULT_SOCKET_NAMES: readonly string[] = Object.freeze([
  "api.sock",
  "spire-agent.sock",
  "agent.sock",
  "socket",
]);

/** The driver's version, reported by `--version` and GetPluginInfo. */
export const VERSION: string = denoConfig.version;

/** The driver's template of the socket dir (lib/mount/template.ts) for a `-cwd-link`: its sibling. */
export function templateDirFor(cwdLink: string): string {
  return `${dirname(cwdLink)}/socket-dir`;
}

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
  /** The symlink to /proc/self/cwd the driver reaches its pinned directory through. */
  cwdLink: string;
  /** The hardened template of the socket dir (template.ts): `<dir of cwdLink>/socket-dir`. */
  templateDir: string;
  /** Built-in registration (instead of node-driver-registrar); unset: none. */
  registration?: Registration;
}

/** Built-in registration: the socket kubelet's plugin watcher finds, and the endpoint it is told. */
export interface Registration {
  /** `<plugin-registration-path>/<plugin-name>-reg.sock`, served by the driver. */
  socketPath: string;
  /** The host path of the CSI socket kubelet dials (-kubelet-registration-path). */
  endpoint: string;
}

/** Everything the driver needs to run, validated. */
export interface Config extends DriverPaths {
  nodeId: string;
  pluginName: string;
  logLevel: LogLevel;
  logFormat: LogFormat;
  pruneStackedMounts: boolean;
}

/** What the command line asks for. */
export type Invocation =
  | { command: "run"; config: Config }
  | { command: "diagnose"; config: Config; registrationDir: string | undefined }
  | { command: "help"; text: string }
  | { command: "version"; text: string };

/** A command-line or environment problem: one line for stderr. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Options for parseInvocation. */
export interface ParseOptions {
  /** Reads an environment variable (the node id). */
  getEnv?: (name: string) => string | undefined;
  /** Resolve relative paths against this directory; without it relative paths are rejected. */
  cwd?: string;
}

/** A command line that starts the driver: run or diagnose, with the settings it was given. */
export type DriverInvocation = Extract<Invocation, { config: Config }>;

interface FlagSpec {
  type: "string" | "boolean";
  default?: string | boolean;
  help: string;
  /** The value that sets this flag again on a re-start (undefined or false: leave it out). */
  arg?: (invocation: DriverInvocation) => string | boolean | undefined;
}

// Upstream spiffe-csi's flags first (same names, same defaults), then this driver's own.
const FLAGS: Record<string, FlagSpec> = {
  "csi-socket-path": {
    type: "string",
    default: "/spiffe-csi/csi.sock",
    help: "Path to the CSI socket",
    arg: ({ config: c }) => c.csiSocketPath,
  },
  "node-id": {
    type: "string",
    help:
      "Kubernetes Node ID. If unset, the node ID is obtained from the environment (i.e., -node-id-env)",
    arg: ({ config: c }) => c.nodeId,
  },
  "node-id-env": {
    type: "string",
    default: "MY_NODE_NAME",
    help: "Envvar from which to obtain the node ID. Overridden by -node-id.",
    arg: ({ config: c }) => c.nodeIdEnv,
  },
  "plugin-name": {
    type: "string",
    default: "csi.spiffe.io",
    help: "Plugin name to register",
    arg: ({ config: c }) => c.pluginName,
  },
  "workload-api-socket-dir": {
    type: "string",
    help: "Path to the Workload API socket directory",
    arg: ({ config: c }) => c.socketDir,
  },
  "workload-api-socket-names": {
    type: "string",
    default: DEFAULT_SOCKET_NAMES.join(","),
    help:
      "Comma-separated names of the Workload API sockets in the socket dir that health checks may connect to",
    arg: ({ config: c }) => c.socketNames.join(","),
  },
  "kubelet-dir": {
    type: "string",
    default: "/var/lib/kubelet",
    help: "Kubelet's root directory; publish targets must lie under <dir>/pods",
    arg: ({ config: c }) => c.kubeletDir,
  },
  "log-level": {
    type: "string",
    default: "info",
    help: "Log level: debug, info, warn or error",
    arg: ({ config: c }) => c.logLevel,
  },
  "log-format": {
    type: "string",
    default: "json",
    help: "Log format: json or text",
    arg: ({ config: c }) => c.logFormat,
  },
  "prune-stacked-mounts": {
    type: "boolean",
    default: false,
    help: "At start, unmount extra layers stacked on published targets",
    arg: ({ config: c }) => c.pruneStackedMounts,
  },
  "mount-path": {
    type: "string",
    default: "/usr/bin/mount",
    help: "Absolute path of the mount binary",
    arg: ({ config: c }) => c.mountPath,
  },
  "umount-path": {
    type: "string",
    default: "/usr/bin/umount",
    help: "Absolute path of the umount binary",
    arg: ({ config: c }) => c.umountPath,
  },
  "cwd-link": {
    type: "string",
    default: "/run/spiffe-csi-driver/cwd",
    help:
      "A symlink to /proc/self/cwd: the driver's race-free way to its pinned directory (the image ships it)",
    arg: ({ config: c }) => c.cwdLink,
  },
  "kubelet-registration-path": {
    type: "string",
    help:
      "Serve kubelet's plugin registration with this host path of the CSI socket as the endpoint (as node-driver-registrar's flag); unset: no built-in registration",
    arg: ({ config: c }) => c.registration?.endpoint,
  },
  "plugin-registration-path": {
    type: "string",
    default: "/registration",
    help:
      "Directory kubelet watches for registration sockets; the driver serves <dir>/<plugin-name>-reg.sock",
    arg: ({ config: c }) => c.registration && dirname(c.registration.socketPath),
  },
  "registration-dir": {
    type: "string",
    help: "diagnose only: kubelet's plugin registration directory to check",
    arg: (i) => i.command === "diagnose" ? i.registrationDir : undefined,
  },
  "help": { type: "boolean", help: "Show this help" },
  "version": { type: "boolean", help: "Print the version and exit" },
};

const PLUGIN_NAME = /^[a-zA-Z][A-Za-z0-9-._]{0,61}[a-zA-Z]$/;

/** Usage text, in the shape of Go's flag package (as upstream prints it). */
export function usage(): string {
  const lines = ["Usage of spiffe-csi-driver:", "  spiffe-csi-driver [diagnose] [flags]"];
  for (const [name, spec] of Object.entries(FLAGS)) {
    lines.push(`  -${name}${spec.type === "string" ? " string" : ""}`);
    const dflt = spec.type === "string" && spec.default !== undefined
      ? ` (default "${spec.default}")`
      : "";
    lines.push(`    \t${spec.help}${dflt}`);
  }
  return lines.join("\n");
}

/** Parses the command line (upstream's Go-style flags: `-f v`, `-f=v`, `--f v`, `--f=v`). */
export function parseInvocation(args: string[], options: ParseOptions = {}): Invocation {
  const { values, positionals } = parseFlags(args);
  if (values.get("help") === true) return { command: "help", text: usage() };
  if (values.get("version") === true) {
    return { command: "version", text: `spiffe-csi-driver ${VERSION}` };
  }

  const [subcommand, ...extra] = positionals;
  if (extra.length > 0 || (subcommand !== undefined && subcommand !== "diagnose")) {
    throw new ConfigError(`unexpected argument: ${extra[0] ?? subcommand}`);
  }
  const str = (name: string): string | undefined => {
    const value = values.get(name);
    if (typeof value === "string") return value;
    const fallback = FLAGS[name]?.default;
    return typeof fallback === "string" ? fallback : undefined;
  };
  const path = (name: string): string => {
    const value = str(name);
    if (value === undefined || value === "") throw new ConfigError(`-${name} is required`);
    return absolutePath(name, value, options.cwd);
  };

  const socketDir = path("workload-api-socket-dir");
  const nodeIdEnv = str("node-id-env") ?? "";
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(nodeIdEnv)) {
    throw new ConfigError(`-node-id-env must be an environment variable name: "${nodeIdEnv}"`);
  }
  const nodeId = str("node-id") || options.getEnv?.(nodeIdEnv) || "";
  // diagnose checks the node, not the driver's identity: it needs no node id.
  if (nodeId === "" && subcommand !== "diagnose") {
    throw new ConfigError(
      `node ID is required: set -node-id or the ${nodeIdEnv} environment variable`,
    );
  }
  const pluginName = str("plugin-name") ?? "";
  if (!PLUGIN_NAME.test(pluginName)) {
    throw new ConfigError(
      `-plugin-name must be 2-63 characters of a CSI plugin name: "${pluginName}"`,
    );
  }
  const socketNames = (str("workload-api-socket-names") ?? "").split(",").filter((n) => n !== "");
  if (socketNames.length === 0 || socketNames.some((n) => !/^[^/\0\n]+$/.test(n) || n === "..")) {
    throw new ConfigError(
      "-workload-api-socket-names must be a comma-separated list of file names",
    );
  }
  const config: Config = {
    socketNames,
    nodeId,
    nodeIdEnv,
    pluginName,
    socketDir,
    csiSocketPath: path("csi-socket-path"),
    kubeletDir: path("kubelet-dir"),
    mountPath: path("mount-path"),
    umountPath: path("umount-path"),
    cwdLink: path("cwd-link"),
    templateDir: templateDirFor(path("cwd-link")),
    logLevel: oneOf("log-level", str("log-level"), LOG_LEVELS),
    logFormat: oneOf("log-format", str("log-format"), LOG_FORMATS),
    pruneStackedMounts: values.get("prune-stacked-mounts") === true,
  };
  const kubeletRegistrationPath = str("kubelet-registration-path");
  if (kubeletRegistrationPath !== undefined && kubeletRegistrationPath !== "") {
    config.registration = {
      socketPath: registrationSocketPath(path("plugin-registration-path"), pluginName),
      endpoint: absolutePath("kubelet-registration-path", kubeletRegistrationPath, undefined),
    };
  }
  if (subcommand === "diagnose") {
    const registration = str("registration-dir");
    return {
      command: "diagnose",
      config,
      registrationDir: registration === undefined
        ? undefined
        : absolutePath("registration-dir", registration, options.cwd),
    };
  }
  return { command: "run", config };
}

/** The command line that reproduces a run or diagnose invocation, flag by flag from the one table. */
export function invocationArgs(invocation: DriverInvocation): string[] {
  const args = invocation.command === "diagnose" ? ["diagnose"] : [];
  for (const [name, spec] of Object.entries(FLAGS)) {
    const value = spec.arg?.(invocation);
    if (value === true) args.push(`-${name}`);
    else if (typeof value === "string") args.push(`-${name}=${value}`);
  }
  return args;
}

/** The registration socket kubelet's plugin watcher finds: `<dir>/<plugin-name>-reg.sock`. */
export function registrationSocketPath(dir: string, pluginName: string): string {
  return `${withoutTrailingSlash(dir)}/${pluginName}-reg.sock`;
}

/** `path` without trailing slashes, so that `${path}/name` has one (`/` becomes ``). */
export function withoutTrailingSlash(path: string): string {
  return path.replace(/\/+$/, "");
}

// strconv.ParseBool's words, as Go's flag package takes them for -bool=value.
const BOOLEANS: Record<string, boolean> = {
  "1": true,
  t: true,
  T: true,
  true: true,
  TRUE: true,
  True: true,
  "0": false,
  f: false,
  F: false,
  false: false,
  FALSE: false,
  False: false,
};

/**
 * Go's flag rules, read from the table: one or two dashes, `-f v` or `-f=v`, a bare `-bool` or
 * `-bool=false`, `-h` for `-help`; `--` ends the flags. Positionals may come anywhere.
 */
function parseFlags(
  args: string[],
): { values: Map<string, string | boolean>; positionals: string[] } {
  const values = new Map<string, string | boolean>();
  const positionals: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      positionals.push(arg);
      continue;
    }
    const body = arg.slice(arg.startsWith("--") ? 2 : 1);
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const key = name === "h" ? "help" : name;
    const spec = Object.hasOwn(FLAGS, key) ? FLAGS[key] : undefined;
    if (spec === undefined) throw new ConfigError(`flag provided but not defined: -${name}`);
    if (spec.type === "boolean") {
      const text = eq < 0 ? "true" : body.slice(eq + 1);
      const value = Object.hasOwn(BOOLEANS, text) ? BOOLEANS[text] : undefined;
      if (value === undefined) {
        throw new ConfigError(`invalid boolean value ${JSON.stringify(text)} for -${name}`);
      }
      values.set(key, value);
    } else if (eq >= 0) {
      values.set(key, body.slice(eq + 1));
    } else if (i + 1 < args.length) {
      values.set(key, args[++i] as string);
    } else {
      throw new ConfigError(`flag needs an argument: -${name}`);
    }
  }
  return { values, positionals };
}

function absolutePath(name: string, value: string, cwd: string | undefined): string {
  if (/[\0\n,]/.test(value)) {
    throw new ConfigError(`-${name} must not contain NUL, newline or comma characters`);
  }
  if (isAbsolute(value)) return resolve(value);
  if (cwd === undefined) throw new ConfigError(`-${name} must be an absolute path: "${value}"`);
  return resolve(cwd, value);
}

function oneOf<T extends string>(
  name: string,
  value: string | undefined,
  allowed: readonly T[],
): T {
  if ((allowed as readonly string[]).includes(value ?? "")) return value as T;
  throw new ConfigError(`-${name} must be one of ${allowed.join(", ")}: "${value}"`);
}
