import assert from "node:assert/strict";
import { assertNoSymlinks, parseTargetPath, quote, TargetPathError } from "./target_path.ts";
import { makeTempTree } from "../../tests/_env.ts";

const KUBELET = "/var/lib/kubelet";
const GOOD = `${KUBELET}/pods/uid-1/volumes/kubernetes.io~csi/spiffe/mount`;

Deno.test("parseTargetPath() takes kubelet's inline-volume path, with every component below the kubelet dir", () => {
  const parsed = parseTargetPath(GOOD, `${KUBELET}//`, "uid-1");
  assert.deepEqual(parsed.components, [
    `${KUBELET}/pods`,
    `${KUBELET}/pods/uid-1`,
    `${KUBELET}/pods/uid-1/volumes`,
    `${KUBELET}/pods/uid-1/volumes/kubernetes.io~csi`,
    `${KUBELET}/pods/uid-1/volumes/kubernetes.io~csi/spiffe`,
    GOOD,
  ]);
});

Deno.test("parseTargetPath() refuses every other shape with TargetPathError", () => {
  const long = "x".repeat(256);
  const cases: [string, RegExp, string?][] = [
    [`${GOOD}\n`, /control characters/],
    ["/etc/passwd", /is not under "\/var\/lib\/kubelet\/pods\/"/],
    [`${KUBELET}/podsX/uid-1/volumes/kubernetes.io~csi/spiffe/mount`, /is not under/],
    [`${KUBELET}/pods/uid-1/volumes/kubernetes.io~csi/../../mount`, /not a normalized path/],
    [`${KUBELET}/pods/uid-1/./volumes/kubernetes.io~csi/spiffe/mount`, /not a normalized path/],
    [`${GOOD}/`, /not a normalized path/],
    [`${KUBELET}/pods/uid-1/volumes/kubernetes.io~csi/${long}/mount`, /is too long/],
    [`${KUBELET}/pods/uid-1/volumes/kubernetes.io~empty-dir/spiffe/mount`, /is not .*<pod-uid>/],
    [`${KUBELET}/pods/uid-1/volumes/kubernetes.io~csi/spiffe/other`, /is not .*<volume-name>/],
    [`${KUBELET}/pods/uid-1/volumes/kubernetes.io~csi/spiffe`, /is not /],
    [GOOD, /pod uid "uid-1" does not match csi.storage.k8s.io\/pod.uid "uid-2"/, "uid-2"],
  ];
  for (const [target, message, podUid] of cases) {
    assert.throws(
      () => parseTargetPath(target, KUBELET, podUid),
      (error) => error instanceof TargetPathError && message.test(error.message),
      JSON.stringify(target),
    );
  }
});

Deno.test("quote() quotes a client's string as JSON and cuts a long one", () => {
  assert.equal(quote('a"b\n'), '"a\\"b\\n"');
  assert.equal(quote("x".repeat(300)), JSON.stringify(`${"x".repeat(200)}...`));
});

Deno.test("assertNoSymlinks() passes missing components and refuses a symlink or a file among them", async () => {
  await using tree = await makeTempTree();
  const target = await tree.target("uid-1");
  const parsed = () => parseTargetPath(target, tree.kubeletDir);
  await assertNoSymlinks(parsed());
  await Deno.mkdir(target);
  await assertNoSymlinks(parsed());
  const volumes = `${tree.kubeletDir}/pods/uid-1/volumes`;
  await Deno.rename(volumes, `${tree.root}/elsewhere`);
  await Deno.symlink(`${tree.root}/elsewhere`, volumes);
  await assert.rejects(assertNoSymlinks(parsed()), TargetPathError, "is a symlink");
  await Deno.remove(volumes);
  await Deno.writeTextFile(volumes, "");
  await assert.rejects(assertNoSymlinks(parsed()), TargetPathError, "is not a directory");
});
