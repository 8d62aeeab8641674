/** The benchmark's CSI client: Probe, publish and unpublish, as kubelet sends them. */
import * as grpc from "@grpc/grpc-js";
import { loadCsi } from "../lib/proto.ts";

/** What kubelet sends to publish an inline (ephemeral) volume, but the target path. */
const INLINE_VOLUME = {
  volume_id: "csi-0123456789abcdef",
  volume_capability: {
    mount: { fs_type: "", mount_flags: [] },
    access_mode: { mode: "SINGLE_NODE_WRITER" },
  },
  readonly: true,
  volume_context: { "csi.storage.k8s.io/ephemeral": "true" },
};

type Unary = (
  request: unknown,
  options: grpc.CallOptions,
  done: (error: grpc.ServiceError | null) => void,
) => void;

/** A CSI client on one Unix socket: Identity and Node share one HTTP/2 connection, as kubelet's. */
export class CsiClient {
  readonly #identity: grpc.Client;
  readonly #node: grpc.Client;

  constructor(socketPath: string) {
    const { Identity, Node } = loadCsi();
    const target = `unix:${socketPath}`;
    const insecure = grpc.credentials.createInsecure();
    this.#identity = new Identity(target, insecure);
    this.#node = new Node(target, insecure, { channelOverride: this.#identity.getChannel() });
  }

  /** Whether the driver answers Probe with OK within `deadlineMs`. */
  async probe(deadlineMs: number): Promise<boolean> {
    return await this.#send(this.#identity, "Probe", {}, deadlineMs) === null;
  }

  /** NodePublishVolume of the inline volume at `target`; throws unless it succeeds. */
  publish(target: string): Promise<void> {
    return this.#expectOk("NodePublishVolume", { ...INLINE_VOLUME, target_path: target });
  }

  /** NodeUnpublishVolume at `target`; throws unless it succeeds. */
  unpublish(target: string): Promise<void> {
    return this.#expectOk("NodeUnpublishVolume", { volume_id: "v", target_path: target });
  }

  /** Closes the connection. */
  close(): void {
    this.#node.close();
    this.#identity.close();
  }

  async #expectOk(method: string, request: unknown): Promise<void> {
    const error = await this.#send(this.#node, method, request, 30_000);
    if (error) throw new Error(`${method} failed: ${grpc.status[error.code]}: ${error.details}`);
  }

  // Resolves with the call's gRPC error, or null for OK.
  #send(
    client: grpc.Client,
    method: string,
    request: unknown,
    deadlineMs: number,
  ): Promise<grpc.ServiceError | null> {
    const unary = (client as unknown as Record<string, Unary>)[method];
    if (unary === undefined) throw new TypeError(`no such CSI method: ${method}`);
    return new Promise((resolve) => {
      unary.call(client, request, { deadline: Date.now() + deadlineMs }, (error) => resolve(error));
    });
  }
}
