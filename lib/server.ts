/**
 * The gRPC server on the CSI Unix socket: wraps every handler once, maps errors once, logs every
 * RPC (refusals grpc-js makes itself included), and bounds everything a client can make it hold.
 */
import * as grpc from "@grpc/grpc-js";
import type { Buffer } from "node:buffer";
import { createServer as createNetServer, type Server as NetServer } from "node:net";
import type protobuf from "protobufjs";
import { checkRequest, loadCsi, loadRegistration, requestTypes } from "./proto.ts";
import { Code, CsiError, errorMessage } from "./errors.ts";
import { KEYS, type Logger } from "./log.ts";
import type { IdentityService } from "./csi/identity.ts";
import type { NodeService } from "./csi/node.ts";
import type { RegistrationService } from "./registration.ts";

/** A status as grpc-js passes it around inside a call. */
type StatusLike = { code: grpc.status; details?: string };

/** Options for createServer. */
export interface ServerOptions {
  identity: IdentityService;
  node: NodeService;
  log: Logger;
}

/**
 * What one socket lets in. The V8 heap is a few MiB (permissions.ts: V8_FLAGS), so every bound is
 * set from what the real callers send, with room to spare, and a request past one is refused
 * with a status and one log line while every other caller is served.
 */
export interface Limits {
  /** Largest request message, in bytes (larger: ResourceExhausted from grpc-js). */
  messageBytes: number;
  /** Most entries in one map or repeated field of a request, counted before decoding. */
  entries: number;
  /** Most streams open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
  streams: number;
  /** Most connections open at once; a connection past it is closed as soon as it is accepted. */
  connections: number;
}

/**
 * The CSI socket's limits. kubelet's largest request is a NodePublishVolume: a ~150-byte target
 * path, a 68-byte volume id, five pod-info entries (~0.5 KiB), the pod's own volumeAttributes
 * (this driver reads none) and, only with the CSIDriver's tokenRequests, ~1.5 KiB of token per
 * audience: 16 KiB and 64 entries hold that with room to spare. kubelet dials one connection per
 * RPC and grpc-go waits for a free stream rather than failing, so 8 streams per connection and
 * 128 connections cover a burst of a full node (110 pods), while 128 x 8 pending streams stay a
 * few MiB. Session memory is bounded by these three, not by HTTP/2's own setting: Deno's
 * node:http2 ignores maxSessionMemory (measured: at 1 MB, with no stream limit, 12,000 empty
 * streams still exhaust the heap).
 */
export const CSI_LIMITS: Readonly<Limits> = Object.freeze({
  messageBytes: 16 * 1024,
  entries: 64,
  streams: 8,
  connections: 128,
});

/** The registration socket's limits: kubelet's plugin watcher alone calls it, a few tiny calls. */
export const REGISTRATION_LIMITS: Readonly<Limits> = Object.freeze({
  messageBytes: 4 * 1024,
  entries: 16,
  streams: 4,
  connections: 8,
});

// deno-lint-ignore no-explicit-any
type Handler = (request: any) => Promise<unknown>;

/** Only these request fields reach the log: never secrets, never service account tokens. */
export function requestLogFields(request: unknown): Record<string, string> {
  const fields: Record<string, string> = {};
  if (typeof request !== "object" || request === null) return fields;
  const r = request as Record<string, unknown>;
  const context = (r.volume_context ?? {}) as Record<string, unknown>;
  const put = (key: string, value: unknown) => {
    if (typeof value === "string" && value !== "") fields[key] = value.slice(0, 512);
  };
  put(KEYS.volumeId, r.volume_id);
  put(KEYS.targetPath, r.target_path ?? r.volume_path);
  put(KEYS.podName, context["csi.storage.k8s.io/pod.name"]);
  put(KEYS.podNamespace, context["csi.storage.k8s.io/pod.namespace"]);
  put(KEYS.podUid, context["csi.storage.k8s.io/pod.uid"]);
  return fields;
}

/** A gRPC status as sent to clients. */
export interface RpcStatus {
  code: grpc.status;
  details: string;
}

/** Each domain error code's gRPC status. */
const STATUS: Readonly<Record<Code, grpc.status>> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  INTERNAL: grpc.status.INTERNAL,
  UNIMPLEMENTED: grpc.status.UNIMPLEMENTED,
};

/** The one mapper from any error to the status a client sees: a CsiError keeps its kind and message, anything else is Internal with a short message. */
export function toRpcStatus(error: unknown): RpcStatus {
  if (error instanceof CsiError) return { code: STATUS[error.code], details: error.message };
  return { code: grpc.status.INTERNAL, details: "internal error" };
}

/** A request refused while decoding: it never reaches a handler. */
class UndecodableRequest {
  readonly error: CsiError;
  constructor(code: Code, message: string) {
    this.error = new CsiError(code, message);
  }
}

function wrap(
  method: string,
  handler: Handler,
  log: Logger,
): grpc.handleUnaryCall<unknown, unknown> {
  return async (call, callback) => {
    const started = performance.now();
    const fields = requestLogFields(call.request);
    try {
      if (call.request instanceof UndecodableRequest) throw call.request.error;
      const response = await handler(call.request);
      log.info("RPC succeeded", {
        [KEYS.method]: method,
        [KEYS.code]: "OK",
        [KEYS.durationMs]: elapsed(started),
        ...fields,
      });
      callback(null, response);
    } catch (error) {
      const status = toRpcStatus(error);
      const level = status.code === grpc.status.INTERNAL ? "error" : "warn";
      log[level]("RPC failed", {
        [KEYS.method]: method,
        [KEYS.code]: grpc.status[status.code],
        [KEYS.durationMs]: elapsed(started),
        ...fields,
        [KEYS.error]: errorMessage(error),
        // Unexpected errors are logged in full; the client only sees "internal error".
        ...(!(error instanceof CsiError) && error instanceof Error
          ? { stack: error.stack ?? "" }
          : {}),
      });
      callback({ code: status.code, details: status.details });
    }
  };
}

function elapsed(started: number): number {
  return Math.round((performance.now() - started) * 1000) / 1000;
}

let types: Map<string, protobuf.Type> | undefined;

/**
 * The service definition with a decoder that refuses, before protobufjs builds anything, what it
 * would let through: see checkRequest in proto.ts.
 */
function checkedDecode(
  definition: grpc.ServiceDefinition,
  limits: Limits,
): grpc.ServiceDefinition {
  const checked: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(definition)) {
    const decode = method.requestDeserialize;
    checked[name] = {
      ...method,
      requestDeserialize(bytes: Buffer) {
        types ??= requestTypes();
        const type = types.get(method.path);
        const refusal = type === undefined ? undefined : checkRequest(type, bytes, limits.entries);
        if (refusal !== undefined) {
          return new UndecodableRequest(Code[refusal.code], refusal.message);
        }
        try {
          return decode(bytes);
        } catch {
          return new UndecodableRequest(
            Code.INVALID_ARGUMENT,
            "request is not a valid protobuf message",
          );
        }
      },
    };
  }
  return checked;
}

/**
 * grpc-js answers some requests itself, before any handler: a message over the size limit, an
 * unknown method, a bad content type, a stream that ends without its message. Each still gets
 * the one log line every RPC gets: statuses our handlers send pass the interceptor's responder,
 * and any other status the call sends is one of grpc-js's own.
 */
function logOwnAnswers(log: Logger): grpc.ServerInterceptor {
  return (method, call) => {
    const started = performance.now();
    let answered = false;
    const inner = call as unknown as { sendStatus(status: StatusLike): void };
    const send = inner.sendStatus.bind(inner);
    inner.sendStatus = (status) => {
      if (!answered) logRefusal(log, method.path, status, started);
      send(status);
    };
    return new grpc.ServerInterceptingCall(call, {
      sendStatus(status, next) {
        answered = true;
        next(status);
      },
    });
  };
}

function logRefusal(
  log: Logger,
  path: string,
  status: StatusLike,
  started: number,
): void {
  log.warn("RPC failed", {
    [KEYS.method]: path.slice(path.lastIndexOf("/") + 1),
    [KEYS.code]: grpc.status[status.code] ?? String(status.code),
    [KEYS.durationMs]: elapsed(started),
    [KEYS.error]: status.details ?? "",
  });
}

/** A grpc-js server bounded by `limits`, with every refusal logged. */
function boundedServer(limits: Limits, log: Logger): grpc.Server {
  const server = new grpc.Server({
    "grpc.max_receive_message_length": limits.messageBytes,
    "grpc.max_concurrent_streams": limits.streams,
    interceptors: [logOwnAnswers(log)],
  });
  // An unknown method or a bad content type is answered before any interceptor exists.
  const internals = server as unknown as {
    _respondWithError(error: StatusLike, stream: unknown, info: unknown): void;
  };
  const respond = internals._respondWithError.bind(server);
  internals._respondWithError = (error, stream, info) => {
    // The method is not known here; an unimplemented method's details name it.
    logRefusal(log, "/unknown", error, performance.now());
    respond(error, stream, info);
  };
  return server;
}

function implementation(
  definition: grpc.ServiceDefinition,
  service: object,
  log: Logger,
): grpc.UntypedServiceImplementation {
  const impl: grpc.UntypedServiceImplementation = {};
  for (const method of Object.keys(definition)) {
    const handler = (service as Record<string, Handler | undefined>)[method];
    if (handler) impl[method] = wrap(method, handler.bind(service), log);
  }
  return impl;
}

/** Builds the gRPC server serving the Identity and Node services, bounded by CSI_LIMITS. */
export function createServer(options: ServerOptions): grpc.Server {
  const csi = loadCsi();
  const server = boundedServer(CSI_LIMITS, options.log);
  for (
    const [definition, service] of [
      [csi.Identity.service, options.identity],
      [csi.Node.service, options.node],
    ] as const
  ) {
    server.addService(
      checkedDecode(definition, CSI_LIMITS),
      implementation(definition, service, options.log),
    );
  }
  return server;
}

/** Builds the gRPC server serving kubelet's plugin registration (built-in registration). */
export function createRegistrationServer(
  registration: RegistrationService,
  log: Logger,
): grpc.Server {
  const service = loadRegistration().Registration.service;
  const server = boundedServer(REGISTRATION_LIMITS, log);
  server.addService(service, implementation(service, registration, log));
  return server;
}

/** Another server answers on the socket: it belongs to a running driver, and is left alone. */
export class SocketInUseError extends Error {
  override name = "SocketInUseError";
}

/** The socket a server listens on, and how to let go of it. */
export interface Listener {
  /** Stops accepting connections, lets in-flight calls finish for up to `graceMs`, then removes the socket if it is still the one this process made. */
  shutdown(graceMs: number): Promise<void>;
}

/** Options for listen. */
export interface ListenOptions {
  /** The socket's limits (CSI_LIMITS or REGISTRATION_LIMITS): its `connections` are counted here. */
  limits: Readonly<Limits>;
  log: Logger;
  /** Whether a server already answers on a path (a stale socket nobody answers is replaced). */
  answers: (path: string) => Promise<boolean>;
}

/**
 * Serves `server` on the Unix socket at `socketPath` through a net.Server of this process's own
 * (grpc-js's connection injector), which counts connections. The bind comes first: only when the
 * path is taken is it probed, and a socket file is removed only if nobody answers on it and it is
 * still the same file, so a second instance never removes a live driver's socket.
 */
export async function listen(
  server: grpc.Server,
  socketPath: string,
  options: ListenOptions,
): Promise<Listener> {
  const { log } = options;
  const maxConnections = options.limits.connections;
  const net = await bindSocket(socketPath, options.answers);
  const mine = Deno.lstatSync(socketPath);
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  let open = 0;
  let draining = false;
  net.on("connection", (socket) => {
    if (draining || open >= maxConnections) {
      socket.destroy();
      if (!draining) {
        log.warn("Refused a connection on {socket}: {open} open, the most allowed", {
          socket: socketPath,
          open,
        });
      }
      return;
    }
    open++;
    socket.once("close", () => open--);
    injector.injectConnection(socket);
  });
  return {
    async shutdown(graceMs) {
      draining = true;
      await drain(server, graceMs);
      removeIfMine(socketPath, mine);
      // The net.Server is never closed: Deno unlinks a listener's path on close, whoever's it is
      // by then. The listening socket goes with the process.
    },
  };
}

async function bindSocket(
  path: string,
  answers: (path: string) => Promise<boolean>,
): Promise<NetServer> {
  for (let attempt = 0;; attempt++) {
    const net = createNetServer();
    try {
      await new Promise<void>((resolve, reject) => {
        net.once("error", reject);
        net.listen(path, () => resolve());
      });
      return net;
    } catch (error) {
      if ((error as { code?: unknown }).code !== "EADDRINUSE" || attempt >= 2) throw error;
    }
    const before = Deno.lstatSync(path);
    if (!before.isSocket) throw new Error(`${path} exists and is not a socket`);
    if (await answers(path)) {
      throw new SocketInUseError(`another server already answers on ${path}`);
    }
    removeIfMine(path, before);
  }
}

/** Removes `path` only while it is the file `mine` describes (same device and inode). */
function removeIfMine(path: string, mine: Deno.FileInfo): void {
  try {
    const now = Deno.lstatSync(path);
    if (now.dev === mine.dev && now.ino === mine.ino) Deno.removeSync(path);
  } catch { /* already gone */ }
}

/** Lets in-flight calls finish for up to `graceMs`, then ends the rest. */
async function drain(server: grpc.Server, graceMs: number): Promise<void> {
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
