// deno-lint-ignore-file no-console
/**
 * The driver under a real kubelet v1.37.2 (containerd, runc) on a one-node Kubernetes on loopback.
 * Runs only through `deno task kubelet-e2e` (tests/kubelet_e2e.sh), which builds what is missing
 * and puts the rig in private namespaces; elsewhere every test here is ignored. The tests run in
 * order against one rig: the first starts it, the last tears it down and proves the machine is as
 * it was found.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { exists, layers, mountTable } from "./_env.ts";
import { freeLoopbackPort, LoggedProcess, runOk, waitFor } from "./_spire.ts";
import type { Obj } from "./_kube_api.ts";
import { importBinaryImage, WORKLOAD_IMAGE } from "./_kube_images.ts";
import {
  apply,
  DAEMONSET,
  type Deployment,
  kustomize,
  writeKustomization,
} from "./_kube_manifests.ts";
import { parseAllDocuments } from "yaml";
import {
  HARDENED_CHARTS,
  imageName,
  imageValues,
  prepareChart,
  RELEASE,
  renderChart,
} from "./_kube_chart.ts";
import { ROOT } from "./_driver.ts";
import { V8_FLAGS } from "../lib/config/permissions.ts";
import { SOURCE_LAYOUT } from "../tools/local_image.ts";
import {
  BIN,
  captureHost,
  compareHost,
  DRIVER_NAME,
  type HostState,
  NODE,
  pidsMentioning,
  type Rig,
  startRig,
} from "./_kube_rig.ts";

const ENABLED = Deno.env.get("SPIFFE_CSI_KUBELET_RIG") === "1";
const VOLUME = "spiffe-workload-api";
const TRUST_DOMAIN = "example.org";
const READONLY_MESSAGE = "pod.spec.volumes[].csi.readOnly must be set to 'true'";

/**
 * The binaries of node-driver-registrar v2.13.0 and livenessprobe v2.19.0 named by
 * NODE_DRIVER_REGISTRAR and LIVENESSPROBE; without them the scenarios that need them are ignored.
 */
const REGISTRAR = Deno.env.get("NODE_DRIVER_REGISTRAR");
const PROBE = Deno.env.get("LIVENESSPROBE");
const SIDECARS = REGISTRAR && PROBE ? { registrar: REGISTRAR, probe: PROBE } : undefined;
if (ENABLED && SIDECARS === undefined) {
  console.log(
    "IGNORED 1b and 10b: set NODE_DRIVER_REGISTRAR and LIVENESSPROBE to the binaries of " +
      "node-driver-registrar v2.13.0 and livenessprobe v2.19.0 to run them (the Go module proxy " +
      "does not serve them)",
  );
}

let rig: Rig | undefined;
let host: HostState | undefined;

/**
 * The hardened chart's scenario needs the chart's source (HELM_CHARTS_HARDENED, a checkout of
 * spiffe/helm-charts-hardened) and node-driver-registrar at the chart's default tag
 * (CHART_NODE_DRIVER_REGISTRAR); with UPSTREAM_BIN (spiffe-csi built by hand, at the chart's
 * appVersion unless UPSTREAM_VERSION says another) it starts from upstream and switches over.
 */
const CHART_REGISTRAR = Deno.env.get("CHART_NODE_DRIVER_REGISTRAR");
const CHART = HARDENED_CHARTS && CHART_REGISTRAR
  ? { source: HARDENED_CHARTS, registrar: CHART_REGISTRAR }
  : undefined;
const UPSTREAM = Deno.env.get("UPSTREAM_BIN");
const UPSTREAM_VERSION = Deno.env.get("UPSTREAM_VERSION");
if (ENABLED && CHART === undefined) {
  console.log(
    "IGNORED 16: set HELM_CHARTS_HARDENED to a checkout of spiffe/helm-charts-hardened and " +
      "CHART_NODE_DRIVER_REGISTRAR to node-driver-registrar built at the chart's default tag " +
      "(UPSTREAM_BIN too, to switch over from upstream)",
  );
}

/** Options of a rig test. */
interface TestOptions {
  /** It runs node-driver-registrar and livenessprobe (SIDECARS): ignored without them. */
  sidecars?: boolean;
  /** It renders the hardened chart (CHART): ignored without it. */
  chart?: boolean;
}

function test(
  name: string,
  fn: (rig: Rig) => Promise<void>,
  options: TestOptions = {},
): void {
  Deno.test({
    name,
    ignore: !ENABLED || (options.sidecars === true && SIDECARS === undefined) ||
      (options.chart === true && CHART === undefined),
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      if (!rig) throw new Error("the rig is not running (see the first test)");
      try {
        await fn(rig);
      } catch (error) {
        console.error(tails(rig.logs()));
        throw error;
      }
    },
  });
}

/** The last 12,000 characters of each component's log. */
function tails(logs: string): string {
  return logs.split(/^(?=----- )/m).map((part) => {
    const newline = part.indexOf("\n");
    const [head, body] = [part.slice(0, newline + 1), part.slice(newline + 1)];
    return head + (body.length > 12_000 ? `...\n${body.slice(-12_000)}` : body);
  }).join("");
}

// ---------------------------------------------------------------------------------------------
// Pods

interface PodRef {
  namespace: string;
  name: string;
}

/** A workload that fetches its X.509 SVID through the CSI volume every 2 s and prints it. */
function workloadPod(
  ref: PodRef,
  serviceAccount: string,
  options: { readOnly?: boolean; driver?: string; script?: string } = {},
): Obj {
  const fetch = options.script ?? [
    "while true; do",
    "  if spire-agent api fetch x509 -socketPath /spiffe-workload-api/api.sock -write /tmp -timeout 5s; then",
    // FETCH-OK last: a reader that sees it sees the whole SVID and bundle before it.
    "    echo ---SVID; cat /tmp/svid.0.pem; echo ---BUNDLE; cat /tmp/bundle.0.pem; echo ---END; echo FETCH-OK $(date +%s);",
    "  else echo FETCH-FAILED $(date +%s); fi;",
    "  sleep 2;",
    "done",
  ].join("\n");
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: ref.name, namespace: ref.namespace, labels: { app: "workload" } },
    spec: {
      nodeName: NODE,
      // The Workload API is a Unix socket: pods need no network of their own.
      hostNetwork: true,
      serviceAccountName: serviceAccount,
      automountServiceAccountToken: false,
      terminationGracePeriodSeconds: 1,
      containers: [{
        name: "workload",
        image: WORKLOAD_IMAGE,
        imagePullPolicy: "Never",
        command: ["/bin/sh", "-c", fetch],
        volumeMounts: [{ name: VOLUME, mountPath: "/spiffe-workload-api", readOnly: true }],
      }],
      volumes: [{
        name: VOLUME,
        csi: { driver: options.driver ?? DRIVER_NAME, readOnly: options.readOnly ?? true },
      }],
    },
  };
}

async function ensureIdentity(r: Rig, namespace: string, serviceAccount: string): Promise<void> {
  if (!(await r.api.get(`/api/v1/namespaces/${namespace}`))) {
    await r.api.create("/api/v1/namespaces", {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: { name: namespace },
    });
  }
  if (!(await r.api.get(`/api/v1/namespaces/${namespace}/serviceaccounts/${serviceAccount}`))) {
    await r.api.create(`/api/v1/namespaces/${namespace}/serviceaccounts`, {
      apiVersion: "v1",
      kind: "ServiceAccount",
      metadata: { name: serviceAccount, namespace },
      automountServiceAccountToken: false,
    });
  }
}

function podPath(ref: PodRef): string {
  return `/api/v1/namespaces/${ref.namespace}/pods/${ref.name}`;
}

async function createPod(r: Rig, pod: Obj): Promise<string> {
  const created = await r.api.create(`/api/v1/namespaces/${pod.metadata.namespace}/pods`, pod);
  return created.metadata.uid as string;
}

async function waitRunning(r: Rig, ref: PodRef, timeoutMs = 120_000): Promise<Obj> {
  return await waitFor(
    `${ref.namespace}/${ref.name} Running`,
    async () => {
      const pod = await r.api.get(podPath(ref));
      const ready = pod?.status?.containerStatuses?.[0]?.state?.running !== undefined;
      return pod?.status?.phase === "Running" && ready ? pod : undefined;
    },
    timeoutMs,
    250,
  );
}

async function deletePod(r: Rig, ref: PodRef): Promise<void> {
  await r.api.delete(podPath(ref), { gracePeriodSeconds: 1 });
}

async function waitGone(r: Rig, ref: PodRef, timeoutMs = 120_000): Promise<void> {
  await waitFor(
    `${ref.namespace}/${ref.name} gone`,
    async () => {
      return (await r.api.get(podPath(ref))) === undefined ? true : undefined;
    },
    timeoutMs,
    250,
  );
}

function targetOf(r: Rig, uid: string): string {
  return `${r.kubeletDir}/pods/${uid}/volumes/kubernetes.io~csi/${VOLUME}/mount`;
}

async function mountsUnderPods(r: Rig): Promise<string[]> {
  return (await mountTable()).map((e) => e.target)
    .filter((t) => t.startsWith(`${r.kubeletDir}/pods/`));
}

/** What the workload printed: fetch results in order, with the last SVID and bundle. */
interface WorkloadLog {
  ok: number[];
  failed: number[];
  spiffeIds: string[];
  svidPem?: string;
  bundlePem?: string;
}

/** The messages a container printed, from kubelet's pod log files (every restart, in order). */
async function containerLog(
  r: Rig,
  ref: PodRef,
  uid: string,
  container: string,
): Promise<string[]> {
  const dir = `${r.podLogsDir}/${ref.namespace}_${ref.name}_${uid}/${container}`;
  let text = "";
  try {
    const files = [];
    for await (const entry of Deno.readDir(dir)) files.push(entry.name);
    for (const file of files.sort((a, b) => parseInt(a) - parseInt(b))) {
      text += await Deno.readTextFile(`${dir}/${file}`);
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  // CRI log lines: "<time> <stream> <P|F> <message>".
  return text.split("\n").map((line) => line.split(" ").slice(3).join(" "));
}

async function workloadLog(r: Rig, ref: PodRef, uid: string): Promise<WorkloadLog> {
  const lines = await containerLog(r, ref, uid, "workload");
  const log: WorkloadLog = { ok: [], failed: [], spiffeIds: [] };
  let section: "svid" | "bundle" | undefined;
  let svid = "", bundle = "";
  for (const line of lines) {
    const ok = /^FETCH-OK (\d+)/.exec(line);
    if (ok) log.ok.push(Number(ok[1]));
    const failed = /^FETCH-FAILED (\d+)/.exec(line);
    if (failed) log.failed.push(Number(failed[1]));
    const id = /SPIFFE ID:\s+(spiffe:\/\/\S+)/.exec(line);
    if (id) log.spiffeIds.push(id[1] as string);
    if (line === "---SVID") [section, svid] = ["svid", ""];
    else if (line === "---BUNDLE") [section, bundle] = ["bundle", ""];
    else if (line === "---END") {
      section = undefined;
      log.svidPem = svid;
      log.bundlePem = bundle;
    } else if (section === "svid") svid += `${line}\n`;
    else if (section === "bundle") bundle += `${line}\n`;
  }
  return log;
}

/** Waits until the workload has fetched successfully after `since` (unix seconds). */
async function waitFetched(
  r: Rig,
  ref: PodRef,
  uid: string,
  since: number,
  timeoutMs = 90_000,
): Promise<WorkloadLog> {
  return await waitFor(
    `${ref.namespace}/${ref.name} to fetch an SVID`,
    async () => {
      const log = await workloadLog(r, ref, uid);
      return log.ok.some((t) => t >= since) ? log : undefined;
    },
    timeoutMs,
    500,
  );
}

async function containerIds(r: Rig, refs: PodRef[]): Promise<string[]> {
  const ids = [];
  for (const ref of refs) {
    const pod = await r.api.get(podPath(ref));
    const id = pod?.status?.containerStatuses?.[0]?.containerID;
    assert.ok(typeof id === "string" && id !== "", `${ref.name} has no container`);
    ids.push(id);
  }
  return ids;
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

function spiffeIdOf(namespace: string, serviceAccount: string): string {
  return `spiffe://${TRUST_DOMAIN}/ns/${namespace}/sa/${serviceAccount}`;
}

async function csiNodeDrivers(r: Rig): Promise<Obj[]> {
  const node = await r.api.get(`/apis/storage.k8s.io/v1/csinodes/${NODE}`);
  return (node?.spec?.drivers ?? []) as Obj[];
}

// Two workloads in different namespaces and service accounts, each with its own entry.
const POD_A: PodRef = { namespace: "team-a", name: "workload-a" };
const POD_B: PodRef = { namespace: "team-b", name: "workload-b" };
const SA = { [POD_A.namespace]: "sa-a", [POD_B.namespace]: "sa-b" } as Record<string, string>;
const running = new Map<string, string>(); // "<ns>/<name>" -> uid

// ---------------------------------------------------------------------------------------------
// The scenarios

Deno.test({
  name:
    "kubelet rig: etcd, kube-apiserver, containerd, kubelet v1.37.2, SPIRE and the driver start",
  ignore: !ENABLED,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    host = await captureHost();
    const started = performance.now();
    rig = await startRig();
    console.log(`rig started in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    const version = await rig.api.request("GET", "/version");
    assert.equal(version.gitVersion, "v1.37.2");
    const node = await rig.api.get(`/api/v1/nodes/${NODE}`);
    assert.equal(node?.status?.nodeInfo?.kubeletVersion, "v1.37.2");
  },
});

test("1. built-in registration puts the driver in the CSINode object with its node id", async (r) => {
  const registration = `${r.registrationDir}/${DRIVER_NAME}-reg.sock`;
  const entry = await waitFor("the driver in CSINode", async () => {
    return (await csiNodeDrivers(r)).find((d) => d.name === DRIVER_NAME);
  }, 60_000);
  assert.equal(entry.nodeID, NODE);
  assert.ok((await Deno.lstat(registration)).isSocket);
  // kubelet updates CSINode before it reports the outcome to the driver.
  await waitFor("kubelet's NotifyRegistrationStatus(true) in the driver's log", () => {
    return Promise.resolve(/Registered with kubelet/.test(r.driver?.logs() ?? "") || undefined);
  });

  // The driver stopping removes its registration socket, and kubelet drops it from CSINode.
  await r.stopDriver("SIGTERM");
  assert.equal(await exists(registration), false);
  await waitFor("the driver to leave CSINode", async () => {
    return (await csiNodeDrivers(r)).some((d) => d.name === DRIVER_NAME) ? undefined : true;
  }, 60_000);
  await r.startDriver();
  await waitFor("the driver back in CSINode", async () => {
    return (await csiNodeDrivers(r)).find((d) => d.name === DRIVER_NAME && d.nodeID === NODE);
  }, 60_000);
});

test(
  "1b. registration through node-driver-registrar v2.13.0 and livenessprobe v2.19.0",
  async (r) => {
    if (!SIDECARS) throw new Error("NODE_DRIVER_REGISTRAR and LIVENESSPROBE are unset");
    const { registrar, probe } = SIDECARS;
    // The default manifests' layout: the driver without built-in registration, plus both sidecars.
    await r.stopDriver("SIGTERM");
    await waitFor("the driver to leave CSINode", async () => {
      return (await csiNodeDrivers(r)).some((d) => d.name === DRIVER_NAME) ? undefined : true;
    }, 60_000);
    await r.startDriver({ builtinRegistration: false });
    const [registrarPort, probePort] = [freeLoopbackPort(), freeLoopbackPort()];
    const sidecars = [
      new LoggedProcess("node-driver-registrar", registrar, [
        `--csi-address=${r.csiSocketPath}`,
        `--kubelet-registration-path=${r.csiSocketPath}`,
        `--plugin-registration-path=${r.registrationDir}`,
        `--http-endpoint=127.0.0.1:${registrarPort}`,
      ]),
      new LoggedProcess("livenessprobe", probe, [
        `--csi-address=${r.csiSocketPath}`,
        `--http-endpoint=127.0.0.1:${probePort}`,
      ]),
    ];
    try {
      const entry = await waitFor("the driver in CSINode through the registrar", async () => {
        return (await csiNodeDrivers(r)).find((d) => d.name === DRIVER_NAME);
      }, 60_000);
      assert.equal(entry.nodeID, NODE);
      for (const port of [registrarPort, probePort]) {
        await waitFor(`healthz on ${port}`, async () => {
          const response = await fetch(`http://127.0.0.1:${port}/healthz`);
          await response.body?.cancel();
          return response.status === 200 ? true : undefined;
        });
      }
    } catch (error) {
      for (const sidecar of sidecars) console.error(`----- ${sidecar.name}\n${sidecar.logs()}`);
      throw error;
    } finally {
      for (const sidecar of sidecars) await sidecar.stop();
      await r.stopDriver("SIGTERM");
      await waitFor("the registrar's socket to go", async () => {
        const names = await Array.fromAsync(Deno.readDir(r.registrationDir));
        return names.length === 0 ? true : undefined;
      });
      await r.startDriver();
    }
    await waitFor("built-in registration back in CSINode", async () => {
      return (await csiNodeDrivers(r)).find((d) => d.name === DRIVER_NAME && d.nodeID === NODE);
    }, 60_000);
  },
  { sidecars: true },
);

test("2. pods in two namespaces fetch the X.509 SVID of their own k8s:ns/k8s:sa entry through the volume", async (r) => {
  for (const ref of [POD_A, POD_B]) {
    const sa = SA[ref.namespace] as string;
    await ensureIdentity(r, ref.namespace, sa);
    await r.spire.createEntry({
      spiffeId: spiffeIdOf(ref.namespace, sa),
      selectors: [`k8s:ns:${ref.namespace}`, `k8s:sa:${sa}`],
    });
  }
  const since = nowSeconds();
  for (const ref of [POD_A, POD_B]) {
    const uid = await createPod(r, workloadPod(ref, SA[ref.namespace] as string));
    running.set(`${ref.namespace}/${ref.name}`, uid);
  }
  for (const ref of [POD_A, POD_B]) {
    await waitRunning(r, ref);
    const uid = running.get(`${ref.namespace}/${ref.name}`) as string;
    const target = targetOf(r, uid);
    assert.equal(await layers(target), 1, `one bind mount at ${target}`);
    const log = await waitFetched(r, ref, uid, since);
    const expected = spiffeIdOf(ref.namespace, SA[ref.namespace] as string);
    assert.ok(log.spiffeIds.length > 0, "the workload printed no SPIFFE ID");
    assert.deepEqual([...new Set(log.spiffeIds)], [expected]);
    // The SVID is the workload's and chains to the trust bundle.
    assert.ok(log.svidPem && log.bundlePem, "no SVID/bundle printed");
    const svid = new X509Certificate(log.svidPem);
    const bundle = new X509Certificate(log.bundlePem);
    assert.ok(svid.subjectAltName?.includes(`URI:${expected}`), svid.subjectAltName ?? "no SAN");
    assert.ok(svid.checkIssued(bundle) && svid.verify(bundle.publicKey), "SVID does not verify");
  }
});

test("3. a pod whose volume is not readOnly never starts, and its events carry the driver's message", async (r) => {
  const ref: PodRef = { namespace: POD_A.namespace, name: "not-read-only" };
  const uid = await createPod(
    r,
    workloadPod(ref, SA[ref.namespace] as string, { readOnly: false }),
  );
  const event = await waitFor("a FailedMount event with the driver's message", async () => {
    const list = await r.api.request(
      "GET",
      `/api/v1/namespaces/${ref.namespace}/events?fieldSelector=involvedObject.uid=${uid}`,
    );
    return (list.items as Obj[]).find((e) =>
      e.reason === "FailedMount" && String(e.message).includes(READONLY_MESSAGE)
    );
  }, 90_000);
  assert.match(event.message, /InvalidArgument/);
  const pod = await r.api.get(podPath(ref));
  assert.equal(pod?.status?.phase, "Pending");
  assert.equal(pod?.status?.containerStatuses?.[0]?.state?.running, undefined);
  assert.deepEqual(
    (await mountsUnderPods(r)).filter((t) => t.includes(uid)),
    [],
    "nothing is mounted for it",
  );
  await deletePod(r, ref);
  await waitGone(r, ref);
});

test("4. deleting a pod unpublishes: nothing mounted, the target directory gone", async (r) => {
  const ref: PodRef = { namespace: POD_B.namespace, name: "short-lived" };
  const uid = await createPod(r, workloadPod(ref, SA[ref.namespace] as string));
  await waitRunning(r, ref);
  const target = targetOf(r, uid);
  assert.equal(await layers(target), 1);
  await deletePod(r, ref);
  await waitGone(r, ref);
  assert.deepEqual((await mountsUnderPods(r)).filter((t) => t.includes(uid)), []);
  assert.equal(await exists(target), false, "the target dir is removed");
  assert.equal(
    await exists(`${r.kubeletDir}/pods/${uid}/volumes/kubernetes.io~csi/${VOLUME}`),
    false,
  );
});

test("5. kubelet restarted while pods run: they keep fetching, one mount layer per target", async (r) => {
  const containers = await containerIds(r, [POD_A, POD_B]);
  const logBefore = r.driver?.logs().length ?? 0;
  await r.stopKubelet();
  const since = nowSeconds();
  await r.startKubelet();
  for (const ref of [POD_A, POD_B]) {
    const uid = running.get(`${ref.namespace}/${ref.name}`) as string;
    await waitFetched(r, ref, uid, since + 1);
    await waitRunning(r, ref);
  }
  // kubelet reconstructs its volumes and sets each up again: a NodePublishVolume per target, which
  // the driver answers without stacking a second mount.
  for (const ref of [POD_A, POD_B]) {
    const target = targetOf(r, running.get(`${ref.namespace}/${ref.name}`) as string);
    await waitFor(`kubelet to publish ${ref.name}'s volume again`, () => {
      const since = r.driver?.logs().slice(logBefore) ?? "";
      const again = since.split("\n").some((line) =>
        line.includes("NodePublishVolume") && line.includes(target) && line.includes('"OK"')
      );
      return Promise.resolve(again || undefined);
    }, 60_000);
  }
  // And for a while after that the layer count stays exactly one.
  const until = Date.now() + 15_000;
  while (Date.now() < until) {
    for (const ref of [POD_A, POD_B]) {
      const uid = running.get(`${ref.namespace}/${ref.name}`) as string;
      assert.equal(await layers(targetOf(r, uid)), 1, `${ref.name}: layers after kubelet restart`);
    }
    await new Promise((resolve) => setTimeout(resolve, 1_000));
  }
  assert.deepEqual(await containerIds(r, [POD_A, POD_B]), containers, "containers were restarted");
});

test("6. driver SIGKILLed while pods run and one is created and one deleted: all complete once it is back", async (r) => {
  const creating: PodRef = { namespace: POD_A.namespace, name: "created-while-down" };
  const deleting: PodRef = { namespace: POD_B.namespace, name: "deleted-while-down" };
  const deletingUid = await createPod(r, workloadPod(deleting, SA[deleting.namespace] as string));
  await waitRunning(r, deleting);

  await r.stopDriver("SIGKILL");
  const since = nowSeconds();
  const creatingUid = await createPod(r, workloadPod(creating, SA[creating.namespace] as string));
  await deletePod(r, deleting);
  // Running pods keep fetching while the driver is down (their bind mounts stay).
  for (const ref of [POD_A, POD_B]) {
    const uid = running.get(`${ref.namespace}/${ref.name}`) as string;
    await waitFetched(r, ref, uid, since + 1, 30_000);
  }
  // kubelet tried to publish for the new pod and could not: it must not be running.
  await waitFor("a FailedMount event while the driver is down", async () => {
    const list = await r.api.request(
      "GET",
      `/api/v1/namespaces/${creating.namespace}/events?fieldSelector=involvedObject.uid=${creatingUid}`,
    );
    return (list.items as Obj[]).find((e) => e.reason === "FailedMount");
  }, 90_000);
  const pending = await r.api.get(podPath(creating));
  assert.notEqual(pending?.status?.phase, "Running", "a pod started without the driver");

  await r.startDriver();
  await waitRunning(r, creating);
  await waitFetched(r, creating, creatingUid, since);
  await waitGone(r, deleting);
  assert.equal(await exists(targetOf(r, deletingUid)), false);
  for (const uid of [creatingUid, ...running.values()]) {
    assert.equal(await layers(targetOf(r, uid)), 1);
  }
  await deletePod(r, creating);
  await waitGone(r, creating);
});

test("7. SPIRE agent restarted: a running pod fetches again without a restart", async (r) => {
  await r.spire.stopAgent();
  await r.spire.startAgent();
  const since = nowSeconds();
  const uid = running.get(`${POD_A.namespace}/${POD_A.name}`) as string;
  await waitFetched(r, POD_A, uid, since + 1);
  const pod = await r.api.get(podPath(POD_A));
  assert.equal(pod?.status?.containerStatuses?.[0]?.restartCount, 0);
});

test("8. node reboot: pods deleted meanwhile finish terminating, pods still wanted get their volumes back", async (r) => {
  const uidA = running.get(`${POD_A.namespace}/${POD_A.name}`) as string;
  const uidB = running.get(`${POD_B.namespace}/${POD_B.name}`) as string;
  const [containerA] = await containerIds(r, [POD_A]);
  await r.stopKubelet();
  await r.stopDriver("SIGTERM");
  // What a reboot does: every container dies and every mount is gone.
  await r.killPods();
  for (const target of (await mountsUnderPods(r)).reverse()) {
    const output = await new Deno.Command("/usr/bin/umount", { args: [target] }).output();
    assert.ok(output.success, new TextDecoder().decode(output.stderr));
  }
  assert.deepEqual(await mountsUnderPods(r), []);
  // Deleted while the node is down.
  await deletePod(r, POD_B);
  running.delete(`${POD_B.namespace}/${POD_B.name}`);
  const since = nowSeconds();
  await r.startDriver();
  await r.startKubelet();
  await waitGone(r, POD_B);
  assert.equal(await exists(targetOf(r, uidB)), false);
  // A new container (the old one died with the "reboot"), with its volume published again.
  await waitFor("a new running container for workload-a", async () => {
    const pod = await waitRunning(r, POD_A);
    const id = pod.status.containerStatuses[0].containerID;
    return id !== containerA ? id : undefined;
  }, 120_000);
  await waitFetched(r, POD_A, uidA, since);
  assert.equal(await layers(targetOf(r, uidA)), 1);
});

test("stats: what kubelet does with NodeGetVolumeStats and the volume condition", async (r) => {
  const uid = running.get(`${POD_A.namespace}/${POD_A.name}`) as string;
  // kubelet's stats provider calls NodeGetVolumeStats for the volume (volumeStatsAggPeriod 5 s).
  const before = (r.driver?.logs().match(/NodeGetVolumeStats/g) ?? []).length;
  await waitFor("a NodeGetVolumeStats call from kubelet", () => {
    const now = (r.driver?.logs().match(/NodeGetVolumeStats/g) ?? []).length;
    return Promise.resolve(now > before || undefined);
  }, 60_000);
  const volume = await waitFor("the volume in kubelet's /stats/summary", async () => {
    const response = await fetch(`${r.kubeletReadOnlyUrl}/stats/summary`);
    const summary = await response.json();
    const pod = (summary.pods as Obj[]).find((p) => p.podRef.uid === uid);
    return (pod?.volume as Obj[] | undefined)?.find((v) => v.name === VOLUME);
  }, 60_000);
  console.log(`kubelet /stats/summary for the volume: ${JSON.stringify(volume)}`);
  assert.equal(typeof volume.usedBytes, "number");
  // With a healthy agent the condition is normal: kubelet reports no abnormal volume event.
  const events = await r.api.request(
    "GET",
    `/api/v1/namespaces/${POD_A.namespace}/events?fieldSelector=involvedObject.uid=${uid}`,
  );
  const abnormal = (events.items as Obj[]).filter((e) => /abnormal/i.test(String(e.message)));
  console.log(`volume condition events for ${POD_A.name}: ${abnormal.length}`);
});

test("9. burst: 30 pods at once are Running with identities, then deleted at once leave zero mounts", async (r) => {
  await burst(r, "burst");
});

/** 30 pods created at once all run and fetch their own identity; deleted at once, they leave no mount. */
async function burst(r: Rig, prefix: string): Promise<void> {
  const refs: PodRef[] = Array.from({ length: 30 }, (_, i) => ({
    namespace: i % 2 === 0 ? POD_A.namespace : POD_B.namespace,
    name: `${prefix}-${i}`,
  }));
  const since = nowSeconds();
  const started = performance.now();
  const uids = await Promise.all(
    refs.map((ref) => createPod(r, workloadPod(ref, SA[ref.namespace] as string))),
  );
  await Promise.all(refs.map((ref) => waitRunning(r, ref, 300_000)));
  const toRunning = (performance.now() - started) / 1000;
  await Promise.all(refs.map((ref, i) => waitFetched(r, ref, uids[i] as string, since, 180_000)));
  for (const [i, ref] of refs.entries()) {
    const log = await workloadLog(r, ref, uids[i] as string);
    assert.deepEqual([...new Set(log.spiffeIds)], [spiffeIdOf(ref.namespace, SA[ref.namespace]!)]);
  }
  const deleting = performance.now();
  await Promise.all(refs.map((ref) => deletePod(r, ref)));
  await Promise.all(refs.map((ref) => waitGone(r, ref, 300_000)));
  const toGone = (performance.now() - deleting) / 1000;
  for (const uid of uids) {
    assert.deepEqual((await mountsUnderPods(r)).filter((t) => t.includes(uid)), []);
  }
  console.log(
    `${prefix}: 30 pods all Running in ${toRunning.toFixed(1)} s; all gone in ${
      toGone.toFixed(1)
    } s`,
  );
}

// ---------------------------------------------------------------------------------------------
// The shipped DaemonSet: kustomize build of manifests/ with the local image, run by the rig's
// kube-controller-manager and scheduled by its kube-scheduler.

const DS_LABEL = "app.kubernetes.io/name=spiffe-csi-driver";
const DRIVER_CONTAINER = "spiffe-csi-driver";
/** Pods whose volumes the DaemonSet's driver published, with their uids. */
const dsWorkloads = new Map<string, string>();
/** The driver container's memory as kubelet reports it, by moment. */
const driverMemory: {
  when: string;
  workingSetBytes: number;
  rssBytes: number;
  /** The process's own resident set (VmRSS), which counts the deno binary's mapped pages too. */
  processRssBytes: number;
}[] = [];

/** Waits until kubelet has the driver in CSINode with this node's id. */
async function waitRegistered(r: Rig, what: string, name = DRIVER_NAME): Promise<void> {
  await waitFor(what, async () => {
    return (await csiNodeDrivers(r)).find((d) => d.name === name && d.nodeID === NODE);
  }, 60_000);
}

/** The DaemonSet's pods that are not being deleted. */
async function driverPods(r: Rig, label = DS_LABEL): Promise<Obj[]> {
  const list = await r.api.request(
    "GET",
    `/api/v1/namespaces/${DAEMONSET.namespace}/pods?labelSelector=${label}`,
  );
  return (list.items as Obj[]).filter((p) => !p.metadata.deletionTimestamp);
}

/**
 * Deletes a DaemonSet and its pods: the rig runs no garbage collector, which would otherwise
 * delete the pods of a deleted DaemonSet. Published volumes stay mounted.
 */
async function deleteDaemonSet(r: Rig, name: string, label: string): Promise<void> {
  await r.api.delete(`/apis/apps/v1/namespaces/${DAEMONSET.namespace}/daemonsets/${name}`);
  for (const pod of await driverPods(r, label)) {
    await r.api.delete(`/api/v1/namespaces/${DAEMONSET.namespace}/pods/${pod.metadata.name}`);
  }
  await waitFor(`the pods of ${name} gone`, async () => {
    const list = await r.api.request(
      "GET",
      `/api/v1/namespaces/${DAEMONSET.namespace}/pods?labelSelector=${label}`,
    );
    return (list.items as Obj[]).length === 0 || undefined;
  }, 120_000);
}

/** Waits for exactly one Ready driver pod, none other left, and (if given) not `previousUid`. */
async function waitDriverPod(r: Rig, previousUid?: string, label = DS_LABEL): Promise<Obj> {
  return await waitFor(`one Ready pod of the DaemonSet ${label}`, async () => {
    const list = await r.api.request(
      "GET",
      `/api/v1/namespaces/${DAEMONSET.namespace}/pods?labelSelector=${label}`,
    );
    const pods = list.items as Obj[];
    if (pods.length !== 1) return undefined;
    const pod = pods[0] as Obj;
    if (pod.metadata.uid === previousUid || pod.metadata.deletionTimestamp) return undefined;
    const ready = (pod.status?.conditions as Obj[] | undefined)?.some((c) =>
      c.type === "Ready" && c.status === "True"
    );
    return ready ? pod : undefined;
  }, 180_000);
}

/** The driver container's log (its JSON lines). */
async function driverLog(r: Rig, pod: Obj): Promise<string[]> {
  return await containerLog(
    r,
    { namespace: pod.metadata.namespace, name: pod.metadata.name },
    pod.metadata.uid,
    DRIVER_CONTAINER,
  );
}

/** Waits for the driver pod's log to show a successful NodePublishVolume for `target`. */
async function waitPublishedBy(r: Rig, pod: Obj, target: string): Promise<void> {
  await waitFor(`${pod.metadata.name} to log NodePublishVolume OK for ${target}`, async () => {
    const lines = await driverLog(r, pod);
    return lines.some((line) =>
      line.includes("NodePublishVolume") && line.includes(target) && line.includes('"OK"')
    ) || undefined;
  }, 60_000);
}

/** The PID of a container's first process (found by its cgroup, which ends in the container id). */
async function containerPid(pod: Obj, container: string): Promise<number> {
  const status = (pod.status.containerStatuses as Obj[]).find((c) => c.name === container);
  const id = String(status?.containerID ?? "").replace(/^containerd:\/\//, "");
  assert.ok(id !== "", `${pod.metadata.name}/${container} has no container id`);
  // Polled: a scan of /proc while many pods' processes exit at once was seen to miss it once.
  return await waitFor(`a process of container ${id}`, async () => {
    const pids: number[] = [];
    for await (const entry of Deno.readDir("/proc")) {
      if (!/^\d+$/.test(entry.name)) continue;
      const cgroups = await Deno.readTextFile(`/proc/${entry.name}/cgroup`).catch(() => "");
      if (cgroups.split("\n").some((line) => line.endsWith(`/${id}`))) {
        pids.push(Number(entry.name));
      }
    }
    return pids.length > 0 ? Math.min(...pids) : undefined;
  }, 10_000);
}

/** Mount points (with the mounted root and the per-mount flags) in the mount namespace of `pid`. */
async function mountsOf(
  pid: number,
): Promise<{ target: string; root: string; options: string[] }[]> {
  const text = await Deno.readTextFile(`/proc/${pid}/mountinfo`);
  return text.split("\n").filter((l) => l !== "").map((line) => {
    const fields = line.split(" ");
    const unescape = (s: string) =>
      s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    return {
      root: unescape(fields[3] as string),
      target: unescape(fields[4] as string),
      options: (fields[5] ?? "").split(","),
    };
  });
}

/**
 * Asserts the bind at `target` carries ro,nosuid,nodev,noexec in the driver's container and on
 * the host (this process's namespace, where kubelet runs): the flags must arrive with the bind,
 * since a remount does not propagate. The workload's container gets a bind of the host's target
 * made by the container runtime, which then remounts it with the flags it was asked for: runc
 * 1.1.5 asked for `ro` leaves `ro,relatime` (measured here), so there only `ro` is the driver's to
 * check, and what the runtime sets is printed.
 */
async function assertHardenedEverywhere(
  driverPod: Obj,
  workload: Obj,
  target: string,
): Promise<void> {
  const places: [string, number, string][] = [
    ["the driver's container", await containerPid(driverPod, DRIVER_CONTAINER), target],
    ["the host", Deno.pid, target],
    ["the workload's container", await containerPid(workload, "workload"), "/spiffe-workload-api"],
  ];
  for (const [where, pid, path] of places) {
    const mounts = (await mountsOf(pid)).filter((m) => m.target === path);
    assert.equal(mounts.length, 1, `one mount at ${path} in ${where}`);
    const flags = mounts[0]?.options ?? [];
    console.log(`${where}: ${path} ${flags.join(",")}`);
    const expected = path === target ? ["ro", "nosuid", "nodev", "noexec"] : ["ro"];
    for (const flag of expected) {
      assert.ok(flags.includes(flag), `${flag} in ${where}: ${flags.join(",")}`);
    }
  }
}

/** Records the driver container's memory from kubelet's /stats/summary. */
async function recordDriverMemory(r: Rig, pod: Obj, when: string): Promise<void> {
  const stats = (await containerMemory(r, pod)).get(DRIVER_CONTAINER) as Obj;
  // kubelet counts what the container's cgroup is charged: its anonymous memory and the page cache
  // it brought in. The deno binary's pages were read into the cache when the image was unpacked,
  // so they are charged elsewhere here; on a node where the driver reads them first they are its.
  const status = await Deno.readTextFile(
    `/proc/${await containerPid(pod, DRIVER_CONTAINER)}/status`,
  );
  const processRssBytes = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]) * 1024;
  const mib = (n: number) => (n / 1024 / 1024).toFixed(1);
  driverMemory.push({
    when,
    workingSetBytes: stats.workingSetBytes,
    rssBytes: stats.rssBytes,
    processRssBytes,
  });
  console.log(
    `driver container memory ${when}: working set ${mib(stats.workingSetBytes)} MiB, ` +
      `RSS ${mib(stats.rssBytes)} MiB (kubelet); the process's VmRSS ${mib(processRssBytes)} MiB`,
  );
}

/** Each container's memory (`workingSetBytes`, `rssBytes`) in kubelet's /stats/summary, by name. */
async function containerMemory(r: Rig, pod: Obj): Promise<Map<string, Obj>> {
  return await waitFor(`${pod.metadata.name} in /stats/summary`, async () => {
    const response = await fetch(`${r.kubeletReadOnlyUrl}/stats/summary`);
    const summary = await response.json();
    const entry = (summary.pods as Obj[]).find((p) => p.podRef.uid === pod.metadata.uid);
    const containers = (entry?.containers ?? []) as Obj[];
    if (containers.length < (pod.spec.containers as Obj[]).length) return undefined;
    if (containers.some((c) => !c.memory?.workingSetBytes)) return undefined;
    return new Map(containers.map((c) => [c.name as string, c.memory as Obj]));
  }, 60_000);
}

/** Each container's working set (MiB), as `kubectl top pod` sums them. */
async function podWorkingSets(r: Rig, pod: Obj): Promise<Record<string, number>> {
  const memory = await containerMemory(r, pod);
  return Object.fromEntries(
    [...memory].map(([name, m]) => [name, Number((m.workingSetBytes / 1024 / 1024).toFixed(1))]),
  );
}

/** Starts a workload and waits until it runs and fetched; returns its uid. */
async function startWorkload(r: Rig, ref: PodRef, since: number): Promise<string> {
  const uid = await createPod(r, workloadPod(ref, SA[ref.namespace] as string));
  dsWorkloads.set(`${ref.namespace}/${ref.name}`, uid);
  await waitRunning(r, ref, 180_000);
  await waitFetched(r, ref, uid, since);
  return uid;
}

/** Every workload still running: fetched after `since`, never failed after it, one layer each. */
async function checkWorkloadsKeptWorking(r: Rig, since: number): Promise<void> {
  const all = [...running.entries(), ...dsWorkloads.entries()];
  for (const [key, uid] of all) {
    const [namespace, name] = key.split("/") as [string, string];
    const log = await waitFetched(r, { namespace, name }, uid, since);
    assert.deepEqual(log.failed.filter((t) => t >= since), [], `${key} failed to fetch`);
    assert.equal(await layers(targetOf(r, uid)), 1, `${key}: layers`);
  }
}

/** kubectl v1.37.2 with the rig's kubeconfig. */
function kubectl(r: Rig, args: string[]): Promise<string> {
  return runOk(`${BIN}/kubectl`, [`--kubeconfig=${r.kubeconfig}`, ...args]);
}

async function kubectlApply(r: Rig, deployment: Omit<Deployment, "kubeletDir">): Promise<void> {
  const dir = await writeKustomization(`${r.dir}/kustomize`, {
    ...deployment,
    kubeletDir: r.kubeletDir,
  });
  await apply(`${BIN}/kubectl`, r.kubeconfig, dir);
}

test("10. the shipped DaemonSet: driver pod Ready, volume published inside its container, bind on the host and in the workload, SVID fetched", async (r) => {
  const switched = nowSeconds();
  await r.stopDriver("SIGTERM");
  await waitFor("the host driver to leave CSINode", async () => {
    return (await csiNodeDrivers(r)).some((d) => d.name === DRIVER_NAME) ? undefined : true;
  }, 60_000);
  await kubectlApply(r, { image: r.driverImage, registration: "builtin" });
  const ds = await r.api.get(`/apis/apps/v1/namespaces/spire/daemonsets/spiffe-csi-driver`);
  assert.equal(ds?.spec.template.spec.containers[0].image, r.driverImage);
  const pod = await waitDriverPod(r);
  assert.equal(pod.spec.nodeName, NODE);
  await waitRegistered(r, "the DaemonSet's driver in CSINode");
  await recordDriverMemory(r, pod, "after start");
  // No driver runs outside the container.
  assert.equal(r.driver, undefined);
  assert.deepEqual(await pidsMentioning([`${ROOT}main.ts`]), [], "a host driver is running");

  const ref: PodRef = { namespace: POD_A.namespace, name: "ds-workload" };
  const since = nowSeconds();
  const uid = await startWorkload(r, ref, since);
  const target = targetOf(r, uid);
  await waitPublishedBy(r, pod, target);
  // The bind the driver made in its container's mount namespace reached the host's
  // (Bidirectional), and kubelet gave it to the workload's container.
  const inDriver = (await mountsOf(await containerPid(pod, DRIVER_CONTAINER)))
    .filter((m) => m.target === target);
  assert.equal(inDriver.length, 1, "the bind in the driver's container");
  assert.equal(await layers(target), 1, "the bind on the host");
  const workload = await r.api.get(podPath(ref));
  const inWorkload = (await mountsOf(await containerPid(workload as Obj, "workload")))
    .filter((m) => m.target === "/spiffe-workload-api");
  assert.equal(inWorkload.length, 1, "the volume in the workload's container");
  assert.match(inWorkload[0]?.root ?? "", /\/agent-sockets$/, "the agent's socket dir");
  await assertHardenedEverywhere(pod, workload as Obj, target);
  const log = await workloadLog(r, ref, uid);
  assert.deepEqual([...new Set(log.spiffeIds)], [spiffeIdOf(ref.namespace, SA[ref.namespace]!)]);
  // The pod the host driver published keeps working through the switch.
  await checkWorkloadsKeptWorking(r, switched);
});

test(
  "10b. the manifests exactly as shipped, with node-driver-registrar and livenessprobe images made by hand",
  async (r) => {
    if (!SIDECARS) throw new Error("NODE_DRIVER_REGISTRAR and LIVENESSPROBE are unset");
    const { registrar, probe } = SIDECARS;
    // Named as manifests/base names them: with imagePullPolicy IfNotPresent nothing is pulled.
    for (
      const [name, binary] of [
        ["registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0", registrar],
        ["registry.k8s.io/sig-storage/livenessprobe:v2.19.0", probe],
      ] as const
    ) {
      await importBinaryImage({
        name,
        binary,
        containerdSocket: r.containerdSocket,
        workDir: `${r.dir}/images`,
      });
    }
    const [old] = await driverPods(r);
    await kubectlApply(r, { image: r.driverImage, registration: "sidecars" });
    const since = nowSeconds();
    const pod = await waitDriverPod(r, old?.metadata.uid);
    assert.deepEqual(
      (pod.spec.containers as Obj[]).map((c) => c.name),
      [DRIVER_CONTAINER, "node-driver-registrar", "liveness-probe"],
    );
    // Ready means all three run; the driver's liveness probe is served by the livenessprobe sidecar.
    await waitRegistered(r, "the driver in CSINode through the registrar");
    const ref: PodRef = { namespace: POD_A.namespace, name: "shipped-workload" };
    const uid = await startWorkload(r, ref, since);
    await waitPublishedBy(r, pod, targetOf(r, uid));
    // Past the liveness probe's initial delay (10 s) and a period: no restart.
    await waitFor("a liveness probe of the driver", async () => {
      const lines = await driverLog(r, pod);
      return lines.filter((l) => l.includes("Probe")).length >= 2 || undefined;
    }, 120_000);
    const now = await r.api.get(
      podPath({ namespace: DAEMONSET.namespace, name: pod.metadata.name }),
    );
    for (const status of now?.status.containerStatuses as Obj[]) {
      assert.equal(status.restartCount, 0, `${status.name} restarted`);
    }
    await checkWorkloadsKeptWorking(r, since);
  },
  { sidecars: true },
);

test("11. the hardened Helm chart's args and paths (-workload-api-socket-dir /spire-agent-socket) with the same image", async (r) => {
  const [old] = await driverPods(r);
  await kubectlApply(r, { image: r.driverImage, registration: "builtin", hardenedChart: true });
  const since = nowSeconds();
  const pod = await waitDriverPod(r, old?.metadata.uid);
  const container = (pod.spec.containers as Obj[]).find((c) => c.name === DRIVER_CONTAINER);
  assert.deepEqual(container?.args.slice(0, 2), [
    "-workload-api-socket-dir",
    "/spire-agent-socket",
  ]);
  await waitRegistered(r, "the driver back in CSINode");
  const ref: PodRef = { namespace: POD_B.namespace, name: "chart-workload" };
  const uid = await startWorkload(r, ref, since);
  await waitPublishedBy(r, pod, targetOf(r, uid));
  const inDriver = (await mountsOf(await containerPid(pod, DRIVER_CONTAINER)))
    .filter((m) => m.target === targetOf(r, uid));
  assert.equal(inDriver.length, 1, "the bind in the driver's container");
  await assertHardenedEverywhere(pod, await r.api.get(podPath(ref)) as Obj, targetOf(r, uid));
  await checkWorkloadsKeptWorking(r, since);
});

test("12. rolling update while workloads run: they keep fetching, one layer each, a pod created during the roll gets its volume from the new driver", async (r) => {
  const [old] = await driverPods(r);
  assert.ok(old, "no driver pod");
  const since = nowSeconds();
  await kubectl(r, [
    "-n",
    DAEMONSET.namespace,
    "set",
    "env",
    `daemonset/${DAEMONSET.name}`,
    `ROLLED_AT=${since}`,
  ]);
  // Created once the old driver pod is gone (the roll replaces it first), so its volume can only
  // come from the new one, whether that is up yet or not: kubelet retries until it is.
  const oldPath = `/api/v1/namespaces/${DAEMONSET.namespace}/pods/${old.metadata.name}`;
  await waitFor(
    "the old driver pod to be gone",
    async () => (await r.api.get(oldPath)) === undefined || undefined,
    180_000,
  );
  const ref: PodRef = { namespace: POD_A.namespace, name: "created-during-roll" };
  const uid = await createPod(r, workloadPod(ref, SA[ref.namespace] as string));
  dsWorkloads.set(`${ref.namespace}/${ref.name}`, uid);
  const pod = await waitDriverPod(r, old.metadata.uid);
  const env = (pod.spec.containers[0].env as Obj[]).find((e) => e.name === "ROLLED_AT");
  assert.equal(env?.value, String(since), "the new pod has the new template");
  await waitRunning(r, ref, 180_000);
  await waitFetched(r, ref, uid, since);
  await waitPublishedBy(r, pod, targetOf(r, uid));
  await checkWorkloadsKeptWorking(r, since);
});

test("13. the driver pod deleted: the DaemonSet recreates it, workloads keep working", async (r) => {
  const [old] = await driverPods(r);
  assert.ok(old, "no driver pod");
  const since = nowSeconds();
  await r.api.delete(`/api/v1/namespaces/${DAEMONSET.namespace}/pods/${old.metadata.name}`);
  const pod = await waitDriverPod(r, old.metadata.uid);
  await waitRegistered(r, "the driver back in CSINode");
  const ref: PodRef = { namespace: POD_B.namespace, name: "after-recreate" };
  const uid = await startWorkload(r, ref, since);
  await waitPublishedBy(r, pod, targetOf(r, uid));
  await checkWorkloadsKeptWorking(r, since);
});

test("14. the driver container's memory (kubelet /stats/summary) after start and after a burst, against the manifest", async (r) => {
  const [pod] = await driverPods(r);
  assert.ok(pod, "no driver pod");
  await recordDriverMemory(r, pod, "before the burst");
  await burst(r, "ds-burst");
  // The same driver process served the whole burst: a restart would hide its memory.
  const now = await r.api.get(podPath({ namespace: DAEMONSET.namespace, name: pod.metadata.name }));
  const driverStatus = (now?.status.containerStatuses as Obj[])
    .find((c) => c.name === DRIVER_CONTAINER);
  assert.equal(
    driverStatus?.restartCount,
    0,
    `the driver restarted: ${JSON.stringify(driverStatus)}`,
  );
  await recordDriverMemory(r, pod, "after the burst");
  const resources = (pod.spec.containers as Obj[]).find((c) => c.name === DRIVER_CONTAINER)
    ?.resources;
  const limit = quantity(resources.limits.memory);
  const request = quantity(resources.requests.memory);
  console.log(
    `manifest: request ${resources.requests.memory}, limit ${resources.limits.memory}; ` +
      `measured: ${JSON.stringify(driverMemory)}`,
  );
  // Even with every page of the binary charged to it, the driver stays under its limit.
  for (const m of driverMemory) {
    assert.ok(
      m.workingSetBytes + m.processRssBytes - m.rssBytes < limit,
      `${m.when}: over the limit`,
    );
  }
  assert.ok(request < limit);
});

function quantity(value: string): number {
  const match = /^(\d+)(Mi|Gi)$/.exec(value);
  assert.ok(match, `unexpected quantity ${value}`);
  return Number(match[1]) * (match[2] === "Gi" ? 1024 ** 3 : 1024 ** 2);
}

// ---------------------------------------------------------------------------------------------
// Nested SPIRE: a second instance of the driver on the node, as the hardened chart's nested
// layouts run them: its own plugin name, Workload API dir, CSI socket and registration socket.

/** The second instance: a plugin name of the hardened chart's nested layouts. */
const NESTED = {
  pluginName: "a.csi.spiffe.io",
  daemonSet: "spiffe-csi-driver-a",
  label: "app.kubernetes.io/name=spiffe-csi-driver-a",
  socketDir: "/run/spire/agent-sockets-a",
};

/**
 * The shipped DaemonSet (built-in registration) made into the nested instance: every path and
 * name that carries the plugin name carries NESTED's, and its own Workload API dir; with its
 * CSIDriver object.
 */
function nestedInstance(documents: Obj[], kubeletDir: string): Obj[] {
  const ds = documents.find((d) => d.kind === "DaemonSet");
  const csiDriver = documents.find((d) => d.kind === "CSIDriver");
  assert.ok(ds && csiDriver, "the DaemonSet and the CSIDriver in the kustomize output");
  let text = JSON.stringify(ds);
  for (
    const [from, to] of [
      [`-plugin-name=${DRIVER_NAME}`, `-plugin-name=${NESTED.pluginName}`],
      [`/plugins/${DRIVER_NAME}/`, `/plugins/${NESTED.pluginName}/`],
      [`"${kubeletDir}/plugins/${DRIVER_NAME}"`, `"${kubeletDir}/plugins/${NESTED.pluginName}"`],
    ]
  ) {
    assert.ok(text.includes(from as string), `${from} in the DaemonSet`);
    text = text.replaceAll(from as string, to as string);
  }
  const nested = JSON.parse(text);
  nested.metadata.name = NESTED.daemonSet;
  const labels = { "app.kubernetes.io/name": NESTED.daemonSet };
  nested.metadata.labels = labels;
  nested.spec.selector.matchLabels = labels;
  nested.spec.template.metadata.labels = labels;
  const agent = (nested.spec.template.spec.volumes as Obj[])
    .find((v) => v.name === "spire-agent-socket-dir");
  assert.ok(agent, "the agent's socket dir volume");
  agent.hostPath.path = NESTED.socketDir;
  return [nested, { ...csiDriver, metadata: { ...csiDriver.metadata, name: NESTED.pluginName } }];
}

test("15. nested SPIRE: a second instance (a.csi.spiffe.io, its own agent dir) from the same image with built-in registration publishes only its own volumes", async (r) => {
  const [main] = await driverPods(r);
  assert.ok(main, "no driver pod");
  await Deno.mkdir(NESTED.socketDir, { recursive: true });
  await Deno.writeTextFile(`${NESTED.socketDir}/INSTANCE`, "a\n");
  const dir = await writeKustomization(`${r.dir}/kustomize-nested`, {
    image: r.driverImage,
    registration: "builtin",
    kubeletDir: r.kubeletDir,
  });
  const documents = parseAllDocuments(await kustomize(`${BIN}/kubectl`, dir))
    .map((d) => d.toJS() as Obj);
  const file = `${r.dir}/nested.json`;
  await Deno.writeTextFile(
    file,
    JSON.stringify({
      apiVersion: "v1",
      kind: "List",
      items: nestedInstance(documents, r.kubeletDir),
    }),
  );
  await kubectl(r, ["apply", "-f", file]);
  const nested = await waitDriverPod(r, undefined, NESTED.label);
  await waitRegistered(r, `${NESTED.pluginName} in CSINode`, NESTED.pluginName);
  assert.ok(
    (await csiNodeDrivers(r)).some((d) => d.name === DRIVER_NAME),
    "the first instance is still registered",
  );
  const since = nowSeconds();
  const ref: PodRef = { namespace: POD_A.namespace, name: "nested-workload" };
  const uid = await createPod(
    r,
    workloadPod(ref, SA[ref.namespace] as string, {
      driver: NESTED.pluginName,
      script: "echo INSTANCE=$(cat /spiffe-workload-api/INSTANCE); sleep 3600",
    }),
  );
  await waitRunning(r, ref, 180_000);
  const target = targetOf(r, uid);
  await waitPublishedBy(r, nested, target);
  await waitFor("the nested workload to print its instance", async () => {
    const lines = await containerLog(r, ref, uid, "workload");
    return lines.includes("INSTANCE=a") || undefined;
  }, 60_000);
  const bind = (await mountsOf(Deno.pid)).filter((m) => m.target === target);
  assert.equal(bind.length, 1, "one bind at the nested target");
  assert.match(bind[0]?.root ?? "", /\/agent-sockets-a$/, "the nested instance's agent dir");
  // Each instance published only its own volumes.
  const published = (lines: string[]) =>
    lines.filter((l) => l.includes("NodePublishVolume") && l.includes('"OK"'));
  assert.deepEqual(
    published(await driverLog(r, main)).filter((l) => l.includes(uid)),
    [],
    "the first instance published the nested volume",
  );
  for (const line of published(await driverLog(r, nested))) {
    assert.ok(line.includes(uid), `the nested instance published another volume: ${line}`);
  }
  await checkWorkloadsKeptWorking(r, since);

  // Removed: its volume unpublished by it, its registration gone, the first instance untouched.
  await deletePod(r, ref);
  await waitGone(r, ref, 120_000);
  assert.deepEqual((await mountsUnderPods(r)).filter((t) => t.includes(uid)), []);
  await deleteDaemonSet(r, NESTED.daemonSet, NESTED.label);
  await r.api.delete(`/apis/storage.k8s.io/v1/csidrivers/${NESTED.pluginName}`);
  await waitFor(`${NESTED.pluginName} out of CSINode`, async () => {
    const names = (await csiNodeDrivers(r)).map((d) => d.name);
    return (!names.includes(NESTED.pluginName) && names.includes(DRIVER_NAME)) || undefined;
  }, 60_000);
  assert.equal(await exists(`${r.registrationDir}/${NESTED.pluginName}-reg.sock`), false);
  await Deno.remove(NESTED.socketDir, { recursive: true });
  await checkWorkloadsKeptWorking(r, nowSeconds());
});

// ---------------------------------------------------------------------------------------------
// The hardened Helm chart itself, rendered by Helm, with only the image values set to ours; and
// (with UPSTREAM_BIN) a node switched over from upstream's image in place, and back.

/** The chart's driver pod's working sets by container (MiB), by pod and moment. */
const podMemory: { pod: string; when: string; containers: Record<string, number> }[] = [];

/** A pod running only Deno (an empty program, the driver's V8 flags) in the driver's image. */
function denoFloorPod(ref: PodRef, image: string): Obj {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: ref.name, namespace: ref.namespace },
    spec: {
      nodeName: NODE,
      hostNetwork: true,
      serviceAccountName: SA[ref.namespace],
      automountServiceAccountToken: false,
      terminationGracePeriodSeconds: 1,
      containers: [{
        name: "deno",
        image,
        imagePullPolicy: "Never",
        command: [
          SOURCE_LAYOUT.deno,
          "eval",
          `--v8-flags=${V8_FLAGS}`,
          "setInterval(() => {}, 1 << 30)",
        ],
        securityContext: { readOnlyRootFilesystem: true },
      }],
    },
  };
}

/** Each workload fetched after `since`, never failed after it, and never restarted. */
async function checkKeptFetching(r: Rig, workloads: Map<string, string>, since: number) {
  for (const [key, uid] of workloads) {
    const [namespace, name] = key.split("/") as [string, string];
    const log = await waitFetched(r, { namespace, name }, uid, since);
    assert.deepEqual(log.failed.filter((t) => t >= since), [], `${key} failed to fetch`);
    const pod = await r.api.get(podPath({ namespace, name }));
    assert.equal(pod?.status.containerStatuses[0].restartCount, 0, `${key} restarted`);
  }
}

/** Every workload of every scenario since the shipped DaemonSet that is still running. */
function allDsWorkloads(): Map<string, string> {
  return new Map([...running.entries(), ...dsWorkloads.entries()]);
}

/**
 * The top mount at `path` in this (the host's) mount namespace carries nosuid,nodev,noexec. `ro`
 * too only when the socket dir was mounted read-only where the bind was made: the DaemonSet's are,
 * the host driver's of scenarios 1 to 9 (the host's own rw socket dir) are not.
 */
async function topIsHardened(path: string): Promise<boolean> {
  const top = (await mountsOf(Deno.pid)).filter((m) => m.target === path).at(-1);
  return ["nosuid", "nodev", "noexec"].every((flag) => top?.options.includes(flag));
}

test(
  "16. the hardened Helm chart rendered by Helm with only the image values set: registrar, registration, SVIDs, a rolling update; switched over from upstream in place and back",
  async (r) => {
    if (!CHART) throw new Error("HELM_CHARTS_HARDENED and CHART_NODE_DRIVER_REGISTRAR are unset");
    const { dir, defaults } = await prepareChart(CHART.source, `${r.dir}/chart`);
    const images = { containerdSocket: r.containerdSocket, workDir: `${r.dir}/images` };
    await importBinaryImage({
      name: imageName(defaults.registrar),
      binary: CHART.registrar,
      ...images,
    });
    const upstreamTag = UPSTREAM_VERSION ?? defaults.driver.tag;
    if (UPSTREAM) {
      await importBinaryImage({
        name: imageName({ ...defaults.driver, tag: upstreamTag }),
        binary: UPSTREAM,
        ...images,
      });
    }
    // What a user of the chart sets: kubeletPath only off kubelet's default root; the tag only for
    // an upstream release other than the chart's appVersion; for ours, the three image values.
    const base = r.kubeletDir === "/var/lib/kubelet" ? {} : { kubeletPath: r.kubeletDir };
    const upstreamValues = upstreamTag === defaults.driver.tag ? {} : { "image.tag": upstreamTag };
    const ours = imageValues(r.driverImage);
    console.log(`chart values for our image: ${JSON.stringify({ ...base, ...ours })}`);
    const install = async (values: Record<string, string>) => {
      const file = `${r.dir}/chart-rendered.yaml`;
      await Deno.writeTextFile(
        file,
        await renderChart(dir, DAEMONSET.namespace, { ...base, ...values }),
      );
      await kubectl(r, ["apply", "-f", file]);
    };
    /** Waits for the chart's driver pod (not `previous`), Ready, registered through its registrar. */
    const chartPod = async (previous: string | undefined, image: string) => {
      const pod = await waitDriverPod(r, previous).catch(async (error) => {
        const pods = await driverPods(r);
        const states = pods.map((p) => [p.metadata.name, p.status?.containerStatuses ?? p.status]);
        const sets = await kubectl(r, ["-n", DAEMONSET.namespace, "get", "ds", "-o", "wide"]);
        const events = await kubectl(r, ["-n", DAEMONSET.namespace, "get", "events"]);
        throw new Error(`${error.message}; pods: ${JSON.stringify(states)}\n${sets}\n${events}`);
      });
      assert.deepEqual(
        (pod.spec.containers as Obj[]).map((c) => [c.name, c.image]),
        [[DRIVER_CONTAINER, image], ["node-driver-registrar", imageName(defaults.registrar)]],
      );
      await waitRegistered(r, `${image} in CSINode through the registrar`);
      const healthz = await waitFor("the registrar's /healthz", async () => {
        const response = await fetch(`http://${pod.status.podIP}:9809/healthz`).catch(() =>
          undefined
        );
        await response?.body?.cancel();
        return response?.status === 200 ? response.status : undefined;
      }, 60_000);
      assert.equal(healthz, 200);
      return pod;
    };
    const restartKubelet = async () => {
      await r.stopKubelet();
      const since = nowSeconds();
      await r.startKubelet();
      await checkKeptFetching(r, allDsWorkloads(), since + 1);
    };

    // Our kustomized DaemonSet goes (its selector differs from the chart's); binds stay.
    await deleteDaemonSet(r, DAEMONSET.name, DS_LABEL);
    let previous: string | undefined;
    let switched = nowSeconds();

    if (UPSTREAM) {
      await install(upstreamValues);
      const upstreamImage = imageName({ ...defaults.driver, tag: upstreamTag });
      const upstreamPod = await chartPod(previous, upstreamImage);
      previous = upstreamPod.metadata.uid;
      podMemory.push({
        pod: `upstream ${upstreamTag}`,
        when: "after start",
        containers: await podWorkingSets(r, upstreamPod),
      });
      await burst(r, "upstream-burst");
      podMemory.push({
        pod: `upstream ${upstreamTag}`,
        when: "after the burst",
        containers: await podWorkingSets(r, upstreamPod),
      });
      for (const name of ["upstream-1", "upstream-2"]) {
        const ref = { namespace: POD_A.namespace, name };
        await startWorkload(r, ref, switched);
      }
      // kubelet restarts, as nodes see them: 0.2.7 stacks a layer on every target each time.
      for (let i = 0; i < 3; i++) await restartKubelet();
      const stacked = new Map<string, number>();
      for (const uid of allDsWorkloads().values()) stacked.set(uid, await layers(targetOf(r, uid)));
      console.log(
        `upstream ${upstreamTag} after 3 kubelet restarts: layers ${[...stacked.values()]}`,
      );

      // Only the image changes.
      switched = nowSeconds();
      await install(ours);
      previous = (await chartPod(previous, r.driverImage)).metadata.uid;
      await checkKeptFetching(r, allDsWorkloads(), switched);
      // The start-up pass replaced upstream's unhardened binds; layers did not grow.
      for (const uid of allDsWorkloads().values()) {
        const target = targetOf(r, uid);
        await waitFor(`${target} hardened`, async () => (await topIsHardened(target)) || undefined);
        assert.ok((await layers(target)) <= (stacked.get(uid) ?? 1), `${target}: layers grew`);
      }
      // Republish (kubelet restarted), stats and unpublish work on the binds upstream made.
      await restartKubelet();
      const pod = (await driverPods(r))[0] as Obj;
      const upstream1 = dsWorkloads.get(`${POD_A.namespace}/upstream-1`) as string;
      await waitPublishedBy(r, pod, targetOf(r, upstream1));
      await waitFor("NodeGetVolumeStats on a bind upstream made", async () => {
        return (await driverLog(r, pod)).some((l) =>
          l.includes("NodeGetVolumeStats") && l.includes(upstream1) && l.includes('"OK"')
        ) || undefined;
      }, 60_000);
      await deletePod(r, { namespace: POD_A.namespace, name: "upstream-1" });
      await waitGone(r, { namespace: POD_A.namespace, name: "upstream-1" }, 120_000);
      dsWorkloads.delete(`${POD_A.namespace}/upstream-1`);
      assert.deepEqual((await mountsUnderPods(r)).filter((t) => t.includes(upstream1)), []);
      assert.equal(await exists(targetOf(r, upstream1)), false);
      // The chart passes no extra args: prune once by adding the flag to the live DaemonSet.
      const rolled = nowSeconds();
      await kubectl(r, [
        "-n",
        DAEMONSET.namespace,
        "patch",
        "daemonset",
        `${RELEASE}-spiffe-csi-driver`,
        "--type=json",
        '-p=[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"-prune-stacked-mounts"}]',
      ]);
      previous = (await chartPod(previous, r.driverImage)).metadata.uid;
      for (const uid of allDsWorkloads().values()) {
        const target = targetOf(r, uid);
        await waitFor(`${target} pruned to one layer`, async () => {
          return (await layers(target)) === 1 && await topIsHardened(target) || undefined;
        });
      }
      await checkKeptFetching(r, allDsWorkloads(), rolled);
    } else {
      await install(ours);
      previous = (await chartPod(previous, r.driverImage)).metadata.uid;
      await checkKeptFetching(r, allDsWorkloads(), switched);
    }
    // The pod as an operator sees it (`kubectl top pod`): ours in the chart, driver and registrar.
    const oursPod = (await driverPods(r))[0] as Obj;
    podMemory.push({
      pod: "ours (chart)",
      when: "after start",
      containers: await podWorkingSets(r, oursPod),
    });
    await burst(r, "chart-burst");
    podMemory.push({
      pod: "ours (chart)",
      when: "after the burst",
      containers: await podWorkingSets(r, oursPod),
    });
    // The floor: Deno alone (an empty program, the driver's V8 flags) in the same image.
    const floorRef = { namespace: POD_A.namespace, name: "deno-floor" };
    await createPod(r, denoFloorPod(floorRef, r.driverImage));
    const floorPod = await waitRunning(r, floorRef, 120_000);
    podMemory.push({
      pod: "deno alone",
      when: "after start",
      containers: await podWorkingSets(r, floorPod),
    });
    await deletePod(r, floorRef);
    for (const row of podMemory) {
      const { pod, when, containers } = row;
      const total = Object.values(containers).reduce((a, b) => a + b, 0);
      console.log(
        `pod memory, ${pod}, ${when}: ${JSON.stringify(containers)} = ${total.toFixed(1)} MiB`,
      );
    }

    // New pods get hardened binds from the chart's driver.
    const fresh = { namespace: POD_B.namespace, name: "chart-workload-new" };
    await startWorkload(r, fresh, nowSeconds());
    const chartDriver = (await driverPods(r))[0] as Obj;
    const freshUid = dsWorkloads.get(`${fresh.namespace}/${fresh.name}`) as string;
    await waitPublishedBy(r, chartDriver, targetOf(r, freshUid));
    await assertHardenedEverywhere(
      chartDriver,
      await r.api.get(podPath(fresh)) as Obj,
      targetOf(r, freshUid),
    );

    // A rolling update of the chart (a pod annotation changed) keeps every workload fetching.
    const rolling = nowSeconds();
    await install({ ...ours, "podAnnotations.rolled": `at-${rolling}` });
    previous = (await chartPod(previous, r.driverImage)).metadata.uid;
    await checkKeptFetching(r, allDsWorkloads(), rolling);

    if (UPSTREAM) {
      // And back: upstream serves the binds ours made, and new pods.
      const back = nowSeconds();
      await install(upstreamValues);
      const upstreamImage = imageName({ ...defaults.driver, tag: upstreamTag });
      previous = (await chartPod(previous, upstreamImage)).metadata.uid;
      await checkKeptFetching(r, allDsWorkloads(), back);
      await deletePod(r, fresh);
      await waitGone(r, fresh, 120_000);
      dsWorkloads.delete(`${fresh.namespace}/${fresh.name}`);
      assert.deepEqual((await mountsUnderPods(r)).filter((t) => t.includes(freshUid)), []);
      const again = { namespace: POD_B.namespace, name: "back-to-upstream" };
      await startWorkload(r, again, back);
    }
  },
  { chart: true },
);

Deno.test({
  name: "kubelet rig: teardown stops every process and leaves the machine as it was found",
  ignore: !ENABLED,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (!rig || !host) throw new Error("the rig never started");
    const r = rig;
    rig = undefined;
    for (const ref of [POD_A, POD_B]) await deletePod(r, ref).catch(() => {});
    for (const key of dsWorkloads.keys()) {
      const [namespace, name] = key.split("/") as [string, string];
      await deletePod(r, { namespace, name }).catch(() => {});
    }
    const problems = await r.teardown();
    assert.deepEqual(problems, [], "teardown problems");
    assert.deepEqual(await pidsMentioning([r.dir]), [], "processes left");
    assert.deepEqual(
      (await mountTable()).filter((e) => e.target.startsWith(r.dir)),
      [],
      "mounts left",
    );
    assert.equal(await exists(r.dir), false, "the rig dir is left");
    assert.deepEqual(compareHost(host, await captureHost()), [], "host changes left");
  },
});
