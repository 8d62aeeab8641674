/**
 * A racing attacker against the pinned target: while publishes and unpublishes run, a native
 * swapper (tests/fixtures/swapper.c) exchanges each component of a target's path, from
 * `<kubelet>/pods/<uid>` down to the target itself, with a symlink to a directory outside the
 * kubelet dir, atomically (renameat2 RENAME_EXCHANGE), as fast as it can. A monitor watches the
 * mount table and the outside directories the whole time. Judged by effects, not return codes: no
 * mount, no created directory and no removal outside `<kubelet>/pods` may ever be seen, no target
 * may hold two layers, and the driver must keep serving.
 *
 * Size with RACE_CALLS (calls per worker, default 150). Real mounts: run through tests/run.sh.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { type CallResult, CsiClient, publishRequest } from "./_csi_client.ts";
import { ROOT, startDriver } from "./_driver.ts";
import {
  makeTempTree,
  type MountInfo,
  mountInfo,
  mountTable,
  REAL_MOUNTS,
  say,
  stackedAt,
  type TempTree,
} from "./_env.ts";

const SWAPPER = `${ROOT}.tools/bin/swapper`;
const CALLS = Number(Deno.env.get("RACE_CALLS") ?? 150);
/** Component names below `<kubelet>/pods`, down to the target. */
const LEVELS = ["<uid>", "volumes", "kubernetes.io~csi", "<volume>", "mount"];

/** One target under attack: the component swapped, and the outside directory its symlink names. */
interface Victim {
  level: number;
  target: string;
  component: string;
  outside: string;
  /** `<outside...>/mount` as the driver would reach it through the symlink. */
  decoy: string;
  /** The decoy's inode when it exists beforehand (a removal or replacement shows), else null. */
  decoyIno: number | null;
}

/** Builds the victims: one per level, each with an outside tree that mirrors the rest of its path. */
async function setUp(tree: TempTree): Promise<{ victims: Victim[]; decoyMount: string }> {
  const outsideRoot = `${tree.root}/outside`;
  const victims: Victim[] = [];
  let decoyMount = "";
  for (let level = 0; level < LEVELS.length; level++) {
    const target = await tree.target(`race-${level}`);
    const below = target.slice(`${tree.kubeletDir}/pods/`.length).split("/");
    const component = `${tree.kubeletDir}/pods/${below.slice(0, level + 1).join("/")}`;
    const outside = `${outsideRoot}/L${level}`;
    const rest = below.slice(level + 1);
    // The outside mirror holds the rest of the path, so a redirected step would succeed there.
    const decoy = level === LEVELS.length - 1 ? outside : `${outside}/${rest.join("/")}`;
    if (level === LEVELS.length - 1) {
      // The target itself swapped for a symlink to a mount point outside: a redirected umount
      // would detach it, a redirected bind would stack on it.
      await Deno.mkdir(outside, { recursive: true });
      await Deno.mkdir(`${outsideRoot}/decoy-source`, { recursive: true });
      await Deno.writeTextFile(`${outsideRoot}/decoy-source/keep`, "keep");
      await run("/usr/bin/mount", ["--bind", `${outsideRoot}/decoy-source`, outside]);
      decoyMount = outside;
      await Deno.mkdir(target);
    } else {
      await Deno.mkdir(level % 2 === 0 ? decoy : decoy.slice(0, decoy.lastIndexOf("/")), {
        recursive: true,
      });
    }
    await Deno.symlink(outside, `${component}.swap`);
    const info = await Deno.lstat(decoy).catch(() => null);
    victims.push({ level, target, component, outside, decoy, decoyIno: info?.ino ?? null });
  }
  return { victims, decoyMount };
}

async function run(command: string, args: string[]): Promise<void> {
  const output = await new Deno.Command(command, { args, stdout: "null", stderr: "piped" })
    .output();
  if (!output.success) {
    throw new Error(`${command} ${args.join(" ")}: ${new TextDecoder().decode(output.stderr)}`);
  }
}

/** What the monitor saw at any moment of the race. */
interface Findings {
  /** Mounts outside `<kubelet>/pods` that were not there before. */
  escaped: Set<string>;
  /** Targets seen with more than one layer. */
  stacked: Set<string>;
  /** Outside `mount` directories created, removed or replaced. */
  touched: Set<string>;
  /** The outside mount point was detached. */
  detached: boolean;
}

function inspect(
  mounts: MountInfo[],
  tree: TempTree,
  before: Set<string>,
  victims: Victim[],
  decoyMount: string,
  findings: Findings,
): void {
  const pods = `${tree.kubeletDir}/pods/`;
  for (const entry of mounts) {
    if (!entry.target.startsWith(`${tree.root}/`) || entry.target.startsWith(pods)) continue;
    if (!before.has(entry.target)) findings.escaped.add(entry.target);
  }
  for (const victim of victims) {
    if (stackedAt(mounts, victim.target)) {
      if (!findings.stacked.has(victim.target)) {
        const dir = victim.target.slice(0, victim.target.lastIndexOf("/"));
        say(`stacked: ${mounts.filter((m) => m.target.startsWith(dir)).map((m) => m.target)}`);
      }
      findings.stacked.add(victim.target);
    }
    if (victim.level === LEVELS.length - 1) continue;
    let ino: number | null;
    try {
      ino = Deno.lstatSync(victim.decoy).ino;
    } catch {
      ino = null;
    }
    if (ino !== victim.decoyIno) findings.touched.add(victim.decoy);
  }
  if (mounts.filter((m) => m.target === decoyMount).length !== 1) findings.detached = true;
}

Deno.test({
  name:
    "a path component swapped for a symlink while publishes and unpublishes run sends nothing outside the kubelet dir",
  ignore: !REAL_MOUNTS,
  async fn() {
    await Deno.stat(SWAPPER).catch(() => {
      throw new Error(`${SWAPPER} is missing: tests/run.sh builds it (tools/install_peers.sh)`);
    });
    const tree = await makeTempTree();
    const { victims, decoyMount } = await setUp(tree);
    const driver = await startDriver({ ...tree });
    const before = new Set((await mountTable()).map((entry) => entry.target));
    const findings: Findings = {
      escaped: new Set(),
      stacked: new Set(),
      touched: new Set(),
      detached: false,
    };
    const codes = new Map<string, number>();
    const messages = new Set<string>();
    const swapper = new Deno.Command(SWAPPER, {
      args: victims.flatMap((v) => [v.component, `${v.component}.swap`]),
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const out = swapper.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let swapperOutput = "";
    let swapperErrors = "";
    let swapperOk = false;
    try {
      // Start the calls only once the swapper runs.
      while (!swapperOutput.includes("ready\n")) {
        const chunk = await out.read();
        if (chunk.done) throw new Error("the swapper exited before it started");
        swapperOutput += chunk.value;
      }
      let running = true;
      const monitor = (async () => {
        let polls = 0;
        while (running) {
          inspect(await mountInfo(), tree, before, victims, decoyMount, findings);
          polls++;
        }
        return polls;
      })();
      const tally = (result: CallResult) => {
        const key = result.ok ? "OK" : grpc.status[result.code] ?? String(result.code);
        codes.set(key, (codes.get(key) ?? 0) + 1);
        if (!result.ok && result.code !== grpc.status.INVALID_ARGUMENT) {
          messages.add(result.details.replaceAll(tree.root, "<root>"));
        }
      };
      const client = new CsiClient(tree.csiSocketPath);
      const worker = async (victim: Victim, publishOnly: boolean) => {
        for (let i = 0; i < CALLS; i++) {
          const unpublish = !publishOnly && i % 2 === 1;
          tally(
            await client.call(
              unpublish ? "NodeUnpublishVolume" : "NodePublishVolume",
              unpublish
                ? { volume_id: "csi-race", target_path: victim.target }
                : publishRequest(victim.target),
            ),
          );
        }
      };
      const started = performance.now();
      // Two callers per target: one alternating publish and unpublish, one publishing only.
      await Promise.all(victims.flatMap((v) => [worker(v, false), worker(v, true)]));
      const seconds = (performance.now() - started) / 1000;
      running = false;
      const polls = await monitor;
      client.close();
      swapper.kill("SIGTERM");
      for (let chunk = await out.read(); !chunk.done; chunk = await out.read()) {
        swapperOutput += chunk.value;
      }
      const status = await swapper.status;
      const swapped = /(\d+) swaps/.exec(swapperOutput);
      say(
        `race: ${victims.length * 2 * CALLS} calls in ${seconds.toFixed(1)} s, swapper ${
          swapperOutput.split("\n")[1]
        }, ${polls} mount table polls, ${JSON.stringify(Object.fromEntries(codes))}`,
      );
      swapperErrors = await new Response(swapper.stderr).text();
      swapperOk = status.success;
      assert.ok(Number(swapped?.[1]) >= 1000, "the swapper raced for real");
    } catch (error) {
      say(`driver logs (tail):\n${driver.logs().slice(-3000)}`);
      throw error;
    } finally {
      try {
        swapper.kill("SIGTERM");
      } catch { /* already stopped */ }
    }
    // The state the race left, then a clean teardown.
    inspect(await mountInfo(), tree, before, victims, decoyMount, findings);
    assert.deepEqual(
      findings,
      { escaped: new Set(), stacked: new Set(), touched: new Set(), detached: false },
      "a racing swap sent a mount, a mkdir or a removal outside the kubelet dir, or stacked a layer",
    );
    if (!swapperOk) {
      // The swapper could not put a component back because a directory it renamed is a mount
      // point: a rename that raced the mount syscall moved the directory the driver was binding
      // onto (Linux checks before it locks). The next unpublish of that target sweeps the bind
      // beside it; then the component goes back.
      const strays = (await mountTable()).filter((e) =>
        e.target.startsWith(`${tree.kubeletDir}/pods/`) &&
        !victims.some((v) => v.target === e.target)
      );
      say(
        `race: the swapper found ${strays.length} binds beside a target: ${swapperErrors.trim()}`,
      );
      const client = new CsiClient(tree.csiSocketPath);
      for (const victim of victims) {
        await client.call("NodeUnpublishVolume", { volume_id: "x", target_path: victim.target });
      }
      client.close();
      const swapped = victims.filter((v) => Deno.lstatSync(v.component).isSymlink);
      const back = await new Deno.Command(SWAPPER, {
        args: ["-1", ...swapped.flatMap((v) => [v.component, `${v.component}.swap`])],
      }).output();
      assert.ok(back.success, "an unpublish swept the binds beside the target");
    }
    const unexpected = [...codes.keys()].filter((k) => !["OK", "INVALID_ARGUMENT"].includes(k));
    assert.deepEqual(unexpected, [], `only OK or InvalidArgument: ${[...messages].join("; ")}`);
    assert.ok((codes.get("OK") ?? 0) > 0, "the driver kept publishing under the race");
    const client = new CsiClient(tree.csiSocketPath);
    try {
      for (const victim of victims) {
        const result = await client.call("NodeUnpublishVolume", {
          volume_id: "csi-race",
          target_path: victim.target,
        });
        assert.ok(result.ok, `final unpublish of ${victim.target}`);
      }
      assert.ok((await client.call("Probe")).ok, "Probe after the race");
    } finally {
      client.close();
      await driver.stop();
    }
    const left = (await mountTable()).filter((e) => e.target.startsWith(`${tree.root}/`));
    assert.deepEqual(left.map((e) => e.target), [decoyMount], "only the decoy mount is left");
    await run("/usr/bin/umount", [decoyMount]);
    await tree.remove();
  },
});
