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
import { type DriverProcess, ROOT, startDriver } from "./_driver.ts";
import {
  freeLoopbackPort,
  LoggedProcess,
  run,
  runOk,
  type Spire,
  startSpire,
  waitFor,
} from "./_spire.ts";
import { KubeApi, type Obj } from "./_kube_api.ts";
import { driverImage as localDriverImage, importImages } from "./_kube_images.ts";
import { mountTable } from "./_env.ts";

/** Where tools/build_kube.sh and tools/install_peers.sh put binaries. */
export const BIN = `${ROOT}.tools/bin`;
/** The node's name. */
export const NODE = "node1";
/** The node's address: an extra address on the rig's own loopback device (not 127/8: kubelet refuses it). */
export const NODE_IP = "10.254.0.1";
/** The CSI driver's name. */
export const DRIVER_NAME = "csi.spiffe.io";

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
  const sysctls: Record<string, string> = {};
  for (const name of SYSCTLS) {
    sysctls[name] = (await Deno.readTextFile(`/proc/sys/${name}`)).trim();
  }
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
export interface Rig {
  dir: string;
  kubeletDir: string;
  socketDir: string;
  csiSocketPath: string;
  registrationDir: string;
  podLogsDir: string;
  /** The driver's local image (tools/local_image.ts), imported into containerd. */
  driverImage: string;
  /** A kubeconfig with the admin's credentials (for kubectl). */
  kubeconfig: string;
  containerdSocket: string;
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

/** Starts the whole rig; on failure everything started so far is torn down and the logs thrown. */
export async function startRig(): Promise<Rig> {
  const dir = await Deno.makeTempDir({ prefix: "spiffe-csi-kubelet-" });
  const cgroupRoot = `spiffe-csi-rig-${crypto.randomUUID().slice(0, 8)}`;
  const processes = new Map<string, LoggedProcess>();
  const undo: { what: string; fn: () => Promise<void> }[] = [];
  const ports = {
    etcd: 0,
    etcdPeer: 0,
    api: 0,
    kubelet: 0,
    kubeletRo: 0,
    healthz: 0,
    controllerManager: 0,
    scheduler: 0,
  };
  const taken = new Set<number>();
  for (const key of Object.keys(ports) as (keyof typeof ports)[]) {
    ports[key] = freeLoopbackPort(taken);
  }

  const kubeletDir = KUBELET_DIR;
  const socketDir = AGENT_SOCKET_DIR;
  const csiSocketPath = `${kubeletDir}/plugins/${DRIVER_NAME}/csi.sock`;
  const registrationDir = `${kubeletDir}/plugins_registry`;
  const podLogsDir = `${dir}/pod-logs`;
  const containerdSocket = `${dir}/containerd/containerd.sock`;
  let api: KubeApi | undefined;
  let spire: Spire | undefined;
  let driver: DriverProcess | undefined;
  let driverLogs = "";
  let driverImage = "";
  const sysctlsBefore: Record<string, string> = {};

  const start = (name: string, command: string, args: string[]) => {
    const child = new LoggedProcess(name, command, args);
    processes.set(name, child);
    return child;
  };
  const rig: Rig = {
    dir,
    kubeletDir,
    socketDir,
    csiSocketPath,
    registrationDir,
    podLogsDir,
    get driverImage() {
      return driverImage;
    },
    kubeconfig: `${dir}/admin.kubeconfig`,
    containerdSocket,
    kubeletReadOnlyUrl: `http://127.0.0.1:${ports.kubeletRo}`,
    get api() {
      if (!api) throw new Error("the API server is not up");
      return api;
    },
    get spire() {
      if (!spire) throw new Error("SPIRE is not up");
      return spire;
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
      const kubelet = start("kubelet", `${BIN}/kubelet`, [
        `--config=${dir}/kubelet.yaml`,
        `--kubeconfig=${dir}/kubelet.kubeconfig`,
        `--root-dir=${kubeletDir}`,
        `--hostname-override=${NODE}`,
        `--node-ip=${NODE_IP}`,
        "--v=2",
      ]);
      await waitFor("kubelet's healthz", async () => {
        if (kubelet.exited) throw new Error(`kubelet exited:\n${kubelet.logs().slice(-5000)}`);
        const response = await fetch(`http://127.0.0.1:${ports.healthz}/healthz`);
        return (await response.text()) === "ok" ? true : undefined;
      }, 60_000);
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
      if (spire) parts.push(spire.logs());
      parts.push(`----- spiffe-csi-driver -----\n${driverLogs}${driver?.logs() ?? ""}`);
      return parts.join("\n");
    },
    async teardown() {
      const problems: string[] = [];
      const attempt = async (what: string, fn: () => Promise<void>) => {
        try {
          await fn();
        } catch (error) {
          problems.push(`${what}: ${error instanceof Error ? error.message : String(error)}`);
        }
      };
      await attempt("stop kubelet", () => rig.stopKubelet());
      await attempt("kill pod processes", () => killCgroupProcesses(cgroupRoot));
      await attempt(
        "stop containerd shims",
        () => killProcessesMentioning([dir, "containerd-shim"]),
      );
      await attempt("stop the driver", () => rig.stopDriver("SIGTERM"));
      await attempt("stop SPIRE", async () => await spire?.stop());
      const control = ["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"];
      for (const name of ["containerd", ...control]) {
        await attempt(`stop ${name}`, async () => {
          await processes.get(name)?.stop("SIGTERM", 10_000);
        });
      }
      await attempt("stop leftovers", () => killProcessesMentioning([dir]));
      api?.close();
      await attempt("unmount", () => unmountUnder(dir));
      await attempt("remove cgroups", () => removeCgroups(cgroupRoot));
      await attempt("restore sysctls", async () => {
        for (const [name, value] of Object.entries(sysctlsBefore)) {
          const now = (await Deno.readTextFile(`/proc/sys/${name}`)).trim();
          if (now !== value) await Deno.writeTextFile(`/proc/sys/${name}`, value);
        }
      });
      for (const step of undo.reverse()) await attempt(step.what, step.fn);
      await attempt("remove the rig dir", () => Deno.remove(dir, { recursive: true }));
      return problems;
    },
  };

  try {
    // Directories some component writes regardless of configuration: a tmpfs in this namespace.
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
    for (const sub of ["certs", "etcd", "containerd", "pod-logs", "spire"]) {
      await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
    }
    await Deno.mkdir(socketDir, { recursive: true });
    await Deno.mkdir(`${kubeletDir}/plugins/${DRIVER_NAME}`, { recursive: true });
    const certs = await makeCerts(`${dir}/certs`);

    start("etcd", "/usr/bin/etcd", [
      "--name=rig",
      `--data-dir=${dir}/etcd/data`,
      `--listen-client-urls=http://127.0.0.1:${ports.etcd}`,
      `--advertise-client-urls=http://127.0.0.1:${ports.etcd}`,
      `--listen-peer-urls=http://127.0.0.1:${ports.etcdPeer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${ports.etcdPeer}`,
      `--initial-cluster=rig=http://127.0.0.1:${ports.etcdPeer}`,
      "--log-level=warn",
    ]);
    await waitFor("etcd", async () => {
      const response = await fetch(`http://127.0.0.1:${ports.etcd}/health`);
      return (await response.json()).health === "true" ? true : undefined;
    }, 60_000);

    start("kube-apiserver", `${BIN}/kube-apiserver`, [
      `--etcd-servers=http://127.0.0.1:${ports.etcd}`,
      "--bind-address=127.0.0.1",
      `--secure-port=${ports.api}`,
      "--advertise-address=127.0.0.1",
      "--endpoint-reconciler-type=none",
      // Every real cluster allows privileged containers (kubeadm sets it); the driver needs one.
      "--allow-privileged=true",
      "--authorization-mode=AlwaysAllow",
      `--client-ca-file=${certs}/ca.crt`,
      `--tls-cert-file=${certs}/apiserver.crt`,
      `--tls-private-key-file=${certs}/apiserver.key`,
      `--kubelet-client-certificate=${certs}/apiserver-kubelet.crt`,
      `--kubelet-client-key=${certs}/apiserver-kubelet.key`,
      `--service-account-key-file=${certs}/sa.pub`,
      `--service-account-signing-key-file=${certs}/sa.key`,
      "--service-account-issuer=https://kubernetes.default.svc",
      "--service-cluster-ip-range=10.96.0.0/24",
      "--enable-priority-and-fairness=false",
      "--watch-cache=false",
      "--v=1",
    ]);
    api = new KubeApi({
      server: `https://127.0.0.1:${ports.api}`,
      caPem: await Deno.readTextFile(`${certs}/ca.crt`),
      certPem: await Deno.readTextFile(`${certs}/admin.crt`),
      keyPem: await Deno.readTextFile(`${certs}/admin.key`),
    });
    const client = api;
    await waitFor(
      "kube-apiserver /readyz",
      async () => {
        const apiserver = processes.get("kube-apiserver");
        if (apiserver?.exited) throw new Error(`kube-apiserver exited:\n${apiserver.logs()}`);
        const ready = await client.request("GET", "/api/v1/namespaces/default");
        return ready.metadata?.name === "default" ? true : undefined;
      },
      120_000,
      500,
    );

    await Deno.writeTextFile(`${dir}/containerd/config.toml`, containerdConfig(dir));
    await writeCniConfig(dir);
    start("containerd", "/usr/bin/containerd", ["--config", `${dir}/containerd/config.toml`]);
    await waitFor("containerd", async () => {
      const result = await run("ctr", ["-a", containerdSocket, "version"], { timeoutMs: 5_000 });
      return result.code === 0 ? true : undefined;
    }, 60_000);
    const driver = localDriverImage();
    await importImages({
      spireAgentStatic: `${BIN}/spire-agent-static`,
      containerdSocket,
      workDir: `${dir}/images`,
      driver,
    });
    driverImage = driver.name;

    // The controllers the DaemonSet needs, the publisher of each namespace's kube-root-ca.crt
    // (a pod that mounts its service account token, as the hardened chart's do, waits for it),
    // and the scheduler that binds DaemonSet pods to the node.
    await writeKubeconfig(rig.kubeconfig, ports.api, certs, "admin");
    start("kube-controller-manager", `${BIN}/kube-controller-manager`, [
      `--kubeconfig=${rig.kubeconfig}`,
      `--authentication-kubeconfig=${rig.kubeconfig}`,
      `--authorization-kubeconfig=${rig.kubeconfig}`,
      "--controllers=daemonset,serviceaccount-token,root-ca-cert-publisher",
      `--service-account-private-key-file=${certs}/sa.key`,
      `--root-ca-file=${certs}/ca.crt`,
      "--use-service-account-credentials=false",
      "--leader-elect=false",
      "--bind-address=127.0.0.1",
      `--secure-port=${ports.controllerManager}`,
      "--v=1",
    ]);
    start("kube-scheduler", `${BIN}/kube-scheduler`, [
      `--kubeconfig=${rig.kubeconfig}`,
      `--authentication-kubeconfig=${rig.kubeconfig}`,
      `--authorization-kubeconfig=${rig.kubeconfig}`,
      "--leader-elect=false",
      "--bind-address=127.0.0.1",
      `--secure-port=${ports.scheduler}`,
      "--v=1",
    ]);

    // The cgroup root kubelet puts pods under: one of the rig's own in every hierarchy.
    for await (const hierarchy of Deno.readDir("/sys/fs/cgroup")) {
      if (!hierarchy.isDirectory) continue;
      await Deno.mkdir(`/sys/fs/cgroup/${hierarchy.name}/${cgroupRoot}`);
    }
    await writeKubeletConfig(dir, certs, ports, cgroupRoot, containerdSocket, podLogsDir);
    for (const name of SYSCTLS) {
      sysctlsBefore[name] = (await Deno.readTextFile(`/proc/sys/${name}`)).trim();
    }

    // The CSIDriver object, as manifests/base/csidriver.yaml has it.
    await client.create("/apis/storage.k8s.io/v1/csidrivers", {
      apiVersion: "storage.k8s.io/v1",
      kind: "CSIDriver",
      metadata: { name: DRIVER_NAME },
      spec: {
        attachRequired: false,
        podInfoOnMount: true,
        fsGroupPolicy: "None",
        volumeLifecycleModes: ["Ephemeral"],
      },
    });
    await rig.startKubelet();
    await waitFor("the Node object", async () => (await client.get(`/api/v1/nodes/${NODE}`)));
    // The API server taints a new node not-ready:NoSchedule (TaintNodesByCondition); the node
    // lifecycle controller, which this rig does not run, lifts it once the node is Ready. So does
    // this: a DaemonSet without a blanket toleration (the hardened chart's) must be scheduled.
    await waitFor("the Node Ready and untainted", async () => {
      const node = await client.get(`/api/v1/nodes/${NODE}`);
      const ready = (node?.status?.conditions as Obj[] | undefined)
        ?.some((c) => c.type === "Ready" && c.status === "True");
      if (!node || !ready) return undefined;
      const taints = (node.spec.taints ?? []) as Obj[];
      const kept = taints.filter((t) => t.key !== "node.kubernetes.io/not-ready");
      if (kept.length === taints.length) return true;
      node.spec.taints = kept;
      await client.request("PUT", `/api/v1/nodes/${NODE}`, node).catch(() => undefined);
      return undefined;
    });

    spire = await startSpire({
      dir: `${dir}/spire`,
      socketDir,
      workloadAttestors: `WorkloadAttestor "k8s" {
    plugin_data {
      kubelet_read_only_port = ${ports.kubeletRo}
      node_name = "${NODE}"
    }
  }`,
    });
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

function containerdConfig(dir: string): string {
  const c = `${dir}/containerd`;
  return `version = 2
root = "${c}/root"
state = "${c}/state"
[grpc]
  address = "${c}/containerd.sock"
[ttrpc]
  address = "${c}/containerd.sock.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "${c}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/spiffe-csi-rig/pause:1"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "${c}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${c}/cni-conf"
`;
}

/**
 * The pod network, for pods without hostNetwork (the driver's DaemonSet): a bridge in the rig's
 * own network namespace (gone with it), addresses from host-local kept in the rig's dir, no
 * masquerading (pods talk only to each other and the node over loopback-free Unix sockets).
 */
async function writeCniConfig(dir: string): Promise<void> {
  const c = `${dir}/containerd`;
  await Deno.mkdir(`${c}/cni-conf`, { recursive: true });
  await Deno.writeTextFile(
    `${c}/cni-conf/10-rig.conflist`,
    JSON.stringify({
      cniVersion: "1.0.0",
      name: "rig",
      plugins: [{
        type: "bridge",
        bridge: "rig0",
        isGateway: true,
        ipMasq: false,
        ipam: {
          type: "host-local",
          ranges: [[{ subnet: "10.244.0.0/24" }]],
          dataDir: `${c}/cni-ipam`,
        },
      }],
    }),
  );
}

async function writeKubeletConfig(
  dir: string,
  certs: string,
  ports: Record<string, number>,
  cgroupRoot: string,
  containerdSocket: string,
  podLogsDir: string,
): Promise<void> {
  await Deno.writeTextFile(
    `${dir}/kubelet.yaml`,
    JSON.stringify({
      apiVersion: "kubelet.config.k8s.io/v1beta1",
      kind: "KubeletConfiguration",
      failCgroupV1: false,
      failSwapOn: false,
      cgroupDriver: "cgroupfs",
      cgroupRoot: `/${cgroupRoot}`,
      containerRuntimeEndpoint: `unix://${containerdSocket}`,
      address: "127.0.0.1",
      port: ports.kubelet,
      readOnlyPort: ports.kubeletRo,
      healthzBindAddress: "127.0.0.1",
      healthzPort: ports.healthz,
      tlsCertFile: `${certs}/kubelet.crt`,
      tlsPrivateKeyFile: `${certs}/kubelet.key`,
      authentication: {
        x509: { clientCAFile: `${certs}/ca.crt` },
        anonymous: { enabled: false },
        webhook: { enabled: false },
      },
      authorization: { mode: "AlwaysAllow" },
      evictionHard: {},
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      enforceNodeAllocatable: [],
      podLogsDir,
      volumeStatsAggPeriod: "5s",
      serializeImagePulls: false,
      registerNode: true,
    }),
  );
  await writeKubeconfig(`${dir}/kubelet.kubeconfig`, ports.api as number, certs, "kubelet-client");
}

/** A kubeconfig for the API server on `port` with the client certificate `<certs>/<user>.crt`. */
async function writeKubeconfig(
  path: string,
  port: number,
  certs: string,
  user: string,
): Promise<void> {
  await Deno.writeTextFile(
    path,
    JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{
        name: "rig",
        cluster: {
          server: `https://127.0.0.1:${port}`,
          "certificate-authority": `${certs}/ca.crt`,
        },
      }],
      users: [{
        name: user,
        user: {
          "client-certificate": `${certs}/${user}.crt`,
          "client-key": `${certs}/${user}.key`,
        },
      }],
      contexts: [{ name: "rig", context: { cluster: "rig", user } }],
      "current-context": "rig",
    }),
  );
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
