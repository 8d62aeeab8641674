/**
 * The Kubernetes manifests, checked offline: every document against Kubernetes' schemas
 * (kubernetes-models), and the DaemonSet against the driver itself (flag parser, permission set,
 * paths, plugin name, sidecars).
 */
import assert from "node:assert/strict";
import { basename, dirname, join, posix } from "node:path";
import { parseAllDocuments } from "yaml";
import * as core from "kubernetes-models/v1";
import * as apps from "kubernetes-models/apps/v1";
import * as storage from "kubernetes-models/storage.k8s.io/v1";
import * as rbac from "kubernetes-models/rbac.authorization.k8s.io/v1";
import denoConfig from "../deno.json" with { type: "json" };
import { type Config, parseInvocation, usage } from "../lib/config/flags.ts";
import { CONTAINER_PATHS, permissionSet, ungrantedPaths } from "../lib/config/permissions.ts";
import { ROOT } from "./_driver.ts";
import { grantedBy, within } from "./_permissions.ts";

/** kubectl: the one built for the kubelet rig (tools/build_kube.sh), else the one on PATH. */
const KUBECTL = await Deno.stat(join(ROOT, ".tools", "bin", "kubectl")).then(
  () => join(ROOT, ".tools", "bin", "kubectl"),
  () => "kubectl",
);

const MANIFESTS = join(ROOT, "manifests");

// deno-lint-ignore no-explicit-any
type Doc = Record<string, any>;
interface Loaded {
  file: string;
  doc: Doc;
}

/** Every kind the manifests may use, with its schema-checking model. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  "v1/Namespace": core.Namespace,
  "v1/ServiceAccount": core.ServiceAccount,
  "v1/ConfigMap": core.ConfigMap,
  "v1/Service": core.Service,
  "v1/ResourceQuota": core.ResourceQuota,
  "apps/v1/DaemonSet": apps.DaemonSet,
  "apps/v1/Deployment": apps.Deployment,
  "apps/v1/StatefulSet": apps.StatefulSet,
  "storage.k8s.io/v1/CSIDriver": storage.CSIDriver,
  "rbac.authorization.k8s.io/v1/Role": rbac.Role,
  "rbac.authorization.k8s.io/v1/RoleBinding": rbac.RoleBinding,
  "rbac.authorization.k8s.io/v1/ClusterRole": rbac.ClusterRole,
  "rbac.authorization.k8s.io/v1/ClusterRoleBinding": rbac.ClusterRoleBinding,
};

async function yamlFiles(dir: string): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) files.push(...await yamlFiles(path));
    else if (/\.ya?ml$/.test(entry.name)) files.push(path);
  }
  return files.sort();
}

async function load(file: string): Promise<Doc[]> {
  const docs = parseAllDocuments(await Deno.readTextFile(file));
  const out: Doc[] = [];
  for (const doc of docs) {
    assert.deepEqual(doc.errors, [], `${file}: YAML errors`);
    const value = doc.toJS();
    if (value !== null && value !== undefined) out.push(value);
  }
  return out;
}

/** Every resource and kustomization; overlay patches are partial documents and are left out. */
async function loadAll(): Promise<Loaded[]> {
  const all: Loaded[] = [];
  for (const file of await yamlFiles(MANIFESTS)) {
    for (const doc of await load(file)) all.push({ file, doc });
  }
  const patches = new Set(
    all.filter(({ doc }) => doc.kind === "Kustomization").flatMap(({ file, doc }) =>
      ((doc.patches ?? []) as Doc[]).filter((p) => p.path).map((p) => join(dirname(file), p.path))
    ),
  );
  return all.filter(({ file }) => !patches.has(file));
}

function resources(all: Loaded[]): Loaded[] {
  return all.filter(({ doc }) => doc.kind !== "Kustomization" && doc.kind !== "Component");
}

function find(all: Loaded[], kind: string, name: string, under = "base"): Doc {
  const found = all.find(({ file, doc }) =>
    doc.kind === kind && doc.metadata?.name === name && file.includes(`/manifests/${under}/`)
  );
  assert.ok(found, `no ${kind} ${name} in manifests/${under}`);
  return found.doc;
}

function container(podSpec: Doc, name: string): Doc {
  const found = (podSpec.containers as Doc[]).find((c) => c.name === name);
  assert.ok(found, `no container ${name}`);
  return found;
}

/** `--name=value` or `-name=value` from an args list. */
function flag(args: string[], name: string): string | undefined {
  for (const arg of args) {
    const match = /^--?([^=]+)=(.*)$/.exec(arg);
    if (match && match[1] === name) return match[2];
  }
  return undefined;
}

function volume(podSpec: Doc, name: string): Doc {
  const found = (podSpec.volumes as Doc[]).find((v) => v.name === name);
  assert.ok(found, `no volume ${name}`);
  return found;
}

/** The volumeMount whose mountPath contains `path`, and the host path `path` maps to. */
function hostPathOf(podSpec: Doc, c: Doc, path: string): { mount: Doc; host: string } {
  const mounts = (c.volumeMounts as Doc[])
    .filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`))
    .sort((a, b) => b.mountPath.length - a.mountPath.length);
  const mount = mounts[0];
  assert.ok(mount, `${c.name}: ${path} is not inside any volumeMount`);
  const v = volume(podSpec, mount.name);
  assert.ok(v.hostPath, `${c.name}: ${path} is on volume ${v.name}, which is not a hostPath`);
  return { mount, host: posix.join(v.hostPath.path, path.slice(mount.mountPath.length)) };
}

/** A container's args with `$(NAME)` replaced by its env's literal values, as kubelet does. */
function expandedArgs(c: Doc): string[] {
  const values = new Map<string, string>(
    ((c.env ?? []) as Doc[]).filter((e) => typeof e.value === "string").map((
      e,
    ) => [e.name, e.value]),
  );
  return (c.args as string[]).map((arg) =>
    arg.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name) => values.get(name) ?? whole)
  );
}

/** The driver's Config from the DaemonSet's own args and env, through the driver's flag parser. */
function driverConfig(podSpec: Doc): Config {
  const driver = container(podSpec, "spiffe-csi-driver");
  const env = new Map<string, Doc>((driver.env as Doc[]).map((e) => [e.name, e]));
  const invocation = parseInvocation(expandedArgs(driver), {
    getEnv: (name) =>
      env.get(name)?.valueFrom?.fieldRef?.fieldPath === "spec.nodeName" ? "node-1" : undefined,
  });
  assert.equal(invocation.command, "run");
  return (invocation as { config: Config }).config;
}

Deno.test("manifests: every document validates against the Kubernetes schemas", async () => {
  const all = resources(await loadAll());
  assert.ok(all.length >= 15, `only ${all.length} documents found`);
  for (const { file, doc } of all) {
    const where = `${file.slice(ROOT.length)}: ${doc.kind} ${doc.metadata?.name}`;
    const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
    assert.ok(Model, `${where}: no schema known for ${doc.apiVersion} ${doc.kind}`);
    assert.doesNotThrow(() => new Model(doc as never).validate(), where);
    assert.ok(doc.metadata?.name, `${where}: no name`);
  }
});

Deno.test("manifests: the schema check rejects a broken document", () => {
  const bad = { apiVersion: "storage.k8s.io/v1", kind: "CSIDriver", metadata: { name: "x" } };
  const spec = { attachRequired: "no", volumeLifecycleModes: "Ephemeral" };
  assert.throws(() => new storage.CSIDriver({ ...bad, spec } as never).validate());
  const ds = {
    apiVersion: "apps/v1",
    kind: "DaemonSet",
    metadata: { name: "x" },
    spec: { template: { spec: { containers: [{ name: "c" }] } } }, // no selector
  };
  assert.throws(() => new apps.DaemonSet(ds as never).validate());
});

Deno.test("manifests: each kustomization lists exactly the files beside it", async () => {
  for (const dir of ["base", "example"]) {
    const path = join(MANIFESTS, dir, "kustomization.yaml");
    const [kustomization] = await load(path);
    assert.ok(kustomization);
    assert.equal(kustomization.kind, "Kustomization");
    const listed: string[] = kustomization.resources;
    for (const entry of listed) {
      const target = join(MANIFESTS, dir, entry);
      const info = await Deno.stat(target);
      if (info.isDirectory) await Deno.stat(join(target, "kustomization.yaml"));
    }
    const beside = (await yamlFiles(join(MANIFESTS, dir)))
      .filter((file) => dirname(file) === join(MANIFESTS, dir))
      .map((file) => basename(file))
      .filter((name) => name !== "kustomization.yaml");
    assert.deepEqual(
      listed.filter((entry) => !entry.includes("/")).sort(),
      beside.sort(),
      `manifests/${dir}: kustomization resources differ from the files`,
    );
  }
});

Deno.test({
  name: "manifests: kubectl kustomize builds base, example and the microk8s overlay",
  ignore: !(await hasKubectl()),
  async fn() {
    for (const dir of ["base", "example", "microk8s"]) {
      const docs = await kustomize(join(MANIFESTS, dir));
      for (const doc of docs) {
        const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
        assert.ok(Model, `${doc.kind}: no schema`);
        new Model(doc as never).validate();
      }
      const ds = docs.find((d) =>
        d.kind === "DaemonSet" && d.metadata.name === "spiffe-csi-driver"
      );
      assert.equal(ds?.metadata.namespace, "spire");
    }
  },
});

/** The documents `kubectl kustomize dir` builds. */
async function kustomize(dir: string): Promise<Doc[]> {
  const output = await new Deno.Command(KUBECTL, {
    args: ["kustomize", dir],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
  return parseAllDocuments(new TextDecoder().decode(output.stdout)).map((d) => d.toJS() as Doc);
}

async function hasKubectl(): Promise<boolean> {
  try {
    const output = await new Deno.Command(KUBECTL, {
      args: ["version", "--client"],
      stdout: "null",
      stderr: "null",
    }).output();
    return output.success;
  } catch {
    return false;
  }
}

Deno.test("manifests: the CSIDriver is the one kubelet expects for inline volumes", async () => {
  const all = await loadAll();
  const driver = find(all, "CSIDriver", "csi.spiffe.io");
  assert.deepEqual(driver.spec, {
    attachRequired: false,
    podInfoOnMount: true,
    fsGroupPolicy: "None",
    volumeLifecycleModes: ["Ephemeral"],
  });
  const sa = find(all, "ServiceAccount", "spiffe-csi-driver");
  assert.equal(sa.automountServiceAccountToken, false);
  // find() fails the test when the manifests lack it.
  find(all, "Namespace", "spire");
});

Deno.test("manifests: the DaemonSet's driver args parse with the driver's own flag parser", async () => {
  const all = await loadAll();
  const pod = find(all, "DaemonSet", "spiffe-csi-driver").spec.template.spec;
  const config = driverConfig(pod);
  // The compiled binary's permission set is written for these paths: they must match exactly.
  assert.equal(config.socketDir, CONTAINER_PATHS.socketDir);
  assert.equal(config.csiSocketPath, CONTAINER_PATHS.csiSocketPath);
  assert.equal(config.kubeletDir, CONTAINER_PATHS.kubeletDir);
  assert.equal(config.nodeIdEnv, CONTAINER_PATHS.nodeIdEnv);
  assert.equal(config.mountPath, CONTAINER_PATHS.mountPath);
  assert.equal(config.umountPath, CONTAINER_PATHS.umountPath);
  assert.equal(config.nodeId, "node-1", "MY_NODE_NAME must come from spec.nodeName");
  // The plugin name is the CSIDriver's name.
  const csiDriver = find(all, "CSIDriver", config.pluginName);
  assert.equal(csiDriver.metadata.name, config.pluginName);
});

Deno.test("manifests: the driver container mounts only what its permission set covers", async () => {
  const all = await loadAll();
  const pod = find(all, "DaemonSet", "spiffe-csi-driver").spec.template.spec;
  const config = driverConfig(pod);
  const driver = container(pod, "spiffe-csi-driver");
  const set = permissionSet(config);
  // Every path the driver uses is inside a volumeMount and inside the permission set.
  const used = [config.socketDir, config.csiSocketPath, `${config.kubeletDir}/pods`];
  for (const path of used) {
    hostPathOf(pod, driver, path);
    assert.ok(set.read.some((entry) => within(path, entry)), `${path} is not readable`);
  }
  for (const path of [config.csiSocketPath, `${config.kubeletDir}/pods`]) {
    assert.ok(set.write.some((entry) => within(path, entry)), `${path} is not writable`);
  }
  assert.ok(set.net.includes(`unix:${config.csiSocketPath}`));
  // Every volumeMount holds something the permission set grants (no mount the driver cannot use).
  for (const mount of driver.volumeMounts as Doc[]) {
    assert.ok(
      [...set.read, ...set.write].some((entry) => within(entry, mount.mountPath)),
      `${mount.mountPath} is mounted but outside the permission set`,
    );
  }
  // The Workload API dir read-only; the pods dir with Bidirectional propagation.
  assert.equal(hostPathOf(pod, driver, config.socketDir).mount.readOnly, true);
  const pods = hostPathOf(pod, driver, `${config.kubeletDir}/pods`);
  assert.equal(pods.mount.mountPropagation, "Bidirectional");
  assert.equal(pods.host, `${config.kubeletDir}/pods`, "kubelet's targets are host paths");
});

Deno.test("manifests: the registrar registers the CSI socket's host path under the plugin name", async () => {
  const all = await loadAll();
  const pod = find(all, "DaemonSet", "spiffe-csi-driver").spec.template.spec;
  const config = driverConfig(pod);
  const driver = container(pod, "spiffe-csi-driver");
  const registrar = container(pod, "node-driver-registrar");
  const csiHost = hostPathOf(pod, driver, config.csiSocketPath).host;

  assert.equal(flag(registrar.args, "kubelet-registration-path"), csiHost);
  const address = flag(registrar.args, "csi-address");
  assert.ok(address);
  assert.equal(hostPathOf(pod, registrar, address).host, csiHost, "registrar dials another socket");
  assert.equal(basename(dirname(csiHost)), config.pluginName);
  assert.equal(
    hostPathOf(pod, registrar, "/registration").host,
    "/var/lib/kubelet/plugins_registry",
  );
  assert.match(flag(registrar.args, "http-endpoint") ?? "", /:\d+$/);
  assert.equal(registrar.livenessProbe?.httpGet?.path, "/healthz");
  assert.equal(
    registrar.image,
    "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0",
  );
});

Deno.test("manifests: the driver's liveness probe is served by the livenessprobe sidecar", async () => {
  const all = await loadAll();
  const pod = find(all, "DaemonSet", "spiffe-csi-driver").spec.template.spec;
  const config = driverConfig(pod);
  const driver = container(pod, "spiffe-csi-driver");
  const probe = container(pod, "liveness-probe");
  assert.equal(probe.image, "registry.k8s.io/sig-storage/livenessprobe:v2.19.0");
  const address = flag(probe.args, "csi-address");
  assert.ok(address);
  assert.equal(
    hostPathOf(pod, probe, address).host,
    hostPathOf(pod, driver, config.csiSocketPath).host,
  );
  const port = Number(/:(\d+)$/.exec(flag(probe.args, "http-endpoint") ?? "")?.[1]);
  assert.ok(port > 0, "livenessprobe --http-endpoint must listen on the pod IP");
  const httpGet = driver.livenessProbe?.httpGet;
  assert.equal(httpGet?.path, "/healthz");
  const named = (driver.ports as Doc[]).find((p) => p.name === httpGet?.port);
  assert.equal(named?.containerPort ?? httpGet?.port, port);
});

Deno.test("manifests: the DaemonSet is privileged only as far as mounting needs", async () => {
  const all = await loadAll();
  const ds = find(all, "DaemonSet", "spiffe-csi-driver");
  const pod = ds.spec.template.spec;
  const driver = container(pod, "spiffe-csi-driver");
  assert.deepEqual(driver.securityContext, {
    privileged: true,
    readOnlyRootFilesystem: true,
    capabilities: { drop: ["ALL"] },
  });
  for (const sidecar of (pod.containers as Doc[]).filter((c) => c !== driver)) {
    assert.notEqual(sidecar.securityContext?.privileged, true, sidecar.name);
    assert.deepEqual(sidecar.securityContext?.capabilities?.drop, ["ALL"], sidecar.name);
  }
  // A critical priority class needs a quota on some clusters: it is an option (components/).
  assert.equal(pod.priorityClassName, undefined);
  assert.equal(ds.spec.updateStrategy.type, "RollingUpdate");
  assert.equal(pod.serviceAccountName, "spiffe-csi-driver");
  assert.equal(pod.automountServiceAccountToken, false);
  // Memory: in the DaemonSet on a real kubelet the process's RSS is 88-94 MiB after a 30-pod burst
  // (docs/kubelet_e2e.md, scenario 14): the request covers it; the benchmark's RSS is ~105 MB
  // after 20k calls: the limit must leave room for it.
  const mebibytes = (q: string) => Number(/^(\d+)Mi$/.exec(q)?.[1]);
  assert.ok(mebibytes(driver.resources.requests.memory) >= 100);
  assert.ok(mebibytes(driver.resources.limits.memory) >= 160);
  // The image is the one the Containerfile builds, at the project's version.
  assert.equal(driver.image, `spiffe-csi-driver:${denoConfig.version}`);
});

Deno.test("manifests: the Workload API dir is a hostPath (DirectoryOrCreate), never an emptyDir", async () => {
  const all = await loadAll();
  const pod = find(all, "DaemonSet", "spiffe-csi-driver").spec.template.spec;
  const config = driverConfig(pod);
  const driver = container(pod, "spiffe-csi-driver");
  const { mount, host } = hostPathOf(pod, driver, config.socketDir);
  assert.equal(host, "/run/spire/agent-sockets");
  assert.equal(volume(pod, mount.name).hostPath.type, "DirectoryOrCreate");
  for (const { doc } of all) {
    const spec = doc.spec?.template?.spec;
    if (doc.kind !== "DaemonSet" || !spec) continue;
    for (const v of spec.volumes as Doc[]) {
      if (/socket/.test(v.name)) assert.equal(v.emptyDir, undefined, `${v.name} is an emptyDir`);
    }
  }
});

Deno.test("manifests: the example's agent, driver and workload agree on the socket", async () => {
  const all = await loadAll();
  const pod = find(all, "DaemonSet", "spiffe-csi-driver").spec.template.spec;
  const config = driverConfig(pod);
  const driverHost = hostPathOf(pod, container(pod, "spiffe-csi-driver"), config.socketDir).host;

  // The agent writes its socket into the same host directory the driver mounts.
  const agentConf: string = find(all, "ConfigMap", "spire-agent", "example").data["agent.conf"];
  const socketPath = /socket_path\s*=\s*"([^"]+)"/.exec(agentConf)?.[1];
  assert.ok(socketPath, "agent.conf has no socket_path");
  const agentPod = find(all, "DaemonSet", "spire-agent", "example").spec.template.spec;
  const agentHost = hostPathOf(agentPod, container(agentPod, "spire-agent"), socketPath).host;
  assert.equal(dirname(agentHost), driverHost);
  const socketName = basename(agentHost);
  const names = (config as unknown as { socketNames?: string[] }).socketNames;
  if (names) assert.ok(names.includes(socketName), `${socketName} not in the socket names`);

  // The workload mounts the CSI volume read-only and points SPIFFE_ENDPOINT_SOCKET into it.
  const workload = find(all, "Deployment", "spiffe-workload", "example").spec.template.spec;
  const csiVolume = (workload.volumes as Doc[]).find((v) => v.csi);
  assert.deepEqual(csiVolume?.csi, { driver: config.pluginName, readOnly: true });
  const c = workload.containers[0] as Doc;
  const mount = (c.volumeMounts as Doc[]).find((m) => m.name === csiVolume?.name);
  assert.ok(mount);
  assert.equal(mount.readOnly, true);
  const endpoint = (c.env as Doc[]).find((e) => e.name === "SPIFFE_ENDPOINT_SOCKET")?.value;
  assert.equal(endpoint, `unix://${mount.mountPath}/${socketName}`);
});

Deno.test("README's and docs/operating.md's flag tables list every flag the driver accepts", async () => {
  const flags = [...usage().matchAll(/^ {2}-([a-z-]+)/gm)].map((m) => m[1] as string);
  assert.ok(flags.length >= 10, `only ${flags.length} flags in usage()`);
  for (const file of ["README.md", join("docs", "operating.md")]) {
    const doc = await Deno.readTextFile(join(ROOT, file));
    // The first cell of every table row.
    const firstCells = [...doc.matchAll(/^\| ([^|]*)\|/gm)].map((m) => m[1] as string);
    for (const name of flags) {
      const shown = name === "help" || name === "version" ? `\`--${name}\`` : `\`-${name}\``;
      assert.ok(
        firstCells.some((cell) => cell.includes(shown)),
        `${shown} is not in ${file}'s tables`,
      );
    }
  }
});

Deno.test({
  name:
    "manifests: the microk8s overlay moves every kubelet path and matches its image's permission set",
  ignore: !(await hasKubectl()),
  async fn() {
    const dir = join(MANIFESTS, "microk8s");
    const docs = await kustomize(dir);
    const ds = docs.find((d) => d.kind === "DaemonSet" && d.metadata.name === "spiffe-csi-driver");
    assert.ok(ds);
    const pod = ds.spec.template.spec;
    const config = driverConfig(pod);
    const root = "/var/snap/microk8s/common/var/lib/kubelet";
    assert.equal(config.kubeletDir, root);
    // The base's image serves it: its permission set has microk8s's kubelet root too.
    assert.deepEqual(await ungrantedPaths(config, grantedBy(permissionSet())), []);
    const set = permissionSet();
    const driver = container(pod, "spiffe-csi-driver");
    for (const mount of driver.volumeMounts as Doc[]) {
      assert.ok(
        [...set.read, ...set.write].some((entry) => within(entry, mount.mountPath)),
        `${mount.mountPath} is mounted but outside the image's permission set`,
      );
    }
    const pods = hostPathOf(pod, driver, `${root}/pods`);
    assert.equal(pods.host, `${root}/pods`, "kubelet's targets are host paths");
    assert.equal(pods.mount.mountPropagation, "Bidirectional");
    const registrar = container(pod, "node-driver-registrar");
    const csiHost = hostPathOf(pod, driver, config.csiSocketPath).host;
    assert.equal(csiHost, `${root}/plugins/${config.pluginName}/csi.sock`);
    assert.equal(flag(registrar.args, "kubelet-registration-path"), csiHost);
    assert.equal(hostPathOf(pod, registrar, "/registration").host, `${root}/plugins_registry`);
    const leftovers = JSON.stringify(pod).match(/"\/var\/lib\/kubelet[^"]*"/g) ?? [];
    assert.deepEqual(leftovers, [], "a path still points at the default kubelet root");
  },
});

/** Every tree a user applies, built by kubectl kustomize: the three dirs and base + the component. */
async function builtTrees(): Promise<Map<string, Doc[]>> {
  const trees = new Map<string, Doc[]>();
  for (const dir of ["base", "example", "microk8s"]) {
    trees.set(dir, await kustomize(join(MANIFESTS, dir)));
  }
  const tmp = await Deno.makeTempDir({ prefix: "spiffe-csi-kustomize-" });
  try {
    // kustomize refuses absolute paths outside the root: link the manifests in.
    await Deno.symlink(MANIFESTS, join(tmp, "manifests"));
    await Deno.writeTextFile(
      join(tmp, "kustomization.yaml"),
      "resources: [manifests/base]\ncomponents: [manifests/components/node_critical]\n",
    );
    trees.set("base + components/node_critical", await kustomize(tmp));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  return trees;
}

function podTemplates(docs: Doc[]): { doc: Doc; pod: Doc }[] {
  return docs.filter((d) => d.spec?.template?.spec).map((doc) => ({
    doc,
    pod: doc.spec.template.spec,
  }));
}

Deno.test({
  name: "manifests: a critical priority class outside kube-system always comes with its quota",
  ignore: !(await hasKubectl()),
  async fn() {
    const trees = await builtTrees();
    let critical = 0;
    for (const [tree, docs] of trees) {
      for (const { doc, pod } of podTemplates(docs)) {
        const priority = pod.priorityClassName;
        if (!/^system-(node|cluster)-critical$/.test(priority ?? "")) continue;
        if (doc.metadata.namespace === "kube-system") continue;
        critical++;
        const quota = docs.find((d) =>
          d.kind === "ResourceQuota" && d.metadata.namespace === doc.metadata.namespace &&
          (d.spec.scopeSelector?.matchExpressions as Doc[] ?? []).some((e) =>
            e.scopeName === "PriorityClass" && e.operator === "In" && e.values.includes(priority)
          )
        );
        assert.ok(
          quota,
          `${tree}: ${doc.kind} ${doc.metadata.name} uses ${priority} without a quota`,
        );
      }
    }
    assert.ok(critical >= 3, "the component and the example use the class");
    const base = trees.get("base") ?? [];
    assert.equal(podTemplates(base)[0]?.pod.priorityClassName, undefined, "base: an option");
  },
});

Deno.test({
  name: "manifests: Pod Security admits the privileged driver in its namespace",
  ignore: !(await hasKubectl()),
  async fn() {
    for (const [tree, docs] of await builtTrees()) {
      for (const { doc, pod } of podTemplates(docs)) {
        const privileged = (pod.containers as Doc[]).some((c) => c.securityContext?.privileged);
        if (!privileged) continue;
        const ns = docs.find((d) =>
          d.kind === "Namespace" && d.metadata.name === doc.metadata.namespace
        );
        assert.equal(
          ns?.metadata.labels?.["pod-security.kubernetes.io/enforce"],
          "privileged",
          `${tree}: namespace ${doc.metadata.namespace} of ${doc.metadata.name}`,
        );
      }
    }
  },
});

Deno.test({
  name: "manifests: every tree runs the base's image, whose permission set serves its driver args",
  ignore: !(await hasKubectl()),
  async fn() {
    const trees = await builtTrees();
    const driverPod = (docs: Doc[]): Doc => {
      const ds = docs.find((d) =>
        d.kind === "DaemonSet" && d.metadata.name === "spiffe-csi-driver"
      );
      assert.ok(ds);
      return ds.spec.template.spec;
    };
    const image = (docs: Doc[]) => container(driverPod(docs), "spiffe-csi-driver").image;
    const baseImage = image(trees.get("base") ?? []);
    for (const [tree, docs] of trees) {
      assert.equal(image(docs), baseImage, `${tree} runs another image`);
      const pod = driverPod(docs);
      assert.deepEqual(
        await ungrantedPaths(driverConfig(pod), grantedBy(permissionSet())),
        [],
        tree,
      );
    }
    // So setting the image once, in the base, is enough: no overlay names an image of its own.
    for (const file of await yamlFiles(MANIFESTS)) {
      for (const doc of await load(file)) {
        if (doc.kind === "Kustomization" && !file.includes("/manifests/base/")) {
          assert.equal(doc.images, undefined, `${file} sets an image`);
        }
      }
    }
  },
});

Deno.test({
  name:
    "manifests: the builtin-registration component drops the registrar and registers through the driver",
  ignore: !(await hasKubectl()),
  async fn() {
    // A kustomization of a user's: base plus the component (kustomize wants relative paths).
    const dir = await Deno.makeTempDir({ prefix: "spiffe-csi-kustomize-" });
    try {
      const rel = posix.relative(dir, MANIFESTS);
      await Deno.writeTextFile(
        join(dir, "kustomization.yaml"),
        `resources:\n  - ${rel}/base\ncomponents:\n  - ${rel}/builtin-registration\n`,
      );
      const docs = await kustomize(dir);
      const ds = docs.find((d) =>
        d.kind === "DaemonSet" && d.metadata.name === "spiffe-csi-driver"
      );
      assert.ok(ds);
      new apps.DaemonSet(ds as never).validate();
      const pod = ds.spec.template.spec;
      assert.deepEqual(
        (pod.containers as Doc[]).map((c) => c.name),
        ["spiffe-csi-driver", "liveness-probe"],
      );
      const config = driverConfig(pod);
      const driver = container(pod, "spiffe-csi-driver");
      // kubelet dials the CSI socket's host path; the registration socket is in kubelet's watch dir.
      const csiHost = hostPathOf(pod, driver, config.csiSocketPath).host;
      assert.equal(config.registration?.endpoint, csiHost);
      assert.equal(config.registration?.socketPath, "/registration/csi.spiffe.io-reg.sock");
      assert.equal(
        hostPathOf(pod, driver, config.registration.socketPath).host,
        "/var/lib/kubelet/plugins_registry/csi.spiffe.io-reg.sock",
      );
      // The image's permission set (CONTAINER_PATHS) is exactly what this config needs.
      assert.deepEqual(permissionSet(config), permissionSet(CONTAINER_PATHS));
      const set = permissionSet(config);
      for (const mount of driver.volumeMounts as Doc[]) {
        assert.ok(
          [...set.read, ...set.write].some((entry) => within(entry, mount.mountPath)),
          `${mount.mountPath} is mounted but outside the permission set`,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Renders `resources` plus `components` (paths under manifests/) with kubectl kustomize. */
async function kustomizeWith(resources: string, components: string[]): Promise<Doc[]> {
  const tmp = await Deno.makeTempDir({ prefix: "spiffe-csi-kustomize-" });
  try {
    // kustomize refuses absolute paths outside the root: link the manifests in.
    await Deno.symlink(MANIFESTS, join(tmp, "manifests"));
    const list = components.map((c) => `manifests/${c}`).join(", ");
    await Deno.writeTextFile(
      join(tmp, "kustomization.yaml"),
      `resources: [manifests/${resources}]\ncomponents: [${list}]\n`,
    );
    return await kustomize(tmp);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test({
  name:
    "manifests: every overlay with every component names one kubelet root in every path, registration's included",
  ignore: !(await hasKubectl()),
  async fn() {
    const overlays: [string, string][] = [
      ["base", "/var/lib/kubelet"],
      ["microk8s", "/var/snap/microk8s/common/var/lib/kubelet"],
    ];
    const componentSets = [
      [],
      ["builtin-registration"],
      ["components/node_critical"],
      ["builtin-registration", "components/node_critical"],
    ];
    for (const [overlay, root] of overlays) {
      for (const components of componentSets) {
        const where = [overlay, ...components].join(" + ");
        const docs = await kustomizeWith(overlay, components);
        const ds = docs.find((d) =>
          d.kind === "DaemonSet" && d.metadata.name === "spiffe-csi-driver"
        );
        assert.ok(ds, where);
        const pod = ds.spec.template.spec;
        const config = driverConfig(pod);
        const driver = container(pod, "spiffe-csi-driver");
        assert.equal(config.kubeletDir, root, `${where}: -kubelet-dir`);
        assert.equal(hostPathOf(pod, driver, `${root}/pods`).host, `${root}/pods`, where);
        const csiHost = hostPathOf(pod, driver, config.csiSocketPath).host;
        assert.equal(csiHost, `${root}/plugins/${config.pluginName}/csi.sock`, where);
        const registrar = (pod.containers as Doc[]).find((c) => c.name === "node-driver-registrar");
        const builtin = components.includes("builtin-registration");
        assert.equal(registrar === undefined, builtin, `${where}: exactly one registers`);
        // Whoever registers hands kubelet the CSI socket's host path and serves in its plugins_registry.
        const [registers, endpoint] = registrar
          ? [registrar, flag(registrar.args, "kubelet-registration-path")]
          : [driver, config.registration?.endpoint];
        assert.equal(endpoint, csiHost, `${where}: the registration endpoint`);
        assert.equal(
          hostPathOf(pod, registers, "/registration").host,
          `${root}/plugins_registry`,
          `${where}: the registration dir`,
        );
        if (root !== "/var/lib/kubelet") {
          const rendered = JSON.stringify(pod).replaceAll(root, "");
          assert.doesNotMatch(
            rendered,
            /\/var\/lib\/kubelet/,
            `${where}: the default root is left`,
          );
        }
      }
    }
  },
});
