/** Builds the embedded JSON form of the protos in proto/ (protobufjs descriptor JSON). */
import protobuf from "protobufjs";

/** Path of the CSI proto, relative to the project root. */
export const PROTO_FILE = new URL("../proto/csi.proto", import.meta.url);

/** Path of kubelet's plugin registration proto. */
export const REGISTRATION_PROTO_FILE = new URL(
  "../proto/pluginregistration.proto",
  import.meta.url,
);

/** Parses proto source text into protobufjs JSON, with google/protobuf well-known types resolved. */
export function protoToJson(source: string): unknown {
  const root = new protobuf.Root();
  const wrappers = protobuf.common.get("google/protobuf/wrappers.proto");
  if (wrappers?.nested) root.addJSON(wrappers.nested);
  protobuf.parse(source, root, { keepCase: true });
  root.resolveAll();
  return root.toJSON();
}
