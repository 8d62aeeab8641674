import assert from "node:assert/strict";
import { DirPin, PinMovedError } from "./dir_pin.ts";
import { pinTarget } from "./pinned_target.ts";
import { TargetPathError } from "./target_path.ts";
import { makeTempTree, REAL_MOUNTS } from "../../tests/_env.ts";

/** A kubelet-shaped tree with a target's parent made, and a DirPin on its -cwd-link. */
async function setup() {
  const tree = await makeTempTree();
  const target = await tree.target("uid-1");
  const parent = target.slice(0, target.lastIndexOf("/"));
  const pins = new DirPin({ link: tree.cwdLink });
  return { tree, target, parent, pins, [Symbol.asyncDispose]: () => tree.remove() };
}

Deno.test("pinTarget() refuses a path with no parent or no name", async () => {
  await using s = await setup();
  for (const path of ["/", "/mount", "relative", `${s.target}/`]) {
    await assert.rejects(s.pins.hold((section) => pinTarget(section, path)), RangeError, path);
  }
});

Deno.test("exists() answers for a directory, and refuses a symlink or a file at the target", async () => {
  await using s = await setup();
  await s.pins.hold((section) => assert.equal(pinTarget(section, s.target).exists(), false));
  Deno.mkdirSync(s.target);
  await s.pins.hold((section) => assert.equal(pinTarget(section, s.target).exists(), true));
  Deno.removeSync(s.target);
  Deno.symlinkSync(s.tree.root, s.target);
  await assert.rejects(
    s.pins.hold((section) => pinTarget(section, s.target).exists()),
    TargetPathError,
    "is a symlink",
  );
  Deno.removeSync(s.target);
  Deno.writeTextFileSync(s.target, "");
  await assert.rejects(
    s.pins.hold((section) => pinTarget(section, s.target).exists()),
    TargetPathError,
    "is not a directory",
  );
});

Deno.test("create() makes the target 0750 inside the pinned parent, even after the parent's path is swapped", async () => {
  await using s = await setup();
  const outside = `${s.tree.root}/outside`;
  Deno.mkdirSync(outside);
  await s.pins.hold((section) => {
    const target = pinTarget(section, s.target);
    Deno.renameSync(s.parent, `${s.parent}.moved`);
    Deno.symlinkSync(outside, s.parent);
    target.create();
    target.create();
  });
  assert.equal(Deno.statSync(`${s.parent}.moved/mount`).mode! & 0o777, 0o750);
  assert.deepEqual([...Deno.readDirSync(outside)], []);
});

Deno.test("remove() is rmdir: removed, missing, not empty, and a symlink refused and kept", async () => {
  await using s = await setup();
  const remove = () => s.pins.hold((section) => pinTarget(section, s.target).remove());
  assert.equal(await remove(), "removed", "a missing target counts as removed");
  Deno.mkdirSync(s.target);
  assert.equal(await remove(), "removed");
  assert.throws(() => Deno.lstatSync(s.target), Deno.errors.NotFound);
  Deno.mkdirSync(s.target);
  Deno.writeTextFileSync(`${s.target}/file`, "");
  assert.equal(await remove(), "not-empty");
  Deno.removeSync(s.target, { recursive: true });
  Deno.mkdirSync(`${s.tree.root}/empty`);
  Deno.symlinkSync(`${s.tree.root}/empty`, s.target);
  await assert.rejects(remove(), TargetPathError, "is a symlink");
  assert.ok(Deno.lstatSync(s.target).isSymlink, "the symlink stays");
  assert.ok(Deno.statSync(`${s.tree.root}/empty`).isDirectory, "and what it names");
});

Deno.test("strays() lists the other directories beside the target, by absolute path", async () => {
  await using s = await setup();
  Deno.mkdirSync(s.target);
  Deno.mkdirSync(`${s.parent}/stray`);
  Deno.writeTextFileSync(`${s.parent}/vol_data.json`, "{}");
  const strays = await s.pins.hold((section) => pinTarget(section, s.target).strays());
  assert.deepEqual(strays, [`${s.parent}/stray`]);
});

Deno.test("enter() pins the target itself, refuses a symlink there, and ends the parent's handle", async () => {
  await using s = await setup();
  Deno.mkdirSync(s.target);
  await s.pins.hold((section) => {
    const target = pinTarget(section, s.target);
    assert.equal(target.enter().path, s.target);
    assert.throws(() => target.exists(), /is not held/);
  });
  Deno.removeSync(s.target);
  Deno.symlinkSync(s.tree.root, s.target);
  await assert.rejects(
    s.pins.hold((section) => pinTarget(section, s.target).enter()),
    PinMovedError,
  );
});

Deno.test({
  name: "remove() of a mount point is busy, and enter() stands on the mount",
  ignore: !REAL_MOUNTS,
  async fn() {
    await using s = await setup();
    Deno.mkdirSync(s.target);
    const mount = (args: string[]) => new Deno.Command("/usr/bin/mount", { args }).output();
    assert.ok((await mount(["-t", "tmpfs", "test", s.target])).success);
    try {
      Deno.writeTextFileSync(`${s.target}/on-the-mount`, "");
      await s.pins.hold((section) => {
        const target = pinTarget(section, s.target);
        assert.equal(target.remove(), "busy");
        const top = target.enter();
        assert.ok(Deno.lstatSync(top.inside("on-the-mount")).isFile);
      });
    } finally {
      await new Deno.Command("/usr/bin/umount", { args: [s.target] }).output();
    }
  },
});
