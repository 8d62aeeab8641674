import assert from "node:assert/strict";
import { createRegistrationService, SUPPORTED_VERSIONS } from "./registration.ts";
import { parseInvocation, registrationSocketPath } from "./config/flags.ts";
import { CONTAINER_PATHS, declaredPermissionSet, permissionSet } from "./config/permissions.ts";

Deno.test("GetInfo answers as node-driver-registrar: CSIPlugin, the name, the host endpoint, 1.0.0", async () => {
  const service = createRegistrationService({
    pluginName: "csi.spiffe.io",
    endpoint: "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
    onStatus: () => {},
  });
  assert.deepEqual(await service.GetInfo({}), {
    type: "CSIPlugin",
    name: "csi.spiffe.io",
    endpoint: "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
    supported_versions: ["1.0.0"],
  });
  assert.deepEqual(SUPPORTED_VERSIONS, ["1.0.0"]);
});

Deno.test("NotifyRegistrationStatus hands kubelet's verdict to the caller", async () => {
  const seen: { registered: boolean; error: string }[] = [];
  const service = createRegistrationService({
    pluginName: "p.example",
    endpoint: "/e",
    onStatus: (status) => seen.push(status),
  });
  await service.NotifyRegistrationStatus({ plugin_registered: true, error: "" });
  await service.NotifyRegistrationStatus({ plugin_registered: false, error: "version mismatch" });
  assert.deepEqual(seen, [
    { registered: true, error: "" },
    { registered: false, error: "version mismatch" },
  ]);
});

Deno.test("-kubelet-registration-path enables registration on <plugin-registration-path>/<name>-reg.sock", () => {
  const base = ["-workload-api-socket-dir=/w", "-node-id=n"];
  const off = parseInvocation(base);
  assert.ok(off.command === "run");
  assert.equal(off.config.registration, undefined);

  const on = parseInvocation([
    ...base,
    "-kubelet-registration-path",
    "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
  ]);
  assert.ok(on.command === "run");
  assert.deepEqual(on.config.registration, {
    socketPath: "/registration/csi.spiffe.io-reg.sock",
    endpoint: "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
  });

  const custom = parseInvocation([
    ...base,
    "-plugin-name=x.example",
    "-kubelet-registration-path=/k/csi.sock",
    "--plugin-registration-path=/var/lib/kubelet/plugins_registry/",
  ]);
  assert.ok(custom.command === "run");
  assert.equal(
    custom.config.registration?.socketPath,
    "/var/lib/kubelet/plugins_registry/x.example-reg.sock",
  );
  assert.equal(registrationSocketPath("/r", "a.b"), "/r/a.b-reg.sock");
  assert.throws(
    () => parseInvocation([...base, "-kubelet-registration-path=relative/csi.sock"]),
    /must be an absolute path/,
  );
});

Deno.test("the permission set grows by exactly the registration socket, and only when it is served", () => {
  const declared = declaredPermissionSet();
  const socket = "/registration/csi.spiffe.io-reg.sock";
  assert.ok(declared.read.includes(socket) && declared.write.includes(socket));
  assert.ok(declared.net.includes(`unix:${socket}`));

  const { registration: _, ...withoutRegistration } = CONTAINER_PATHS;
  const without = permissionSet(withoutRegistration);
  const withIt = permissionSet({
    ...withoutRegistration,
    registration: {
      socketPath: "/var/lib/kubelet/plugins_registry/csi.spiffe.io-reg.sock",
      endpoint: "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
    },
  });
  const added = (kind: "read" | "write" | "net" | "env" | "run") =>
    withIt[kind].filter((entry) => !without[kind].includes(entry));
  assert.deepEqual(added("read"), ["/var/lib/kubelet/plugins_registry/csi.spiffe.io-reg.sock"]);
  assert.deepEqual(added("write"), ["/var/lib/kubelet/plugins_registry/csi.spiffe.io-reg.sock"]);
  assert.deepEqual(added("net"), [
    "unix:/var/lib/kubelet/plugins_registry/csi.spiffe.io-reg.sock",
  ]);
  assert.deepEqual(added("env"), []);
  assert.deepEqual(added("run"), []);
  // Nothing was taken away either, and nothing about registration is granted without it.
  for (const kind of ["read", "write", "net", "env", "run"] as const) {
    assert.equal(withIt[kind].length, without[kind].length + added(kind).length);
    assert.ok(!without[kind].some((entry) => entry.includes("reg.sock")), kind);
  }
});
