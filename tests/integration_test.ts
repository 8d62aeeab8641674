// deno-lint-ignore-file no-console
// The real driver process, under its permission set, over real gRPC, with real bind mounts inside
// tests/run.sh's private mount namespace.
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { type DriverProcess, logRecords, startDriver } from "./_driver.ts";
import { CsiClient, publishRequest } from "./_csi_client.ts";
import {
  layers,
  layersAt,
  makeTempTree,
  mountsUnder,
  mountTable,
  REAL_MOUNTS,
  type TempTree,
  waitFor,
} from "./_env.ts";

interface Setup {
  tree: TempTree;
  driver: DriverProcess;
  client: CsiClient;
}

async function bind(source: string, target: string): Promise<void> {
  const output = await new Deno.Command("/usr/bin/mount", { args: ["--bind", source, target] })
    .output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
}

/** Runs `fn` against a fresh driver and temp tree; unmounts whatever the test left, then cleans up. */
function withDriver(fn: (s: Setup) => Promise<void>, flags: string[] = []): () => Promise<void> {
  return async () => {
    const tree = await makeTempTree();
    const driver = await startDriver({ ...tree, flags });
    const client = new CsiClient(tree.csiSocketPath);
    try {
      await fn({ tree, driver, client });
    } catch (error) {
      console.error(driver.logs());
      throw error;
    } finally {
      client.close();
      await driver.stop("SIGKILL");
      for (const target of (await mountsUnder(tree.root)).reverse()) {
        await new Deno.Command("/usr/bin/umount", { args: [target] }).output();
      }
      await tree.remove();
    }
  };
}

const test = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, ignore: !REAL_MOUNTS, fn });

test(
  "publish bind-mounts the socket dir: a socket in it answers through the target",
  withDriver(async ({ tree, client }) => {
    const listener = Deno.listen({ transport: "unix", path: `${tree.socketDir}/api.sock` });
    try {
      const target = await tree.target("pod-a");
      assert.deepEqual(await client.ok("NodePublishVolume", publishRequest(target)), {});
      // The directory under the mount was created 0750: look at it through a bind of its parent
      // (a plain bind does not carry the mounts below it).
      const peek = `${tree.root}/peek`;
      await Deno.mkdir(peek);
      await bind(`${target}/..`, peek);
      assert.equal((await Deno.stat(`${peek}/mount`)).mode! & 0o777, 0o750);
      await new Deno.Command("/usr/bin/umount", { args: [peek] }).output();
      const accepted = listener.accept();
      const conn = await Deno.connect({ transport: "unix", path: `${target}/api.sock` });
      const server = await accepted;
      await conn.write(new TextEncoder().encode("hi"));
      const buffer = new Uint8Array(2);
      await server.read(buffer);
      assert.equal(new TextDecoder().decode(buffer), "hi");
      conn.close();
      server.close();
      // Read-write on the host (SELinux relabeling), hardened with nosuid,nodev,noexec.
      const entry = (await mountTable()).find((e) => e.target === target);
      assert.ok(entry, "mounted");
      for (const flag of ["rw", "nosuid", "nodev", "noexec"]) {
        assert.ok(entry.options.includes(flag), flag);
      }
    } finally {
      listener.close();
    }
  }),
);

test(
  "a second publish of the same target adds no mount layer",
  withDriver(async ({ tree, client }) => {
    const target = await tree.target("pod-a");
    for (let i = 0; i < 3; i++) await client.ok("NodePublishVolume", publishRequest(target));
    assert.equal(await layers(target), 1);
  }),
);

test(
  "unpublish removes every stacked layer and the directory",
  withDriver(async ({ tree, client }) => {
    const target = await tree.target("pod-a");
    await client.ok("NodePublishVolume", publishRequest(target));
    await bind(tree.socketDir, target);
    await bind(tree.socketDir, target);
    assert.equal(await layers(target), 3);
    await client.ok("NodeUnpublishVolume", { volume_id: "v", target_path: target });
    assert.equal(await layers(target), 0);
    await assert.rejects(Deno.lstat(target), Deno.errors.NotFound);
  }),
);

test(
  "unpublish of a missing or unmounted target succeeds",
  withDriver(async ({ tree, client }) => {
    const target = await tree.target("pod-a");
    await client.ok("NodeUnpublishVolume", { volume_id: "v", target_path: target });
    await Deno.mkdir(target);
    await client.ok("NodeUnpublishVolume", { volume_id: "v", target_path: target });
    await assert.rejects(Deno.lstat(target), Deno.errors.NotFound);
  }),
);

test(
  "publish onto a bind of another directory (a socket dir since replaced) leaves it: FailedPrecondition",
  withDriver(async ({ tree, client }) => {
    const old = `${tree.root}/old-agent`;
    await Deno.mkdir(old);
    const target = await tree.target("pod-a");
    await Deno.mkdir(target);
    await bind(old, target);
    const result = await client.call("NodePublishVolume", publishRequest(target));
    assert.equal(!result.ok && result.code, status.FAILED_PRECONDITION);
    assert.equal(await layers(target), 1);
    const [a, b] = await Promise.all([Deno.stat(target), Deno.stat(old)]);
    assert.equal(a.ino, b.ino, "the other directory is still the one mounted there");
  }),
);

test(
  "a failed mount leaves nothing mounted and no directory behind; the retry succeeds",
  withDriver(async ({ tree, client }) => {
    const target = await tree.target("pod-a");
    await Deno.remove(tree.socketDir);
    const result = await client.call("NodePublishVolume", publishRequest(target));
    assert.equal(result.ok, false);
    assert.equal(!result.ok && result.code, status.INTERNAL);
    assert.match(!result.ok ? result.details : "", /^unable to mount ".*\/mount": /);
    assert.equal(await layers(target), 0);
    await assert.rejects(Deno.lstat(target), Deno.errors.NotFound);
    await Deno.mkdir(tree.socketDir);
    await client.ok("NodePublishVolume", publishRequest(target));
    assert.equal(await layers(target), 1);
  }),
);

test(
  "volume stats report a healthy socket, a dead one, and a target that is not our mount",
  withDriver(async ({ tree, client }) => {
    const target = await tree.target("pod-a");
    await client.ok("NodePublishVolume", publishRequest(target));
    type Stats = {
      usage: { unit: string }[];
      volume_condition: { abnormal: boolean; message: string };
    };
    const stats = () =>
      client.ok<Stats>("NodeGetVolumeStats", { volume_id: "v", volume_path: target });

    let response = await stats();
    assert.equal(response.volume_condition.abnormal, true);
    assert.match(response.volume_condition.message, /no Unix socket in the volume/);
    assert.deepEqual(response.usage.map((u) => u.unit), ["BYTES", "INODES"]);

    const listener = Deno.listen({ transport: "unix", path: `${tree.socketDir}/api.sock` });
    response = await stats();
    assert.deepEqual(response.volume_condition, {
      abnormal: false,
      message: "a Workload API socket accepts connections",
    });
    listener.close();
    // A socket file nobody listens on (an agent that died): bound, never listening.
    const bound = await new Deno.Command("python3", {
      args: [
        "-c",
        "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
        `${tree.socketDir}/api.sock`,
      ],
    }).output();
    assert.ok(bound.success);
    response = await stats();
    assert.match(
      response.volume_condition.message,
      /no Unix socket in the volume accepts connections/,
    );

    await client.ok("NodeUnpublishVolume", { volume_id: "v", target_path: target });
    await Deno.mkdir(target);
    response = await stats();
    assert.match(
      response.volume_condition.message,
      /not a mount of the Workload API socket directory/,
    );
    const missing = await client.call("NodeGetVolumeStats", {
      volume_id: "v",
      volume_path: `${target}x`,
    });
    assert.equal(!missing.ok && missing.code, status.NOT_FOUND);
  }),
);

test(
  "Probe is ready only while the socket dir can be listed, and logs why once per change",
  withDriver(async ({ tree, driver, client }) => {
    type Probe = { ready: { value: boolean } };
    const probe = async () => (await client.ok<Probe>("Probe")).ready.value;
    assert.equal(await probe(), true);
    for (let round = 0; round < 2; round++) {
      await Deno.remove(tree.socketDir);
      for (let i = 0; i < 3; i++) assert.equal(await probe(), false);
      await Deno.mkdir(tree.socketDir);
      for (let i = 0; i < 3; i++) assert.equal(await probe(), true);
    }
    await driver.stop("SIGTERM");
    const records = logRecords(driver.logs()).filter((r) => r.message.startsWith("Probe:"));
    const expected = [
      { level: "WARN", ready: false, reason: `unable to list ${tree.socketDir}: No such file` },
      { level: "INFO", ready: true, reason: "" },
    ];
    assert.deepEqual(
      records.map((r) => ({
        level: r.level,
        ready: r.properties.ready,
        reason: String(r.properties.reason ?? "").replace(/ or directory.*$/, ""),
      })),
      [...expected, ...expected],
      driver.logs(),
    );
  }),
);

test(
  "a CSI socket that cannot be served is one log line and exit 1",
  async () => {
    const tree = await makeTempTree();
    try {
      const csiSocketPath = `${tree.root}/missing/csi.sock`;
      const driver = await startDriver({ ...tree, csiSocketPath, waitReady: false });
      const exit = await driver.exit(20_000);
      assert.equal(exit.code, 1, driver.logs());
      const errors = logRecords(driver.logs()).filter((r) => r.level !== "INFO");
      assert.equal(errors.length, 1, driver.logs());
      assert.match(errors[0]?.message ?? "", /^Cannot serve CSI on /);
      assert.match(String(errors[0]?.properties.error), /ENOENT|No such file/);
    } finally {
      await tree.remove();
    }
  },
);

test(
  "a second driver on the same CSI socket refuses to start and leaves the first serving",
  withDriver(async ({ tree, client }) => {
    const before = await Deno.lstat(tree.csiSocketPath);
    const second = await startDriver({ ...tree, waitReady: false });
    const exit = await second.exit(20_000);
    assert.equal(exit.code, 1, second.logs());
    const errors = logRecords(second.logs()).filter((r) => r.level !== "INFO");
    assert.equal(errors.length, 1, second.logs());
    assert.match(errors[0]?.message ?? "", /already serves on/);
    assert.equal((await Deno.lstat(tree.csiSocketPath)).ino, before.ino, "the socket was replaced");
    assert.ok((await client.ok<{ ready: { value: boolean } }>("Probe")).ready.value);
  }),
);

test(
  "an old driver stopping after a new one took the socket path leaves the new one's socket alone",
  withDriver(async ({ tree, driver }) => {
    // A surge roll: the new pod's driver finds the old socket stale (here: made stale by hand)
    // and serves a socket of its own on the path before the old driver has stopped.
    await Deno.remove(tree.csiSocketPath);
    const second = await startDriver({ ...tree });
    try {
      const ours = await Deno.lstat(tree.csiSocketPath);
      assert.equal((await driver.stop("SIGTERM")).code, 0, driver.logs());
      assert.equal(
        (await Deno.lstat(tree.csiSocketPath)).ino,
        ours.ino,
        "the new socket was removed",
      );
      const client = new CsiClient(tree.csiSocketPath);
      try {
        assert.ok((await client.ok<{ ready: { value: boolean } }>("Probe")).ready.value);
      } finally {
        client.close();
      }
    } finally {
      await second.stop("SIGKILL");
    }
  }),
);

test(
  "200 concurrent publishes of 200 targets, duplicates mixed in, leave exactly one layer each",
  withDriver(async ({ tree, client }) => {
    const targets: string[] = [];
    for (let i = 0; i < 200; i++) targets.push(await tree.target(`pod-${i}`));
    const requests = [...targets, ...targets.filter((_, i) => i % 4 === 0)];
    const results = await Promise.all(
      requests.map((t) => client.call("NodePublishVolume", publishRequest(t))),
    );
    assert.deepEqual(results.filter((r) => !r.ok), []);
    const table = await mountTable();
    for (const target of targets) assert.equal(layersAt(table, target), 1, target);
    const undone = await Promise.all(
      targets.map((t) => client.call("NodeUnpublishVolume", { volume_id: "v", target_path: t })),
    );
    assert.deepEqual(undone.filter((r) => !r.ok), []);
    assert.deepEqual(await mountsUnder(tree.root), []);
  }),
);

test(
  "SIGTERM drains, removes the CSI socket, exits 0 and leaves published volumes mounted",
  withDriver(async ({ tree, driver, client }) => {
    const target = await tree.target("pod-a");
    await client.ok("NodePublishVolume", publishRequest(target));
    const exit = await driver.stop("SIGTERM");
    assert.equal(exit.code, 0, driver.logs());
    await assert.rejects(Deno.lstat(tree.csiSocketPath), Deno.errors.NotFound);
    assert.equal(await layers(target), 1);
    assert.match(driver.logs(), /published volumes stay mounted/);
  }),
);

test(
  "every RPC is logged with its fields, and secrets and service account tokens never are",
  withDriver(async ({ tree, driver, client }) => {
    const target = await tree.target("11111111-2222");
    await client.ok(
      "NodePublishVolume",
      publishRequest(target, {
        secrets: { password: "hunter2-secret-value" },
        volume_context: {
          "csi.storage.k8s.io/ephemeral": "true",
          "csi.storage.k8s.io/pod.name": "web-0",
          "csi.storage.k8s.io/pod.namespace": "shop",
          "csi.storage.k8s.io/pod.uid": "11111111-2222",
          "csi.storage.k8s.io/serviceAccount.name": "web",
          "csi.storage.k8s.io/serviceAccount.tokens": '{"spire":{"token":"eyJtoken-value"}}',
        },
      }),
    );
    await driver.stop("SIGTERM");
    const lines = driver.logs().trim().split("\n").map((line) => JSON.parse(line));
    const rpc = lines.find((l) => l.properties?.method === "NodePublishVolume");
    assert.ok(rpc, driver.logs());
    assert.equal(rpc.level, "INFO");
    assert.deepEqual(
      { ...rpc.properties, duration_ms: typeof rpc.properties.duration_ms },
      {
        method: "NodePublishVolume",
        code: "OK",
        duration_ms: "number",
        volume_id: "csi-0123456789abcdef",
        target_path: target,
        pod_name: "web-0",
        pod_namespace: "shop",
        pod_uid: "11111111-2222",
      },
    );
    assert.doesNotMatch(driver.logs(), /hunter2|eyJtoken|serviceAccount\.tokens|password/);
  }, ["-log-level=debug"]),
);

test(
  "at start stacked layers are logged and the top one replaced; -prune-stacked-mounts leaves one",
  async () => {
    const tree = await makeTempTree();
    const target = await tree.target("pod-a");
    await Deno.mkdir(target);
    try {
      for (let i = 0; i < 3; i++) await bind(tree.socketDir, target);
      const audit = await startDriver({ ...tree });
      await waitFor(
        "the audit's log line",
        () => /Stacked mounts on/.test(audit.logs()) || undefined,
      );
      await waitFor("the pass's end", () => /Replaced 1 bind/.test(audit.logs()) || undefined);
      await audit.stop();
      assert.equal(await layers(target), 3, "without prune the layers stay");
      const prune = await startDriver({ ...tree, flags: ["-prune-stacked-mounts"] });
      await waitFor(
        "the prune's log line",
        () => /Replaced 3 layer/.test(prune.logs()) || undefined,
      );
      await prune.stop();
      assert.equal(await layers(target), 1);
    } finally {
      for (const t of (await mountsUnder(tree.root)).reverse()) {
        await new Deno.Command("/usr/bin/umount", { args: [t] }).output();
      }
      await tree.remove();
    }
  },
);

test(
  "a bind left without nosuid,nodev,noexec is replaced at start; a republish keeps it",
  async () => {
    const tree = await makeTempTree();
    const target = await tree.target("pod-unhardened");
    await Deno.mkdir(target);
    const options = async () =>
      (await mountTable()).filter((e) => e.target === target).map((e) => e.options);
    try {
      await bind(tree.socketDir, target);
      assert.ok(!(await options())[0]?.includes("noexec"), "starts unhardened");
      const driver = await startDriver({ ...tree });
      try {
        await waitFor(
          "the bind is replaced",
          () => /Replaced 1 bind/.test(driver.logs()) || undefined,
        );
        const client = new CsiClient(tree.csiSocketPath);
        try {
          await client.ok("NodePublishVolume", publishRequest(target));
        } finally {
          client.close();
        }
        const layers = await options();
        assert.equal(layers.length, 1);
        for (const flag of ["rw", "nosuid", "nodev", "noexec"]) {
          assert.ok(layers[0]?.includes(flag), `${flag}: ${layers[0]?.join(",")}`);
        }
      } finally {
        await driver.stop();
      }
    } finally {
      for (const t of (await mountsUnder(tree.root)).reverse()) {
        await new Deno.Command("/usr/bin/umount", { args: [t] }).output();
      }
      await tree.remove();
    }
  },
);

test(
  "the driver survives 1,000 calls on one connection (mixed OK and errors) and a disconnect",
  withDriver(async ({ tree, driver }) => {
    const client = new CsiClient(tree.csiSocketPath);
    const codes = new Map<number, number>();
    for (let i = 0; i < 1000; i++) {
      const result = i % 2 === 0
        ? await client.call("Probe")
        : await client.call("NodePublishVolume", { volume_id: "" });
      const code = result.ok ? 0 : result.code;
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    assert.deepEqual(Object.fromEntries(codes), { 0: 500, [status.INVALID_ARGUMENT]: 500 });
    // The driver has seen the disconnect once it closed its end of the connection.
    const connected = await sockets(driver.child.pid);
    client.close();
    await waitFor(
      "the driver to close the dropped connection",
      async () => (await sockets(driver.child.pid)) < connected || undefined,
    );
    const fresh = new CsiClient(tree.csiSocketPath);
    try {
      assert.equal((await fresh.ok<{ name: string }>("GetPluginInfo")).name, "csi.spiffe.io");
    } finally {
      fresh.close();
    }
    assert.equal(driver.child.pid > 0 && (await isAlive(driver.child.pid)), true, driver.logs());
  }),
);

/** How many sockets process `pid` holds open (its listeners and one per connection). */
async function sockets(pid: number): Promise<number> {
  // Deno reads /proc/<pid>/fd only with --allow-all: find lists it.
  const output = await new Deno.Command("/usr/bin/find", {
    args: [`/proc/${pid}/fd`, "-lname", "socket:*"],
    stdout: "piped",
  }).output();
  assert.ok(output.success);
  return new TextDecoder().decode(output.stdout).split("\n").filter((line) => line !== "").length;
}

async function isAlive(pid: number): Promise<boolean> {
  const output = await new Deno.Command("/usr/bin/kill", { args: ["-0", String(pid)] }).output();
  return output.success;
}
