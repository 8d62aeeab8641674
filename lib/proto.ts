/** The CSI service definitions, loaded from the embedded JSON form of proto/csi.proto (no file reads). */
import {
  makeGenericClientConstructor,
  type ServiceClientConstructor,
  type ServiceDefinition,
} from "@grpc/grpc-js";
import protobuf from "protobufjs";
import type { Buffer } from "node:buffer";
import csiJson from "./csi_proto.json" with { type: "json" };
import registrationJson from "./registration_proto.json" with { type: "json" };

/** Decoding options shared by the server and the test clients. */
export const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
} as const;

/** The `csi.v1` package: service constructors (for clients) with their definitions. */
export interface CsiPackage {
  Identity: ServiceClientConstructor;
  Node: ServiceClientConstructor;
}

let csiRootOnce: protobuf.Namespace | undefined;

// The csi.v1 types, built once from the embedded descriptor for the services and the UTF-8 check.
function csiRoot(): protobuf.Namespace {
  return csiRootOnce ??= protobuf.Root.fromJSON(csiJson as protobuf.INamespace).resolveAll();
}

/** Loads the csi.v1 package from the embedded descriptor. */
export function loadCsi(): CsiPackage {
  return loadPackage(csiRoot(), "csi.v1") as unknown as CsiPackage;
}

/**
 * The services of package `name` in `json`, with the codecs @grpc/proto-loader would give them
 * (protobufjs fromObject/encode, decode/toObject with LOADER_OPTIONS) but without its descriptor
 * building, which cost the driver ~35 ms of start-up with its import.
 */
function loadPackage(
  root: protobuf.Namespace,
  name: string,
): Record<string, ServiceClientConstructor> {
  const services: Record<string, ServiceClientConstructor> = {};
  const pkg = root.lookup(name);
  for (const service of pkg instanceof protobuf.Namespace ? pkg.nestedArray : []) {
    if (!(service instanceof protobuf.Service)) continue;
    const definition: Record<string, ServiceDefinition[string]> = {};
    for (const method of service.methodsArray) {
      const request = method.resolvedRequestType as protobuf.Type;
      const response = method.resolvedResponseType as protobuf.Type;
      definition[method.name] = {
        path: `/${name}.${service.name}/${method.name}`,
        requestStream: method.requestStream === true,
        responseStream: method.responseStream === true,
        requestSerialize: serializer(request),
        requestDeserialize: deserializer(request),
        responseSerialize: serializer(response),
        responseDeserialize: deserializer(response),
        originalName: method.name.charAt(0).toLowerCase() + method.name.slice(1),
      };
    }
    services[service.name] = makeGenericClientConstructor(definition, service.name);
  }
  return services;
}

function serializer(type: protobuf.Type): (value: unknown) => Buffer {
  return (value) =>
    type.encode(type.fromObject(value as Record<string, unknown>)).finish() as Buffer;
}

function deserializer(type: protobuf.Type): (bytes: Buffer) => unknown {
  return (bytes) => type.toObject(type.decode(bytes), LOADER_OPTIONS);
}

const fatalUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Protobuf types by full method path (`/csi.v1.Node/NodePublishVolume` -> its request type). */
export function requestTypes(): Map<string, protobuf.Type> {
  const root = csiRoot();
  const types = new Map<string, protobuf.Type>();
  for (const name of ["Identity", "Node"]) {
    const service = root.lookupService(`csi.v1.${name}`);
    for (const method of service.methodsArray) {
      if (method.resolvedRequestType) {
        types.set(`/csi.v1.${name}/${method.name}`, method.resolvedRequestType);
      }
    }
  }
  return types;
}

/**
 * The name of the first string field of `type` in `bytes` (nested messages and maps included)
 * that is not valid UTF-8, or undefined. protobufjs decodes such bytes to U+FFFD and carries on;
 * proto3 says a string field holds valid UTF-8, and grpc-go refuses it at decode. Malformed wire
 * data answers undefined: the decoder itself reports that.
 */
export function invalidUtf8Field(type: protobuf.Type, bytes: Uint8Array): string | undefined {
  try {
    return scan(type, bytes);
  } catch {
    return undefined;
  }
}

function scan(type: protobuf.Type, bytes: Uint8Array): string | undefined {
  const reader = protobuf.Reader.create(bytes);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    const field = type.fieldsById[tag >>> 3];
    if (field === undefined || (tag & 7) !== 2) {
      reader.skipType(tag & 7);
      continue;
    }
    const chunk = reader.bytes();
    const bad = field instanceof protobuf.MapField
      ? scanMapEntry(field, chunk)
      : scanValue(field.type, field.resolvedType, chunk);
    if (bad !== undefined) return bad === "" ? field.name : `${field.name}.${bad}`;
  }
  return undefined;
}

// "" when the value itself is bad, a nested field's name, or undefined when it is fine.
function scanValue(
  kind: string,
  resolved: protobuf.ReflectionObject | null,
  chunk: Uint8Array,
): string | undefined {
  if (kind === "string") return isUtf8(chunk) ? undefined : "";
  if (resolved instanceof protobuf.Type) return scan(resolved, chunk);
  return undefined;
}

function scanMapEntry(field: protobuf.MapField, entry: Uint8Array): string | undefined {
  const reader = protobuf.Reader.create(entry);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if ((tag & 7) !== 2 || (tag >>> 3 !== 1 && tag >>> 3 !== 2)) {
      reader.skipType(tag & 7);
      continue;
    }
    const chunk = reader.bytes();
    const bad = tag >>> 3 === 1
      ? scanValue(field.keyType, null, chunk)
      : scanValue(field.type, field.resolvedType, chunk);
    if (bad !== undefined) return bad === "" ? (tag >>> 3 === 1 ? "key" : "value") : bad;
  }
  return undefined;
}

function isUtf8(bytes: Uint8Array): boolean {
  try {
    fatalUtf8.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/** The `pluginregistration` package: kubelet's plugin registration service. */
export interface RegistrationPackage {
  Registration: ServiceClientConstructor;
}

/** Loads kubelet's plugin registration package from the embedded descriptor. */
export function loadRegistration(): RegistrationPackage {
  return loadPackage(
    protobuf.Root.fromJSON(registrationJson as protobuf.INamespace).resolveAll(),
    "pluginregistration",
  ) as unknown as RegistrationPackage;
}
