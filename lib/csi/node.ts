/** CSI Node service: plain async handlers that know nothing of gRPC. */
import { Code, CsiError, errorMessage, invalidArgument } from "./errors.ts";
import type {
  Empty,
  NodeGetCapabilitiesResponse,
  NodeGetInfoResponse,
  NodeGetVolumeStatsRequest,
  NodeGetVolumeStatsResponse,
  NodePublishVolumeRequest,
  NodeUnpublishVolumeRequest,
} from "./types.ts";
import type { Mounter } from "../mount.ts";
import { KeyedLock } from "../keyed_lock.ts";
import { assertNoSymlinks, parseTargetPath, quote, type TargetPath } from "../target_path.ts";
import { sameFile, unmountAndRemove } from "../fs_util.ts";
import { lstatOrNull, PinnedTarget } from "../pinned_target.ts";
import { inspectSocketDir } from "../socket_dir.ts";

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
  /** Most layers one unpublish removes before it gives up (kubelet retries). Default 10,000. */
  maxLayers?: number;
  /** Workload API socket names that volume health checks may connect to. */
  socketNames: string[];
  /** How long a stats check waits for a Workload API socket to accept. Default 1 s. */
  socketTimeoutMs?: number;
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
}

/** Creates the target directory 0750 (relative to the pinned parent); false when it already exists. */
function makeTargetDir(name: string): boolean {
  try {
    Deno.mkdirSync(name, { mode: 0o750 });
  } catch (error) {
    if (error instanceof Deno.errors.AlreadyExists) return false;
    throw error;
  }
  Deno.chmodSync(name, 0o750);
  return true;
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

/** Creates the Node service. */
export function createNodeService(options: NodeOptions): NodeService {
  const { socketDir, kubeletDir, mounter } = options;
  const maxLayers = options.maxLayers ?? 10_000;
  const locks = new KeyedLock();
  const unsupported = (name: string) => () =>
    Promise.reject(new CsiError(Code.UNIMPLEMENTED, `${name} is not supported by this driver`));

  async function publish(target: TargetPath, path: string): Promise<Empty> {
    await assertNoSymlinks(target);
    const pinned = new PinnedTarget(path);
    let created: boolean;
    try {
      created = pinned.run(makeTargetDir);
    } catch (error) {
      if (error instanceof CsiError) throw error;
      throw new CsiError(
        Code.INTERNAL,
        `unable to create target path ${quote(path)}: ${errorMessage(error)}`,
      );
    }
    let attempted = false;
    let mounted = false;
    try {
      if (!created) {
        // Already published (kubelet retries, driver restarts): never stack a second layer, but
        // harden again: a driver killed between the bind and the hardening left it without flags.
        if (pinned.run((name) => sameFile(name, socketDir))) {
          await mounter.harden(pinned);
          return {};
        }
        // A stale layer (e.g. of a socket dir that was since replaced): clear it, start clean.
        const cleared = await unmountAndRemove(pinned, (t) => mounter.unmount(t), maxLayers);
        if (cleared.removed) created = pinned.run(makeTargetDir);
      }
      attempted = true;
      await mounter.bindMount(socketDir, pinned);
      mounted = true;
      if (!pinned.run((name) => sameFile(name, socketDir))) {
        throw new Error("the new mount is not at the target path");
      }
      return {};
    } catch (error) {
      // A failed bindMount may still have left its bind (e.g. the hardening step failed).
      const isBind = () => {
        try {
          return pinned.run((name) => sameFile(name, socketDir));
        } catch {
          return false;
        }
      };
      if (mounted || (attempted && isBind())) await mounter.unmount(pinned).catch(() => {});
      if (created) {
        try {
          pinned.run((name) => Deno.removeSync(name));
        } catch { /* leave it: kubelet removes the directory after a final error */ }
      }
      if (error instanceof CsiError) throw error;
      throw new CsiError(
        Code.INTERNAL,
        `unable to mount ${quote(path)}: ${errorMessage(error)}`,
        { cause: error },
      );
    }
  }

  async function unpublish(target: TargetPath, path: string): Promise<Empty> {
    await assertNoSymlinks(target);
    const pinned = new PinnedTarget(path);
    try {
      const result = await unmountAndRemove(pinned, (t) => mounter.unmount(t), maxLayers);
      if (!result.removed) {
        throw new Error("the target path is not a mount point and is not empty");
      }
      return {};
    } catch (error) {
      if (error instanceof CsiError) throw error;
      // The parent is gone too (node reboot, kubelet cleaned up): nothing is mounted there.
      if (error instanceof Deno.errors.NotFound) return {};
      throw new CsiError(
        Code.INTERNAL,
        `unable to unmount ${quote(path)}: ${errorMessage(error)}`,
        { cause: error },
      );
    }
  }

  async function volumeStats(target: PinnedTarget): Promise<NodeGetVolumeStatsResponse> {
    let found: { isBind: boolean } | null;
    try {
      found = target.run((name) =>
        lstatOrNull(name) === null ? null : { isBind: sameFile(name, socketDir) }
      );
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
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
    // List through the target (what the pod sees); connect through the socket dir, which the
    // identity check above proved is the same directory (Deno allows unix sockets by exact path).
    const health = await inspectSocketDir(target.path, {
      timeoutMs: options.socketTimeoutMs ?? 1000,
      names: options.socketNames,
      connectDir: socketDir,
    });
    return {
      usage: usage(health.entries),
      volume_condition: { abnormal: !health.healthy, message: health.message },
    };
  }

  return {
    async NodePublishVolume(request) {
      validatePublish(request);
      const path = request.target_path as string;
      const target = parseTargetPath(path, kubeletDir, request.volume_context?.[POD_UID_KEY]);
      return await locks.run(path, () => publish(target, path));
    },

    async NodeUnpublishVolume(request) {
      if (!request.volume_id) throw invalidArgument("request missing required volume id");
      if (!request.target_path) throw invalidArgument("request missing required target path");
      const path = request.target_path;
      const target = parseTargetPath(path, kubeletDir);
      return await locks.run(path, () => unpublish(target, path));
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
      await assertNoSymlinks(target);
      return await volumeStats(new PinnedTarget(path));
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

    NodeStageVolume: unsupported("NodeStageVolume"),
    NodeUnstageVolume: unsupported("NodeUnstageVolume"),
    NodeExpandVolume: unsupported("NodeExpandVolume"),
  };
}
