import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { DEFAULT_SOCKET_NAMES, type DriverPaths, parseInvocation } from "./flags.ts";
import { grantedBy } from "../../tests/_permissions.ts";
import {
  CONTAINER_PATHS,
  containerLayouts,
  declaredPermissionSet,
  permissionFlags,
  permissionSet,
  ungrantedPaths,
} from "./permissions.ts";

const PROBE = fileURLToPath(new URL("../../tests/fixtures/sandbox_probe.ts", import.meta.url));

/** The plugin names of the hardened chart's layouts, nested ones included. */
const CHART_PLUGIN_NAMES = [
  "csi.spiffe.io",
  "upstream.csi.spiffe.io",
  "a.csi.spiffe.io",
  "b.csi.spiffe.io",
  "upstream-a.csi.spiffe.io",
  "upstream-b.csi.spiffe.io",
];
const REGISTRATION_SOCKETS = CHART_PLUGIN_NAMES.map((name) => `/registration/${name}-reg.sock`);

const PODS_DIRS = [
  "/var/lib/kubelet/pods",
  "/var/snap/microk8s/common/var/lib/kubelet/pods",
  "/var/lib/k0s/kubelet/pods",
];

Deno.test("the permission set allows only mount/umount, the socket dirs, the CSI socket, kubelet's pods dirs, the cwd link, the template and the registration socket", () => {
  const set = declaredPermissionSet();
  assert.deepEqual(set.run, ["/usr/bin/mount", "/usr/bin/umount"]);
  assert.deepEqual(set.net, [
    "unix:/spiffe-csi/csi.sock",
    "unix:/spiffe-workload-api/*",
    "unix:/spire-agent-socket/*",
    ...REGISTRATION_SOCKETS.map((path) => `unix:${path}`),
  ]);
  assert.deepEqual(set.env, ["GRPC_*", "MY_NODE_NAME"]);
  assert.deepEqual(
    set.write.sort(),
    [
      "/spiffe-csi/csi.sock",
      "/spiffe-workload-api",
      "/spire-agent-socket",
      ...PODS_DIRS,
      "/run/spiffe-csi-driver/cwd",
      "/run/spiffe-csi-driver/socket-dir",
      ...REGISTRATION_SOCKETS,
    ].sort(),
  );
  assert.deepEqual(set.read.sort(), set.write.sort());
  // Every flag is an explicit allowlist: nothing unrestricted, nothing beyond these five kinds.
  for (const flag of permissionFlags()) {
    assert.match(flag, /^(--no-prompt|--allow-(read|write|net|env|run)=[^=\s]+)$/, flag);
  }
});

Deno.test("the image's set serves our layout, upstream's and every well-known kubelet root", () => {
  assert.deepEqual(containerLayouts(), {
    socketDirs: ["/spiffe-workload-api", "/spire-agent-socket"],
    csiSocketPaths: ["/spiffe-csi/csi.sock"],
    kubeletDirs: PODS_DIRS.map((dir) => dir.slice(0, -"/pods".length)),
    nodeIdEnv: "MY_NODE_NAME",
    mountPath: "/usr/bin/mount",
    umountPath: "/usr/bin/umount",
    cwdLink: "/run/spiffe-csi-driver/cwd",
    templateDir: "/run/spiffe-csi-driver/socket-dir",
    registrationSocketPaths: REGISTRATION_SOCKETS,
  });
  const image = permissionSet();
  const dirs = ["/spiffe-workload-api", "/spire-agent-socket"];
  const cwd = "/run/spiffe-csi-driver/cwd";
  const template = "/run/spiffe-csi-driver/socket-dir";
  const reg = REGISTRATION_SOCKETS;
  assert.deepEqual(image.read, [
    ...dirs,
    "/spiffe-csi/csi.sock",
    ...PODS_DIRS,
    cwd,
    template,
    ...reg,
  ]);
  assert.deepEqual(image.write, image.read);
  // Each socket dir gets a connect permission for each Workload API socket name.
  assert.deepEqual(image.net, [
    "unix:/spiffe-csi/csi.sock",
    ...dirs.flatMap((dir) => DEFAULT_SOCKET_NAMES.map((name) => `unix:${dir}/${name}`)),
    ...reg.map((path) => `unix:${path}`),
  ]);
  // Another kubelet root (the build argument) replaces the well-known ones.
  const custom = permissionSet({ kubeletDir: "/opt/kubelet" });
  assert.deepEqual(custom.write, [
    ...dirs,
    "/spiffe-csi/csi.sock",
    "/opt/kubelet/pods",
    cwd,
    template,
    ...reg,
  ]);
  assert.equal(CONTAINER_PATHS.socketDir, "/spiffe-workload-api");
  assert.equal(CONTAINER_PATHS.kubeletDir, "/var/lib/kubelet");
});

Deno.test("containerLayouts() refuses a declared set whose roles it cannot tell", () => {
  const set = declaredPermissionSet();
  const without = (list: string[], value: string) => list.filter((entry) => entry !== value);
  // A socket dir without its connect entry is no known role.
  assert.throws(
    () => containerLayouts({ ...set, net: without(set.net, "unix:/spire-agent-socket/*") }),
    /no role for read entry \/spire-agent-socket/,
  );
  // A socket dir that may be connected to but not listed.
  assert.throws(
    () => containerLayouts({ ...set, read: without(set.read, "/spire-agent-socket") }),
    /\/spire-agent-socket must be in both read and write/,
  );
  assert.throws(
    () => containerLayouts({ ...set, run: [...set.run, "/bin/sh"] }),
    /no role for run entry \/bin\/sh/,
  );
});

Deno.test("ungrantedPaths() names each configured path the running set does not grant, with its flag", async () => {
  const granted = new Set([
    "/spire-agent-socket",
    "unix:/spiffe-csi/csi.sock",
    "/usr/bin/mount",
    "/run/spiffe-csi-driver/cwd",
    "/run/spiffe-csi-driver/socket-dir",
    "/registration/csi.spiffe.io-reg.sock",
    "unix:/registration/csi.spiffe.io-reg.sock",
  ]);
  const asked: Deno.PermissionDescriptor[] = [];
  const query = (d: Deno.PermissionDescriptor) => {
    asked.push(d);
    const value = "path" in d ? d.path : "host" in d ? d.host : "command" in d ? d.command : "";
    const state = granted.has(String(value)) || String(value).startsWith("/spiffe-csi/")
      ? "granted"
      : "prompt";
    return Promise.resolve({ state } as Deno.PermissionStatus);
  };
  const lines = await ungrantedPaths({
    ...CONTAINER_PATHS,
    socketDir: "/spire-agent-socket",
    kubeletDir: "/tmp/kubelet",
    umountPath: "/sbin/umount",
    socketNames: ["api.sock"],
  }, query);
  assert.deepEqual(lines, [
    "-kubelet-dir: /tmp/kubelet/pods is outside the driver's permission set (read, write)",
    "-workload-api-socket-names: /spire-agent-socket/api.sock is outside the driver's permission set (net)",
    "-umount-path: /sbin/umount is outside the driver's permission set (run)",
  ]);
  assert.ok(asked.some((d) => d.name === "net" && d.host === "unix:/spire-agent-socket/api.sock"));
  assert.ok(!asked.some((d) => d.name === "env"), "env is not a path");
  // Under the real permissions of this test process everything is granted.
  assert.deepEqual(await ungrantedPaths(CONTAINER_PATHS), []);
});

Deno.test("the image serves built-in registration for each plugin name of the hardened chart's nested layouts, and names any other", async () => {
  const query = grantedBy(permissionSet());
  /** The chart's driver args with `pluginName`, and built-in registration when `register`. */
  const chartConfig = (pluginName: string, register: boolean) => {
    const invocation = parseInvocation([
      "-workload-api-socket-dir",
      "/spire-agent-socket",
      "-plugin-name",
      pluginName,
      "-csi-socket-path",
      "/spiffe-csi/csi.sock",
      ...(register
        ? [`-kubelet-registration-path=/var/lib/kubelet/plugins/${pluginName}/csi.sock`]
        : []),
    ], { getEnv: () => "node" });
    if (invocation.command !== "run") throw new Error("expected a run");
    return invocation.config;
  };
  for (const name of CHART_PLUGIN_NAMES) {
    assert.deepEqual(await ungrantedPaths(chartConfig(name, true), query), [], name);
  }
  assert.deepEqual(await ungrantedPaths(chartConfig("other.example.org", true), query), [
    "-plugin-name with -plugin-registration-path: /registration/other.example.org-reg.sock is " +
    "outside the driver's permission set (read, write, net)",
  ]);
  // With node-driver-registrar (the chart's way) any plugin name runs: nothing names it.
  assert.deepEqual(await ungrantedPaths(chartConfig("other.example.org", false), query), []);
});

Deno.test("permissionSet() re-targets every path to the configured ones", () => {
  const paths: DriverPaths = {
    socketDir: "/tmp/a/agent",
    csiSocketPath: "/tmp/a/csi/csi.sock",
    kubeletDir: "/var/snap/microk8s/common/var/lib/kubelet",
    nodeIdEnv: "NODE",
    mountPath: "/bin/mount",
    umountPath: "/bin/umount",
    socketNames: ["api.sock", "w.sock"],
    cwdLink: "/tmp/a/cwd",
    templateDir: "/tmp/a/socket-dir",
  };
  assert.deepEqual(permissionSet(paths), {
    read: [
      "/tmp/a/agent",
      "/tmp/a/csi/csi.sock",
      "/var/snap/microk8s/common/var/lib/kubelet/pods",
      "/tmp/a/cwd",
      "/tmp/a/socket-dir",
    ],
    write: [
      "/tmp/a/agent",
      "/tmp/a/csi/csi.sock",
      "/var/snap/microk8s/common/var/lib/kubelet/pods",
      "/tmp/a/cwd",
      "/tmp/a/socket-dir",
    ],
    net: ["unix:/tmp/a/csi/csi.sock", "unix:/tmp/a/agent/api.sock", "unix:/tmp/a/agent/w.sock"],
    env: ["GRPC_*", "NODE"],
    run: ["/bin/mount", "/bin/umount"],
  });
  assert.throws(() => permissionSet({ ...paths, socketDir: "/a,b" }), /must not contain a comma/);
});

Deno.test("under the driver's permission set, everything outside the allowlist is refused", async () => {
  const root = await Deno.makeTempDir({ prefix: "spiffe-csi-sandbox-" });
  try {
    const paths: DriverPaths = {
      ...CONTAINER_PATHS,
      socketDir: `${root}/agent`,
      csiSocketPath: `${root}/csi.sock`,
      kubeletDir: `${root}/kubelet`,
    };
    await Deno.mkdir(`${root}/agent`);
    await Deno.mkdir(`${root}/kubelet/pods`, { recursive: true });
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", ...permissionFlags(paths), PROBE, paths.kubeletDir, paths.socketDir],
      clearEnv: true,
      env: { MY_NODE_NAME: "n", HOME: "/root", PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
    }).output();
    const stderr = new TextDecoder().decode(output.stderr);
    assert.ok(output.success, stderr);
    const results = JSON.parse(new TextDecoder().decode(output.stdout));
    assert.deepEqual(results, {
      "spawn sh": "NotCapable",
      "spawn /bin/sh": "NotCapable",
      "spawn busybox": "NotCapable",
      "spawn /usr/bin/mount": "allowed",
      "read /etc/shadow": "NotCapable",
      "read /etc/hostname": "NotCapable",
      "read /proc/self/mountinfo": "NotCapable",
      "list /root": "NotCapable",
      "write /tmp": "NotCapable",
      "write kubelet dir outside pods": "NotCapable",
      "write kubelet pods": "allowed",
      "list socket dir": "allowed",
      "tcp connect": "NotCapable",
      "tcp listen": "NotCapable",
      "env HOME": "NotCapable",
      "env MY_NODE_NAME": "allowed",
      "ffi": "NotCapable",
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("the flags' defaults are the image's container paths (deno.json), so one is never changed alone", () => {
  const invocation = parseInvocation(["-workload-api-socket-dir=/s", "-node-id=n"]);
  assert.equal(invocation.command, "run");
  if (invocation.command !== "run") return;
  const { config } = invocation;
  const registration = parseInvocation([
    "-workload-api-socket-dir=/s",
    "-node-id=n",
    "-kubelet-registration-path=/k/csi.sock",
  ]);
  assert.deepEqual(
    {
      csiSocketPath: config.csiSocketPath,
      kubeletDir: config.kubeletDir,
      nodeIdEnv: config.nodeIdEnv,
      mountPath: config.mountPath,
      umountPath: config.umountPath,
      socketNames: config.socketNames,
      cwdLink: config.cwdLink,
      registrationSocket: registration.command === "run"
        ? registration.config.registration?.socketPath
        : undefined,
    },
    {
      csiSocketPath: CONTAINER_PATHS.csiSocketPath,
      kubeletDir: CONTAINER_PATHS.kubeletDir,
      nodeIdEnv: CONTAINER_PATHS.nodeIdEnv,
      mountPath: CONTAINER_PATHS.mountPath,
      umountPath: CONTAINER_PATHS.umountPath,
      socketNames: CONTAINER_PATHS.socketNames,
      cwdLink: CONTAINER_PATHS.cwdLink,
      registrationSocket: CONTAINER_PATHS.registration?.socketPath,
    },
  );
});
