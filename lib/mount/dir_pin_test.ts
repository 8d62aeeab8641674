import assert from "node:assert/strict";
import { DirPin, PinMovedError } from "./dir_pin.ts";
import { makeTempTree } from "../../tests/_env.ts";

/** A tree with a directory `a/b` in it, and a DirPin on the tree's -cwd-link. */
async function pinned() {
  const tree = await makeTempTree();
  const dir = `${tree.root}/a/b`;
  await Deno.mkdir(dir, { recursive: true });
  return {
    tree,
    dir,
    pins: new DirPin({ link: tree.cwdLink }),
    [Symbol.asyncDispose]: () => tree.remove(),
  };
}

/** The inode `path` leads to, as a child process resolves it (Deno refuses /proc by path). */
async function inodeSeenByChild(path: string): Promise<number> {
  const output = await new Deno.Command("stat", { args: ["-L", "-c", "%i", path] }).output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
  return Number(new TextDecoder().decode(output.stdout));
}

Deno.test("at() pins a directory: it works inside it through the link, and getcwd verified it", async () => {
  await using setup = await pinned();
  const { dir, pins } = setup;
  await pins.hold((section) => {
    const pin = section.at(dir);
    assert.equal(pin.path, dir);
    assert.equal(pin.locate(), dir);
    assert.ok(pin.isSame(dir));
    Deno.writeTextFileSync(pin.inside("file"), "x");
  });
  assert.equal(Deno.readTextFileSync(`${dir}/file`), "x");
});

Deno.test("at() refuses a path through a symlink with PinMovedError, naming where it led", async () => {
  await using setup = await pinned();
  const { tree, pins } = setup;
  Deno.symlinkSync(`${tree.root}/a`, `${tree.root}/link`);
  await assert.rejects(
    pins.hold((section) => section.at(`${tree.root}/link/b`)),
    (error) => error instanceof PinMovedError && error.actual === `${tree.root}/a/b`,
  );
});

Deno.test("a pin follows its directory through a rename: the path swapped for a symlink is not followed", async () => {
  await using setup = await pinned();
  const { tree, dir, pins } = setup;
  const outside = `${tree.root}/outside`;
  Deno.mkdirSync(outside);
  await pins.hold((section) => {
    const pin = section.at(dir);
    Deno.renameSync(dir, `${tree.root}/a/moved`);
    Deno.symlinkSync(outside, dir);
    Deno.mkdirSync(pin.inside("made"));
    assert.equal(pin.locate(), `${tree.root}/a/moved`);
  });
  assert.ok(Deno.statSync(`${tree.root}/a/moved/made`).isDirectory);
  assert.deepEqual([...Deno.readDirSync(outside)], []);
});

Deno.test("into() pins a directory inside the pinned one and checks it is not a symlink", async () => {
  await using setup = await pinned();
  const { tree, pins } = setup;
  Deno.symlinkSync(`${tree.root}/a/b`, `${tree.root}/a/c`);
  await pins.hold((section) => {
    assert.equal(section.at(`${tree.root}/a`).into("b").path, `${tree.root}/a/b`);
    assert.throws(() => section.at(`${tree.root}/a`).into("c"), PinMovedError);
  });
});

Deno.test("each pin makes the section's earlier handle invalid, and the section's end its last", async () => {
  await using setup = await pinned();
  const { tree, dir, pins } = setup;
  const last = await pins.hold((section) => {
    const first = section.at(`${tree.root}/a`);
    const second = first.into("b");
    for (const use of [() => first.inside(), () => first.locate(), () => first.mountTarget()]) {
      assert.throws(use, /the pin on .* is not held/);
    }
    assert.throws(() => first.into("b"), /is not held/);
    assert.equal(second.path, dir);
    return { section, second };
  });
  assert.throws(() => last.second.inside(), /is not held/);
  assert.throws(() => last.section.at(dir), /the pinned section has ended/);
});

Deno.test("hold() runs sections one after another, a failed one included", async () => {
  await using setup = await pinned();
  const { dir, pins } = setup;
  const events: string[] = [];
  const section = (name: string, fail = false) =>
    pins.hold(async (s) => {
      events.push(`${name} start`);
      s.at(dir);
      await Promise.resolve();
      events.push(`${name} end`);
      if (fail) throw new Error(name);
    });
  await Promise.allSettled([section("one", true), section("two"), section("three")]);
  assert.deepEqual(events, [
    "one start",
    "one end",
    "two start",
    "two end",
    "three start",
    "three end",
  ]);
});

Deno.test("mountTarget() names the pinned directory for a child, spelled anew each time", async () => {
  await using setup = await pinned();
  const { dir, pins } = setup;
  await pins.hold(async (section) => {
    const target = section.at(dir).mountTarget();
    assert.equal(target.path, dir);
    assert.match(
      target.childPath,
      new RegExp(`^/(\\./)*proc/(\\./)*${Deno.pid}/(\\./)*cwd(/\\.)*$`),
    );
    assert.notEqual(section.at(dir).mountTarget().childPath, target.childPath);
    assert.equal(await inodeSeenByChild(target.childPath), Deno.statSync(dir).ino);
  });
});

Deno.test("check() refuses a link that is not /proc/self/cwd and accepts one that is", async () => {
  await using setup = await pinned();
  const { tree, dir, pins } = setup;
  await pins.check(dir);
  Deno.symlinkSync(dir, `${tree.root}/wrong`);
  await assert.rejects(
    new DirPin({ link: `${tree.root}/wrong` }).check(dir),
    /points to .*, not to \/proc\/self\/cwd/,
  );
  await assert.rejects(
    new DirPin({ link: `${tree.root}/none` }).check(dir),
    /is not a symlink to \/proc\/self\/cwd/,
  );
});
