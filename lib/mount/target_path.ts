/**
 * Target path confinement: a publish or unpublish target must be exactly the path kubelet uses for
 * an inline CSI volume, `<kubelet-dir>/pods/<pod-uid>/volumes/kubernetes.io~csi/<volume>/mount`,
 * with no symlink in any component below the kubelet dir.
 */
import { withoutTrailingSlash } from "../config/flags.ts";

/** A target path that is not the shape kubelet gives inline volumes, or leads through a symlink. */
export class TargetPathError extends Error {
  override name = "TargetPathError";
}

/** A confined target path, for the symlink check after a failure. */
export interface TargetPath {
  /** Each component below the kubelet dir, from `<kubelet-dir>/pods` down to the target itself. */
  components: string[];
}

// Linux PATH_MAX (less the terminating NUL) and NAME_MAX.
const MAX_PATH_BYTES = 4095;
const MAX_NAME_BYTES = 255;

/** Quotes a client-supplied string for an error message, cut to a readable length. */
export function quote(text: string, max = 200): string {
  const cut = text.length > max ? `${text.slice(0, max)}...` : text;
  return JSON.stringify(cut);
}

/** Checks the shape of `target` (pure); throws TargetPathError when it is not a kubelet inline-volume target. */
export function parseTargetPath(target: string, kubeletDir: string, podUid?: string): TargetPath {
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x1f\x7f]/.test(target)) {
    throw new TargetPathError("target path must not contain control characters");
  }
  const root = withoutTrailingSlash(kubeletDir);
  const prefix = `${root}/pods/`;
  if (!target.startsWith(prefix)) {
    throw new TargetPathError(`target path ${quote(target)} is not under ${quote(prefix)}`);
  }
  const rest = target.slice(prefix.length).split("/");
  if (rest.some((part) => part === "" || part === "." || part === "..")) {
    throw new TargetPathError(`target path ${quote(target)} is not a normalized path`);
  }
  // Longer paths fail in lstat with ENAMETOOLONG: reject them here, as the client's error.
  const bytes = (text: string) => new TextEncoder().encode(text).length;
  if (bytes(target) > MAX_PATH_BYTES || rest.some((part) => bytes(part) > MAX_NAME_BYTES)) {
    throw new TargetPathError(
      `target path ${
        quote(target)
      } is too long (at most ${MAX_PATH_BYTES} bytes, ${MAX_NAME_BYTES} per name)`,
    );
  }
  const [uid, volumes, plugin, , leaf] = rest;
  if (
    rest.length !== 5 || volumes !== "volumes" || plugin !== "kubernetes.io~csi" ||
    leaf !== "mount" || uid === undefined
  ) {
    throw new TargetPathError(
      `target path ${
        quote(target)
      } is not ${prefix}<pod-uid>/volumes/kubernetes.io~csi/<volume-name>/mount`,
    );
  }
  if (podUid !== undefined && podUid !== uid) {
    throw new TargetPathError(
      `target path pod uid ${quote(uid)} does not match csi.storage.k8s.io/pod.uid ${
        quote(podUid)
      }`,
    );
  }
  const components = [`${root}/pods`];
  for (const part of rest) components.push(`${components.at(-1)}/${part}`);
  return { components };
}

/** Throws TargetPathError if any existing component is a symlink or not a directory (lstat each, never follow). */
export async function assertNoSymlinks(target: TargetPath): Promise<void> {
  for (const component of target.components) {
    let info: Deno.FileInfo;
    try {
      info = await Deno.lstat(component);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return;
      throw error;
    }
    if (info.isSymlink) {
      throw new TargetPathError(`target path component ${quote(component)} is a symlink`);
    }
    if (!info.isDirectory) {
      throw new TargetPathError(`target path component ${quote(component)} is not a directory`);
    }
  }
}
