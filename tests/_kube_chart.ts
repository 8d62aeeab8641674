/**
 * The SPIFFE hardened Helm chart (spiffe/helm-charts-hardened, chart `spire`, subchart
 * `spiffe-csi-driver`) on the kubelet rig, rendered by Helm v4 (tools/build_helm.sh). The chart's
 * source is not part of this project: its directory comes from HELM_CHARTS_HARDENED.
 */
import { parse } from "yaml";
import { BIN } from "./_kube_components.ts";
import { runOk } from "./_spire.ts";
import { splitImage } from "./_kube_manifests.ts";

/** The checkout of spiffe/helm-charts-hardened, or undefined. */
export const HARDENED_CHARTS = Deno.env.get("HELM_CHARTS_HARDENED");
/** Helm, built by tools/build_helm.sh beside the rig's Kubernetes binaries. */
export const HELM = `${BIN}/helm`;
/** The release name a SPIRE user installs the `spire` chart under; the DaemonSet is `<it>-spiffe-csi-driver`. */
export const RELEASE = "spire";

/** An image reference as the chart's values spell it. */
export interface ChartImage {
  registry: string;
  repository: string;
  tag: string;
}

/** What the subchart installs by default: its driver and registrar images. */
export interface ChartDefaults {
  /** The driver image with no values set (the tag is the chart's appVersion). */
  driver: ChartImage;
  registrar: ChartImage;
}

/**
 * The spiffe-csi-driver subchart made installable on its own: a copy under `workDir` with the
 * library chart it includes (spire-lib) in its charts/. Returns the copy's dir and its defaults.
 */
export async function prepareChart(
  source: string,
  workDir: string,
): Promise<{ dir: string; defaults: ChartDefaults }> {
  const dir = `${workDir}/spiffe-csi-driver`;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(workDir, { recursive: true });
  await runOk("cp", ["-r", `${source}/charts/spire/charts/spiffe-csi-driver`, dir]);
  await Deno.mkdir(`${dir}/charts`, { recursive: true });
  await runOk("cp", ["-r", `${source}/charts/spire-lib`, `${dir}/charts/spire-lib`]);
  const chart = parse(await Deno.readTextFile(`${dir}/Chart.yaml`));
  const values = parse(await Deno.readTextFile(`${dir}/values.yaml`));
  return {
    dir,
    defaults: {
      driver: { ...values.image, tag: values.image.tag || String(chart.appVersion) },
      registrar: values.nodeDriverRegistrar.image,
    },
  };
}

/** `registry/repository:tag`, as the chart's spire-lib.image template spells it. */
export function imageName(image: ChartImage): string {
  return `${image.registry === "" ? "" : `${image.registry}/`}${image.repository}:${image.tag}`;
}

/** The `--set` values that point the chart's driver at `image` (`registry/repository:tag`). */
export function imageValues(image: string): Record<string, string> {
  const [name, tag] = splitImage(image);
  const slash = name.indexOf("/");
  return {
    "image.registry": name.slice(0, slash),
    "image.repository": name.slice(slash + 1),
    "image.tag": tag,
  };
}

/** `helm template` of the chart as release RELEASE in `namespace`, with `values` set. */
export async function renderChart(
  dir: string,
  namespace: string,
  values: Record<string, string>,
): Promise<string> {
  const sets = Object.entries(values).flatMap(([key, value]) => ["--set", `${key}=${value}`]);
  return await runOk(HELM, ["template", RELEASE, dir, "--namespace", namespace, ...sets]);
}
