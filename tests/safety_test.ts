// deno-lint-ignore-file no-console
// What README → Security promises about the mounts themselves, judged by the kernel's mount table
// (mountinfo, which escapes every byte), in this namespace and in another one that shares the
// pods dir the way the host shares it with a driver container (Bidirectional).
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { type DriverProcess, logRecords, startDriver } from "./_driver.ts";
import { CsiClient, publishRequest } from "./_csi_client.ts";
import { templateDirFor } from "../lib/config/flags.ts";
import { layers, makeTempTree, mountFlags, REAL_MOUNTS, type TempTree, waitFor } from "./_env.ts";

const HARDENED = ["nosuid", "nodev", "noexec"];

async function run(command: string, ...args: string[]): Promise<void> {
  const output = await new Deno.Command(command, { args, stderr: "piped" }).output();
  assert.ok(
    output.success,
    `${command} ${args.join(" ")}: ${new TextDecoder().decode(output.stderr)}`,
  );
}

interface Setup {
  tree: TempTree;
  driver: DriverProcess;
  client: CsiClient;
}

/** Starts drivers on `tree` for a test; every one started is killed at the end. */
type Start = (flags?: string[]) => Promise<DriverProcess>;

/** A fresh tree for `fn`; prints the logs of the drivers it started if it fails, then cleans up. */
function withTree(fn: (tree: TempTree, start: Start) => Promise<void>): () => Promise<void> {
  return async () => {
    const tree = await makeTempTree();
    const drivers: DriverProcess[] = [];
    const start: Start = async (flags = []) => {
      const driver = await startDriver({ ...tree, flags });
      drivers.push(driver);
      return driver;
    };
    try {
      await fn(tree, start);
    } catch (error) {
      for (const driver of drivers) console.error(driver.logs());
      throw error;
    } finally {
      for (const driver of drivers) await driver.stop("SIGKILL");
      await tree.remove();
    }
  };
}

/** A driver on a fresh tree whose pods dir is a shared mount, as kubelet's is on a node. */
function withDriver(
  fn: (s: Setup) => Promise<void>,
  prepare: (tree: TempTree) => Promise<void> = () => Promise.resolve(),
): () => Promise<void> {
  return withTree(async (tree, start) => {
    const pods = `${tree.kubeletDir}/pods`;
    await run("/usr/bin/mount", "--bind", pods, pods);
    await run("/usr/bin/mount", "--make-shared", pods);
    await prepare(tree);
    const driver = await start();
    const client = new CsiClient(tree.csiSocketPath);
    try {
      await fn({ tree, driver, client });
    } finally {
      client.close();
    }
  });
}

const test = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, ignore: !REAL_MOUNTS, fn });

/** A process in a mount namespace of its own whose copy of the pods dir is a peer of ours. */
function peerNamespace(): Deno.ChildProcess {
  return new Deno.Command("unshare", {
    args: ["--mount", "--propagation", "unchanged", "sleep", "600"],
    stdin: "null",
  }).spawn();
}

test(
  "a published bind arrives nosuid,nodev,noexec in a namespace it propagates to, not only in the driver's",
  withDriver(async ({ tree, client }) => {
    const peer = peerNamespace();
    try {
      await waitFor(
        "the peer namespace",
        async () => await namespaceOf(peer.pid) !== await namespaceOf("self") ? true : undefined,
      );
      const target = await tree.target("pod-a");
      await client.ok("NodePublishVolume", publishRequest(target));
      for (const where of ["self", peer.pid] as const) {
        const flags = await mountFlags(target, where);
        for (const flag of HARDENED) {
          assert.ok(flags.includes(flag), `${flag} in ${where}: ${flags}`);
        }
      }
    } finally {
      peer.kill("SIGKILL");
      await peer.status;
    }
  }),
);

test(
  "a read-only socket dir stays read-only through the target: nothing can be written through it",
  withDriver(async ({ tree, client }) => {
    const target = await tree.target("pod-a");
    await client.ok("NodePublishVolume", publishRequest(target));
    const flags = await mountFlags(target);
    assert.ok(flags.includes("ro"), `ro: ${flags}`);
    for (const flag of HARDENED) assert.ok(flags.includes(flag), `${flag}: ${flags}`);
    await assert.rejects(Deno.writeTextFile(`${target}/written`, "x"), /Read-only file system/);
    await assert.rejects(Deno.lstat(`${tree.socketDir}/written`), Deno.errors.NotFound);
  }, async (tree) => {
    await run("/usr/bin/mount", "--bind", tree.socketDir, tree.socketDir);
    await run("/usr/bin/mount", "-o", "remount,bind,ro", tree.socketDir);
  }),
);

test(
  "another driver's mount on a target is never unmounted or covered: FailedPrecondition, left as it was",
  withDriver(async ({ tree, client }) => {
    const target = await tree.target("pod-a");
    await Deno.mkdir(target);
    await run("/usr/bin/mount", "-t", "tmpfs", "other-driver", target);
    await Deno.writeTextFile(`${target}/data`, "kept");
    for (
      const [method, request] of [
        ["NodePublishVolume", publishRequest(target)],
        ["NodeUnpublishVolume", { volume_id: "v", target_path: target }],
      ] as const
    ) {
      const result = await client.call(method, request);
      assert.equal(result.ok, false, method);
      assert.equal(!result.ok && result.code, status.FAILED_PRECONDITION, method);
      assert.match(!result.ok ? result.details : "", /holds a mount that is not the Workload API/);
      assert.equal(await layers(target), 1, `${method}: one layer, the other driver's`);
      assert.equal(await Deno.readTextFile(`${target}/data`), "kept", method);
    }
  }),
);

test(
  "unpublish unmounts only the pinned target, even when other mounts' sources name the umount's target",
  withDriver(async ({ tree, driver, client }) => {
    // umount looks a target it cannot find in the mount table up as a source next.
    const sources = ["/proc/self/cwd", `/proc/${driver.child.pid}/cwd`];
    const victims = sources.map((_, i) => `${tree.root}/victim-${i}`);
    for (const [i, victim] of victims.entries()) {
      await Deno.mkdir(victim);
      await run("/usr/bin/mount", "-t", "tmpfs", sources[i] as string, victim);
      await Deno.writeTextFile(`${victim}/data`, "kept");
    }
    const target = await tree.target("pod-a");
    for (let i = 0; i < 3; i++) {
      await client.ok("NodePublishVolume", publishRequest(target));
      await client.ok("NodeUnpublishVolume", { volume_id: "v", target_path: target });
      assert.equal(await layers(target), 0, "our bind is gone");
      for (const victim of victims) {
        assert.equal(await Deno.readTextFile(`${victim}/data`), "kept", "the other mounts stay");
      }
    }
  }),
);

/** The mount namespace a process is in (through readlink: Deno refuses /proc by path). */
async function namespaceOf(pid: number | "self"): Promise<string> {
  const output = await new Deno.Command("readlink", { args: [`/proc/${pid}/ns/mnt`] }).output();
  return new TextDecoder().decode(output.stdout).trim();
}

/** Forges mount listing lines: a tmpfs whose source carries newlines, mounted beside the tree. */
async function forge(tree: TempTree, lines: string[]): Promise<void> {
  const at = `${tree.root}/forger`;
  await Deno.mkdir(at);
  await run("/usr/bin/mount", "-t", "tmpfs", `x\n${lines.join("\n")}\nx`, at);
}

test(
  "forged mount listing lines cannot make the start-up prune take a pod's only bind",
  withTree(async (tree, start) => {
    const target = await tree.target("pod-a");
    const first = await start();
    const client = new CsiClient(tree.csiSocketPath);
    try {
      await client.ok("NodePublishVolume", publishRequest(target));
    } finally {
      client.close();
    }
    await first.stop("SIGKILL");
    const fake = `${tree.socketDir} on ${target} type tmpfs (rw,nosuid,nodev,noexec)`;
    await forge(tree, [fake, fake, fake]);
    await waitForPass(await start(["-prune-stacked-mounts"]));
    assert.equal(await layers(target), 1, "one bind left");
    assert.equal((await Deno.stat(target)).ino, (await Deno.stat(tree.socketDir)).ino);
  }),
);

test(
  "a bind an earlier driver left without flags is replaced at start, whatever the listing claims",
  withTree(async (tree, start) => {
    const target = await tree.target("pod-a");
    await Deno.mkdir(target);
    // Upstream's bind: the socket dir's own flags, nothing added.
    await run("/usr/bin/mount", "--bind", tree.socketDir, target);
    await forge(tree, [`${tree.socketDir} on ${target} type ext4 (rw,nosuid,nodev,noexec)`]);
    await waitForPass(await start());
    const flags = await mountFlags(target);
    for (const flag of HARDENED) assert.ok(flags.includes(flag), `${flag}: ${flags}`);
    assert.equal(await layers(target), 1);
  }),
);

/** Waits for the start-up pass over leftover binds to finish. */
function waitForPass(driver: DriverProcess): Promise<true> {
  return waitFor(
    "the start-up pass",
    () =>
      logRecords(driver.logs()).some((r) =>
          r.message.startsWith("Replaced ") && "count" in r.properties
        )
        ? true
        : undefined,
  );
}

test(
  "the template is one mount however often the driver is killed, and none after it stops",
  withTree(async (tree, start) => {
    const template = templateDirFor(tree.cwdLink);
    for (let i = 0; i < 3; i++) {
      const driver = await start();
      assert.equal(await layers(template), 1, `start ${i + 1}: one template`);
      await driver.stop("SIGKILL");
    }
    const driver = await start();
    assert.equal((await driver.stop("SIGTERM")).code, 0);
    assert.equal(await layers(template), 0, "a stopped driver leaves no template");
  }),
);
