/**
 * A fake kubelet that drives the driver's Node service the way kubelet's CSI volume plugin does for
 * an inline (ephemeral) volume: the same call sequence, paths, request fields, files and retry rule.
 */
import { createHash } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { type CallResult, CsiClient } from "./_csi_client.ts";
import { withoutTrailingSlash } from "../lib/config/flags.ts";

/** A pod, as far as its CSI volumes are concerned. */
export interface Pod {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
}

/** Options for FakeKubelet. */
export interface KubeletOptions {
  /** Kubelet's root directory (`--root-dir`). */
  kubeletDir: string;
  /** The driver's CSI socket (the endpoint it registered). */
  csiSocketPath: string;
  /** The CSIDriver name. Default `csi.spiffe.io`. */
  driverName?: string;
  /** The node's name. Default `test-node`. */
  nodeName?: string;
}

/** Publish error codes kubelet treats as "uncertain": it will call NodeUnpublishVolume later anyway. */
export const UNCERTAIN_CODES: readonly number[] = [
  grpc.status.CANCELLED,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.UNAVAILABLE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.ABORTED,
];

/** What kubelet believes about a volume it has tried to set up. */
export type VolumeState = "mounted" | "uncertain";

/** How one mount attempt ended. */
export interface PublishOutcome {
  target: string;
  volumeId: string;
  /** NodeGetCapabilities' outcome (kubelet calls it before every publish). */
  capabilities: CallResult;
  /** NodePublishVolume's outcome (absent when NodeGetCapabilities failed). */
  result?: CallResult;
  /** What kubelet now believes, or undefined when it forgot the volume (final error). */
  state: VolumeState | undefined;
}

/** Kubelet's RPC timeout for CSI node calls. */
const CSI_TIMEOUT_MS = 120_000;

/** The fake kubelet: publish and teardown of inline CSI volumes, one connection per operation. */
export class FakeKubelet {
  readonly kubeletDir: string;
  readonly csiSocketPath: string;
  readonly driverName: string;
  readonly nodeName: string;
  readonly #volumes = new Map<string, { volumeId: string; state: VolumeState }>();

  constructor(options: KubeletOptions) {
    this.kubeletDir = withoutTrailingSlash(options.kubeletDir);
    this.csiSocketPath = options.csiSocketPath;
    this.driverName = options.driverName ?? "csi.spiffe.io";
    this.nodeName = options.nodeName ?? "test-node";
  }

  /** The volume handle kubelet makes for an inline volume: `csi-` + hex(sha256(podUID + volumeName)). */
  volumeId(podUid: string, volumeName: string): string {
    return `csi-${sha256(podUid + volumeName)}`;
  }

  /** The volume's directory (the target's parent, holding vol_data.json). */
  volumeDir(podUid: string, volumeName: string): string {
    return `${this.kubeletDir}/pods/${podUid}/volumes/kubernetes.io~csi/${volumeName}`;
  }

  /** The publish target: `<root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`. */
  targetPath(podUid: string, volumeName: string): string {
    return `${this.volumeDir(podUid, volumeName)}/mount`;
  }

  /** What kubelet believes about this volume (undefined: nothing to tear down). */
  state(pod: Pod, volumeName: string): VolumeState | undefined {
    return this.#volumes.get(this.targetPath(pod.uid, volumeName))?.state;
  }

  /**
   * Sets up the volume as kubelet's SetUpAt does: NodeGetCapabilities; the parent dir (0750) and
   * vol_data.json; NodePublishVolume. On a final error it removes what it made; on an uncertain one
   * it keeps them and remembers to unpublish.
   */
  async publish(
    pod: Pod,
    volumeName: string,
    options: { deadlineMs?: number; attributes?: Record<string, string> } = {},
  ): Promise<PublishOutcome> {
    const volumeId = this.volumeId(pod.uid, volumeName);
    const dir = this.volumeDir(pod.uid, volumeName);
    const target = `${dir}/mount`;
    const known = this.#volumes.get(target);
    const client = new CsiClient(this.csiSocketPath);
    try {
      const capabilities = await client.call("NodeGetCapabilities", {}, CSI_TIMEOUT_MS);
      if (!capabilities.ok) {
        return { target, volumeId, capabilities, state: known?.state };
      }
      await Deno.mkdir(dir, { recursive: true, mode: 0o750 });
      await Deno.chmod(dir, 0o750);
      await Deno.writeTextFile(
        `${dir}/vol_data.json`,
        JSON.stringify({
          attachmentID: `csi-${sha256(volumeId + this.driverName + this.nodeName)}`,
          driverName: this.driverName,
          nodeName: this.nodeName,
          specVolID: volumeName,
          volumeHandle: volumeId,
          volumeLifecycleMode: "Ephemeral",
        }),
      );
      const result = await client.call(
        "NodePublishVolume",
        {
          volume_id: volumeId,
          target_path: target,
          volume_capability: {
            mount: { fs_type: "", mount_flags: [] },
            access_mode: { mode: "SINGLE_NODE_WRITER" },
          },
          readonly: true,
          secrets: {},
          volume_context: {
            ...options.attributes,
            "csi.storage.k8s.io/pod.name": pod.name,
            "csi.storage.k8s.io/pod.namespace": pod.namespace,
            "csi.storage.k8s.io/pod.uid": pod.uid,
            "csi.storage.k8s.io/serviceAccount.name": pod.serviceAccount,
            "csi.storage.k8s.io/ephemeral": "true",
          },
        },
        options.deadlineMs ?? CSI_TIMEOUT_MS,
      );
      let state: VolumeState | undefined;
      if (result.ok) {
        state = "mounted";
      } else if (UNCERTAIN_CODES.includes(result.code)) {
        state = known?.state ?? "uncertain";
      } else {
        state = known?.state;
        if (state === undefined) await removeVolumeDir(dir);
      }
      if (state === undefined) this.#volumes.delete(target);
      else this.#volumes.set(target, { volumeId, state });
      return { target, volumeId, capabilities, result, state };
    } finally {
      client.close();
    }
  }

  /**
   * Tears the volume down as kubelet's TearDownAt does: NodeUnpublishVolume, then removes the mount
   * dir (never a mount point), vol_data.json and the parent. On an error it keeps everything (the
   * pod stays Terminating) so the caller can retry.
   */
  async teardown(pod: Pod, volumeName: string): Promise<CallResult> {
    const target = this.targetPath(pod.uid, volumeName);
    const known = this.#volumes.get(target);
    if (!known) throw new Error(`kubelet has no volume ${volumeName} for pod ${pod.uid}`);
    const client = new CsiClient(this.csiSocketPath);
    let result: CallResult;
    try {
      result = await client.call(
        "NodeUnpublishVolume",
        { volume_id: known.volumeId, target_path: target },
        CSI_TIMEOUT_MS,
      );
    } finally {
      client.close();
    }
    if (result.ok) {
      await removeVolumeDir(this.volumeDir(pod.uid, volumeName));
      this.#volumes.delete(target);
    }
    return result;
  }
}

// kubelet's removeMountDir: the mount dir only if it is not a mount point, then vol_data.json and
// the volume dir.
async function removeVolumeDir(dir: string): Promise<void> {
  try {
    await Deno.remove(`${dir}/mount`);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new Error(`kubelet cannot remove ${dir}/mount: ${String(error)}`, { cause: error });
    }
  }
  await Deno.remove(`${dir}/vol_data.json`).catch(() => {});
  await Deno.remove(dir);
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}
