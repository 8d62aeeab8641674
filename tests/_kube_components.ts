/**
 * The kubelet rig's components, one step each, in the order tests/_kube_rig.ts starts them: every
 * step takes what it needs (the process launcher, ports, paths, certificates) and returns what a
 * later step uses. Each process is started through `start`, which keeps it for the rig's logs and
 * teardown.
 */
import { ROOT } from "./_driver.ts";
import {
  freeLoopbackPort,
  type LoggedProcess,
  run,
  type Spire,
  startSpire,
  waitFor,
} from "./_spire.ts";
import { KubeApi, type Obj } from "./_kube_api.ts";
import { driverImage as localDriverImage, importImages } from "./_kube_images.ts";

/** Where tools/build_kube.sh and tools/install_peers.sh put binaries. */
export const BIN = `${ROOT}.tools/bin`;
/** The node's name. */
export const NODE = "node1";
/** The node's address: an extra address on the rig's own loopback device (not 127/8: kubelet refuses it). */
export const NODE_IP = "10.254.0.1";
/** The CSI driver's name. */
export const DRIVER_NAME = "csi.spiffe.io";

/** Starts a process under `name`, kept for the rig's logs and teardown. */
export type Start = (name: string, command: string, args: string[]) => LoggedProcess;

/** The rig's loopback ports, one per listener. */
export interface Ports {
  etcd: number;
  etcdPeer: number;
  api: number;
  kubelet: number;
  kubeletRo: number;
  healthz: number;
  controllerManager: number;
  scheduler: number;
}

/** The rig's paths: its private dir and what it holds, and the host paths the manifests name. */
export interface RigPaths {
  dir: string;
  kubeletDir: string;
  socketDir: string;
  csiSocketPath: string;
  registrationDir: string;
  podLogsDir: string;
  containerdSocket: string;
  /** A kubeconfig with the admin's credentials (for kubectl). */
  kubeconfig: string;
}

/** A free loopback port for every listener, no two alike. */
export function pickPorts(): Ports {
  const ports: Ports = {
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
  for (const key of Object.keys(ports) as (keyof Ports)[]) {
    ports[key] = freeLoopbackPort(taken);
  }
  return ports;
}

/** Starts etcd (one member, data in the rig's dir) and waits until it reports healthy. */
export async function startEtcd(start: Start, dir: string, ports: Ports): Promise<void> {
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
}

/** A started kube-apiserver: the admin's client, and the wait until it serves. */
export interface ApiServer {
  api: KubeApi;
  ready(): Promise<void>;
}

/**
 * Starts kube-apiserver on etcd and makes the admin's client; the caller keeps the client (for
 * teardown to close) before it waits on `ready()`.
 */
export async function startApiServer(
  start: Start,
  ports: Ports,
  certs: string,
): Promise<ApiServer> {
  const apiserver = start("kube-apiserver", `${BIN}/kube-apiserver`, [
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
  const api = new KubeApi({
    server: `https://127.0.0.1:${ports.api}`,
    caPem: await Deno.readTextFile(`${certs}/ca.crt`),
    certPem: await Deno.readTextFile(`${certs}/admin.crt`),
    keyPem: await Deno.readTextFile(`${certs}/admin.key`),
  });
  const ready = async () => {
    await waitFor(
      "kube-apiserver /readyz",
      async () => {
        if (apiserver.exited) throw new Error(`kube-apiserver exited:\n${apiserver.logs()}`);
        const namespace = await api.request("GET", "/api/v1/namespaces/default");
        return namespace.metadata?.name === "default" ? true : undefined;
      },
      120_000,
      500,
    );
  };
  return { api, ready };
}

/**
 * The pod network, for pods without hostNetwork (the driver's DaemonSet): a bridge in the rig's
 * own network namespace (gone with it), addresses from host-local kept in the rig's dir, no
 * masquerading (pods talk only to each other and the node over loopback-free Unix sockets).
 */
export async function writeCniConfig(dir: string): Promise<void> {
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

/** Starts containerd (runc, the rig's CNI config) with its state in the rig's dir; waits for it. */
export async function startContainerd(start: Start, paths: RigPaths): Promise<void> {
  const { dir, containerdSocket } = paths;
  await Deno.writeTextFile(`${dir}/containerd/config.toml`, containerdConfig(dir));
  start("containerd", "/usr/bin/containerd", ["--config", `${dir}/containerd/config.toml`]);
  await waitFor("containerd", async () => {
    const result = await run("ctr", ["-a", containerdSocket, "version"], { timeoutMs: 5_000 });
    return result.code === 0 ? true : undefined;
  }, 60_000);
}

/** Imports the rig's images and the driver's local image; returns the driver image's name. */
export async function importRigImages(paths: RigPaths): Promise<string> {
  const driver = localDriverImage();
  await importImages({
    spireAgentStatic: `${BIN}/spire-agent-static`,
    containerdSocket: paths.containerdSocket,
    workDir: `${paths.dir}/images`,
    driver,
  });
  return driver.name;
}

/**
 * Writes the admin's kubeconfig and starts the controllers the DaemonSet needs, the publisher of
 * each namespace's kube-root-ca.crt (a pod that mounts its service account token, as the hardened
 * chart's do, waits for it), and the scheduler that binds DaemonSet pods to the node.
 */
export async function startControlLoops(
  start: Start,
  kubeconfig: string,
  ports: Ports,
  certs: string,
): Promise<void> {
  await writeKubeconfig(kubeconfig, ports.api, certs, "admin");
  start("kube-controller-manager", `${BIN}/kube-controller-manager`, [
    `--kubeconfig=${kubeconfig}`,
    `--authentication-kubeconfig=${kubeconfig}`,
    `--authorization-kubeconfig=${kubeconfig}`,
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
    `--kubeconfig=${kubeconfig}`,
    `--authentication-kubeconfig=${kubeconfig}`,
    `--authorization-kubeconfig=${kubeconfig}`,
    "--leader-elect=false",
    "--bind-address=127.0.0.1",
    `--secure-port=${ports.scheduler}`,
    "--v=1",
  ]);
}

/**
 * Makes the cgroup root kubelet puts pods under (one of the rig's own in every hierarchy) and
 * writes kubelet's config and kubeconfig.
 */
export async function prepareKubelet(
  paths: RigPaths,
  ports: Ports,
  certs: string,
  cgroupRoot: string,
): Promise<void> {
  for await (const hierarchy of Deno.readDir("/sys/fs/cgroup")) {
    if (!hierarchy.isDirectory) continue;
    await Deno.mkdir(`/sys/fs/cgroup/${hierarchy.name}/${cgroupRoot}`);
  }
  await writeKubeletConfig(paths, ports, certs, cgroupRoot);
}

/** Starts kubelet with the config prepareKubelet wrote and waits for its healthz. */
export async function launchKubelet(start: Start, paths: RigPaths, ports: Ports): Promise<void> {
  const kubelet = start("kubelet", `${BIN}/kubelet`, [
    `--config=${paths.dir}/kubelet.yaml`,
    `--kubeconfig=${paths.dir}/kubelet.kubeconfig`,
    `--root-dir=${paths.kubeletDir}`,
    `--hostname-override=${NODE}`,
    `--node-ip=${NODE_IP}`,
    "--v=2",
  ]);
  await waitFor("kubelet's healthz", async () => {
    if (kubelet.exited) throw new Error(`kubelet exited:\n${kubelet.logs().slice(-5000)}`);
    const response = await fetch(`http://127.0.0.1:${ports.healthz}/healthz`);
    return (await response.text()) === "ok" ? true : undefined;
  }, 60_000);
}

/** Creates the CSIDriver object, as manifests/base/csidriver.yaml has it. */
export async function createCsiDriver(api: KubeApi): Promise<void> {
  await api.create("/apis/storage.k8s.io/v1/csidrivers", {
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
}

/**
 * Waits for the Node object, then for it to be Ready, lifting the not-ready taint: the API server
 * taints a new node not-ready:NoSchedule (TaintNodesByCondition) and the node lifecycle controller,
 * which this rig does not run, lifts it once the node is Ready. So does this: a DaemonSet without a
 * blanket toleration (the hardened chart's) must be scheduled.
 */
export async function waitForNodeReady(api: KubeApi): Promise<void> {
  await waitFor("the Node object", async () => (await api.get(`/api/v1/nodes/${NODE}`)));
  await waitFor("the Node Ready and untainted", async () => {
    const node = await api.get(`/api/v1/nodes/${NODE}`);
    const ready = (node?.status?.conditions as Obj[] | undefined)
      ?.some((c) => c.type === "Ready" && c.status === "True");
    if (!node || !ready) return undefined;
    const taints = (node.spec.taints ?? []) as Obj[];
    const kept = taints.filter((t) => t.key !== "node.kubernetes.io/not-ready");
    if (kept.length === taints.length) return true;
    node.spec.taints = kept;
    await api.request("PUT", `/api/v1/nodes/${NODE}`, node).catch(() => undefined);
    return undefined;
  });
}

/** Starts SPIRE with the k8s workload attestor, which asks kubelet's read-only port. */
export function startRigSpire(paths: RigPaths, ports: Ports): Promise<Spire> {
  return startSpire({
    dir: `${paths.dir}/spire`,
    socketDir: paths.socketDir,
    workloadAttestors: `WorkloadAttestor "k8s" {
    plugin_data {
      kubelet_read_only_port = ${ports.kubeletRo}
      node_name = "${NODE}"
    }
  }`,
  });
}

/** containerd's config: its state, runc and CNI under the rig's dir. */
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

/** kubelet's config and kubeconfig in the rig's dir. */
async function writeKubeletConfig(
  paths: RigPaths,
  ports: Ports,
  certs: string,
  cgroupRoot: string,
): Promise<void> {
  const { dir, containerdSocket, podLogsDir } = paths;
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
  await writeKubeconfig(`${dir}/kubelet.kubeconfig`, ports.api, certs, "kubelet-client");
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
