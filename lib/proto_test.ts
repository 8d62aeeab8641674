import assert from "node:assert/strict";
import protobuf from "protobufjs";
import embedded from "./csi_proto.json" with { type: "json" };
import registrationEmbedded from "./registration_proto.json" with { type: "json" };
import { PROTO_FILE, protoToJson, REGISTRATION_PROTO_FILE } from "./proto_json.ts";
import { loadCsi, loadRegistration } from "./proto.ts";

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
