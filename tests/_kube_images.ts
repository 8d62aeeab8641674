/**
 * The rig's container images, made locally without a registry: busybox as the sandbox ("pause")
 * image, and a workload image holding a static spire-agent. buildah (vfs storage in a temp dir)
 * writes OCI archives, cached in .tools/kube-images by the hash of what they hold; containerd
 * imports them.
 */
import { ROOT } from "./_driver.ts";
import { runOk } from "./_spire.ts";

/** The busybox binary copied into both images (Debian's busybox-static). */
export const BUSYBOX = "/bin/busybox";
/** The sandbox image's name. */
export const PAUSE_IMAGE = "localhost/spiffe-csi-rig/pause:1";
/** The workload image's name. */
export const WORKLOAD_IMAGE = "localhost/spiffe-csi-rig/workload:1";

const CACHE = `${ROOT}.tools/kube-images`;
const APPLETS = ["sh", "sleep", "cat", "mkdir", "echo", "date", "ls", "true"];

interface ImageSpec {
  name: string;
  /** Host files and where they go in the image. */
  files: [string, string][];
  entrypoint: string[];
}

/** Builds (or reuses) both images and imports them into containerd. */
export async function importImages(options: {
  spireAgentStatic: string;
  containerdSocket: string;
  workDir: string;
}): Promise<void> {
  const specs: ImageSpec[] = [
    {
      name: PAUSE_IMAGE,
      files: [[BUSYBOX, "/bin/busybox"]],
      entrypoint: ["/bin/sleep", "2147483647"],
    },
    {
      name: WORKLOAD_IMAGE,
      files: [[BUSYBOX, "/bin/busybox"], [options.spireAgentStatic, "/bin/spire-agent"]],
      entrypoint: ["/bin/sh"],
    },
  ];
  await Deno.mkdir(CACHE, { recursive: true });
  for (const spec of specs) {
    const archive = await buildArchive(spec, options.workDir);
    await runOk("ctr", [
      "-n",
      "k8s.io",
      "-a",
      options.containerdSocket,
      "images",
      "import",
      archive,
    ], { timeoutMs: 120_000 });
  }
}

async function buildArchive(spec: ImageSpec, workDir: string): Promise<string> {
  const hashes = [];
  for (const [from, to] of spec.files) {
    hashes.push(`${(await runOk("sha256sum", [from])).split(" ")[0]}:${to}`);
  }
  const key = await sha256(JSON.stringify({ ...spec, files: hashes, applets: APPLETS }));
  const archive = `${CACHE}/${spec.name.replace(/[^a-z0-9]+/g, "_")}-${key.slice(0, 16)}.tar`;
  try {
    await Deno.stat(archive);
    return archive;
  } catch { /* build it */ }

  const rootfs = `${workDir}/rootfs-${key.slice(0, 8)}`;
  await Deno.mkdir(`${rootfs}/bin`, { recursive: true });
  await Deno.mkdir(`${rootfs}/tmp`, { mode: 0o1777 });
  for (const [from, to] of spec.files) {
    await Deno.copyFile(from, `${rootfs}${to}`);
    await Deno.chmod(`${rootfs}${to}`, 0o755);
  }
  for (const applet of APPLETS) await Deno.symlink("busybox", `${rootfs}/bin/${applet}`);
  const buildah = [
    "--root",
    `${workDir}/buildah`,
    "--runroot",
    `${workDir}/buildah-run`,
    "--storage-driver",
    "vfs",
  ];
  const container = (await runOk("buildah", [...buildah, "from", "scratch"])).trim();
  await runOk("buildah", [...buildah, "copy", container, `${rootfs}/`, "/"]);
  await runOk("buildah", [
    ...buildah,
    "config",
    "--entrypoint",
    JSON.stringify(spec.entrypoint),
    "--cmd",
    "",
    container,
  ]);
  await runOk("buildah", [...buildah, "commit", container, spec.name], { timeoutMs: 120_000 });
  const partial = `${archive}.partial`;
  await runOk("buildah", [...buildah, "push", spec.name, `oci-archive:${partial}:${spec.name}`], {
    timeoutMs: 120_000,
  });
  await Deno.rename(partial, archive);
  await Deno.remove(rootfs, { recursive: true });
  return archive;
}

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
