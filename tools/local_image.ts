// deno-lint-ignore-file no-console
/**
 * The driver's image built here, without a registry and without `deno compile` (which needs the
 * denort download): the release image's layout (tools/rootfs.sh, the one definition both use) with
 * `deno run` on the sources in place of the compiled binary, its npm dependencies in a DENO_DIR
 * filled at build time and only read at run time, and an entrypoint that applies exactly the
 * compile task's permission set and V8 flags. buildah (vfs storage) writes it as an OCI archive,
 * which `ctr images import` loads into containerd. The archive is named by the hash of the root
 * filesystem, so an unchanged checkout reuses it.
 *
 *   deno run -A tools/local_image.ts DIR     prints "NAME ARCHIVE" (the archive is in DIR)
 */
import { fileURLToPath } from "node:url";
import { permissionFlags, V8_FLAGS } from "../lib/config/permissions.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Where tools/rootfs.sh --sources puts the deno binary, the sources and their DENO_DIR. */
export const SOURCE_LAYOUT = Object.freeze({
  deno: "/usr/local/bin/deno",
  app: "/usr/local/lib/spiffe-csi-driver",
  denoDir: "/usr/local/lib/spiffe-csi-driver/deno-dir",
});

/** The image's default name; the tag is the hash of its root filesystem. */
export const LOCAL_IMAGE_REPOSITORY = "localhost/spiffe-csi-driver";

/**
 * The local image's entrypoint: `deno run` from the read-only cache (no download, no lock file
 * write) on the sources, with the release binary's permission flags and V8 flags; the
 * DaemonSet's args follow it.
 */
export function localImageEntrypoint(): string[] {
  return [
    SOURCE_LAYOUT.deno,
    "run",
    "--cached-only",
    "--frozen",
    `--config=${SOURCE_LAYOUT.app}/deno.json`,
    ...permissionFlags(),
    `--v8-flags=${V8_FLAGS}`,
    `${SOURCE_LAYOUT.app}/main.ts`,
  ];
}

/** The local image's environment: where deno finds its cache, and no update check. */
export const LOCAL_IMAGE_ENV: readonly string[] = Object.freeze([
  `DENO_DIR=${SOURCE_LAYOUT.denoDir}`,
  "DENO_NO_UPDATE_CHECK=1",
]);

/** How to make one image from a root filesystem directory. */
export interface ImageConfig {
  /** `repository:tag` */
  name: string;
  entrypoint: string[];
  env?: readonly string[];
}

/** Commits the directory `rootfs` as an image and writes it to `archive` (oci-archive). */
export async function writeOciArchive(
  rootfs: string,
  image: ImageConfig,
  archive: string,
  workDir: string,
): Promise<void> {
  const storage = [
    "--root",
    `${workDir}/buildah`,
    "--runroot",
    `${workDir}/buildah-run`,
    "--storage-driver",
    "vfs",
  ];
  const buildah = (...args: string[]) => command("buildah", [...storage, ...args]);
  const container = (await buildah("from", "scratch")).trim();
  await buildah("copy", container, `${rootfs}/`, "/");
  const env = (image.env ?? []).flatMap((e) => ["--env", e]);
  await buildah(
    "config",
    "--entrypoint",
    JSON.stringify(image.entrypoint),
    "--cmd",
    "",
    "--workingdir",
    "/",
    ...env,
    container,
  );
  await buildah("commit", "--quiet", container, image.name);
  const partial = `${archive}.partial`;
  await buildah("push", "--quiet", image.name, `oci-archive:${partial}:${image.name}`);
  await Deno.rename(partial, archive);
  await buildah("rm", container);
}

/**
 * Builds the local image's root filesystem in `workDir` with tools/rootfs.sh --sources (this
 * machine's deno, this checkout's sources) and returns it with the hash of its content.
 */
export async function buildSourceRootfs(
  workDir: string,
): Promise<{ rootfs: string; hash: string }> {
  const rootfs = `${workDir}/driver-rootfs`;
  await command("sh", [`${ROOT}tools/rootfs.sh`, "--sources", rootfs, Deno.execPath(), ROOT]);
  const listing = await command("sh", [
    "-c",
    'cd "$1" && find . \\( -type f -o -type l \\) -printf "%p %l %m\\n" | sort && ' +
    "find . -type f -print0 | sort -z | xargs -0 sha256sum",
    "sh",
    rootfs,
  ]);
  return { rootfs, hash: await sha256(listing) };
}

/** A built image: its name (`repository:src-<hash>`) and its OCI archive. */
export interface LocalImage {
  name: string;
  archive: string;
}

/** Builds the local image into `dir` (reusing an archive of the same content); works in `workDir`. */
export async function buildLocalImage(dir: string, workDir: string): Promise<LocalImage> {
  const { rootfs, hash } = await buildSourceRootfs(workDir);
  const image: ImageConfig = {
    name: `${LOCAL_IMAGE_REPOSITORY}:src-${hash.slice(0, 12)}`,
    entrypoint: localImageEntrypoint(),
    env: LOCAL_IMAGE_ENV,
  };
  // The hash covers the files; the configuration is part of the archive's name too.
  const key = await sha256(JSON.stringify({ ...image, hash }));
  const archive = `${dir}/spiffe-csi-driver-${key.slice(0, 16)}.tar`;
  try {
    await Deno.stat(archive);
  } catch {
    await Deno.mkdir(dir, { recursive: true });
    await writeOciArchive(rootfs, image, archive, workDir);
    // One archive of the driver at a time: those of earlier sources are never used again.
    for await (const entry of Deno.readDir(dir)) {
      const path = `${dir}/${entry.name}`;
      if (/^spiffe-csi-driver-[0-9a-f]{16}\.tar$/.test(entry.name) && path !== archive) {
        await Deno.remove(path);
      }
    }
  }
  return { name: image.name, archive };
}

/** Hex SHA-256 of `text`. */
export async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function command(cmd: string, args: string[]): Promise<string> {
  const output = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder();
  if (!output.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} exited ${output.code}:\n${text.decode(output.stderr)}`,
    );
  }
  return text.decode(output.stdout);
}

if (import.meta.main) {
  const [dir] = Deno.args;
  if (!dir || Deno.args.length !== 1) {
    console.error("usage: deno run -A tools/local_image.ts DIR");
    Deno.exit(2);
  }
  const workDir = await Deno.makeTempDir({ prefix: "spiffe-csi-image-" });
  try {
    const image = await buildLocalImage(dir, workDir);
    console.log(`${image.name} ${image.archive}`);
  } finally {
    await Deno.remove(workDir, { recursive: true });
  }
}
