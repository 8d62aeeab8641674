import assert from "node:assert/strict";
import { layersAt, layersUnder, parseMountListing } from "./mount_table.ts";

const fixture = (name: string) =>
  Deno.readTextFileSync(new URL(`../../tests/fixtures/${name}`, import.meta.url));

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

Deno.test("layersUnder() counts stacked layers per target and ignores look-alike roots", () => {
  const layers = layersUnder(
    parseMountListing(fixture("mount_util_linux.txt")),
    "/var/lib/kubelet/pods",
  );
  assert.equal(layers.get("/var/lib/kubelet/pods/aaaa/volumes/kubernetes.io~csi/spiffe/mount"), 1);
  assert.equal(layers.get("/var/lib/kubelet/pods/bbbb/volumes/kubernetes.io~csi/spiffe/mount"), 3);
  assert.equal(layers.size, 4, "kubelet-other is not under the pods dir");
});

Deno.test("layersAt() sees a stale layer under a fresh one as two layers", () => {
  const entries = parseMountListing(fixture("mount_busybox.txt"));
  assert.equal(
    layersAt(entries, "/var/lib/kubelet/pods/ffff/volumes/kubernetes.io~csi/stale/mount"),
    2,
  );
  assert.equal(layersAt(entries, "/var/lib/kubelet/pods/none/mount"), 0);
});
