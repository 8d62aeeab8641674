/** CSI Node service: plain async handlers that know nothing of gRPC. */
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
import { ForeignMountError, pinnedIs, PinnedTarget } from "../mount/pinned_target.ts";
import type { Template } from "../mount/template.ts";
import { type DirPin, type Pin, PinMovedError } from "../mount/dir_pin.ts";
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
  isSocketDirBind?: (pin: Pin) => boolean;
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

/** `promise`, or `fallback` once `ms` passed without it settling. */
function within<T>(promise: Promise<T>, ms: number, fallback: T): Promise<T> {
  const late = Promise.withResolvers<T>();
  const timer = setTimeout(() => late.resolve(fallback), ms);
  return Promise.race([promise, late.promise]).finally(() => clearTimeout(timer));
}

/** A refusal of the mount layer: the target itself is the problem, not the system. */
function isRefusal(error: unknown): boolean {
  return error instanceof TargetPathError || error instanceof PinMovedError ||
    error instanceof ForeignMountError;
}

function isNotFound(error: unknown): boolean {
  return error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory;
}

/** Steps that undo what a publish did so far, run newest first when a later step fails. */
type Undo = (() => Promise<void> | void)[];

/** Creates the Node service. */
export function createNodeService(options: NodeOptions): NodeService {
  const { socketDir, kubeletDir, mounter, pins, template } = options;
  const maxLayers = options.maxLayers ?? 10_000;
  const isSocketDirBind = options.isSocketDirBind ?? ((pin: Pin) => pinnedIs(pin, socketDir));
  // A publish waits for the start-up pass before it takes the pin (the pass needs the pin too),
  // at most PASS_WAIT_MS; after that it replaces a leftover bind itself.
  const leftoversReplaced = options.leftoversReplaced
    ? within(options.leftoversReplaced, PASS_WAIT_MS, false)
    : Promise.resolve(false);
  const unsupported = (name: string) => () =>
    Promise.reject(new CsiError(Code.UNIMPLEMENTED, `${name} is not supported by this driver`));

  // The one place the mount layer's refusals become CSI errors: a path of the wrong shape or
  // through a symlink, and a pin that moved (a rename while in use), are the client's path at
  // fault; a mount that is not ours is left alone and said so. Anything else is as it was.
  function toCsiError(error: unknown, path: string): unknown {
    if (error instanceof TargetPathError) return invalidArgument(error.message);
    if (error instanceof ForeignMountError) {
      return new CsiError(
        Code.FAILED_PRECONDITION,
        `target path ${
          quote(path)
        } holds a mount that is not the Workload API socket directory: leaving it`,
      );
    }
    if (!(error instanceof PinMovedError)) return error;
    const how = error.actual === undefined
      ? "changed while in use"
      : `resolves through a symlink (to ${quote(error.actual)})`;
    return invalidArgument(`target path ${quote(path)} ${how}`);
  }

  // With the pin held: publish `target`, in the steps README → Security lists. Each step that
  // leaves something behind registers its undo right after it; a failure runs them newest first.
  async function publishPinned(
    pin: Pin,
    target: PinnedTarget,
    leftoversReplaced: boolean,
  ): Promise<Empty> {
    const undo: Undo = [];
    try {
      if (target.exists(pin)) {
        target.enter(pin);
        // Already published (kubelet retries, driver restarts): never stack a second layer.
        if (isSocketDirBind(pin)) return await republish(pin, target, leftoversReplaced);
        if (removeLeftoverDir(pin, target)) createDir(pin, target, undo);
      } else {
        createDir(pin, target, undo);
      }
      await template.ensure(pin);
      await bindFromTemplate(pin, target, undo);
      return {};
    } catch (error) {
      for (const step of undo.reverse()) await step();
      if (error instanceof CsiError || isRefusal(error) || isNotFound(error)) throw error;
      throw new CsiError(
        Code.INTERNAL,
        `unable to mount ${quote(target.path)}: ${errorMessage(error)}`,
        { cause: error },
      );
    }
  }

  // Creates the target inside the pinned parent; its undo removes it again if still empty.
  function createDir(pin: Pin, target: PinnedTarget, undo: Undo): void {
    pin.at(target.parent);
    try {
      target.create(pin);
    } catch (error) {
      throw new CsiError(
        Code.INTERNAL,
        `unable to create target path ${quote(target.path)}: ${errorMessage(error)}`,
      );
    }
    undo.push(() => removeCreated(pin, target));
  }

  // Removes the directory a failed publish created, if it is still there and empty.
  function removeCreated(pin: Pin, target: PinnedTarget): void {
    try {
      if (target.exists(pin)) target.remove(pin);
    } catch { /* leave it: kubelet removes the directory after a final error */ }
  }

  // A directory at the target that is not our bind: an empty one is removed (true: make it anew
  // with our mode), a non-empty one is bound over as upstream does, and a mount of anything but
  // the socket dir stays exactly as it is (ForeignMountError).
  function removeLeftoverDir(pin: Pin, target: PinnedTarget): boolean {
    pin.at(target.parent);
    const outcome = target.remove(pin);
    if (outcome === "busy") throw new ForeignMountError(target.path);
    return outcome === "removed";
  }

  // Binds the template onto the pinned target directory and checks it landed there. The undo is
  // registered first: a rename racing the mount may move the directory, and a failed bindMount
  // may still have left its bind.
  async function bindFromTemplate(
    pin: Pin,
    target: PinnedTarget,
    undo: Undo,
  ): Promise<void> {
    target.enter(pin);
    let under = target.path;
    undo.push(() => undoBind(pin, target, under));
    await mounter.bindMount(template.path, target.mountTarget(pin));
    under = pin.locate() ?? target.path;
    if (under !== target.path) throw new PinMovedError(target.path, under);
    target.enter(pin);
    if (!isSocketDirBind(pin)) throw new Error("the new mount is not at the target path");
  }

  // With the pin on our bind at the target. Every bind this process makes comes from the
  // template; one an earlier driver left is replaced at start (leftovers.ts), or here if that
  // pass failed.
  async function republish(
    pin: Pin,
    target: PinnedTarget,
    leftoversReplaced: boolean,
  ): Promise<Empty> {
    if (!leftoversReplaced) await rebind(pin, target, false);
    return {};
  }

  // Replaces our bind on the target (with `all`, every layer of it) by one from the template:
  // only a new mount carries new flags to the host. The layers unmounted.
  async function rebind(pin: Pin, target: PinnedTarget, all: boolean): Promise<number> {
    await template.ensure(pin);
    let layers = 0;
    do {
      target.enter(pin);
      if (!isSocketDirBind(pin)) break;
      await mounter.unmount(target.mountTarget(pin));
      layers++;
    } while (all && layers < maxLayers);
    const undo: Undo = [];
    try {
      await bindFromTemplate(pin, target, undo);
    } catch (error) {
      for (const step of undo.reverse()) await step();
      throw error;
    }
    return layers;
  }

  // Unmounts the socket dir binds on `at`, pinning it for each.
  async function unmountOurs(pin: Pin, at: PinnedTarget): Promise<void> {
    for (let layers = 0; layers < maxLayers; layers++) {
      at.enter(pin);
      if (!isSocketDirBind(pin)) return;
      await mounter.unmount(at.mountTarget(pin));
    }
  }

  // Binds of the socket dir on other directories beside the target: kubelet keeps only the target
  // there, so they are strays (a rename that raced the mount syscall can move a directory the
  // kernel is mounting on).
  async function unmountStrays(pin: Pin, target: PinnedTarget): Promise<void> {
    for (const name of target.strays(pin)) {
      await unmountOurs(pin, new PinnedTarget(`${target.parent}/${name}`));
    }
  }

  /**
   * Unmounts the bind a failed publish made, where the directory under it was found after the
   * bind, at the target, and beside it. A few tries: the racer may still be renaming.
   */
  async function undoBind(pin: Pin, target: PinnedTarget, bound: string): Promise<void> {
    const steps = [
      () => bound === target.path ? Promise.resolve() : unmountOurs(pin, new PinnedTarget(bound)),
      () => unmountOurs(pin, target),
      () => unmountStrays(pin, target),
    ];
    for (const step of steps) {
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          await step();
          break;
        } catch { /* moved again: try again; README → Security says what may stay */ }
      }
    }
  }

  // A directory missing on the way to the target: a symlink that leads nowhere is the client's
  // path at fault (InvalidArgument), anything else is as it was. Checked only after a failure.
  async function missing(error: unknown, parsed: TargetPath): Promise<boolean> {
    if (!isNotFound(error)) return false;
    await assertNoSymlinks(parsed);
    return true;
  }

  async function publish(parsed: TargetPath, path: string): Promise<Empty> {
    const target = new PinnedTarget(path);
    const replaced = await leftoversReplaced;
    try {
      return await pins.hold((pin) => publishPinned(pin, target, replaced));
    } catch (error) {
      if (await missing(error, parsed)) {
        throw new CsiError(
          Code.INTERNAL,
          `unable to create target path ${quote(path)}: ${errorMessage(error)}`,
        );
      }
      throw error;
    }
  }

  async function unpublish(parsed: TargetPath, path: string): Promise<Empty> {
    const target = new PinnedTarget(path);
    try {
      const removed = await pins.hold(async (pin) => {
        try {
          return await target.clear(
            pin,
            (t) => mounter.unmount(t),
            maxLayers,
            isSocketDirBind,
          );
        } finally {
          // Best effort: a stray is this driver's leftover, not the client's problem.
          await unmountStrays(pin, target).catch(() => {});
        }
      });
      if (!removed) {
        throw new Error("the target path is not a mount point and is not empty");
      }
      return {};
    } catch (error) {
      if (error instanceof CsiError || isRefusal(error)) throw error;
      // The parent is gone too (node reboot, kubelet cleaned up): nothing is mounted there.
      if (await missing(error, parsed)) return {};
      throw new CsiError(
        Code.INTERNAL,
        `unable to unmount ${quote(path)}: ${errorMessage(error)}`,
        { cause: error },
      );
    }
  }

  async function volumeStats(
    parsed: TargetPath,
    target: PinnedTarget,
  ): Promise<NodeGetVolumeStatsResponse> {
    let found: { isBind: boolean } | null;
    try {
      found = await pins.hold((pin) => {
        if (!target.exists(pin)) return null;
        target.enter(pin);
        return { isBind: isSocketDirBind(pin) };
      });
    } catch (error) {
      if (!(await missing(error, parsed))) throw error;
      found = null;
    }
    if (found === null) {
      throw new CsiError(Code.NOT_FOUND, `volume path ${quote(target.path)} does not exist`);
    }
    // kubelet logs "usage is nil" without usage entries; a bind of a socket dir has no capacity.
    const usage = (inodes: number): NodeGetVolumeStatsResponse["usage"] => [
      { unit: "BYTES", available: "0", total: "0", used: "0" },
      { unit: "INODES", available: "0", total: String(inodes), used: String(inodes) },
    ];
    if (!found.isBind) {
      const message = `volume path is not a mount of the Workload API socket directory ${
        quote(socketDir)
      }`;
      return { usage: usage(0), volume_condition: { abnormal: true, message } };
    }
    // The pin proved the target is the socket dir itself: inspect it there (Deno allows unix
    // sockets by exact path, and the target's path could be swapped meanwhile).
    const health = await inspectSocketDir(socketDir, {
      timeoutMs: options.socketTimeoutMs ?? 1000,
      names: options.socketNames,
    });
    return {
      usage: usage(health.entries),
      volume_condition: { abnormal: !health.healthy, message: health.message },
    };
  }

  // Runs a handler's work on `path`, turning the mount layer's refusals into CSI errors.
  async function onTarget<T>(path: string, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      throw toCsiError(error, path);
    }
  }

  return {
    async NodePublishVolume(request) {
      validatePublish(request);
      const path = request.target_path as string;
      return await onTarget(path, () => {
        const target = parseTargetPath(path, kubeletDir, request.volume_context?.[POD_UID_KEY]);
        return publish(target, path);
      });
    },

    async NodeUnpublishVolume(request) {
      if (!request.volume_id) throw invalidArgument("request missing required volume id");
      if (!request.target_path) throw invalidArgument("request missing required target path");
      const path = request.target_path;
      return await onTarget(path, () => unpublish(parseTargetPath(path, kubeletDir), path));
    },

    async NodeGetVolumeStats(request) {
      if (!request.volume_id) throw invalidArgument("request missing required volume id");
      if (!request.volume_path) throw invalidArgument("request missing required volume path");
      const path = request.volume_path;
      let target: TargetPath;
      try {
        target = parseTargetPath(path, kubeletDir);
      } catch {
        throw new CsiError(
          Code.NOT_FOUND,
          `volume path ${quote(path)} is not a volume of this driver`,
        );
      }
      return await onTarget(path, () => volumeStats(target, new PinnedTarget(path)));
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
      const target = new PinnedTarget(path);
      return pins.hold(async (pin) => {
        target.enter(pin);
        return isSocketDirBind(pin) ? await rebind(pin, target, all) : undefined;
      });
    },

    NodeStageVolume: unsupported("NodeStageVolume"),
    NodeUnstageVolume: unsupported("NodeUnstageVolume"),
    NodeExpandVolume: unsupported("NodeExpandVolume"),
  };
}
