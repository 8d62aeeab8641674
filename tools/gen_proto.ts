/** Regenerates lib/csi_proto.json from proto/csi.proto (run: deno task gen-proto). */
import { PROTO_FILE, protoToJson } from "../lib/proto_json.ts";

const json = protoToJson(await Deno.readTextFile(PROTO_FILE));
await Deno.writeTextFile(
  new URL("../lib/csi_proto.json", import.meta.url),
  JSON.stringify(json, null, 2) + "\n",
);
