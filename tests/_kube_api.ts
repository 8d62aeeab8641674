/** A small Kubernetes API client for the kubelet rig: HTTPS to kube-apiserver on loopback, X.509 auth. */

/** A Kubernetes object or list, as JSON. */
// deno-lint-ignore no-explicit-any
export type Obj = Record<string, any>;

/** An API error with the server's status code. */
export class KubeApiError extends Error {
  override name = "KubeApiError";
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** Credentials and address of the API server. */
export interface KubeApiOptions {
  /** `https://127.0.0.1:PORT` */
  server: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** JSON over HTTPS to kube-apiserver. */
export class KubeApi {
  readonly #client: Deno.HttpClient;
  readonly #server: string;

  constructor(options: KubeApiOptions) {
    this.#server = options.server;
    this.#client = Deno.createHttpClient({
      caCerts: [options.caPem],
      cert: options.certPem,
      key: options.keyPem,
    });
  }

  /** One request; returns the parsed body, throws KubeApiError for a non-2xx status. */
  async request(method: string, path: string, body?: unknown): Promise<Obj> {
    const response = await fetch(`${this.#server}${path}`, {
      method,
      client: this.#client,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(30_000),
    });
    const text = await response.text();
    if (!response.ok) {
      throw new KubeApiError(response.status, `${method} ${path}: ${response.status} ${text}`);
    }
    return text === "" ? {} : JSON.parse(text);
  }

  /** GET, or undefined on 404. */
  async get(path: string): Promise<Obj | undefined> {
    try {
      return await this.request("GET", path);
    } catch (error) {
      if (error instanceof KubeApiError && error.status === 404) return undefined;
      throw error;
    }
  }

  /** POST `object` to `path` (a collection). */
  create(path: string, object: Obj): Promise<Obj> {
    return this.request("POST", path, object);
  }

  /** DELETE, ignoring 404. */
  async delete(path: string, options: Obj = {}): Promise<void> {
    try {
      await this.request("DELETE", path, options);
    } catch (error) {
      if (!(error instanceof KubeApiError && error.status === 404)) throw error;
    }
  }

  /** Closes the HTTP client. */
  close(): void {
    this.#client.close();
  }
}
