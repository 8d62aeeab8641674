/**
 * End to end on one machine, without Kubernetes: a real SPIRE server and agent, the driver started
 * under its permission set, and a fake kubelet that publishes as kubelet does. Workloads run as their
 * own Unix uids and reach the Workload API through a read-only bind of their volume, as a container
 * does. Needs root (tests/run.sh runs it in a private mount namespace).
 */
import assert from "node:assert/strict";
import { dirname } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { type DriverProcess, logRecords, startDriver } from "./_driver.ts";
import { layers, mountsUnder, parseMountListing, REAL_MOUNTS } from "./_env.ts";
import { FakeKubelet, type Pod } from "./_kubelet.ts";
import {
  type FetchedSvid,
  fetchX509,
  run,
  runOk,
  type RunResult,
  type Spire,
  SPIRE_BIN,
  startSpire,
  TRUST_DOMAIN,
  waitFor,
} from "./_spire.ts";

const MOUNT = "/usr/bin/mount";
const UMOUNT = "/usr/bin/umount";
const VOLUME = "spiffe-workload-api";

/** The workloads: each pod runs as its own uid and has a registration entry for that uid. */
const WORKLOADS = {
  a: { uid: 50001, name: "pod-a", serviceAccount: "sa-a" },
  b: { uid: 50002, name: "pod-b", serviceAccount: "sa-b" },
  c: { uid: 50003, name: "pod-c", serviceAccount: "sa-c" },
} as const;
/** A uid with no registration entry. */
const UNREGISTERED_UID = 50099;

function spiffeIdOf(name: keyof typeof WORKLOADS): string {
  return `spiffe://${TRUST_DOMAIN}/ns/default/sa/${WORKLOADS[name].serviceAccount}`;
}

/** A pod of the test, with what its container needs. */
interface TestPod {
  key: keyof typeof WORKLOADS;
  pod: Pod;
  uid: number;
  spiffeId: string;
  /** Where the workload writes what it fetched (owned by its uid). */
  outDir: string;
  /** The container's read-only view of the volume, while the container runs. */
  view?: string;
}

/** One deployment: SPIRE, the driver, the fake kubelet, and the container views. */
interface E2e {
  root: string;
  socketDir: string;
  kubeletDir: string;
  csiSocketPath: string;
  spire: Spire;
  driver: DriverProcess;
  kubelet: FakeKubelet;
  agentBin: string;
  pod(key: keyof typeof WORKLOADS): Promise<TestPod>;
  /** Publishes the pod's volume and starts its container (a read-only bind of the target). */
  schedule(pod: TestPod): Promise<string>;
  /** Stops the container (removes its view), then tears the volume down. */
  terminate(pod: TestPod): Promise<void>;
  /** Starts the container: a read-only bind of the target, as a container runtime makes it. */
  openView(pod: TestPod): Promise<string>;
  /** Stops the container: unmounts and removes its view. */
  closeView(pod: TestPod): Promise<void>;
  /** Fetches as the pod's workload through its view (or `socketDir`); retries until `timeoutMs`. */
  fetch(pod: TestPod, options?: { socketDir?: string; timeoutMs?: number }): Promise<FetchedSvid>;
  /** One fetch attempt as the pod's workload; returns the outcome without retrying. */
  tryFetch(
    pod: TestPod,
    options?: { socketDir?: string; uid?: number },
  ): Promise<{ code: number; stderr: string; svid?: FetchedSvid }>;
  startDriver(): Promise<void>;
}

/** Runs `fn` against a fresh deployment; cleans up every process, mount and dir; logs on failure. */
async function withE2e(fn: (env: E2e) => Promise<void>): Promise<void> {
  for (const name of ["spire-server", "spire-agent"]) {
    if (!(await isExecutable(`${SPIRE_BIN}/${name}`))) {
      throw new Error(`${SPIRE_BIN}/${name} is missing: run tools/install_peers.sh`);
    }
  }
  const root = await Deno.makeTempDir({ prefix: "spiffe-csi-e2e-" });
  const socketDir = `${root}/agent-sockets`;
  const kubeletDir = `${root}/kubelet`;
  const csiSocketPath = `${root}/csi/csi.sock`;
  const cwdLink = `${root}/cwd`;
  const agentBin = `${root}/bin/spire-agent`;
  let spire: Spire | undefined;
  const drivers: DriverProcess[] = [];
  let failure: unknown = undefined;
  try {
    // Workloads run as other uids: they must reach their views, out dirs and the agent binary.
    await Deno.chmod(root, 0o755);
    for (const dir of [socketDir, `${root}/csi`, `${kubeletDir}/pods`, `${root}/bin`]) {
      await Deno.mkdir(dir, { recursive: true });
    }
    for (const dir of [`${root}/views`, `${root}/out`]) await Deno.mkdir(dir, { mode: 0o755 });
    await Deno.chmod(socketDir, 0o755);
    await Deno.symlink("/proc/self/cwd", cwdLink);
    await Deno.mkdir(`${root}/spire`, { mode: 0o700 });
    await Deno.copyFile(`${SPIRE_BIN}/spire-agent`, agentBin);
    await Deno.chmod(agentBin, 0o755);

    spire = await startSpire({
      dir: `${root}/spire`,
      socketDir,
      entries: Object.keys(WORKLOADS).map((key) => ({
        spiffeId: spiffeIdOf(key as keyof typeof WORKLOADS),
        uid: WORKLOADS[key as keyof typeof WORKLOADS].uid,
      })),
    });
    const startOne = async () => {
      drivers.push(
        await startDriver({
          socketDir,
          csiSocketPath,
          kubeletDir,
          cwdLink,
          flags: ["-log-level=debug"],
        }),
      );
    };
    await startOne();
    const kubelet = new FakeKubelet({ kubeletDir, csiSocketPath });
    const env: E2e = {
      root,
      socketDir,
      kubeletDir,
      csiSocketPath,
      spire,
      kubelet,
      agentBin,
      get driver() {
        return drivers[drivers.length - 1] as DriverProcess;
      },
      async pod(key) {
        const spec = WORKLOADS[key];
        const outDir = `${root}/out/${key}`;
        await Deno.mkdir(outDir, { mode: 0o700 });
        await Deno.chown(outDir, spec.uid, spec.uid);
        return {
          key,
          uid: spec.uid,
          spiffeId: spiffeIdOf(key),
          outDir,
          pod: {
            uid: crypto.randomUUID(),
            name: spec.name,
            namespace: "default",
            serviceAccount: spec.serviceAccount,
          },
        };
      },
      async schedule(pod) {
        const outcome = await kubelet.publish(pod.pod, VOLUME);
        assert.ok(outcome.capabilities.ok, "NodeGetCapabilities failed");
        assert.ok(
          outcome.result?.ok,
          `NodePublishVolume failed: ${JSON.stringify(outcome.result)}`,
        );
        await env.openView(pod);
        return outcome.target;
      },
      async terminate(pod) {
        await env.closeView(pod);
        const result = await kubelet.teardown(pod.pod, VOLUME);
        assert.ok(result.ok, `NodeUnpublishVolume failed: ${JSON.stringify(result)}`);
      },
      async openView(pod) {
        const view = `${root}/views/${pod.key}`;
        await Deno.mkdir(view, { mode: 0o755 });
        const target = kubelet.targetPath(pod.pod.uid, VOLUME);
        await runOk(MOUNT, ["--bind", target, view]);
        await runOk(MOUNT, ["-o", "remount,bind,ro,nosuid,nodev,noexec", view]);
        pod.view = view;
        return view;
      },
      async closeView(pod) {
        if (pod.view === undefined) return;
        await runOk(UMOUNT, [pod.view]);
        await Deno.remove(pod.view);
        delete pod.view;
      },
      async fetch(pod, options = {}) {
        const socketDir = options.socketDir ?? pod.view;
        assert.ok(socketDir, `pod ${pod.key} has no running container`);
        return await waitFor(
          `an SVID for ${pod.key}`,
          async () => {
            const attempt = await env.tryFetch(pod, { socketDir });
            if (attempt.svid) return attempt.svid;
            throw new Error(attempt.stderr.trim());
          },
          options.timeoutMs ?? 30_000,
          250,
        );
      },
      async tryFetch(pod, options = {}) {
        const socketDir = options.socketDir ?? pod.view;
        assert.ok(socketDir, `pod ${pod.key} has no running container`);
        const { result, svid } = await fetchX509({
          agentBin,
          socketDir,
          uid: options.uid ?? pod.uid,
          outDir: pod.outDir,
          timeoutMs: 3_000,
        });
        return svid
          ? { code: result.code, stderr: result.stderr, svid }
          : { code: result.code, stderr: result.stderr };
      },
      startDriver: startOne,
    };
    await fn(env);
  } catch (error) {
    failure = error;
    printLogs([
      ["mount table", await mountListing().catch((e) => String(e))],
      ...drivers.map((d, i): [string, string] => [`driver (start ${i + 1})`, d.logs()]),
      ["spire", spire?.logs() ?? "(not started)"],
    ]);
  }
  for (const driver of drivers) await driver.stop("SIGKILL").catch(() => {});
  await spire?.stop().catch(() => {});
  const left = await unmountAllUnder(root).catch((e) => [String(e)]);
  // Never recurse into a live mount (it would delete through it): leave the dir and say so.
  if (left.length === 0) await Deno.remove(root, { recursive: true });
  if (failure !== undefined) throw failure;
  if (left.length > 0) throw new Error(`mounts left under ${root}: ${left.join(", ")}`);
}

/** `mount` output (the mount table of this namespace). */
async function mountListing(): Promise<string> {
  return await runOk(MOUNT, []);
}

/** Unmounts everything under `dir`, deepest first; returns what could not be unmounted. */
async function unmountAllUnder(dir: string): Promise<string[]> {
  for (let round = 0; round < 20; round++) {
    const targets = await mountsUnder(dir);
    if (targets.length === 0) return [];
    targets.sort((a, b) => b.length - a.length);
    for (const target of targets) {
      const result = await run(UMOUNT, [target]);
      if (result.code !== 0) await run(UMOUNT, ["-l", target]);
    }
  }
  return await mountsUnder(dir);
}

/** The mount options of the top mount at `target`. */
async function mountOptions(target: string): Promise<string[]> {
  const entries = parseMountListing(await mountListing()).filter((e) => e.target === target);
  return entries[entries.length - 1]?.options ?? [];
}

/** True when `a` and `b` are the same directory (device and inode). */
async function sameDir(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.stat(a), Deno.stat(b)]);
  return x.dev === y.dev && x.ino === y.ino;
}

/** Identity, mode, owner and times of a directory and every entry in it. */
async function snapshot(dir: string): Promise<string> {
  const describe = (name: string, info: Deno.FileInfo) =>
    JSON.stringify([name, info.ino, info.mode, info.uid, info.gid, info.mtime?.getTime()]);
  const lines = [describe(".", await Deno.lstat(dir))];
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) names.push(entry.name);
  for (const name of names.sort()) lines.push(describe(name, await Deno.lstat(`${dir}/${name}`)));
  return lines.join("\n");
}

/** Checks that `fetched` is the pod's SVID and that it chains to the bundle. */
async function assertSvidOf(pod: TestPod, fetched: FetchedSvid): Promise<void> {
  assert.equal(fetched.spiffeId, pod.spiffeId);
  assert.ok(fetched.svid.checkIssued(fetched.bundle), "the SVID is not issued by the bundle's CA");
  assert.ok(fetched.svid.verify(fetched.bundle.publicKey), "the SVID signature does not verify");
  const now = Date.now();
  assert.ok(Date.parse(fetched.svid.validFrom) <= now && now < Date.parse(fetched.svid.validTo));
  // And as a TLS stack would check it, where openssl is installed.
  let verified: RunResult;
  try {
    verified = await run("openssl", [
      "verify",
      "-CAfile",
      `${pod.outDir}/bundle.0.pem`,
      `${pod.outDir}/svid.0.pem`,
    ]);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return;
    throw error;
  }
  assert.equal(verified.code, 0, `openssl verify: ${verified.stdout}${verified.stderr}`);
}

/** Asserts a write-like operation through a read-only view fails with EROFS. */
async function assertReadOnly(what: string, op: () => Promise<unknown>): Promise<void> {
  await assert.rejects(op, (error: unknown) => {
    assert.match(String(error), /Read-only file system|os error 30/, `${what}: ${String(error)}`);
    return true;
  });
}

function printLogs(sections: [string, string][]): void {
  const text = sections.map(([name, body]) => `===== ${name} =====\n${body}`).join("\n");
  Deno.stderr.writeSync(new TextEncoder().encode(`${text}\n`));
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    const info = await Deno.stat(path);
    return info.isFile && ((info.mode ?? 0) & 0o111) !== 0;
  } catch {
    return false;
  }
}

const options = { ignore: !REAL_MOUNTS };

Deno.test({
  ...options,
  name: "e2e: two pods with different uids each get their own SVID through a read-only view",
  async fn() {
    await withE2e(async (env) => {
      const a = await env.pod("a");
      const b = await env.pod("b");
      const targetA = await env.schedule(a);
      const targetB = await env.schedule(b);
      for (const target of [targetA, targetB]) {
        assert.equal(await layers(target), 1, `one mount layer at ${target}`);
        assert.ok(await sameDir(target, env.socketDir), "the target shows the agent socket dir");
        const vol = JSON.parse(await Deno.readTextFile(`${dirname(target)}/vol_data.json`));
        assert.equal(vol.volumeLifecycleMode, "Ephemeral");
      }

      for (const pod of [a, b]) await assertSvidOf(pod, await env.fetch(pod));
      // The identity follows the uid, not the path: a's workload through b's view is still a.
      await assertSvidOf(a, await env.fetch(a, { socketDir: b.view as string }));
      const stranger = await env.tryFetch(a, { uid: UNREGISTERED_UID });
      assert.notEqual(stranger.code, 0, "a uid without an entry must get no SVID");

      for (const [pod, target] of [[a, targetA], [b, targetB]] as const) {
        await env.terminate(pod);
        await assert.rejects(Deno.lstat(target), Deno.errors.NotFound);
        await assert.rejects(Deno.lstat(dirname(target)), Deno.errors.NotFound);
        const after = await env.tryFetch(pod, { socketDir: target });
        assert.notEqual(after.code, 0, "a fetch through the unpublished target must fail");
      }
      assert.deepEqual(await mountsUnder(env.kubeletDir), []);
      assert.deepEqual(await mountsUnder(`${env.root}/views`), []);
    });
  },
});

Deno.test({
  ...options,
  name: "e2e: the workload cannot write through its read-only view and the socket dir is unchanged",
  async fn() {
    await withE2e(async (env) => {
      const a = await env.pod("a");
      const target = await env.schedule(a);
      await assertSvidOf(a, await env.fetch(a));
      const view = a.view as string;
      const before = await snapshot(env.socketDir);

      const hardening = await mountOptions(target);
      for (const flag of ["nosuid", "nodev", "noexec"]) {
        assert.ok(hardening.includes(flag), `target mounted ${flag}: ${hardening.join(",")}`);
      }
      assert.ok((await mountOptions(view)).includes("ro"), "the view is read-only");

      // As the workload's uid: every write fails.
      const attempts: [string, string[]][] = [
        ["touch", [`${view}/new-file`]],
        ["mkdir", [`${view}/new-dir`]],
        ["rm", ["-f", `${view}/api.sock`]],
        ["mv", [`${view}/api.sock`, `${view}/moved.sock`]],
        ["ln", ["-s", "/etc/passwd", `${view}/link`]],
        ["chmod", ["0700", view]],
      ];
      for (const [command, args] of attempts) {
        const result = await run(command, args, { uid: a.uid });
        assert.notEqual(result.code, 0, `${command} ${args.join(" ")} succeeded as the workload`);
      }
      // As root inside the container: still refused, by the read-only mount itself.
      await assertReadOnly("write", () => Deno.writeTextFile(`${view}/new-file`, "x"));
      await assertReadOnly("mkdir", () => Deno.mkdir(`${view}/new-dir`));
      await assertReadOnly("remove", () => Deno.remove(`${view}/api.sock`));
      await assertReadOnly("rename", () => Deno.rename(`${view}/api.sock`, `${view}/x.sock`));
      await assertReadOnly("chmod", () => Deno.chmod(view, 0o777));
      await assertReadOnly("chown", () => Deno.chown(`${view}/api.sock`, 0, 0));

      assert.equal(await snapshot(env.socketDir), before, "the agent socket dir changed");
      await assertSvidOf(a, await env.fetch(a));
      await env.terminate(a);
      assert.equal(await snapshot(env.socketDir), before, "teardown changed the agent socket dir");
    });
  },
});

Deno.test({
  ...options,
  name: "e2e: a pod published before a SPIRE agent restart fetches again without republish",
  async fn() {
    await withE2e(async (env) => {
      const a = await env.pod("a");
      const target = await env.schedule(a);
      await assertSvidOf(a, await env.fetch(a));

      await env.spire.stopAgent();
      const down = await env.tryFetch(a);
      assert.notEqual(down.code, 0, "a fetch with the agent stopped must fail");
      await assert.rejects(Deno.lstat(`${a.view}/api.sock`), Deno.errors.NotFound);

      await env.spire.startAgent();
      // The new socket, made in the host dir after publish, shows through the pod's old view.
      assert.ok((await Deno.lstat(`${a.view}/api.sock`)).isSocket);
      await assertSvidOf(a, await env.fetch(a));
      assert.equal(await layers(target), 1, "no republish happened: still one layer");
      await env.terminate(a);
      assert.deepEqual(await mountsUnder(env.kubeletDir), []);
    });
  },
});

Deno.test({
  ...options,
  name: "e2e: volumes survive kill -9 of the driver; after restart republish is idempotent and " +
    "teardowns missed while it was down succeed",
  async fn() {
    await withE2e(async (env) => {
      const a = await env.pod("a");
      const b = await env.pod("b");
      const c = await env.pod("c");
      const targetA = await env.schedule(a);
      const targetB = await env.schedule(b);
      for (const pod of [a, b]) await assertSvidOf(pod, await env.fetch(pod));

      const killed = await env.driver.stop("SIGKILL");
      assert.equal(killed.signal, "SIGKILL");
      // The pods keep working: their mounts do not depend on the driver process.
      for (const pod of [a, b]) await assertSvidOf(pod, await env.fetch(pod));

      // b terminates while the driver is down: the unpublish fails and kubelet keeps the volume.
      await env.closeView(b);
      const missed = await env.kubelet.teardown(b.pod, VOLUME);
      assert.ok(!missed.ok && missed.code === grpc.status.UNAVAILABLE, JSON.stringify(missed));
      assert.equal(env.kubelet.state(b.pod, VOLUME), "mounted");
      assert.equal(await layers(targetB), 1);
      await Deno.lstat(`${dirname(targetB)}/vol_data.json`);
      // c is scheduled while the driver is down: kubelet cannot even ask for capabilities.
      const early = await env.kubelet.publish(c.pod, VOLUME);
      assert.ok(!early.capabilities.ok && early.state === undefined);
      await assert.rejects(Deno.lstat(early.target), Deno.errors.NotFound);

      await env.startDriver();
      // kubelet's reconciler publishes a again: same single layer, pod unaffected.
      const again = await env.kubelet.publish(a.pod, VOLUME);
      assert.ok(again.result?.ok, JSON.stringify(again.result));
      assert.equal(await layers(targetA), 1, "republish stacked a second layer");
      await assertSvidOf(a, await env.fetch(a));
      // kubelet retries b's teardown: it succeeds now and leaves nothing behind.
      const retried = await env.kubelet.teardown(b.pod, VOLUME);
      assert.ok(retried.ok, JSON.stringify(retried));
      assert.equal(await layers(targetB), 0);
      await assert.rejects(Deno.lstat(dirname(targetB)), Deno.errors.NotFound);
      // And retries c's setup.
      await env.schedule(c);
      await assertSvidOf(c, await env.fetch(c));

      await env.terminate(a);
      await env.terminate(c);
      assert.deepEqual(await mountsUnder(env.kubeletDir), []);
      const status = await env.driver.stop();
      assert.equal(status.code, 0, "the restarted driver stops cleanly");
    });
  },
});

Deno.test({
  ...options,
  name: "e2e: after an uncertain publish error kubelet's unpublish leaves nothing mounted",
  async fn() {
    await withE2e(async (env) => {
      // A deadline shorter than a mount: kubelet gives up (DEADLINE_EXCEEDED, "uncertain") while
      // the driver may still complete the mount; kubelet must and does unpublish it.
      const a = await env.pod("a");
      let uncertain = 0;
      let mountedLate = 0;
      for (const deadlineMs of [1, 2, 3, 5, 8, 13]) {
        const volume = `uncertain-${deadlineMs}`;
        const outcome = await env.kubelet.publish(a.pod, volume, { deadlineMs });
        if (outcome.result?.ok) {
          assert.equal(outcome.state, "mounted");
        } else {
          assert.equal(outcome.result?.code, grpc.status.DEADLINE_EXCEEDED);
          assert.equal(outcome.state, "uncertain");
          uncertain++;
        }
        // Whatever the driver did, the volume dir (and vol_data.json) stays for the teardown,
        // which kubelet runs after its retry backoff (500 ms at first). Here it runs at once: a
        // publish that reached the driver holds the target until it is done, so the teardown
        // still comes after any mount it completes late (a publish cancelled before the driver
        // read it never runs at all).
        await Deno.lstat(`${dirname(outcome.target)}/vol_data.json`);
        const teardown = await env.kubelet.teardown(a.pod, volume);
        assert.ok(teardown.ok, JSON.stringify(teardown));
        assert.equal(await layers(outcome.target), 0);
        await assert.rejects(Deno.lstat(dirname(outcome.target)), Deno.errors.NotFound);
        // The driver's log says whether it completed the mount kubelet had given up on.
        const late = logRecords(env.driver.logs()).some((r) =>
          r.properties.method === "NodePublishVolume" &&
          r.properties.target_path === outcome.target && r.properties.code === "OK"
        );
        if (outcome.state === "uncertain" && late) mountedLate++;
      }
      assert.ok(uncertain > 0, "no publish hit its deadline");
      assert.ok(mountedLate > 0, "the driver never completed a mount after the deadline");
      assert.deepEqual(await mountsUnder(env.kubeletDir), []);
    });
  },
});
