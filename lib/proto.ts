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

/** Why a request is refused before it is decoded. */
export interface Refusal {
  /** InvalidArgument for malformed data, ResourceExhausted for too many entries. */
  code: "INVALID_ARGUMENT" | "RESOURCE_EXHAUSTED";
  message: string;
}

/**
 * Walks the wire bytes of a `type` message (nested messages and maps included) without building
 * anything, and refuses it when protobufjs's decoder would let something through that it should
 * not: a string field that is not valid UTF-8 (protobufjs puts U+FFFD in its place; proto3 and
 * grpc-go refuse it), a known field sent with another wire type (protobufjs reads by field
 * number alone, skipping that check), more than `maxEntries` entries in one map or repeated field
 * (each costs the decoder objects on a heap of a few MiB), or data that does not parse at all.
 */
export function checkRequest(
  type: protobuf.Type,
  bytes: Uint8Array,
  maxEntries: number,
): Refusal | undefined {
  let finding: Finding | undefined;
  try {
    finding = scan(type, bytes, maxEntries);
  } catch {
    return { code: "INVALID_ARGUMENT", message: "request is not a valid protobuf message" };
  }
  if (finding === undefined) return undefined;
  return { code: finding.code, message: `request field ${finding.path.join(".")} ${finding.what}` };
}

/** What scan found wrong, and where: the field names from the request down. */
interface Finding {
  code: Refusal["code"];
  path: string[];
  what: string;
}

const WIRE_LENGTH_DELIMITED = 2;

// The wire type a field's values are written with (a packed repeated scalar also comes as 2).
function wireTypeOf(type: string, resolved: protobuf.ReflectionObject | null): number {
  if (resolved instanceof protobuf.Type) return WIRE_LENGTH_DELIMITED;
  if (resolved instanceof protobuf.Enum) return 0;
  return (protobuf.types.basic as Record<string, number | undefined>)[type] ??
    WIRE_LENGTH_DELIMITED;
}

function scan(type: protobuf.Type, bytes: Uint8Array, maxEntries: number): Finding | undefined {
  const reader = protobuf.Reader.create(bytes);
  const entries = new Map<number, number>();
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    const id = tag >>> 3;
    const wire = tag & 7;
    const field = type.fieldsById[id];
    if (field === undefined) {
      reader.skipType(wire);
      continue;
    }
    const isMap = field instanceof protobuf.MapField;
    const expected = isMap ? WIRE_LENGTH_DELIMITED : wireTypeOf(field.type, field.resolvedType);
    const packed = field.repeated && wire === WIRE_LENGTH_DELIMITED;
    if (wire !== expected && !packed) {
      return { code: "INVALID_ARGUMENT", path: [field.name], what: `has wire type ${wire}` };
    }
    if (isMap || field.repeated) {
      const count = (entries.get(id) ?? 0) + 1;
      if (count > maxEntries) {
        return {
          code: "RESOURCE_EXHAUSTED",
          path: [field.name],
          what: `has more than ${maxEntries} entries`,
        };
      }
      entries.set(id, count);
    }
    if (wire !== WIRE_LENGTH_DELIMITED || (packed && expected !== WIRE_LENGTH_DELIMITED)) {
      reader.skipType(wire);
      continue;
    }
    const chunk = reader.bytes();
    const inner = isMap
      ? scanMapEntry(field, chunk, maxEntries)
      : scanValue(field.type, field.resolvedType, chunk, maxEntries);
    if (inner !== undefined) return { ...inner, path: [field.name, ...inner.path] };
  }
  return undefined;
}

// A length-delimited value: a string must be UTF-8, a message is scanned in turn.
function scanValue(
  kind: string,
  resolved: protobuf.ReflectionObject | null,
  chunk: Uint8Array,
  maxEntries: number,
): Finding | undefined {
  if (kind === "string" && !isUtf8(chunk)) {
    return { code: "INVALID_ARGUMENT", path: [], what: "is not valid UTF-8" };
  }
  if (resolved instanceof protobuf.Type) return scan(resolved, chunk, maxEntries);
  return undefined;
}

function scanMapEntry(
  field: protobuf.MapField,
  entry: Uint8Array,
  maxEntries: number,
): Finding | undefined {
  const reader = protobuf.Reader.create(entry);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    const id = tag >>> 3;
    const wire = tag & 7;
    if (id !== 1 && id !== 2) {
      reader.skipType(wire);
      continue;
    }
    const [kind, resolved] = id === 1 ? [field.keyType, null] : [field.type, field.resolvedType];
    const name = id === 1 ? "key" : "value";
    if (wire !== wireTypeOf(kind, resolved)) {
      return { code: "INVALID_ARGUMENT", path: [name], what: `has wire type ${wire}` };
    }
    if (wire !== WIRE_LENGTH_DELIMITED) {
      reader.skipType(wire);
      continue;
    }
    const inner = scanValue(kind, resolved, reader.bytes(), maxEntries);
    if (inner !== undefined) return { ...inner, path: [name, ...inner.path] };
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
