/** A client of kubelet's plugin registration API, as kubelet's plugin watcher calls it. */
import * as grpc from "@grpc/grpc-js";
import { loadRegistration } from "../lib/proto.ts";
import type { PluginInfo } from "../lib/registration.ts";

/** Calls GetInfo and NotifyRegistrationStatus on a registration socket, as kubelet does. */
export class RegistrationClient {
  readonly #client: grpc.Client;

  constructor(socketPath: string) {
    const { Registration } = loadRegistration();
    this.#client = new Registration(`unix:${socketPath}`, grpc.credentials.createInsecure());
  }

  /** kubelet's first call: who is this plugin. */
  getInfo(): Promise<PluginInfo> {
    return this.#unary<PluginInfo>("GetInfo", {});
  }

  /** kubelet's verdict. */
  notify(registered: boolean, error = ""): Promise<unknown> {
    return this.#unary("NotifyRegistrationStatus", { plugin_registered: registered, error });
  }

  /** Closes the connection. */
  close(): void {
    this.#client.close();
  }

  #unary<T>(method: string, request: unknown): Promise<T> {
    const fn = (this.#client as unknown as Record<string, unknown>)[method] as (
      req: unknown,
      opts: grpc.CallOptions,
      cb: (err: grpc.ServiceError | null, res?: T) => void,
    ) => void;
    return new Promise((resolve, reject) => {
      fn.call(this.#client, request, { deadline: Date.now() + 10_000 }, (err, res) => {
        if (err) reject(err);
        else resolve(res as T);
      });
    });
  }
}
