import assert from "node:assert/strict";
import { DirPin, PinMovedError } from "./dir_pin.ts";
import type { MountTarget } from "./mounter.ts";
import { makeTempTree, settled } from "../../tests/_env.ts";

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

/** The inode a child started as mount and umount are resolves `target` to. */
async function inodeSeenByChild(target: MountTarget): Promise<number> {
  const args = ["-L", "-c", "%i", target.childPath];
  const output = await new Deno.Command("stat", { args, cwd: target.cwd }).output();
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
    assert.equal(target.cwd, setup.tree.cwdLink);
    assert.match(target.childPath, /^\/(\.\/)*proc\/(\.\/)*self\/(\.\/)*cwd(\/\.)*$/);
    assert.equal(await inodeSeenByChild(target), Deno.statSync(dir).ino);
    assert.notEqual(section.at(dir).mountTarget().childPath, target.childPath);
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

Deno.test("aside() lets other sections pin once its child started in the pinned directory, swapped or not", async () => {
  await using setup = await pinned();
  const { tree, dir, pins } = setup;
  const other = `${tree.root}/a`;
  const outside = `${tree.root}/outside`;
  Deno.mkdirSync(outside);
  const original = Deno.statSync(dir).ino;
  const events: string[] = [];
  const stdin = Promise.withResolvers<WritableStream<Uint8Array>>();
  const first = pins.hold(async (section) => {
    const pin = section.at(dir);
    // The child waits for a line on stdin, then says which directory its target path reaches.
    const seen = await section.aside(pin, (target) => {
      assert.equal(target.path, dir);
      const child = new Deno.Command("sh", {
        args: ["-c", 'read line; exec stat -L -c %i "$0"', target.childPath],
        cwd: target.cwd,
        stdin: "piped",
        stdout: "piped",
      }).spawn();
      target.started?.();
      stdin.resolve(child.stdin);
      return child.output().then((output) => Number(new TextDecoder().decode(output.stdout)));
    });
    events.push("first back");
    assert.throws(() => pin.inside(), /is not held/);
    assert.equal(section.at(other).path, other);
    return seen;
  });
  await pins.hold(async (section) => {
    section.at(other);
    events.push("second pinned elsewhere");
    Deno.renameSync(dir, `${other}/moved`);
    Deno.symlinkSync(outside, dir);
    const writer = (await stdin.promise).getWriter();
    await writer.write(new TextEncoder().encode("go\n"));
    await writer.close();
  });
  assert.equal(await first, original, "the child reached the pinned directory, not the symlink");
  assert.deepEqual(events, ["second pinned elsewhere", "first back"]);
});

Deno.test("aside() keeps the pin until its child has started, and takes it back in turn", async () => {
  await using setup = await pinned();
  const { dir, pins } = setup;
  const events: string[] = [];
  const child = Promise.withResolvers<void>();
  const started = Promise.withResolvers<() => void>();
  const first = pins.hold(async (section) => {
    await section.aside(section.at(dir), (target) => {
      started.resolve(() => target.started?.());
      return child.promise;
    });
    events.push("first back");
  });
  const second = pins.hold(async (section) => {
    events.push("second start");
    child.resolve();
    await Promise.resolve();
    section.at(dir);
    events.push("second end");
  });
  const third = pins.hold(() => void events.push("third"));
  await settled();
  assert.deepEqual(events, [], "nobody pins before the child has started");
  (await started.promise)();
  await Promise.all([first, second, third]);
  assert.deepEqual(events, ["second start", "second end", "third", "first back"]);
});
