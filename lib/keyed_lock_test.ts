import assert from "node:assert/strict";
import { KeyedLock } from "./keyed_lock.ts";

const tick = () => new Promise((resolve) => setTimeout(resolve, 5));

Deno.test("KeyedLock runs work on one key one at a time, in order, even after a failure", async () => {
  const lock = new KeyedLock();
  const events: string[] = [];
  const job = (name: string, fail = false) => async () => {
    events.push(`start ${name}`);
    await tick();
    events.push(`end ${name}`);
    if (fail) throw new Error(name);
    return name;
  };
  const results = await Promise.allSettled([
    lock.run("t", job("a")),
    lock.run("t", job("b", true)),
    lock.run("t", job("c")),
  ]);
  assert.deepEqual(events, ["start a", "end a", "start b", "end b", "start c", "end c"]);
  assert.deepEqual(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
});

Deno.test("KeyedLock runs work on different keys in parallel", async () => {
  const lock = new KeyedLock();
  const events: string[] = [];
  const job = (name: string) => async () => {
    events.push(`start ${name}`);
    await tick();
    events.push(`end ${name}`);
  };
  await Promise.all([lock.run("x", job("x")), lock.run("y", job("y"))]);
  assert.deepEqual(events, ["start x", "start y", "end x", "end y"]);
});
