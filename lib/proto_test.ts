import assert from "node:assert/strict";
import protobuf from "protobufjs";
import embedded from "./csi_proto.json" with { type: "json" };
import registrationEmbedded from "./registration_proto.json" with { type: "json" };
import { PROTO_FILE, protoToJson, REGISTRATION_PROTO_FILE } from "../tools/proto_json.ts";
import { invalidUtf8Field, loadCsi, loadRegistration, requestTypes } from "./proto.ts";

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

Deno.test("invalidUtf8Field() names the string field that is not UTF-8, in maps and nested messages too", () => {
  const types = requestTypes();
  const publish = types.get("/csi.v1.Node/NodePublishVolume")!;
  const raw = (fields: [number, Uint8Array][]) => {
    const writer = protobuf.Writer.create();
    for (const [id, value] of fields) writer.uint32((id << 3) | 2).bytes(value);
    return writer.finish();
  };
  const bad = Uint8Array.from([0x76, 0x6f, 0x6c, 0xff, 0xfe]); // "vol\xff\xfe"
  const good = new TextEncoder().encode("vol\ufffd");
  const entry = (key: Uint8Array, value: Uint8Array) => raw([[1, key], [2, value]]);
  // Field numbers from proto/csi.proto: volume_id 1, target_path 4, volume_context 8 (map).
  assert.equal(invalidUtf8Field(publish, raw([[1, good], [4, good]])), undefined);
  assert.equal(invalidUtf8Field(publish, raw([[1, good], [4, bad]])), "target_path");
  assert.equal(invalidUtf8Field(publish, raw([[1, bad]])), "volume_id");
  assert.equal(invalidUtf8Field(publish, raw([[8, entry(good, bad)]])), "volume_context.value");
  assert.equal(invalidUtf8Field(publish, raw([[8, entry(bad, good)]])), "volume_context.key");
  // volume_capability (5) -> mount (2) -> mount_flags (2, repeated string)
  const mount = raw([[2, good], [2, bad]]);
  assert.equal(
    invalidUtf8Field(publish, raw([[5, raw([[2, mount]])]])),
    "volume_capability.mount.mount_flags",
  );
  const stats = types.get("/csi.v1.Node/NodeGetVolumeStats")!;
  assert.equal(invalidUtf8Field(stats, raw([[2, bad]])), "volume_path");
  // Truncated wire data is the decoder's to report.
  assert.equal(invalidUtf8Field(publish, Uint8Array.from([0x22, 0x05, 0x41])), undefined);
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
