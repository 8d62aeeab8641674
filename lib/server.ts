/** The gRPC server on the CSI Unix socket: wraps every handler once, maps errors once, logs every RPC. */
import * as grpc from "@grpc/grpc-js";
import type { Buffer } from "node:buffer";
import type protobuf from "protobufjs";
import { invalidUtf8Field, loadCsi, loadRegistration, requestTypes } from "./proto.ts";
import { Code, CsiError, errorMessage } from "./errors.ts";
import { KEYS, type Logger } from "./log.ts";
import type { IdentityService } from "./csi/identity.ts";
import type { NodeService } from "./csi/node.ts";
import type { RegistrationService } from "./registration.ts";

/** Options for createServer. */
export interface ServerOptions {
  identity: IdentityService;
  node: NodeService;
  log: Logger;
}

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
  readonly message: string;
  constructor(message: string) {
    this.message = message;
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
      if (call.request instanceof UndecodableRequest) {
        throw new CsiError(Code.INVALID_ARGUMENT, call.request.message);
      }
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
 * The service definition with a decoder that refuses a string field that is not valid UTF-8
 * (protobufjs would hand the handler U+FFFD in its place, a path the client never named).
 */
function strictUtf8(definition: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const strict: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(definition)) {
    const decode = method.requestDeserialize;
    strict[name] = {
      ...method,
      requestDeserialize(bytes: Buffer) {
        types ??= requestTypes();
        const type = types.get(method.path);
        const field = type === undefined ? undefined : invalidUtf8Field(type, bytes);
        if (field !== undefined) {
          return new UndecodableRequest(`request field ${field} is not valid UTF-8`);
        }
        return decode(bytes);
      },
    };
  }
  return strict;
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

/** Builds the gRPC server serving the Identity and Node services. */
export function createServer(options: ServerOptions): grpc.Server {
  const csi = loadCsi();
  const server = new grpc.Server({ "grpc.max_receive_message_length": 4 * 1024 * 1024 });
  for (
    const [definition, service] of [
      [csi.Identity.service, options.identity],
      [csi.Node.service, options.node],
    ] as const
  ) {
    server.addService(strictUtf8(definition), implementation(definition, service, options.log));
  }
  return server;
}

/** Builds the gRPC server serving kubelet's plugin registration (built-in registration). */
export function createRegistrationServer(
  registration: RegistrationService,
  log: Logger,
): grpc.Server {
  const service = loadRegistration().Registration.service;
  const server = new grpc.Server({ "grpc.max_receive_message_length": 64 * 1024 });
  server.addService(service, implementation(service, registration, log));
  return server;
}

/** Listens on the Unix socket at `socketPath`, replacing a stale socket left by an earlier run. */
export async function listen(server: grpc.Server, socketPath: string): Promise<void> {
  try {
    const info = await Deno.lstat(socketPath);
    if (!info.isSocket) throw new Error(`${socketPath} exists and is not a socket`);
    await Deno.remove(socketPath);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (error) => {
      if (error) reject(error);
      else resolve();
    });
  });
}

/** Stops accepting calls, lets in-flight calls finish for up to `graceMs`, then removes the socket. */
export async function shutdown(
  server: grpc.Server,
  socketPath: string,
  graceMs: number,
): Promise<void> {
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
  await Deno.remove(socketPath).catch(() => {});
}
