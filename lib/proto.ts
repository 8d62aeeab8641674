/** The CSI service definitions, loaded from the embedded JSON form of proto/csi.proto (no file reads). */
import { fromJSON } from "@grpc/proto-loader";
import { loadPackageDefinition, type ServiceClientConstructor } from "@grpc/grpc-js";
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

/** Loads the csi.v1 package from the embedded descriptor. */
export function loadCsi(): CsiPackage {
  // deno-lint-ignore no-explicit-any
  const definition = fromJSON(csiJson as any, LOADER_OPTIONS);
  // deno-lint-ignore no-explicit-any
  const pkg = loadPackageDefinition(definition) as any;
  return pkg.csi.v1 as CsiPackage;
}

/** The `pluginregistration` package: kubelet's plugin registration service. */
export interface RegistrationPackage {
  Registration: ServiceClientConstructor;
}

/** Loads kubelet's plugin registration package from the embedded descriptor. */
export function loadRegistration(): RegistrationPackage {
  // deno-lint-ignore no-explicit-any
  const definition = fromJSON(registrationJson as any, LOADER_OPTIONS);
  // deno-lint-ignore no-explicit-any
  const pkg = loadPackageDefinition(definition) as any;
  return pkg.pluginregistration as RegistrationPackage;
}
