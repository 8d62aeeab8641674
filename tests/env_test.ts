/** The helpers that judge the mount table: a test that reads the table wrong proves nothing. */
import assert from "node:assert/strict";
import { parseMountInfo, stackedAt } from "./_env.ts";

const TABLE = [
  "22 1 0:21 / /tmp rw,nosuid - tmpfs tmpfs rw",
  "40 22 0:21 /agent /tmp/pods/a\\040b/mount ro,nosuid - tmpfs tmpfs rw",
  "41 22 0:21 /agent /tmp/pods/c/mount ro,nosuid - tmpfs tmpfs rw",
  "42 22 0:21 /agent /tmp/pods/c/mount ro,nosuid - tmpfs tmpfs rw",
  "43 41 0:21 /agent /tmp/pods/c/mount ro,nosuid - tmpfs tmpfs rw",
  "44 22 0:21 /agent /tmp/pods/d/mount ro,nosuid - tmpfs tmpfs rw",
  "",
].join("\n");

Deno.test("parseMountInfo() reads ids, parents and unescaped targets", () => {
  const entries = parseMountInfo(TABLE);
  assert.equal(entries.length, 6);
  assert.deepEqual(entries[1], { id: 40, parent: 22, target: "/tmp/pods/a b/mount" });
});

Deno.test("stackedAt() finds a mount on a mount at the same path", () => {
  assert.equal(stackedAt(parseMountInfo(TABLE), "/tmp/pods/c/mount"), true);
});

Deno.test("stackedAt() does not take one path listed twice on the same parent for a stack", () => {
  const relisted = parseMountInfo(TABLE).filter((entry) => entry.id !== 43);
  assert.equal(stackedAt(relisted, "/tmp/pods/c/mount"), false);
  assert.equal(stackedAt(relisted, "/tmp/pods/d/mount"), false);
});
