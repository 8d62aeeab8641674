/** CSI Node service: plain async handlers that know nothing of gRPC. */
import { dirname } from "node:path";
import { Code, CsiError, errorMessage, invalidArgument } from "../errors.ts";
import type {
  Empty,
  NodeGetCapabilitiesResponse,
  NodeGetInfoResponse,
  NodeGetVolumeStatsRequest,
  NodeGetVolumeStatsResponse,
  NodePublishVolumeRequest,
  NodeUnpublishVolumeRequest,
} from "./types.ts";
import type { Mounter } from "../mount/mounter.ts";
import {
  assertNoSymlinks,
  parseTargetPath,
  quote,
  type TargetPath,
  TargetPathError,
} from "../mount/target_path.ts";
import { ForeignMountError, pinTarget } from "../mount/pinned_target.ts";
import type { Template } from "../mount/template.ts";
import { type DirPin, PinMovedError, type PinnedDir, type PinSection } from "../mount/dir_pin.ts";
import { inspectSocketDir } from "../health/socket_dir.ts";

/** The volume context key kubelet sets for inline (ephemeral) volumes. */
export const EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral";
/** The volume context key carrying the pod's UID (podInfoOnMount). */
export const POD_UID_KEY = "csi.storage.k8s.io/pod.uid";

/** Options for createNodeService. */
export interface NodeOptions {
  nodeId: string;
  /** The Workload API socket directory bind-mounted into pods. */
  socketDir: string;
  /** Kubelet's root directory; targets must lie under `<kubeletDir>/pods`. */
  kubeletDir: string;
  mounter: Mounter;
  /** The pinned-directory reference every step on a target goes through. */
  pins: DirPin;
  /** The hardened template of the socket dir every publish binds from. */
  template: Template;
  /** Most layers one unpublish removes before it gives up (kubelet retries). Default 10,000. */
  maxLayers?: number;
  /** Workload API socket names that volume health checks may connect to. */
  socketNames: string[];
  /** How long a stats check waits for a Workload API socket to accept. Default 1 s. */
  socketTimeoutMs?: number;
  /**
   * Whether the pinned directory is a bind of the socket dir. Default: same device and inode as
   * the socket dir. Unit tests answer it from their fake mounter's binds.
   */
  isSocketDirBind?: (dir: PinnedDir) => boolean;
  /**
   * Resolves true once the start-up pass (leftovers.ts) has replaced every bind of the socket
   * dir that an earlier driver left, possibly without nosuid,nodev,noexec, by one from the
   * template (false: it failed). A publish waits for it (at most 10 s); when it failed, and
   * without it, a republish replaces the bind itself.
   */
  leftoversReplaced?: Promise<boolean>;
}

/** The Node service's handlers. */
export interface NodeService {
  NodePublishVolume(request: NodePublishVolumeRequest): Promise<Empty>;
  NodeUnpublishVolume(request: NodeUnpublishVolumeRequest): Promise<Empty>;
  NodeGetVolumeStats(request: NodeGetVolumeStatsRequest): Promise<NodeGetVolumeStatsResponse>;
  NodeGetInfo(request: Empty): Promise<NodeGetInfoResponse>;
  NodeGetCapabilities(request: Empty): Promise<NodeGetCapabilitiesResponse>;
  NodeStageVolume(request: unknown): Promise<Empty>;
  NodeUnstageVolume(request: unknown): Promise<Empty>;
  NodeExpandVolume(request: unknown): Promise<Empty>;
  /**
   * Start-up (leftovers.ts): replaces the bind of the socket dir on `path` (with `all`, every
   * layer of it) by one from the template; the layers unmounted, or undefined when `path` holds
   * no bind of the socket dir. Not an RPC.
   */
  replaceLeftover(path: string, all: boolean): Promise<number | undefined>;
}

/** Checks a publish request in upstream's order, with upstream's messages (pure). */
export function validatePublish(request: NodePublishVolumeRequest): void {
  const capability = request.volume_capability;
  if (!request.volume_id) throw invalidArgument("request missing required volume id");
  if (!request.target_path) throw invalidArgument("request missing required target path");
  if (!capability) throw invalidArgument("request missing required volume capability");
  if (!capability.block && !capability.mount) {
    throw invalidArgument("request missing required volume capability access type");
  }
  const mount = capability.mount;
  if (!mount || mount.fs_type || (mount.mount_flags?.length ?? 0) > 0) {
    throw invalidArgument("request volume capability access type must be a simple mount");
  }
  if (!capability.access_mode) {
    throw invalidArgument("request missing required volume capability access mode");
  }
  const mode = capability.access_mode.mode;
  if (mode === "SINGLE_NODE_READER_ONLY" || mode === 2) {
    throw invalidArgument("request volume capability access mode is not valid");
  }
  if (!request.readonly) {
    throw invalidArgument("pod.spec.volumes[].csi.readOnly must be set to 'true'");
  }
  if (request.volume_context?.[EPHEMERAL_KEY] !== "true") {
    throw invalidArgument("only ephemeral volumes are supported");
  }
}

/** How long a publish waits for the start-up pass over leftover binds. */
const PASS_WAIT_MS = 10_000;

/** Creates the Node service. */
export function createNodeService(options: NodeOptions): NodeService {
  const { socketDir, kubeletDir } = options;
  const parts: Parts = {
    socketDir,
    mounter: options.mounter,
    pins: options.pins,
    template: options.template,
    maxLayers: options.maxLayers ?? 10_000,
    isSocketDirBind: options.isSocketDirBind ?? ((dir) => dir.isSame(socketDir)),
    health: { timeoutMs: options.socketTimeoutMs ?? 1000, names: options.socketNames },
  };
  // A publish waits for the start-up pass before it takes the pin (the pass needs the pin too),
  // at most PASS_WAIT_MS; after that it replaces a leftover bind itself.
  const leftoversReplaced = options.leftoversReplaced
    ? within(options.leftoversReplaced, PASS_WAIT_MS, false)
    : Promise.resolve(false);
  // Sections on different volumes overlap while their umount children run (dir_pin.ts `aside`);
  // calls on the same volume dir (the target and the strays beside it) run one after another.
  const onVolume = queuePerKey();
  const unsupported = (name: string) => () =>
    Promise.reject(new CsiError(Code.UNIMPLEMENTED, `${name} is not supported by this driver`));

  return {
    async NodePublishVolume(request) {
      validatePublish(request);
      const path = request.target_path as string;
      return await onTarget(path, async () => {
        const parsed = parseTargetPath(path, kubeletDir, request.volume_context?.[POD_UID_KEY]);
        const replaced = await leftoversReplaced;
        await onVolume(dirname(path), () => publish(parts, parsed, path, replaced));
        return {};
      });
    },

    async NodeUnpublishVolume(request) {
      if (!request.volume_id) throw invalidArgument("request missing required volume id");
      if (!request.target_path) throw invalidArgument("request missing required target path");
      const path = request.target_path;
      return await onTarget(path, async () => {
        const parsed = parseTargetPath(path, kubeletDir);
        await onVolume(dirname(path), () => unpublish(parts, parsed, path));
        return {};
      });
    },

    async NodeGetVolumeStats(request) {
      if (!request.volume_id) throw invalidArgument("request missing required volume id");
      if (!request.volume_path) throw invalidArgument("request missing required volume path");
      const path = request.volume_path;
      let parsed: TargetPath;
      try {
        parsed = parseTargetPath(path, kubeletDir);
      } catch {
        throw new CsiError(
          Code.NOT_FOUND,
          `volume path ${quote(path)} is not a volume of this driver`,
        );
      }
      return await onTarget(
        path,
        () => onVolume(dirname(path), () => volumeStats(parts, parsed, path)),
      );
    },

    NodeGetInfo() {
      return Promise.resolve({ node_id: options.nodeId, max_volumes_per_node: "0" });
    },

    NodeGetCapabilities() {
      return Promise.resolve({
        capabilities: [
          { rpc: { type: "VOLUME_CONDITION" } },
          { rpc: { type: "GET_VOLUME_STATS" } },
        ],
      });
    },

    replaceLeftover(path, all) {
      return onVolume(dirname(path), () =>
        parts.pins.hold(async (section) => {
          if (look(parts, section, path) !== "our bind") return undefined;
          return await rebind(parts, section, path, all);
        }));
    },

    NodeStageVolume: unsupported("NodeStageVolume"),
    NodeUnstageVolume: unsupported("NodeUnstageVolume"),
    NodeExpandVolume: unsupported("NodeExpandVolume"),
  };
}

/** What every step on a target works with: the options, defaults filled in. */
interface Parts {
  socketDir: string;
  mounter: Mounter;
  pins: DirPin;
  template: Template;
  maxLayers: number;
  isSocketDirBind(dir: PinnedDir): boolean;
  health: { timeoutMs: number; names: string[] };
}

/** What a look at a target found (`look`), and what a publish leaves to do about it. */
type Found = "nothing" | "our bind" | "directory" | "non-empty directory";

// Publish: one pinned section, a directory missing on the way is Internal.
async function publish(
  parts: Parts,
  parsed: TargetPath,
  path: string,
  leftoversReplaced: boolean,
): Promise<void> {
  try {
    await parts.pins.hold((section) => publishPinned(parts, section, path, leftoversReplaced));
  } catch (error) {
    if (await missing(error, parsed)) throw internal("unable to create target path", path, error);
    if (error instanceof CsiError || isRefusal(error)) throw error;
    throw internal("unable to mount", path, error);
  }
}

// The steps README → Security lists, one line each: look (pin the parent, lstat, pin the target
// itself), never stack on our bind, make the directory, bind from the template. The directory
// a failed publish made goes again; a failed bind unmounts what it may have left itself.
async function publishPinned(
  parts: Parts,
  section: PinSection,
  path: string,
  leftoversReplaced: boolean,
): Promise<void> {
  let found = look(parts, section, path);
  if (found === "our bind") {
    // Already published (kubelet retries, driver restarts): never stack a second layer. A bind
    // an earlier driver left is replaced at start (leftovers.ts), or here if that pass failed.
    if (!leftoversReplaced) await rebind(parts, section, path, false);
    return;
  }
  if (found === "directory") found = removeLeftover(section, path);
  if (found === "nothing") createDir(section, path);
  try {
    await parts.template.ensure(section);
    await bindFromTemplate(parts, section, path);
  } catch (error) {
    if (found === "nothing") removeCreated(section, path);
    throw error;
  }
}

// Pins the parent, looks at the target inside it, and pins the target itself when it is there.
function look(parts: Parts, section: PinSection, path: string): Found {
  const target = pinTarget(section, path);
  if (!target.exists()) return "nothing";
  const top = target.enter();
  return parts.isSocketDirBind(top) ? "our bind" : "directory";
}

// A directory at the target that is not our bind: an empty one is removed (to be made anew with
// our mode), a non-empty one is bound over as upstream does, and a mount of anything but the
// socket dir stays exactly as it is (ForeignMountError).
function removeLeftover(section: PinSection, path: string): Found {
  const outcome = pinTarget(section, path).remove();
  if (outcome === "busy") throw new ForeignMountError(path);
  return outcome === "removed" ? "nothing" : "non-empty directory";
}

// Creates the target 0750 inside its pinned parent.
function createDir(section: PinSection, path: string): void {
  const target = pinTarget(section, path);
  try {
    target.create();
  } catch (error) {
    throw internal("unable to create target path", path, error);
  }
}

// Undoes createDir: removes the directory if it is still there and empty.
function removeCreated(section: PinSection, path: string): void {
  try {
    pinTarget(section, path).remove();
  } catch { /* leave it: kubelet removes the directory after a final error */ }
}

// Binds the template onto the pinned target directory and checks it landed there. On failure it
// unmounts what it may have bound: a rename racing the mount may move the directory, and a failed
// bindMount may still have left its bind.
async function bindFromTemplate(parts: Parts, section: PinSection, path: string): Promise<void> {
  const target = pinTarget(section, path).enter();
  let under = path;
  try {
    await parts.mounter.bindMount(parts.template.path, target.mountTarget());
    under = target.locate() ?? path;
    if (under !== path) throw new PinMovedError(path, under);
    const top = pinTarget(section, path).enter();
    if (!parts.isSocketDirBind(top)) throw new Error("the new mount is not at the target path");
  } catch (error) {
    await undoBind(parts, section, path, under);
    throw error;
  }
}

// Replaces our bind on the target (with `all`, every layer of it) by one from the template:
// only a new mount carries new flags to the host. The layers unmounted.
async function rebind(
  parts: Parts,
  section: PinSection,
  path: string,
  all: boolean,
): Promise<number> {
  await parts.template.ensure(section);
  const layers = await unmountOurs(parts, section, path, all ? parts.maxLayers : 1);
  await bindFromTemplate(parts, section, path);
  return layers;
}

// Unpublish: unmounts our binds on the target, removes it, and sweeps the volume dir for strays.
async function unpublish(parts: Parts, parsed: TargetPath, path: string): Promise<void> {
  let removed: boolean;
  try {
    removed = await parts.pins.hold(async (section) => {
      try {
        return await removeTarget(parts, section, path);
      } finally {
        // Best effort: a stray is this driver's leftover, not the client's problem.
        await unmountStrays(parts, section, path).catch(() => {});
      }
    });
  } catch (error) {
    if (error instanceof CsiError || isRefusal(error)) throw error;
    // The parent is gone too (node reboot, kubelet cleaned up): nothing is mounted there.
    if (await missing(error, parsed)) return;
    throw internal("unable to unmount", path, error);
  }
  if (!removed) {
    throw internal(
      "unable to unmount",
      path,
      "the target path is not a mount point and is not empty",
    );
  }
}

// Removes the target, unmounting every layer on it first as long as the pinned top layer is a
// bind of the socket dir; any other mount throws ForeignMountError and stays. rmdir on a mount
// point fails with EBUSY, so each EBUSY means one more layer: no mount table scan and no exec for
// a plain directory. True when the directory is gone (false: not empty, not a mount).
async function removeTarget(parts: Parts, section: PinSection, path: string): Promise<boolean> {
  for (let unmounted = 0;; unmounted++) {
    const target = pinTarget(section, path);
    const outcome = target.remove();
    if (outcome !== "busy") return outcome === "removed";
    if (unmounted >= parts.maxLayers) {
      throw new Error(`still a mount point after ${unmounted} unmounts`);
    }
    const top = target.enter();
    if (!parts.isSocketDirBind(top)) throw new ForeignMountError(path);
    await unmountAside(parts, section, top);
  }
}

// Unmounts up to `most` binds of the socket dir on `at`, pinning it for each; how many.
async function unmountOurs(
  parts: Parts,
  section: PinSection,
  at: string,
  most = parts.maxLayers,
): Promise<number> {
  for (let layers = 0; layers < most; layers++) {
    const top = pinTarget(section, at).enter();
    if (!parts.isSocketDirBind(top)) return layers;
    await unmountAside(parts, section, top);
  }
  return most;
}

// Unmounts the mount `top` stands in; other targets' sections pin while the umount child runs
// (the child holds `top` as its own working directory), so the caller pins again after it.
function unmountAside(parts: Parts, section: PinSection, top: PinnedDir): Promise<void> {
  return section.aside(top, (target) => parts.mounter.unmount(target));
}

// Binds of the socket dir on other directories beside the target: kubelet keeps only the target
// there, so they are strays (a rename that raced the mount syscall can move a directory the
// kernel is mounting on).
async function unmountStrays(parts: Parts, section: PinSection, path: string): Promise<void> {
  for (const stray of pinTarget(section, path).strays()) {
    await unmountOurs(parts, section, stray);
  }
}

// Unmounts the bind a failed publish made, where the directory under it was found after the
// bind, at the target, and beside it. A few tries: the racer may still be renaming.
async function undoBind(
  parts: Parts,
  section: PinSection,
  path: string,
  under: string,
): Promise<void> {
  const places = [
    () => under === path ? Promise.resolve(0) : unmountOurs(parts, section, under),
    () => unmountOurs(parts, section, path),
    () => unmountStrays(parts, section, path),
  ];
  for (const place of places) {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await place();
        break;
      } catch { /* moved again: try again; README → Security says what may stay */ }
    }
  }
}

// Stats: whether the target is our bind, then the socket dir's health.
async function volumeStats(
  parts: Parts,
  parsed: TargetPath,
  path: string,
): Promise<NodeGetVolumeStatsResponse> {
  let found: Found;
  try {
    found = await parts.pins.hold((section) => look(parts, section, path));
  } catch (error) {
    if (!(await missing(error, parsed))) throw error;
    found = "nothing";
  }
  if (found === "nothing") {
    throw new CsiError(Code.NOT_FOUND, `volume path ${quote(path)} does not exist`);
  }
  // kubelet logs "usage is nil" without usage entries; a bind of a socket dir has no capacity.
  const usage = (inodes: number): NodeGetVolumeStatsResponse["usage"] => [
    { unit: "BYTES", available: "0", total: "0", used: "0" },
    { unit: "INODES", available: "0", total: String(inodes), used: String(inodes) },
  ];
  if (found !== "our bind") {
    const message = `volume path is not a mount of the Workload API socket directory ${
      quote(parts.socketDir)
    }`;
    return { usage: usage(0), volume_condition: { abnormal: true, message } };
  }
  // The pin proved the target is the socket dir itself: inspect it there (Deno allows unix
  // sockets by exact path, and the target's path could be swapped meanwhile).
  const health = await inspectSocketDir(parts.socketDir, parts.health);
  return {
    usage: usage(health.entries),
    volume_condition: { abnormal: !health.healthy, message: health.message },
  };
}

// A directory missing on the way to the target: a symlink that leads nowhere is the client's
// path at fault (InvalidArgument), anything else is as it was. Checked only after a failure.
async function missing(error: unknown, parsed: TargetPath): Promise<boolean> {
  if (!(error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory)) {
    return false;
  }
  await assertNoSymlinks(parsed);
  return true;
}

/** Internal: what failed on `path`, and why (kept as the cause for the log). */
function internal(what: string, path: string, error: unknown): CsiError {
  return new CsiError(Code.INTERNAL, `${what} ${quote(path)}: ${errorMessage(error)}`, {
    cause: error,
  });
}

/** A refusal of the mount layer: the target itself is the problem, not the system. */
function isRefusal(error: unknown): boolean {
  return error instanceof TargetPathError || error instanceof PinMovedError ||
    error instanceof ForeignMountError;
}

// Runs a handler's work on `path`, turning the mount layer's refusals into CSI errors: the one
// place they become CSI errors. A path of the wrong shape or through a symlink, and a pin that
// moved (a rename while in use), are the client's path at fault; a mount that is not ours is
// left alone and said so. Anything else is as it was.
async function onTarget<T>(path: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof TargetPathError) throw invalidArgument(error.message);
    if (error instanceof ForeignMountError) {
      throw new CsiError(
        Code.FAILED_PRECONDITION,
        `target path ${
          quote(path)
        } holds a mount that is not the Workload API socket directory: leaving it`,
      );
    }
    if (!(error instanceof PinMovedError)) throw error;
    const how = error.actual === undefined
      ? "changed while in use"
      : `resolves through a symlink (to ${quote(error.actual)})`;
    throw invalidArgument(`target path ${quote(path)} ${how}`);
  }
}

/** Runs each `work` after every earlier one under the same key has settled; other keys overlap. */
function queuePerKey(): <T>(key: string, work: () => Promise<T>) => Promise<T> {
  const tails = new Map<string, Promise<void>>();
  return (key, work) => {
    const result = (tails.get(key) ?? Promise.resolve()).then(work);
    const tail = result.then(() => {}, () => {});
    tails.set(key, tail);
    tail.then(() => tails.get(key) === tail && tails.delete(key));
    return result;
  };
}

/** `promise`, or `fallback` once `ms` passed without it settling. */
function within<T>(promise: Promise<T>, ms: number, fallback: T): Promise<T> {
  const late = Promise.withResolvers<T>();
  const timer = setTimeout(() => late.resolve(fallback), ms);
  return Promise.race([promise, late.promise]).finally(() => clearTimeout(timer));
}
