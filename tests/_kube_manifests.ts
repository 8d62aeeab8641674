/**
 * The shipped manifests on the kubelet rig: a kustomization made in a temp dir that takes
 * manifests/base (or an overlay of it) with only the image and the registration changed, built by
 * kubectl v1.37.2's kustomize (tools/build_kube.sh) and applied with it.
 */
import { ROOT } from "./_driver.ts";
import { runOk } from "./_spire.ts";

/** The DaemonSet's namespace and name, as manifests/base has them. */
export const DAEMONSET = { namespace: "spire", name: "spiffe-csi-driver" };

/** How the driver is deployed. */
export interface Deployment {
  /** The driver image (`repository:tag`) that replaces the base's `spiffe-csi-driver:0.3.0`. */
  image: string;
  /**
   * "builtin": manifests/builtin-registration, and no liveness-probe sidecar (its image cannot be
   * built here). "sidecars": the manifests exactly as shipped, with node-driver-registrar and
   * livenessprobe images made by hand.
   */
  registration: "builtin" | "sidecars";
  /** Reproduce the hardened Helm chart's driver args and agent socket mount path. */
  hardenedChart?: boolean;
  /** kubelet's root on the node: the base's default, or microk8s's (manifests/microk8s). */
  kubeletDir: string;
}

/** The manifests for each kubelet root the rig runs on. */
const OVERLAYS: Record<string, string> = {
  "/var/lib/kubelet": "../manifests/base",
  "/var/snap/microk8s/common/var/lib/kubelet": "../manifests/microk8s",
};

/** The driver container's args in upstream's example DaemonSet and the SPIFFE hardened chart. */
export const HARDENED_CHART_ARGS = [
  "-workload-api-socket-dir",
  "/spire-agent-socket",
  "-plugin-name",
  "csi.spiffe.io",
  "-csi-socket-path",
  "/spiffe-csi/csi.sock",
];

/**
 * The hardened SPIRE Helm chart's driver container (spiffe-csi-driver subchart): its three args
 * (the socket dir flag in its two-argument form, no -kubelet-dir whatever its `kubeletPath`) and the
 * agent's socket dir at /spire-agent-socket; `<kubeletPath>/pods` at the same path in the
 * container, as the base and the microk8s overlay have it already.
 */
function hardenedChartPatch(kubeletDir: string): unknown[] {
  return [
    { op: "test", path: "/spec/template/spec/containers/0/name", value: "spiffe-csi-driver" },
    {
      op: "replace",
      path: "/spec/template/spec/containers/0/args",
      value: HARDENED_CHART_ARGS,
    },
    {
      op: "test",
      path: "/spec/template/spec/containers/0/volumeMounts/0/name",
      value: "spire-agent-socket-dir",
    },
    {
      op: "replace",
      path: "/spec/template/spec/containers/0/volumeMounts/0/mountPath",
      value: "/spire-agent-socket",
    },
    {
      op: "test",
      path: "/spec/template/spec/containers/0/volumeMounts/2/mountPath",
      value: `${kubeletDir}/pods`,
    },
  ];
}

/** The liveness-probe sidecar and the driver's liveness probe it serves, removed. */
const NO_PROBE_SIDECAR = {
  apiVersion: "apps/v1",
  kind: "DaemonSet",
  metadata: DAEMONSET,
  spec: {
    template: {
      spec: {
        containers: [
          { name: "liveness-probe", $patch: "delete" },
          { name: "spiffe-csi-driver", livenessProbe: null },
        ],
      },
    },
  },
};

/** Writes the kustomization for `deployment` under `dir` (replacing any earlier one); returns its dir. */
export async function writeKustomization(dir: string, deployment: Deployment): Promise<string> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  // kustomize refuses paths outside its root: link the manifests in.
  await Deno.symlink(`${ROOT}manifests`, `${dir}/manifests`);
  let base = OVERLAYS[deployment.kubeletDir];
  if (base === undefined) throw new Error(`no manifests for kubelet root ${deployment.kubeletDir}`);
  if (deployment.hardenedChart) {
    await Deno.mkdir(`${dir}/hardened-chart`);
    await writeYaml(`${dir}/hardened-chart/kustomization.yaml`, {
      apiVersion: "kustomize.config.k8s.io/v1beta1",
      kind: "Kustomization",
      resources: [base],
      patches: [{
        target: { kind: "DaemonSet", name: DAEMONSET.name },
        patch: JSON.stringify(hardenedChartPatch(deployment.kubeletDir)),
      }],
    });
    base = "../hardened-chart";
  }
  const [name, tag] = splitImage(deployment.image);
  const builtin = deployment.registration === "builtin";
  await Deno.mkdir(`${dir}/rig`);
  await writeYaml(`${dir}/rig/kustomization.yaml`, {
    apiVersion: "kustomize.config.k8s.io/v1beta1",
    kind: "Kustomization",
    resources: [base],
    ...(builtin ? { components: ["../manifests/builtin-registration"] } : {}),
    images: [{ name: "spiffe-csi-driver", newName: name, newTag: tag }],
    ...(builtin ? { patches: [{ patch: JSON.stringify(NO_PROBE_SIDECAR) }] } : {}),
  });
  return `${dir}/rig`;
}

/** `kubectl kustomize dir`: the documents as YAML. */
export function kustomize(kubectl: string, dir: string): Promise<string> {
  return runOk(kubectl, ["kustomize", dir]);
}

/** `kubectl apply -k dir` with the rig's kubeconfig. */
export function apply(kubectl: string, kubeconfig: string, dir: string): Promise<string> {
  return runOk(kubectl, [`--kubeconfig=${kubeconfig}`, "apply", "-k", dir], { timeoutMs: 60_000 });
}

/** `repository:tag` split at the tag's colon (a registry's port is not a tag). */
export function splitImage(image: string): [string, string] {
  const colon = image.lastIndexOf(":");
  if (colon <= image.lastIndexOf("/")) throw new Error(`${image} has no tag`);
  return [image.slice(0, colon), image.slice(colon + 1)];
}

async function writeYaml(path: string, object: unknown): Promise<void> {
  // JSON is YAML.
  await Deno.writeTextFile(path, JSON.stringify(object, null, 2));
}
