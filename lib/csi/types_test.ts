import assert from "node:assert/strict";
import protobuf from "protobufjs";
import embedded from "../csi_proto.json" with { type: "json" };

const ROOT = protobuf.Root.fromJSON(embedded as protobuf.INamespace);
const SOURCE = await Deno.readTextFile(new URL("./types.ts", import.meta.url));

/** Each `/** csi.v1.X. *\/` interface in types.ts with its top-level field names. */
function declaredMessages(source: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const block = /\/\*\* (csi\.v1\.\w+)\. \*\/\nexport interface \w+ \{\n([\s\S]*?)\n\}/g;
  for (const [, name, body] of source.matchAll(block)) {
    const fields = [...(body as string).matchAll(/^ {2}(\w+)\??:/gm)].map((m) => m[1] as string);
    out.set(name as string, fields);
  }
  return out;
}

/** The string literals of the union type `name` in types.ts. */
function unionOf(source: string, name: string): string[] {
  const match = new RegExp(`export type ${name} =([^;]*);`).exec(source);
  return [...(match?.[1] ?? "").matchAll(/"(\w+)"/g)].map((m) => m[1] as string);
}

Deno.test("lib/csi/types.ts names only fields and oneofs that the CSI proto's messages have", () => {
  const messages = declaredMessages(SOURCE);
  assert.ok(messages.size >= 10, `read ${messages.size} messages`);
  for (const [name, fields] of messages) {
    const type = ROOT.lookupType(name);
    const known = [...Object.keys(type.fields), ...Object.keys(type.oneofs ?? {})];
    assert.deepEqual(fields.filter((f) => !known.includes(f)), [], `${name}: not in the proto`);
  }
});

Deno.test("lib/csi/types.ts spells the access modes and usage units as the proto's enums", () => {
  const modes = ROOT.lookupEnum("csi.v1.VolumeCapability.AccessMode.Mode");
  assert.deepEqual(unionOf(SOURCE, "AccessModeName"), Object.keys(modes.values));
  const units = ROOT.lookupEnum("csi.v1.VolumeUsage.Unit");
  const declared = /unit: ([^;]*);/.exec(SOURCE)?.[1] ?? "";
  assert.deepEqual([...declared.matchAll(/"(\w+)"/g)].map((m) => m[1]), Object.keys(units.values));
});
