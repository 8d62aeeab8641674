import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  CONTAINER_PATHS,
  declaredPermissionSet,
  type DriverPaths,
  permissionFlags,
  permissionSet,
} from "./permissions.ts";

const PROBE = fileURLToPath(new URL("../tests/fixtures/sandbox_probe.ts", import.meta.url));

Deno.test("the permission set allows only mount/umount, the socket dir, the CSI socket, kubelet's pods dir and the registration socket", () => {
  const set = declaredPermissionSet();
  assert.deepEqual(set.run, ["/usr/bin/mount", "/usr/bin/umount"]);
  assert.deepEqual(set.net, [
    "unix:/spiffe-csi/csi.sock",
    "unix:/spiffe-workload-api/*",
    "unix:/registration/csi.spiffe.io-reg.sock",
  ]);
  assert.deepEqual(set.env, ["GRPC_*", "MY_NODE_NAME"]);
  assert.deepEqual(set.write.sort(), [
    "/registration/csi.spiffe.io-reg.sock",
    "/spiffe-csi/csi.sock",
    "/spiffe-workload-api",
    "/var/lib/kubelet/pods",
  ]);
  assert.deepEqual(set.read.sort(), set.write.sort());
  // Every flag is an explicit allowlist: nothing unrestricted, nothing beyond these five kinds.
  for (const flag of permissionFlags(CONTAINER_PATHS)) {
    assert.match(flag, /^(--no-prompt|--allow-(read|write|net|env|run)=[^=\s]+)$/, flag);
  }
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
  };
  assert.deepEqual(permissionSet(paths), {
    read: ["/tmp/a/agent", "/tmp/a/csi/csi.sock", "/var/snap/microk8s/common/var/lib/kubelet/pods"],
    write: [
      "/tmp/a/agent",
      "/tmp/a/csi/csi.sock",
      "/var/snap/microk8s/common/var/lib/kubelet/pods",
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
