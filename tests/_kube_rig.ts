/**
 * A one-node Kubernetes v1.37 on loopback for the kubelet scenarios: etcd, kube-apiserver,
 * kube-controller-manager (DaemonSet controller), kube-scheduler, containerd (runc) and a real
 * kubelet, plus SPIRE and the driver as host processes; the driver's local image is imported for
 * the DaemonSet scenarios. Run it only through tests/kubelet_e2e.sh, which puts the whole rig in
 * private mount, PID and network namespaces (only loopback and one extra loopback address for the
 * node IP). teardown() stops every process by PID, unmounts, removes the cgroups it made and
 * restores the host settings kubelet changes; checkHost() compares the machine with the state
 * captured before the start.
 */
import { type DriverProcess, startDriver } from "./_driver.ts";
import { LoggedProcess, run, runOk, type Spire, waitFor } from "./_spire.ts";
import type { KubeApi } from "./_kube_api.ts";
import { mountTable } from "./_env.ts";
import { errorMessage } from "../lib/errors.ts";
import {
  createCsiDriver,
  DRIVER_NAME,
  importRigImages,
  launchKubelet,
  NODE,
  NODE_IP,
  pickPorts,
  type Ports,
  prepareKubelet,
  type RigPaths,
  type Start,
  startApiServer,
  startContainerd,
  startControlLoops,
  startEtcd,
  startRigSpire,
  waitForNodeReady,
  writeCniConfig,
} from "./_kube_components.ts";

export { BIN, DRIVER_NAME, NODE, NODE_IP } from "./_kube_components.ts";

/**
 * kubelet's root: the default, which manifests/base's hostPaths name, or SPIFFE_CSI_RIG_KUBELET_DIR
 * (tests/kubelet_e2e.sh runs the rig a second time on microk8s's root, manifests/microk8s).
 */
export const KUBELET_DIR = Deno.env.get("SPIFFE_CSI_RIG_KUBELET_DIR") ?? "/var/lib/kubelet";
/** Host settings kubelet changes at start (restored at teardown). */
const SYSCTLS = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"];
/**
 * Host directories covered by a tmpfs in the rig's namespace: those some component writes to
 * whatever its configuration says, and the host paths the shipped DaemonSet names (kubelet's root
 * and the SPIRE agent's socket directory), so the manifests run with their own paths.
 */
const COVERED_DIRS = [
  "/run/containerd",
  "/var/log/containers",
  "/var/log/pods",
  KUBELET_DIR,
  "/run/spire",
];
/** The SPIRE agent's socket directory on the host, as in manifests/base/daemonset.yaml. */
const AGENT_SOCKET_DIR = "/run/spire/agent-sockets";

/** The machine's state that the rig must leave as it found it. */
export interface HostState {
  sysctls: Record<string, string>;
  /** Every cgroup directory two levels deep, per hierarchy. */
  cgroups: string[];
  dirs: Record<string, boolean>;
}

/** Reads the machine's state (sysctls, cgroups, covered dirs). */
export async function captureHost(): Promise<HostState> {
  const sysctls = await readSysctls();
  const cgroups: string[] = [];
  for await (const hierarchy of Deno.readDir("/sys/fs/cgroup")) {
    if (!hierarchy.isDirectory) continue;
    for await (const child of Deno.readDir(`/sys/fs/cgroup/${hierarchy.name}`)) {
      if (child.isDirectory) cgroups.push(`${hierarchy.name}/${child.name}`);
    }
  }
  const dirs: Record<string, boolean> = {};
  for (const dir of COVERED_DIRS.flatMap(withAncestors)) dirs[dir] = await isDir(dir);
  return { sysctls, cgroups: cgroups.sort(), dirs };
}

/** The differences between `before` and `now` (empty: as found). */
export function compareHost(before: HostState, now: HostState): string[] {
  const problems: string[] = [];
  for (const [name, value] of Object.entries(before.sysctls)) {
    if (now.sysctls[name] !== value) {
      problems.push(`sysctl ${name} is ${now.sysctls[name]}, was ${value}`);
    }
  }
  for (const cgroup of now.cgroups) {
    if (!before.cgroups.includes(cgroup)) problems.push(`cgroup ${cgroup} was left behind`);
  }
  for (const [dir, existed] of Object.entries(before.dirs)) {
    if (now.dirs[dir] !== existed) problems.push(`${dir} ${existed ? "is gone" : "was left"}`);
  }
  return problems;
}

/** A running rig. */
export interface Rig extends RigPaths {
  /** The driver's local image (tools/local_image.ts), imported into containerd. */
  driverImage: string;
  /** kubelet's read-only API (`http://127.0.0.1:PORT`): /pods, /stats/summary. */
  kubeletReadOnlyUrl: string;
  api: KubeApi;
  spire: Spire;
  /** The driver, as the DaemonSet runs it (built-in registration); undefined while stopped. */
  driver: DriverProcess | undefined;
  /** Starts the driver; `builtinRegistration: false` leaves registration to a registrar. */
  startDriver(options?: { builtinRegistration?: boolean }): Promise<void>;
  stopDriver(signal?: Deno.Signal): Promise<void>;
  startKubelet(): Promise<void>;
  stopKubelet(): Promise<void>;
  /** Kills every process of every pod, as a node reboot does. */
  killPods(): Promise<void>;
  /** Every component's log, labelled. */
  logs(): string;
  /** Stops everything and undoes every change; returns what could not be undone. */
  teardown(): Promise<string[]>;
}

/** A change to the host that teardown undoes (in reverse order of registration). */
interface Undo {
  what: string;
  fn: () => Promise<void>;
}

/** What the steps bring up, set as each one does: teardown stops whatever is set. */
interface Started {
  api?: KubeApi;
  spire?: Spire;
  driverImage: string;
  /** The host settings before kubelet first started. */
  sysctlsBefore: Record<string, string>;
}

/** Starts the whole rig; on failure everything started so far is torn down and the logs thrown. */
export async function startRig(): Promise<Rig> {
  const dir = await Deno.makeTempDir({ prefix: "spiffe-csi-kubelet-" });
  const cgroupRoot = `spiffe-csi-rig-${crypto.randomUUID().slice(0, 8)}`;
  const ports = pickPorts();
  const paths = rigPaths(dir);
  const processes = new Map<string, LoggedProcess>();
  const start: Start = (name, command, args) => {
    const child = new LoggedProcess(name, command, args);
    processes.set(name, child);
    return child;
  };
  const undo: Undo[] = [];
  const up: Started = { driverImage: "", sysctlsBefore: {} };
  const rig = rigHandle({ paths, ports, cgroupRoot, processes, start, undo, up });

  try {
    await coverHostDirs(undo);
    await makeRigDirs(paths);
    const certs = await makeCerts(`${dir}/certs`);
    await startEtcd(start, dir, ports);
    const apiserver = await startApiServer(start, ports, certs);
    up.api = apiserver.api; // kept before the wait, for teardown to close
    await apiserver.ready();
    await writeCniConfig(dir);
    await startContainerd(start, paths);
    up.driverImage = await importRigImages(paths);
    await startControlLoops(start, paths.kubeconfig, ports, certs);
    await prepareKubelet(paths, ports, certs, cgroupRoot);
    up.sysctlsBefore = await readSysctls(); // kubelet changes them when it starts
    await createCsiDriver(up.api);
    await rig.startKubelet();
    await waitForNodeReady(up.api);
    up.spire = await startRigSpire(paths, ports);
    await rig.startDriver();
    return rig;
  } catch (error) {
    const logs = rig.logs();
    const problems = await rig.teardown();
    throw new Error(
      `the kubelet rig did not start: ${String(error)}\n${logs}\nteardown: ${
        problems.join("; ") || "clean"
      }`,
      { cause: error },
    );
  }
}

/** The rig's paths: its own dir's, and the host paths the shipped manifests name. */
function rigPaths(dir: string): RigPaths {
  return {
    dir,
    kubeletDir: KUBELET_DIR,
    socketDir: AGENT_SOCKET_DIR,
    csiSocketPath: `${KUBELET_DIR}/plugins/${DRIVER_NAME}/csi.sock`,
    registrationDir: `${KUBELET_DIR}/plugins_registry`,
    podLogsDir: `${dir}/pod-logs`,
    containerdSocket: `${dir}/containerd/containerd.sock`,
    kubeconfig: `${dir}/admin.kubeconfig`,
  };
}

/**
 * The Rig over what the steps start: the driver and kubelet controls, the logs of every process
 * `start` launched, and the teardown of all of it and of every change in `undo`.
 */
function rigHandle(options: {
  paths: RigPaths;
  ports: Ports;
  cgroupRoot: string;
  processes: Map<string, LoggedProcess>;
  start: Start;
  undo: Undo[];
  up: Started;
}): Rig {
  const { paths, ports, cgroupRoot, processes, start, undo, up } = options;
  const { dir, kubeletDir, socketDir, csiSocketPath, registrationDir } = paths;
  let driver: DriverProcess | undefined;
  let driverLogs = "";
  const rig: Rig = {
    ...paths,
    get driverImage() {
      return up.driverImage;
    },
    kubeletReadOnlyUrl: `http://127.0.0.1:${ports.kubeletRo}`,
    get api() {
      if (!up.api) throw new Error("the API server is not up");
      return up.api;
    },
    get spire() {
      if (!up.spire) throw new Error("SPIRE is not up");
      return up.spire;
    },
    get driver() {
      return driver;
    },
    async startDriver(options: { builtinRegistration?: boolean } = {}) {
      if (driver) throw new Error("the driver is running");
      const registration = options.builtinRegistration ?? true
        ? [
          `-kubelet-registration-path=${csiSocketPath}`,
          `-plugin-registration-path=${registrationDir}`,
        ]
        : [];
      const cwdLink = `${dir}/cwd`;
      await Deno.symlink("/proc/self/cwd", cwdLink).catch((error) => {
        if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
      });
      driver = await startDriver({
        socketDir,
        csiSocketPath,
        kubeletDir,
        cwdLink,
        nodeId: NODE,
        flags: registration,
      });
    },
    async stopDriver(signal: Deno.Signal = "SIGTERM") {
      if (!driver) return;
      await driver.stop(signal);
      driverLogs += `${driver.logs()}\n----- (driver stopped with ${signal}) -----\n`;
      driver = undefined;
    },
    async startKubelet() {
      const previous = processes.get("kubelet");
      if (previous && !previous.exited) throw new Error("kubelet is running");
      await launchKubelet(start, paths, ports);
    },
    async stopKubelet() {
      const kubelet = processes.get("kubelet");
      if (kubelet && !kubelet.exited) {
        await kubelet.stop("SIGTERM", 10_000);
        processes.set(`kubelet (stopped ${new Date().toISOString()})`, kubelet);
        processes.delete("kubelet");
      }
    },
    killPods() {
      return killCgroupProcesses(cgroupRoot);
    },
    logs() {
      const parts = [...processes.values()].map((p) => `----- ${p.name} -----\n${p.logs()}`);
      if (up.spire) parts.push(up.spire.logs());
      parts.push(`----- spiffe-csi-driver -----\n${driverLogs}${driver?.logs() ?? ""}`);
      return parts.join("\n");
    },
    async teardown() {
      const problems: string[] = [];
      const attempt = async (what: string, fn: () => Promise<void>) => {
        try {
          await fn();
        } catch (error) {
          problems.push(`${what}: ${errorMessage(error)}`);
        }
      };
      await attempt("stop kubelet", () => rig.stopKubelet());
      await attempt("kill pod processes", () => killCgroupProcesses(cgroupRoot));
      await attempt(
        "stop containerd shims",
        () => killProcessesMentioning([dir, "containerd-shim"]),
      );
      await attempt("stop the driver", () => rig.stopDriver("SIGTERM"));
      await attempt("stop SPIRE", async () => await up.spire?.stop());
      const control = ["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"];
      for (const name of ["containerd", ...control]) {
        await attempt(`stop ${name}`, async () => {
          await processes.get(name)?.stop("SIGTERM", 10_000);
        });
      }
      await attempt("stop leftovers", () => killProcessesMentioning([dir]));
      up.api?.close();
      await attempt("unmount", () => unmountUnder(dir));
      await attempt("remove cgroups", () => removeCgroups(cgroupRoot));
      await attempt("restore sysctls", async () => {
        for (const [name, value] of Object.entries(up.sysctlsBefore)) {
          const now = (await Deno.readTextFile(`/proc/sys/${name}`)).trim();
          if (now !== value) await Deno.writeTextFile(`/proc/sys/${name}`, value);
        }
      });
      for (const step of undo.reverse()) await attempt(step.what, step.fn);
      await attempt("remove the rig dir", () => Deno.remove(dir, { recursive: true }));
      return problems;
    },
  };
  return rig;
}

/**
 * Covers the directories some component writes regardless of configuration with a tmpfs in this
 * namespace, making any missing ancestor first; registers each mkdir and mount in `undo`.
 */
async function coverHostDirs(undo: Undo[]): Promise<void> {
  for (const covered of COVERED_DIRS) {
    for (const path of withAncestors(covered)) {
      if (await isDir(path)) continue;
      await Deno.mkdir(path);
      undo.push({ what: `remove ${path}`, fn: () => Deno.remove(path) });
    }
    await runOk("mount", ["-t", "tmpfs", "-o", "mode=0755,size=256m", "rig", covered]);
    // Shared, as systemd makes every mount of a node: containerd refuses Bidirectional
    // propagation from a host path that is not on a shared mount.
    if (covered === KUBELET_DIR) await runOk("mount", ["--make-rshared", covered]);
    // Everything mounted under it too (kubelet's root bind, published volumes).
    undo.push({ what: `unmount ${covered}`, fn: () => unmountUnder(covered) });
  }
}

/** The rig dir's subdirectories, the agent's socket dir and the driver's plugin dir. */
async function makeRigDirs(paths: RigPaths): Promise<void> {
  for (const sub of ["certs", "etcd", "containerd", "pod-logs", "spire"]) {
    await Deno.mkdir(`${paths.dir}/${sub}`, { recursive: true });
  }
  await Deno.mkdir(paths.socketDir, { recursive: true });
  await Deno.mkdir(`${paths.kubeletDir}/plugins/${DRIVER_NAME}`, { recursive: true });
}

/** The current values of the host settings kubelet changes. */
async function readSysctls(): Promise<Record<string, string>> {
  const sysctls: Record<string, string> = {};
  for (const name of SYSCTLS) {
    sysctls[name] = (await Deno.readTextFile(`/proc/sys/${name}`)).trim();
  }
  return sysctls;
}

/** A CA and every certificate the rig needs (EC P-256, valid one day), plus the service-account key pair. */
async function makeCerts(dir: string): Promise<string> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await runOk("openssl", [
    "req",
    "-x509",
    ...ec,
    "-keyout",
    `${dir}/ca.key`,
    "-out",
    `${dir}/ca.crt`,
    "-subj",
    "/CN=spiffe-csi-rig-ca",
    "-days",
    "1",
  ]);
  const leaf = async (name: string, subject: string, san?: string) => {
    await runOk("openssl", [
      "req",
      "-new",
      ...ec,
      "-keyout",
      `${dir}/${name}.key`,
      "-out",
      `${dir}/${name}.csr`,
      "-subj",
      subject,
    ]);
    const ext = [
      "basicConstraints=CA:FALSE",
      "keyUsage=digitalSignature,keyEncipherment",
      "extendedKeyUsage=serverAuth,clientAuth",
      ...(san ? [`subjectAltName=${san}`] : []),
    ].join("\n");
    await Deno.writeTextFile(`${dir}/${name}.ext`, ext);
    await runOk("openssl", [
      "x509",
      "-req",
      "-in",
      `${dir}/${name}.csr`,
      "-CA",
      `${dir}/ca.crt`,
      "-CAkey",
      `${dir}/ca.key`,
      "-CAcreateserial",
      "-out",
      `${dir}/${name}.crt`,
      "-days",
      "1",
      "-extfile",
      `${dir}/${name}.ext`,
    ]);
  };
  await leaf("apiserver", "/CN=kube-apiserver", "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost");
  await leaf("admin", "/O=system:masters/CN=rig-admin");
  await leaf("apiserver-kubelet", "/O=system:masters/CN=kube-apiserver-kubelet-client");
  await leaf("kubelet", `/CN=${NODE}`, `IP:127.0.0.1,IP:${NODE_IP},DNS:${NODE}`);
  await leaf("kubelet-client", `/O=system:nodes/CN=system:node:${NODE}`);
  await runOk("openssl", [
    "genpkey",
    "-algorithm",
    "EC",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-out",
    `${dir}/sa.key`,
  ]);
  await runOk("openssl", ["pkey", "-in", `${dir}/sa.key`, "-pubout", "-out", `${dir}/sa.pub`]);
  return dir;
}

/** SIGKILLs every process in the rig's cgroup tree (pods' containers) until none is left. */
async function killCgroupProcesses(cgroupRoot: string): Promise<void> {
  const root = `/sys/fs/cgroup/pids/${cgroupRoot}`;
  if (!(await isDir(root))) return;
  await killUntilNone("the pods' processes", () => cgroupPids(root));
}

async function cgroupPids(dir: string): Promise<number[]> {
  const pids: number[] = [];
  const text = await Deno.readTextFile(`${dir}/cgroup.procs`).catch(() => "");
  for (const line of text.split("\n")) if (line.trim() !== "") pids.push(Number(line));
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isDirectory) pids.push(...await cgroupPids(`${dir}/${entry.name}`));
  }
  return pids;
}

/** SIGKILLs, by PID, every process whose command line mentions all of `needles`, but not this one. */
async function killProcessesMentioning(needles: string[]): Promise<void> {
  await killUntilNone(
    `processes mentioning ${needles.join(" and ")}`,
    () => pidsMentioning(needles),
  );
}

/** SIGKILLs the PIDs `list` returns until it returns none. */
async function killUntilNone(what: string, list: () => Promise<number[]>): Promise<void> {
  await waitFor(`${what} to exit`, async () => {
    const pids = await list();
    for (const pid of pids) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* gone */ }
    }
    return pids.length === 0 ? true : undefined;
  }, 30_000);
}

/** PIDs (other than this process) whose command line contains every one of `needles`. */
export async function pidsMentioning(needles: string[]): Promise<number[]> {
  const pids: number[] = [];
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name) || Number(entry.name) === Deno.pid) continue;
    try {
      const cmdline = await Deno.readTextFile(`/proc/${entry.name}/cmdline`);
      if (cmdline !== "" && needles.every((n) => cmdline.includes(n))) {
        pids.push(Number(entry.name));
      }
    } catch { /* exited */ }
  }
  return pids;
}

/** Unmounts everything under `dir`, deepest (most recent) first. */
async function unmountUnder(dir: string): Promise<void> {
  await waitFor(`no mounts under ${dir}`, async () => {
    const targets = (await mountTable()).map((e) => e.target)
      .filter((t) => t === dir || t.startsWith(`${dir}/`));
    for (const target of targets.reverse()) await umount(target);
    return targets.length === 0 ? true : undefined;
  }, 30_000);
}

async function umount(target: string): Promise<boolean> {
  const result = await run("/usr/bin/umount", [target]);
  return result.code === 0;
}

/** Removes the rig's cgroups in every hierarchy, deepest first. */
async function removeCgroups(cgroupRoot: string): Promise<void> {
  for await (const hierarchy of Deno.readDir("/sys/fs/cgroup")) {
    if (!hierarchy.isDirectory) continue;
    const root = `/sys/fs/cgroup/${hierarchy.name}/${cgroupRoot}`;
    if (await isDir(root)) await removeCgroupTree(root);
  }
}

async function removeCgroupTree(dir: string): Promise<void> {
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isDirectory) await removeCgroupTree(`${dir}/${entry.name}`);
  }
  // rmdir(2): a cgroup dir holds only kernel files, which go with it.
  await waitFor(`rmdir ${dir}`, async () => {
    const result = await run("rmdir", [dir]);
    return result.code === 0 ? true : undefined;
  }, 10_000);
}

/** `/a/b/c` and the directories above it, from the top: `/a`, `/a/b`, `/a/b/c`. */
function withAncestors(path: string): string[] {
  const parts = path.split("/").filter((part) => part !== "");
  return parts.map((_, i) => `/${parts.slice(0, i + 1).join("/")}`);
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}
