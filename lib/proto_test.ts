import assert from "node:assert/strict";
import protobuf from "protobufjs";
import embedded from "./csi_proto.json" with { type: "json" };
import registrationEmbedded from "./registration_proto.json" with { type: "json" };
import { PROTO_FILE, protoToJson, REGISTRATION_PROTO_FILE } from "../tools/proto_json.ts";
import { checkRequest, loadCsi, loadRegistration, requestTypes } from "./proto.ts";

Deno.test("lib/csi_proto.json is up to date with proto/csi.proto (run deno task gen-proto)", async () => {
  assert.deepEqual(embedded, protoToJson(await Deno.readTextFile(PROTO_FILE)));
});

Deno.test("lib/registration_proto.json is up to date with proto/pluginregistration.proto", async () => {
  assert.deepEqual(
    registrationEmbedded,
    protoToJson(await Deno.readTextFile(REGISTRATION_PROTO_FILE)),
  );
});

Deno.test("the registration proto has kubelet's paths and field numbers", () => {
  const service = loadRegistration().Registration.service;
  assert.equal(service.GetInfo?.path, "/pluginregistration.Registration/GetInfo");
  assert.equal(
    service.NotifyRegistrationStatus?.path,
    "/pluginregistration.Registration/NotifyRegistrationStatus",
  );
  const root = protobuf.Root.fromJSON(registrationEmbedded as protobuf.INamespace);
  const info = root.lookupType("pluginregistration.PluginInfo");
  assert.deepEqual(
    Object.values(info.fields).map((f) => [f.name, f.id, f.type, f.repeated]),
    [
      ["type", 1, "string", false],
      ["name", 2, "string", false],
      ["endpoint", 3, "string", false],
      ["supported_versions", 4, "string", true],
    ],
  );
  const status = root.lookupType("pluginregistration.RegistrationStatus");
  assert.deepEqual(
    Object.values(status.fields).map((f) => [f.name, f.id, f.type]),
    [["plugin_registered", 1, "bool"], ["error", 2, "string"]],
  );
});

Deno.test("the embedded proto serves Identity and Node with the spec's methods", () => {
  const csi = loadCsi();
  assert.deepEqual(Object.keys(csi.Identity.service).sort(), [
    "GetPluginCapabilities",
    "GetPluginInfo",
    "Probe",
  ]);
  assert.deepEqual(Object.keys(csi.Node.service).sort(), [
    "NodeExpandVolume",
    "NodeGetCapabilities",
    "NodeGetInfo",
    "NodeGetVolumeStats",
    "NodePublishVolume",
    "NodeStageVolume",
    "NodeUnpublishVolume",
    "NodeUnstageVolume",
  ]);
  assert.equal(csi.Node.service.NodePublishVolume?.path, "/csi.v1.Node/NodePublishVolume");
});

Deno.test("a publish request round-trips with the spec's field numbers, maps included", () => {
  const csi = loadCsi();
  const method = csi.Node.service.NodePublishVolume!;
  const request = {
    volume_id: "csi-1",
    target_path: "/t",
    volume_capability: {
      mount: { fs_type: "", mount_flags: [] },
      access_mode: { mode: "SINGLE_NODE_WRITER" },
    },
    readonly: true,
    secrets: { a: "b" },
    volume_context: { "csi.storage.k8s.io/ephemeral": "true" },
  };
  const bytes = method.requestSerialize(request);
  const decoded = method.requestDeserialize(bytes) as Record<string, unknown>;
  assert.equal(decoded.volume_id, "csi-1");
  assert.deepEqual(decoded.secrets, { a: "b" });
  assert.equal(decoded.access_type, undefined);
  assert.equal((decoded.volume_capability as Record<string, unknown>).access_type, "mount");
  // Field numbers as in the spec: read the bytes with a hand-written schema.
  const schema = {
    nested: {
      R: {
        fields: {
          volumeId: { id: 1, type: "string" },
          targetPath: { id: 4, type: "string" },
          readonly: { id: 6, type: "bool" },
          secrets: { id: 7, keyType: "string", type: "string" },
          volumeContext: { id: 8, keyType: "string", type: "string" },
        },
      },
    },
  };
  const root = protobuf.Root.fromJSON(schema as protobuf.INamespace);
  const raw = root.lookupType("R").decode(bytes).toJSON();
  assert.deepEqual(raw, {
    volumeId: "csi-1",
    targetPath: "/t",
    readonly: true,
    secrets: { a: "b" },
    volumeContext: { "csi.storage.k8s.io/ephemeral": "true" },
  });
});

Deno.test("checkRequest() names the string field that is not UTF-8, in maps and nested messages too", () => {
  const types = requestTypes();
  const publish = types.get("/csi.v1.Node/NodePublishVolume")!;
  const raw = (fields: [number, Uint8Array][]) => {
    const writer = protobuf.Writer.create();
    for (const [id, value] of fields) writer.uint32((id << 3) | 2).bytes(value);
    return writer.finish();
  };
  const check = (type: protobuf.Type, bytes: Uint8Array) => checkRequest(type, bytes, 64)?.message;
  const bad = Uint8Array.from([0x76, 0x6f, 0x6c, 0xff, 0xfe]); // "vol\xff\xfe"
  const good = new TextEncoder().encode("vol\ufffd");
  const entry = (key: Uint8Array, value: Uint8Array) => raw([[1, key], [2, value]]);
  const utf8 = (field: string) => `request field ${field} is not valid UTF-8`;
  // Field numbers from proto/csi.proto: volume_id 1, target_path 4, volume_context 8 (map).
  assert.equal(check(publish, raw([[1, good], [4, good]])), undefined);
  assert.equal(check(publish, raw([[1, good], [4, bad]])), utf8("target_path"));
  assert.equal(check(publish, raw([[1, bad]])), utf8("volume_id"));
  assert.equal(check(publish, raw([[8, entry(good, bad)]])), utf8("volume_context.value"));
  assert.equal(check(publish, raw([[8, entry(bad, good)]])), utf8("volume_context.key"));
  // volume_capability (5) -> mount (2) -> mount_flags (2, repeated string)
  const mount = raw([[2, good], [2, bad]]);
  assert.equal(
    check(publish, raw([[5, raw([[2, mount]])]])),
    utf8("volume_capability.mount.mount_flags"),
  );
  const stats = types.get("/csi.v1.Node/NodeGetVolumeStats")!;
  assert.equal(check(stats, raw([[2, bad]])), utf8("volume_path"));
});

Deno.test("checkRequest() refuses a known field with another wire type, and anything that does not parse", () => {
  const publish = requestTypes().get("/csi.v1.Node/NodePublishVolume")!;
  const writer = () => protobuf.Writer.create();
  const refusal = (bytes: Uint8Array) => checkRequest(publish, bytes, 64);
  // target_path (4, string) as a varint, a fixed64 and a fixed32.
  for (
    const [wire, bytes] of [
      [0, writer().uint32(4 << 3).uint32(7).finish()],
      [1, writer().uint32((4 << 3) | 1).fixed64(7).finish()],
      [5, writer().uint32((4 << 3) | 5).fixed32(7).finish()],
    ] as const
  ) {
    assert.deepEqual(refusal(bytes), {
      code: "INVALID_ARGUMENT",
      message: `request field target_path has wire type ${wire}`,
    });
  }
  // readonly (6, bool) as a string; a map entry's value as a varint.
  assert.equal(
    refusal(writer().uint32((6 << 3) | 2).string("yes").finish())?.message,
    "request field readonly has wire type 2",
  );
  const entry = writer().uint32((1 << 3) | 2).string("k").uint32(2 << 3).uint32(1).finish();
  assert.equal(
    refusal(writer().uint32((8 << 3) | 2).bytes(entry).finish())?.message,
    "request field volume_context.value has wire type 0",
  );
  // Truncated, or a wire type that does not exist: not a protobuf message.
  for (const bytes of [Uint8Array.from([0x22, 0x05, 0x41]), Uint8Array.from([0x7f, 0x00])]) {
    assert.deepEqual(refusal(bytes), {
      code: "INVALID_ARGUMENT",
      message: "request is not a valid protobuf message",
    });
  }
  // Unknown fields of any wire type are skipped, as proto3 says.
  assert.equal(refusal(writer().uint32(99 << 3).uint32(1).finish()), undefined);
});

Deno.test("checkRequest() counts map and repeated entries before anything is decoded", () => {
  const publish = requestTypes().get("/csi.v1.Node/NodePublishVolume")!;
  const entries = (count: number) => {
    const writer = protobuf.Writer.create();
    for (let i = 0; i < count; i++) {
      const entry = protobuf.Writer.create().uint32((1 << 3) | 2).string(`k${i}`).finish();
      writer.uint32((8 << 3) | 2).bytes(entry);
    }
    return writer.finish();
  };
  assert.equal(checkRequest(publish, entries(3), 3), undefined);
  assert.deepEqual(checkRequest(publish, entries(4), 3), {
    code: "RESOURCE_EXHAUSTED",
    message: "request field volume_context has more than 3 entries",
  });
});

Deno.test("the codecs decode and encode exactly as @grpc/proto-loader's do", async () => {
  const { fromJSON } = await import("@grpc/proto-loader");
  const { LOADER_OPTIONS } = await import("./proto.ts");
  // deno-lint-ignore no-explicit-any
  const reference = fromJSON(embedded as any, LOADER_OPTIONS) as any;
  const ours = loadCsi().Node.service.NodePublishVolume!;
  const theirs = reference["csi.v1.Node"].NodePublishVolume;
  const request = {
    volume_id: "csi-1",
    target_path: "/t",
    volume_capability: { mount: { fs_type: "" }, access_mode: { mode: "SINGLE_NODE_WRITER" } },
    readonly: true,
    volume_context: { "csi.storage.k8s.io/ephemeral": "true" },
  };
  const bytes = theirs.requestSerialize(request);
  assert.deepEqual([...ours.requestSerialize(request)], [...bytes]);
  assert.deepEqual(ours.requestDeserialize(bytes), theirs.requestDeserialize(bytes));
  assert.equal(ours.path, theirs.path);
  assert.equal(ours.originalName, theirs.originalName);
});
