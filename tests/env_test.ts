/** The helpers that judge the mount table: a test that reads the table wrong proves nothing. */
import assert from "node:assert/strict";
import { layersAt, parseMountInfo, parseMountListing, stackedAt } from "./_env.ts";

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

const fixture = (name: string) =>
  Deno.readTextFileSync(new URL(`./fixtures/${name}`, import.meta.url));

Deno.test("parseMountListing() reads util-linux output, including paths with spaces and ' type '", () => {
  const entries = parseMountListing(fixture("mount_util_linux.txt"));
  assert.equal(entries.length, 10);
  assert.deepEqual(entries[3], {
    source: "/dev/vda",
    target: "/var/lib/kubelet/pods/aaaa/volumes/kubernetes.io~csi/spiffe/mount",
    fsType: "ext4",
    options: ["rw", "nosuid", "nodev", "noexec", "relatime", "discard"],
  });
  assert.equal(
    entries[7]?.target,
    "/var/lib/kubelet/pods/cccc/volumes/kubernetes.io~csi/with space on it/mount",
  );
  assert.equal(
    entries[8]?.target,
    "/var/lib/kubelet/pods/dddd/volumes/kubernetes.io~csi/a type b/mount",
  );
});

Deno.test("parseMountListing() unescapes busybox's octal escapes", () => {
  const entries = parseMountListing(fixture("mount_busybox.txt"));
  assert.equal(
    entries[1]?.target,
    "/var/lib/kubelet/pods/cccc/volumes/kubernetes.io~csi/with space/mount",
  );
});

Deno.test("layersAt() sees a stale layer under a fresh one as two layers", () => {
  const entries = parseMountListing(fixture("mount_busybox.txt"));
  assert.equal(
    layersAt(entries, "/var/lib/kubelet/pods/ffff/volumes/kubernetes.io~csi/stale/mount"),
    2,
  );
  assert.equal(layersAt(entries, "/var/lib/kubelet/pods/none/mount"), 0);
});
