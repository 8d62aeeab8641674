/** Regenerates lib/csi_proto.json and lib/registration_proto.json from proto/ (deno task gen-proto). */
import { PROTO_FILE, protoToJson, REGISTRATION_PROTO_FILE } from "./proto_json.ts";

for (
  const [proto, out] of [
    [PROTO_FILE, "../lib/csi_proto.json"],
    [REGISTRATION_PROTO_FILE, "../lib/registration_proto.json"],
  ] as const
) {
  const json = protoToJson(await Deno.readTextFile(proto));
  await Deno.writeTextFile(new URL(out, import.meta.url), JSON.stringify(json, null, 2) + "\n");
}
