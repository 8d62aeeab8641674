/** A grpc-js CSI client for tests, built from the same embedded proto as the driver. */
import * as grpc from "@grpc/grpc-js";
import { loadCsi } from "../lib/proto.ts";

export { publishRequest } from "./_requests.ts";

/** A unary call's outcome: the response, or the gRPC error. */
export type CallResult<T = Record<string, unknown>> =
  | { ok: true; response: T }
  | { ok: false; code: number; details: string };

/** A CSI client bound to one Unix socket (one HTTP/2 connection per client, as kubelet). */
export class CsiClient {
  readonly identity: grpc.Client;
  readonly node: grpc.Client;

  constructor(socketPath: string, options: grpc.ClientOptions = {}) {
    const csi = loadCsi();
    const target = `unix:${socketPath}`;
    const credentials = grpc.credentials.createInsecure();
    this.identity = new csi.Identity(target, credentials, options);
    // Share one channel between both services.
    this.node = new csi.Node(target, credentials, {
      ...options,
      channelOverride: this.identity.getChannel(),
    });
  }

  /** Calls `method` on the Identity or Node service and never throws for a gRPC status. */
  call<T = Record<string, unknown>>(
    method: string,
    request: unknown = {},
    deadlineMs = 30_000,
  ): Promise<CallResult<T>> {
    const client = method in (this.identity as unknown as Record<string, unknown>)
      ? this.identity
      : this.node;
    const fn = (client as unknown as Record<string, grpc.requestCallback<T>>)[method];
    if (typeof fn !== "function") throw new TypeError(`no such CSI method: ${method}`);
    return new Promise((resolve) => {
      (fn as unknown as (
        req: unknown,
        opts: grpc.CallOptions,
        cb: (err: grpc.ServiceError | null, res?: T) => void,
      ) => void).call(client, request, { deadline: Date.now() + deadlineMs }, (err, res) => {
        if (err) resolve({ ok: false, code: err.code, details: err.details });
        else resolve({ ok: true, response: res as T });
      });
    });
  }

  /** Like call, but throws unless the call succeeded. */
  async ok<T = Record<string, unknown>>(method: string, request: unknown = {}): Promise<T> {
    const result = await this.call<T>(method, request);
    if (!result.ok) {
      throw new Error(`${method} failed: ${grpc.status[result.code]}: ${result.details}`);
    }
    return result.response;
  }

  /** Closes the connection. */
  close(): void {
    this.node.close();
    this.identity.close();
  }
}

/** A call's outcome in one line: OK, or the status name and details. */
export function describe(result: CallResult): string {
  return result.ok ? "OK" : `${grpc.status[result.code]}: ${result.details}`;
}
