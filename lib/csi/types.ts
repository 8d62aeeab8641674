/**
 * The CSI messages the handlers read and write, as proto-loader decodes them
 * (keepCase, enums as strings, defaults filled in, oneof names set, int64 as strings).
 */

/** A string map field. */
export type StringMap = Record<string, string>;

/** VolumeCapability.AccessMode.Mode names. */
export type AccessModeName =
  | "UNKNOWN"
  | "SINGLE_NODE_WRITER"
  | "SINGLE_NODE_READER_ONLY"
  | "MULTI_NODE_READER_ONLY"
  | "MULTI_NODE_SINGLE_WRITER"
  | "MULTI_NODE_MULTI_WRITER"
  | "SINGLE_NODE_SINGLE_WRITER"
  | "SINGLE_NODE_MULTI_WRITER";

/** csi.v1.VolumeCapability. */
export interface VolumeCapability {
  block?: Record<string, never> | null;
  mount?: { fs_type?: string; mount_flags?: string[]; volume_mount_group?: string } | null;
  access_mode?: { mode?: AccessModeName | number } | null;
  access_type?: "block" | "mount" | null;
}

/** csi.v1.NodePublishVolumeRequest. */
export interface NodePublishVolumeRequest {
  volume_id?: string;
  target_path?: string;
  staging_target_path?: string;
  volume_capability?: VolumeCapability | null;
  readonly?: boolean;
  secrets?: StringMap;
  volume_context?: StringMap;
  publish_context?: StringMap;
}

/** csi.v1.NodeUnpublishVolumeRequest. */
export interface NodeUnpublishVolumeRequest {
  volume_id?: string;
  target_path?: string;
}

/** csi.v1.NodeGetVolumeStatsRequest. */
export interface NodeGetVolumeStatsRequest {
  volume_id?: string;
  volume_path?: string;
  staging_target_path?: string;
}

/** csi.v1.VolumeUsage. */
export interface VolumeUsage {
  available: string;
  total: string;
  used: string;
  unit: "UNKNOWN" | "BYTES" | "INODES";
}

/** csi.v1.NodeGetVolumeStatsResponse. */
export interface NodeGetVolumeStatsResponse {
  usage: VolumeUsage[];
  volume_condition: { abnormal: boolean; message: string };
}

/** csi.v1.NodeGetInfoResponse. */
export interface NodeGetInfoResponse {
  node_id: string;
  max_volumes_per_node: string;
}

/** csi.v1.NodeGetCapabilitiesResponse. */
export interface NodeGetCapabilitiesResponse {
  capabilities: { rpc: { type: string } }[];
}

/** csi.v1.GetPluginInfoResponse. */
export interface GetPluginInfoResponse {
  name: string;
  vendor_version: string;
}

/** csi.v1.ProbeResponse. */
export interface ProbeResponse {
  ready: { value: boolean };
}

/** An empty message. */
export type Empty = Record<string, never>;
