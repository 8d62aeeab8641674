/**
 * The rig's container images, made locally without a registry: busybox as the sandbox ("pause")
 * image and a workload image holding a static spire-agent, written by buildah (vfs storage in a
 * temp dir) as OCI archives cached in .tools/kube-images by the hash of what they hold; containerd
 * imports them with the driver's local image, which tests/kubelet_e2e.sh builds before the rig's
 * network namespace exists (tools/local_image.ts fetches the npm packages).
 */
import { ROOT } from "./_driver.ts";
import { runOk } from "./_spire.ts";
import { type LocalImage, sha256, writeOciArchive } from "../tools/local_image.ts";

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

/** Where tests/kubelet_e2e.sh passes the driver's image: "NAME ARCHIVE". */
export const DRIVER_IMAGE_ENV = "SPIFFE_CSI_RIG_DRIVER_IMAGE";

/** The driver's local image named by DRIVER_IMAGE_ENV. */
export function driverImage(): LocalImage {
  const [name, archive] = (Deno.env.get(DRIVER_IMAGE_ENV) ?? "").split(" ");
  if (!name || !archive) {
    throw new Error(`${DRIVER_IMAGE_ENV} is not set: run the rig through tests/kubelet_e2e.sh`);
  }
  return { name, archive };
}

/** Builds (or reuses) the rig's images and imports them and `driver` into containerd. */
export async function importImages(options: {
  spireAgentStatic: string;
  containerdSocket: string;
  workDir: string;
  driver: LocalImage;
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
  const archives = [];
  for (const spec of specs) archives.push(await busyboxArchive(spec, options.workDir));
  archives.push(options.driver.archive);
  for (const archive of archives) await ctrImport(options.containerdSocket, archive);
}

/**
 * Imports an image named `name` that holds only `binary` (at /<its file name>) and the libraries
 * ldd lists for it; its entrypoint is the binary. For the sidecars built by hand from their sources.
 */
export async function importBinaryImage(options: {
  name: string;
  binary: string;
  containerdSocket: string;
  workDir: string;
}): Promise<void> {
  const rootfs = `${options.workDir}/rootfs-${options.name.replace(/[^a-z0-9]+/g, "_")}`;
  const path = `/${options.binary.split("/").at(-1)}`;
  await Deno.mkdir(rootfs, { recursive: true });
  await Deno.copyFile(options.binary, `${rootfs}${path}`);
  await Deno.chmod(`${rootfs}${path}`, 0o755);
  const ldd = await runOk("ldd", [options.binary]).catch(() => "");
  for (const line of ldd.split("\n")) {
    const lib = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line)?.[1];
    if (lib) await runOk("cp", ["-L", "--parents", lib, `${rootfs}/`]);
  }
  const archive = `${options.workDir}/${options.name.replace(/[^a-z0-9]+/g, "_")}.tar`;
  await writeOciArchive(
    rootfs,
    { name: options.name, entrypoint: [path] },
    archive,
    options.workDir,
  );
  await ctrImport(options.containerdSocket, archive);
}

/** Loads an OCI archive into containerd's Kubernetes namespace. */
async function ctrImport(containerdSocket: string, archive: string): Promise<void> {
  await runOk("ctr", ["-n", "k8s.io", "-a", containerdSocket, "images", "import", archive], {
    timeoutMs: 120_000,
  });
}

async function busyboxArchive(spec: ImageSpec, workDir: string): Promise<string> {
  const hashes = [];
  for (const [from, to] of spec.files) {
    hashes.push(`${(await runOk("sha256sum", [from])).split(" ")[0]}:${to}`);
  }
  const key = await sha256(JSON.stringify({ ...spec, files: hashes, applets: APPLETS }));
  const archive = `${CACHE}/${spec.name.replace(/[^a-z0-9]+/g, "_")}-${key.slice(0, 16)}.tar`;
  if (await exists(archive)) return archive;

  const rootfs = `${workDir}/rootfs-${key.slice(0, 8)}`;
  await Deno.mkdir(`${rootfs}/bin`, { recursive: true });
  await Deno.mkdir(`${rootfs}/tmp`, { mode: 0o1777 });
  for (const [from, to] of spec.files) {
    await Deno.copyFile(from, `${rootfs}${to}`);
    await Deno.chmod(`${rootfs}${to}`, 0o755);
  }
  for (const applet of APPLETS) await Deno.symlink("busybox", `${rootfs}/bin/${applet}`);
  await writeOciArchive(rootfs, { name: spec.name, entrypoint: spec.entrypoint }, archive, workDir);
  await Deno.remove(rootfs, { recursive: true });
  return archive;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
