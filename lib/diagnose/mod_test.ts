import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseInvocation } from "../config/flags.ts";
import type { Config } from "../config/flags.ts";
import type { Mounter } from "../mount/mounter.ts";
import { permissionFlags } from "../config/permissions.ts";
import {
  type CheckResult,
  type CheckStatus,
  diagnose,
  exitCode,
  formatChecklist,
  runChecks,
} from "./mod.ts";
import { makeTempTree, REAL_MOUNTS, type TempTree } from "../../tests/_env.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** A fake Mounter: `list` prints the given table (or throws it). */
function fakeMounter(listing: string | Error = ""): Mounter {
  return {
    bindMount: () => Promise.reject(new Error("not used")),
    harden: () => Promise.reject(new Error("not used")),
    unmount: () => Promise.reject(new Error("not used")),
    list: () => listing instanceof Error ? Promise.reject(listing) : Promise.resolve(listing),
  };
}

/** A node that passes every check: agent socket listening, fake mount/umount, pods dir. */
interface Node {
  tree: TempTree;
  config: Config;
  registrationDir: string;
  listeners: Deno.Listener[];
  closeListeners(): void;
  close(): Promise<void>;
}

/** Leaves a socket file nobody listens on (a process that exited without cleaning up). */
async function staleSocket(path: string): Promise<void> {
  const code = `Deno.listen({ transport: "unix", path: ${JSON.stringify(path)} }); Deno.exit(0);`;
  const output = await new Deno.Command(Deno.execPath(), { args: ["eval", code] }).output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
  assert.ok((await Deno.lstat(path)).isSocket);
}

async function healthyNode(): Promise<Node> {
  // Short names: a Unix socket path must fit in 108 bytes.
  const tree = await makeTempTree("scd-");
  const bin = `${tree.root}/bin`;
  await Deno.mkdir(bin);
  for (const name of ["mount", "umount"]) {
    const banner = `${name} from util-linux 2.38.1 (libmount 2.38.1)`;
    await Deno.writeTextFile(`${bin}/${name}`, `#!/bin/sh\necho '${banner}'\n`, { mode: 0o755 });
  }
  const registrationDir = `${tree.root}/plugins_registry`;
  await Deno.mkdir(registrationDir);
  const listeners = [
    Deno.listen({ transport: "unix", path: `${tree.socketDir}/api.sock` }),
    Deno.listen({ transport: "unix", path: `${registrationDir}/csi.spiffe.io-reg.sock` }),
  ];
  const invocation = parseInvocation([
    "diagnose",
    `-workload-api-socket-dir=${tree.socketDir}`,
    `-csi-socket-path=${tree.csiSocketPath}`,
    `-kubelet-dir=${tree.kubeletDir}`,
    `-mount-path=${bin}/mount`,
    `-umount-path=${bin}/umount`,
    "-node-id=node-1",
  ]);
  if (invocation.command !== "diagnose") throw new Error("expected diagnose");
  const closeListeners = () => {
    for (const listener of listeners) {
      try {
        listener.close();
      } catch { /* closed by the test */ }
    }
  };
  return {
    tree,
    config: invocation.config,
    registrationDir,
    listeners,
    closeListeners,
    async close() {
      closeListeners();
      await tree.remove();
    },
  };
}

async function check(
  node: Node,
  overrides: Partial<Config> = {},
  options: { mounter?: Mounter; registrationDir?: string | undefined } = {},
): Promise<CheckResult[]> {
  return await runChecks({ ...node.config, ...overrides }, {
    mounter: options.mounter ?? fakeMounter(),
    registrationDir: "registrationDir" in options ? options.registrationDir : node.registrationDir,
    timeoutMs: 1000,
  });
}

function statusOf(results: CheckResult[], prefix: string): CheckStatus {
  const found = results.find((r) => r.name.startsWith(prefix));
  assert.ok(found, `no check named ${prefix}: ${results.map((r) => r.name).join("; ")}`);
  return found.status;
}

function only(results: CheckResult[], prefix: string): CheckResult {
  const found = results.find((r) => r.name.startsWith(prefix));
  assert.ok(found, `no check named ${prefix}`);
  return found;
}

/** Asserts that exactly the named checks failed, each with a fix, and the rest passed or skipped. */
function assertFailed(results: CheckResult[], ...prefixes: string[]): void {
  const failed = results.filter((r) => r.status === "fail").map((r) => r.name);
  assert.deepEqual(
    failed.sort(),
    prefixes.map((p) => only(results, p).name).sort(),
    formatChecklist(results).join("\n"),
  );
  for (const result of results.filter((r) => r.status === "fail")) {
    assert.ok(result.fix && result.fix.length > 10, `${result.name} has no fix`);
  }
  assert.equal(exitCode(results), 1);
}

Deno.test("runChecks() passes every check on a healthy node and diagnose() returns 0", async () => {
  const node = await healthyNode();
  try {
    const results = await check(node);
    assert.equal(results.length, 10);
    assert.deepEqual(
      results.filter((r) => r.status !== "pass"),
      [],
      formatChecklist(results).join("\n"),
    );
    const lines: string[] = [];
    const code = await diagnose(node.config, {
      mounter: fakeMounter(),
      registrationDir: node.registrationDir,
      write: (line) => lines.push(line),
    });
    assert.equal(code, 0);
    assert.equal(lines.filter((l) => l.startsWith("PASS")).length, 10);
    assert.match(lines.at(-1) ?? "", /10 of 10 checks passed/);
  } finally {
    await node.close();
  }
});

Deno.test("Istio's layout: a Workload API socket named `socket` passes with the default names", async () => {
  const node = await healthyNode();
  try {
    node.listeners[0]?.close();
    await Deno.remove(`${node.tree.socketDir}/api.sock`).catch(() => {});
    const istio = Deno.listen({ transport: "unix", path: `${node.tree.socketDir}/socket` });
    try {
      const results = await check(node);
      assert.deepEqual(
        results.filter((r) => r.status !== "pass"),
        [],
        formatChecklist(results).join("\n"),
      );
    } finally {
      istio.close();
    }
  } finally {
    await node.close();
  }
});

Deno.test("diagnose needs no node id: it checks the node, not the driver's identity", () => {
  const invocation = parseInvocation(["diagnose", "-workload-api-socket-dir=/s"], {
    getEnv: () => undefined,
  });
  assert.equal(invocation.command, "diagnose");
  assert.throws(
    () => parseInvocation(["-workload-api-socket-dir=/s"], { getEnv: () => undefined }),
    /node ID is required/,
  );
});

Deno.test("runChecks() fails a missing Workload API dir and skips what depends on it", async () => {
  const node = await healthyNode();
  try {
    const results = await check(node, { socketDir: `${node.tree.root}/missing` });
    assertFailed(results, "Workload API dir exists");
    assert.equal(statusOf(results, "Workload API dir is a directory"), "skip");
    assert.equal(statusOf(results, "Workload API socket accepts"), "skip");
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() fails a Workload API dir that is a file", async () => {
  const node = await healthyNode();
  try {
    const file = `${node.tree.root}/not-a-dir`;
    await Deno.writeTextFile(file, "");
    assertFailed(await check(node, { socketDir: file }), "Workload API dir is a directory");
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() fails when no socket in the Workload API dir accepts", async () => {
  const node = await healthyNode();
  try {
    node.listeners[0]?.close(); // the agent went away without removing its socket
    await staleSocket(`${node.tree.socketDir}/api.sock`);
    const results = await check(node);
    assertFailed(results, "Workload API socket accepts");
    assert.match(only(results, "Workload API socket accepts").fix ?? "", /SPIRE agent/);
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() fails a Workload API dir inside a pod's emptyDir (by path)", async () => {
  const node = await healthyNode();
  try {
    const emptyDir = `${node.tree.kubeletDir}/pods/p/volumes/kubernetes.io~empty-dir/s`;
    await Deno.mkdir(emptyDir, { recursive: true });
    const listener = Deno.listen({ transport: "unix", path: `${emptyDir}/api.sock` });
    node.listeners.push(listener);
    const results = await check(node, { socketDir: emptyDir });
    assertFailed(results, "Workload API dir is not a pod's emptyDir");
    assert.match(only(results, "Workload API dir is not").fix ?? "", /hostPath/);
    // A symlink to the emptyDir is the same directory.
    const link = `${node.tree.root}/agent-link`;
    await Deno.symlink(emptyDir, link);
    assertFailed(
      await check(node, { socketDir: link }),
      "Workload API dir is not a pod's emptyDir",
    );
  } finally {
    await node.close();
  }
});

Deno.test({
  name: "runChecks() fails a Workload API dir bind-mounted from a pod's emptyDir (by identity)",
  ignore: !REAL_MOUNTS,
  async fn() {
    const node = await healthyNode();
    const emptyDir = `${node.tree.kubeletDir}/pods/p/volumes/kubernetes.io~empty-dir/s`;
    const bound = `${node.tree.root}/spiffe-workload-api`;
    try {
      await Deno.mkdir(emptyDir, { recursive: true });
      await Deno.mkdir(bound);
      const mount = await new Deno.Command("mount", { args: ["--bind", emptyDir, bound] })
        .output();
      assert.ok(mount.success, new TextDecoder().decode(mount.stderr));
      node.listeners.push(Deno.listen({ transport: "unix", path: `${bound}/api.sock` }));
      const results = await check(node, { socketDir: bound });
      assertFailed(results, "Workload API dir is not a pod's emptyDir");
      assert.match(only(results, "Workload API dir is not").detail, /is the emptyDir/);
    } finally {
      node.closeListeners(); // a bound socket keeps the mount busy
      await new Deno.Command("umount", { args: [bound] }).output();
      await node.close();
    }
  },
});

Deno.test("runChecks() fails a stale CSI socket that nobody listens on", async () => {
  const node = await healthyNode();
  try {
    await staleSocket(node.config.csiSocketPath);
    const results = await check(node);
    assertFailed(results, "CSI socket dir");
    assert.match(only(results, "CSI socket dir").detail, /stale socket/);
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() passes a CSI socket a driver listens on", async () => {
  const node = await healthyNode();
  try {
    node.listeners.push(Deno.listen({ transport: "unix", path: node.config.csiSocketPath }));
    const result = only(await check(node), "CSI socket dir");
    assert.equal(result.status, "pass");
    assert.match(result.detail, /listening/);
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() fails a CSI socket path blocked by a plain file", async () => {
  const node = await healthyNode();
  try {
    await Deno.writeTextFile(node.config.csiSocketPath, "");
    const results = await check(node);
    assertFailed(results, "CSI socket dir");
    assert.match(only(results, "CSI socket dir").detail, /not a socket/);
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() fails a missing CSI socket dir and leaves no socket behind", async () => {
  const node = await healthyNode();
  try {
    const missing = `${node.tree.root}/no-such-dir/csi.sock`;
    assertFailed(await check(node, { csiSocketPath: missing }), "CSI socket dir");
    // The writability probe on a healthy dir cleans up after itself.
    assert.equal(only(await check(node), "CSI socket dir").status, "pass");
    await assert.rejects(Deno.lstat(node.config.csiSocketPath), Deno.errors.NotFound);
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() fails missing mount and umount binaries, and ones that are not util-linux", async () => {
  const node = await healthyNode();
  try {
    assertFailed(
      await check(node, { mountPath: `${node.tree.root}/nope/mount` }),
      "mount exists",
    );
    assertFailed(
      await check(node, { umountPath: `${node.tree.root}/nope/umount` }),
      "umount exists",
    );
    // busybox answers -V with its own banner: the driver refuses it, so diagnose must too.
    const busybox = `${node.tree.root}/busybox-mount`;
    await Deno.writeTextFile(busybox, "#!/bin/sh\necho 'BusyBox v1.35.0 multi-call binary.'\n");
    await Deno.chmod(busybox, 0o755);
    const failed = only(await check(node, { mountPath: busybox }), "mount exists");
    assert.equal(failed.status, "fail");
    assert.match(failed.detail, /is not util-linux: BusyBox v1\.35\.0/);
    assert.equal(only(await check(node), "mount exists").status, "pass");
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() fails a missing kubelet pods dir", async () => {
  const node = await healthyNode();
  try {
    await Deno.remove(`${node.tree.kubeletDir}/pods`);
    const results = await check(node);
    assertFailed(results, "kubelet pods dir");
    assert.match(only(results, "kubelet pods dir").fix ?? "", /Bidirectional/);
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() fails a missing registration socket and skips without a dir", async () => {
  const node = await healthyNode();
  try {
    node.listeners[1]?.close(); // closing the listener removes its socket file
    assertFailed(await check(node), "registration socket");
    const skipped = await check(node, {}, { registrationDir: undefined });
    assert.equal(statusOf(skipped, "registration socket"), "skip");
    assert.equal(exitCode(skipped), 0);
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() fails stacked mounts of the socket dir under the pods dir", async () => {
  const node = await healthyNode();
  try {
    // A target that resolves to the socket dir (a symlink stands in for the bind mount).
    const target = await node.tree.target("pod-uid-1");
    await Deno.symlink(node.tree.socketDir, target);
    const line = `/dev/sda1 on ${target} type ext4 (rw,nosuid,nodev,noexec,relatime)`;
    const results = await check(node, {}, { mounter: fakeMounter(`${line}\n${line}\n`) });
    assertFailed(results, "no stacked mounts");
    assert.match(only(results, "no stacked mounts").detail, /2 layers/);
    assert.match(only(results, "no stacked mounts").fix ?? "", /-prune-stacked-mounts/);
    // One layer is the normal case.
    const single = await check(node, {}, { mounter: fakeMounter(`${line}\n`) });
    assert.equal(statusOf(single, "no stacked mounts"), "pass");
  } finally {
    await node.close();
  }
});

Deno.test("runChecks() reports an unreadable mount table as unknown, not passed", async () => {
  const node = await healthyNode();
  try {
    const results = await check(node, {}, { mounter: fakeMounter(new Error("mount: boom")) });
    assert.equal(statusOf(results, "no stacked mounts"), "unknown");
    assert.equal(exitCode(results), 1);
  } finally {
    await node.close();
  }
});

Deno.test("formatChecklist() prints a fix line under each failure", () => {
  const lines = formatChecklist([
    { name: "a", status: "pass", detail: "fine" },
    { name: "b", status: "fail", detail: "broken", fix: "mend it" },
    { name: "c", status: "unknown", detail: "hidden", fix: "ls -l c" },
    { name: "d", status: "skip", detail: "n/a" },
  ]);
  assert.deepEqual(lines.slice(0, 6), [
    "PASS    a: fine",
    "FAIL    b: broken",
    "        fix: mend it",
    "UNKNOWN c: hidden",
    "        check by hand: ls -l c",
    "SKIP    d: n/a",
  ]);
  assert.match(lines[6] ?? "", /1 of 4 checks passed \(1 failing, 1 could not run, 1 skipped\)/);
});

Deno.test("diagnose runs under the driver's permission set and reports what it cannot see", async () => {
  const node = await healthyNode();
  try {
    // The real permission set allows only the configured paths: the fake binaries are allowlisted
    // through -mount-path/-umount-path, the registration dir is not in the set at all.
    const script = `${node.tree.root}/run_diagnose.ts`;
    await Deno.writeTextFile(
      script,
      [
        `import { parseInvocation } from "${ROOT}lib/config/flags.ts";`,
        `import { diagnose } from "${ROOT}lib/diagnose/mod.ts";`,
        `const inv = parseInvocation(Deno.args);`,
        `if (inv.command !== "diagnose") throw new Error("expected diagnose");`,
        `const mounter = { bindMount: () => Promise.reject(), unmount: () => Promise.reject(),`,
        `  list: () => Promise.resolve("") };`,
        `Deno.exit(await diagnose(inv.config, { mounter, registrationDir: inv.registrationDir }));`,
      ].join("\n"),
    );
    const args = [
      "diagnose",
      `-workload-api-socket-dir=${node.config.socketDir}`,
      `-csi-socket-path=${node.config.csiSocketPath}`,
      `-kubelet-dir=${node.config.kubeletDir}`,
      `-mount-path=${node.config.mountPath}`,
      `-umount-path=${node.config.umountPath}`,
      "-node-id=node-1",
    ];
    const run = async (extra: string[]) => {
      const output = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          `--config=${ROOT}deno.json`,
          ...permissionFlags(node.config),
          script,
          ...args,
          ...extra,
        ],
        clearEnv: true,
        env: { HOME: Deno.env.get("HOME") ?? "/root", NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(output.stdout);
      return { code: output.code, text, stderr: new TextDecoder().decode(output.stderr) };
    };
    const healthy = await run([]);
    assert.equal(healthy.code, 0, `${healthy.text}\n${healthy.stderr}`);
    assert.match(healthy.text, /9 of 10 checks passed \(0 failing, 0 could not run, 1 skipped\)/);

    const outside = await run([`-registration-dir=${node.registrationDir}`]);
    assert.equal(outside.code, 1, outside.text);
    assert.match(outside.text, /UNKNOWN registration socket exists: .* outside the driver's/);
    assert.match(outside.text, /check by hand: ls -l /);
  } finally {
    await node.close();
  }
});
