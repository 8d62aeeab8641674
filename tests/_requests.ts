/** Kubelet-shaped CSI requests: plain data, for unit tests and for the gRPC suites alike. */

/** A kubelet-shaped publish request for an inline volume (override any field). */
export function publishRequest(
  targetPath: string,
  overrides: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    volume_id: "csi-0123456789abcdef",
    target_path: targetPath,
    volume_capability: {
      mount: { fs_type: "", mount_flags: [] },
      access_mode: { mode: "SINGLE_NODE_WRITER" },
    },
    readonly: true,
    volume_context: { "csi.storage.k8s.io/ephemeral": "true" },
    ...overrides,
  };
}
