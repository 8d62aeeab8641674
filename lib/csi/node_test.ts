import assert from "node:assert/strict";
import { Code } from "../errors.ts";
import { createNodeService, validatePublish } from "./node.ts";
import type { NodePublishVolumeRequest } from "./types.ts";
import { FakeMounter } from "../../tests/_fake_mounter.ts";
import { DirPin, type PinnedDir } from "../mount/dir_pin.ts";
import { makeTempTree, settled } from "../../tests/_env.ts";
import { publishRequest } from "../../tests/_requests.ts";
import { assertCsiError } from "../../tests/_assert.ts";

function request(
  mutate: (r: NodePublishVolumeRequest) => void = () => {},
): NodePublishVolumeRequest {
  const r = structuredClone(
    publishRequest("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/v/mount"),
  ) as NodePublishVolumeRequest;
  mutate(r);
  return r;
}

const CASES: { desc: string; mutate: (r: NodePublishVolumeRequest) => void; message: string }[] = [
  {
    desc: "missing volume id",
    mutate: (r) => delete r.volume_id,
    message: "request missing required volume id",
  },
  {
    desc: "missing target path",
    mutate: (r) => (r.target_path = ""),
    message: "request missing required target path",
  },
  {
    desc: "missing capability",
    mutate: (r) => (r.volume_capability = null),
    message: "request missing required volume capability",
  },
  {
    desc: "missing access type",
    mutate: (r) => (r.volume_capability = { access_mode: { mode: "SINGLE_NODE_WRITER" } }),
    message: "request missing required volume capability access type",
  },
  {
    desc: "block access",
    mutate: (
      r,
    ) => (r.volume_capability = { block: {}, access_mode: { mode: "SINGLE_NODE_WRITER" } }),
    message: "request volume capability access type must be a simple mount",
  },
  {
    desc: "fs type set",
    mutate: (r) => (r.volume_capability!.mount = { fs_type: "ext4", mount_flags: [] }),
    message: "request volume capability access type must be a simple mount",
  },
  {
    desc: "mount flags set",
    mutate: (r) => (r.volume_capability!.mount = { fs_type: "", mount_flags: ["ro"] }),
    message: "request volume capability access type must be a simple mount",
  },
  {
    desc: "missing access mode",
    mutate: (r) => (r.volume_capability!.access_mode = null),
    message: "request missing required volume capability access mode",
  },
  {
    desc: "read-only access mode",
    mutate: (r) => (r.volume_capability!.access_mode = { mode: "SINGLE_NODE_READER_ONLY" }),
    message: "request volume capability access mode is not valid",
  },
  {
    desc: "readonly false",
    mutate: (r) => (r.readonly = false),
    message: "pod.spec.volumes[].csi.readOnly must be set to 'true'",
  },
  {
    desc: "no volume context",
    mutate: (r) => (r.volume_context = {}),
    message: "only ephemeral volumes are supported",
  },
  {
    desc: "ephemeral false",
    mutate: (r) => (r.volume_context = { "csi.storage.k8s.io/ephemeral": "false" }),
    message: "only ephemeral volumes are supported",
  },
];

Deno.test("validatePublish() rejects each bad request with upstream's message, in upstream's order", async () => {
  for (const { desc, mutate, message } of CASES) {
    await assertCsiError(
      () => validatePublish(request(mutate)),
      Code.INVALID_ARGUMENT,
      message,
      desc,
    );
  }
  // Several problems at once: the first in upstream's order wins.
  assert.throws(
    () => validatePublish(request((r) => Object.assign(r, { volume_id: "", readonly: false }))),
    /request missing required volume id/,
  );
  validatePublish(request());
});

/** The template's path in these tests (a stand-in: the fake mounter mounts nothing). */
const TEMPLATE = "/run/spiffe-csi-driver/socket-dir";

/**
 * A node service on a fresh tree; with `seam`, the fake mounter's binds count as binds, and with
 * `replaced`, the start-up pass over leftover binds has resolved that way.
 */
async function service(seam = false, replaced?: boolean) {
  const tree = await makeTempTree();
  const mounter = new FakeMounter();
  const node = createNodeService({
    nodeId: "node-1",
    socketDir: tree.socketDir,
    kubeletDir: tree.kubeletDir,
    socketNames: ["api.sock"],
    mounter,
    pins: new DirPin({ link: tree.cwdLink }),
    template: { path: TEMPLATE, ensure: () => Promise.resolve() },
    ...(seam ? { isSocketDirBind: (dir: PinnedDir) => mounter.isBind(dir) } : {}),
    ...(replaced === undefined ? {} : { leftoversReplaced: Promise.resolve(replaced) }),
  });
  // Let the node service read how the pass resolved, as it would long before kubelet calls.
  await Promise.resolve();
  return { tree, mounter, node, [Symbol.asyncDispose]: () => tree[Symbol.asyncDispose]() };
}

/** What is at a target before a call: nothing, a plain directory, our bind, or not even the parent. */
type Before = "nothing" | "plain dir" | "non-empty dir" | "bind" | "no parent";

/** One row of the publish/unpublish decision table. */
interface DecisionRow {
  desc: string;
  before: Before;
  rpc: "publish" | "unpublish";
  /** How the start-up pass over leftover binds resolved (none: no pass). */
  replaced?: boolean;
  /** Make the fake's bind fail with this message, or not land. */
  bind?: "fails" | "does not land";
  /** The mounter calls, by action, in order. */
  calls: string[];
  /** The target afterwards: our bind on it, a directory, or nothing. */
  after: "bind" | "dir" | "nothing";
  /** The error, when the call fails. */
  error?: RegExp;
}

const DECISIONS: DecisionRow[] = [
  {
    desc: "fresh publish: create, then one bind from the template",
    before: "nothing",
    rpc: "publish",
    calls: ["bind"],
    after: "bind",
  },
  {
    desc: "republish before the start-up pass: replace the bind by one from the template",
    before: "bind",
    rpc: "publish",
    calls: ["unmount", "bind"],
    after: "bind",
  },
  {
    desc: "republish once the start-up pass replaced every leftover bind: no exec at all",
    before: "bind",
    rpc: "publish",
    replaced: true,
    calls: [],
    after: "bind",
  },
  {
    desc: "republish when the start-up pass failed: replace the bind",
    before: "bind",
    rpc: "publish",
    replaced: false,
    calls: ["unmount", "bind"],
    after: "bind",
  },
  {
    desc: "publish over a non-empty leftover that is not a mount: bind onto it, keep it",
    before: "non-empty dir",
    rpc: "publish",
    calls: ["bind"],
    after: "bind",
  },
  {
    desc: "publish over a leftover directory that is not our bind: replace it, then bind",
    before: "plain dir",
    rpc: "publish",
    calls: ["bind"],
    after: "bind",
  },
  {
    desc: "publish whose bind fails: Internal, and the directory it made is gone",
    before: "nothing",
    rpc: "publish",
    bind: "fails",
    calls: ["bind"],
    after: "nothing",
    error: /^unable to mount ".*": mount: permission denied$/,
  },
  {
    desc: "publish whose bind does not land: Internal, nothing left",
    before: "nothing",
    rpc: "publish",
    bind: "does not land",
    calls: ["bind"],
    after: "nothing",
    error: /^unable to mount ".*": the new mount is not at the target path$/,
  },
  {
    desc: "unpublish of a plain directory: removed without an unmount",
    before: "plain dir",
    rpc: "unpublish",
    calls: [],
    after: "nothing",
  },
  {
    desc: "unpublish of a missing target: success",
    before: "nothing",
    rpc: "unpublish",
    calls: [],
    after: "nothing",
  },
  {
    desc: "unpublish when the volume dir is gone too (node reboot): success",
    before: "no parent",
    rpc: "unpublish",
    calls: [],
    after: "nothing",
  },
  {
    desc: "unpublish of a non-empty directory that is not a mount: Internal, left as it is",
    before: "non-empty dir",
    rpc: "unpublish",
    calls: [],
    after: "dir",
    error: /^unable to unmount ".*": the target path is not a mount point and is not empty$/,
  },
];

for (const row of DECISIONS) {
  Deno.test(`node decision table: ${row.desc}`, async () => {
    await using setup = await service(true, row.replaced);
    const { tree, mounter, node } = setup;
    const target = row.before === "no parent"
      ? `${tree.kubeletDir}/pods/uid-1/volumes/kubernetes.io~csi/v/mount`
      : await tree.target("uid-1");
    if (row.before !== "nothing" && row.before !== "no parent") {
      await Deno.mkdir(target, { mode: 0o750 });
    }
    if (row.before === "non-empty dir") await Deno.writeTextFile(`${target}/file`, "");
    if (row.before === "bind") mounter.bound.add(target);
    // A leftover gets a mode the driver never gives: the replacement's 0750 shows it is new.
    if (row.before === "plain dir") await Deno.chmod(target, 0o700);
    if (row.bind === "fails") mounter.failBind = "mount: permission denied";
    if (row.bind === "does not land") mounter.bindsLand = false;

    const call = row.rpc === "publish"
      ? node.NodePublishVolume(request((r) => (r.target_path = target)))
      : node.NodeUnpublishVolume({ volume_id: "v", target_path: target });
    if (row.error) {
      await assertCsiError(call, Code.INTERNAL, row.error);
    } else {
      assert.deepEqual(await call, {});
    }

    assert.deepEqual(mounter.calls.map((c) => c.action), row.calls);
    for (const c of mounter.calls) assert.equal(c.target, target, "every call is on the target");
    const info = await Deno.lstat(target).catch(() => null);
    const after = mounter.bound.has(target) ? "bind" : info?.isDirectory ? "dir" : "nothing";
    assert.equal(after, row.after);
    if (row.after === "bind") assert.ok(info?.isDirectory, "the bound directory exists");
    if (row.after === "bind") {
      assert.equal((info?.mode ?? 0) & 0o777, 0o750, "made by the driver");
    }
    if (row.before === "non-empty dir") await Deno.lstat(`${target}/file`);
  });
}

Deno.test("NodePublishVolume binds from the template, never from the socket dir's own path", async () => {
  await using setup = await service(true);
  const { tree, mounter, node } = setup;
  const target = await tree.target("uid-1");
  await node.NodePublishVolume(request((r) => (r.target_path = target)));
  assert.deepEqual(mounter.calls, [{ action: "bind", source: TEMPLATE, target }]);
});

Deno.test("NodePublishVolume confines targets to the kubelet pods dir and mounts nothing otherwise", async () => {
  await using setup = await service();
  const { tree, mounter, node } = setup;
  const good = await tree.target("uid-1");
  const bad: [string, RegExp, Record<string, string>?][] = [
    ["/etc/passwd", /is not under/],
    [
      `${tree.kubeletDir}/pods/uid-1/volumes/kubernetes.io~csi/../../etc/mount`,
      /not a normalized path/,
    ],
    [`${tree.kubeletDir}/pods/uid-1//volumes/kubernetes.io~csi/v/mount`, /not a normalized path/],
    [`${good}/`, /not a normalized path/],
    [
      `${tree.kubeletDir}/pods/uid-1/volumes/kubernetes.io~empty-dir/v/mount`,
      /is not .*kubernetes.io~csi/,
    ],
    [`${tree.kubeletDir}/pods/uid-1/volumes/kubernetes.io~csi/v/other`, /is not /],
    [`${good}\nx`, /control characters/],
    [good, /does not match csi.storage.k8s.io\/pod.uid "uid-2"/, {
      "csi.storage.k8s.io/pod.uid": "uid-2",
    }],
  ];
  for (const [target, message, context] of bad) {
    const call = node.NodePublishVolume(request((r) => {
      r.target_path = target;
      Object.assign(r.volume_context!, context ?? {});
    }));
    await assertCsiError(call, Code.INVALID_ARGUMENT, message, target);
  }
  assert.deepEqual(mounter.calls, []);
});

Deno.test("NodePublishVolume refuses a symlinked component and creates nothing through it", async () => {
  await using setup = await service();
  const { tree, mounter, node } = setup;
  const outside = `${tree.root}/outside`;
  await Deno.mkdir(outside);
  await Deno.mkdir(`${tree.kubeletDir}/pods/uid-1/volumes`, { recursive: true });
  await Deno.symlink(outside, `${tree.kubeletDir}/pods/uid-1/volumes/kubernetes.io~csi`);
  await Deno.mkdir(`${outside}/v`);
  await assert.rejects(
    node.NodePublishVolume(request((r) => {
      r.target_path = `${tree.kubeletDir}/pods/uid-1/volumes/kubernetes.io~csi/v/mount`;
    })),
    /target path ".*\/mount" resolves through a symlink \(to ".*\/outside\/v"\)/,
  );
  assert.deepEqual([...Deno.readDirSync(`${outside}/v`)], []);
  assert.deepEqual(mounter.calls, []);
});

Deno.test("NodePublishVolume creates the target 0750 and removes it again when the mount fails", async () => {
  await using setup = await service();
  const { tree, mounter, node } = setup;
  const target = await tree.target("uid-1");
  mounter.failBind = "mount: permission denied";
  await assertCsiError(
    node.NodePublishVolume(request((r) => (r.target_path = target))),
    Code.INTERNAL,
    `unable to mount ${JSON.stringify(target)}: mount: permission denied`,
  );
  assert.deepEqual(mounter.calls, [{ action: "bind", source: TEMPLATE, target }]);
  await assert.rejects(Deno.lstat(target), Deno.errors.NotFound);
});

Deno.test("NodePublishVolume fails with Internal when the target's parent is missing", async () => {
  await using setup = await service();
  const { tree, mounter, node } = setup;
  const target = `${tree.kubeletDir}/pods/uid-9/volumes/kubernetes.io~csi/v/mount`;
  await assertCsiError(
    node.NodePublishVolume(request((r) => (r.target_path = target))),
    Code.INTERNAL,
    /^unable to create target path /,
  );
  assert.deepEqual(mounter.calls, []);
});

Deno.test("NodePublishVolume fails a mount that did not land, unmounts nothing it did not make, and removes its directory", async () => {
  // The fake mounter mounts nothing, so the post-mount identity check must catch it.
  await using setup = await service();
  const { tree, mounter, node } = setup;
  const target = await tree.target("uid-1");
  await assert.rejects(
    node.NodePublishVolume(request((r) => (r.target_path = target))),
    /the new mount is not at the target path/,
  );
  assert.deepEqual(mounter.calls.map((c) => c.action), ["bind"]);
  await assert.rejects(Deno.lstat(target), Deno.errors.NotFound);
});

Deno.test("NodeUnpublishVolume validates, and succeeds for a missing or unmounted target", async () => {
  await using setup = await service();
  const { tree, mounter, node } = setup;
  await assert.rejects(
    node.NodeUnpublishVolume({ target_path: "/x" }),
    /request missing required volume id/,
  );
  await assert.rejects(
    node.NodeUnpublishVolume({ volume_id: "v" }),
    /request missing required target path/,
  );
  await assert.rejects(
    node.NodeUnpublishVolume({ volume_id: "v", target_path: "/etc" }),
    /is not under/,
  );
  const target = await tree.target("uid-1");
  assert.deepEqual(await node.NodeUnpublishVolume({ volume_id: "v", target_path: target }), {});
  await Deno.mkdir(target);
  assert.deepEqual(await node.NodeUnpublishVolume({ volume_id: "v", target_path: target }), {});
  await assert.rejects(Deno.lstat(target), Deno.errors.NotFound);
  assert.deepEqual(mounter.calls, [], "no umount for a plain directory");
});

Deno.test("NodeUnpublishVolume: umounts of different volumes overlap, of one volume run one after another", async () => {
  await using setup = await service(true);
  const { tree, mounter, node } = setup;
  // A bind beside each target (a stray): every unpublish unmounts it, pinned, with the pin aside.
  const targets = await Promise.all(["uid-1", "uid-2"].map((uid) => tree.target(uid)));
  const addStray = (target: string) => {
    const stray = target.replace(/mount$/, "stray");
    Deno.mkdirSync(stray, { recursive: true });
    mounter.bound.add(stray);
  };
  targets.forEach(addStray);
  const gate = Promise.withResolvers<void>();
  mounter.unmountGate = gate.promise;
  const unpublish = (target: string) =>
    node.NodeUnpublishVolume({ volume_id: "v", target_path: target });

  const different = targets.map(unpublish);
  await settled();
  assert.equal(mounter.unmounting, 2, "the second volume's umount starts while the first runs");
  gate.resolve();
  assert.deepEqual(await Promise.all(different), [{}, {}]);

  const [first] = targets as [string, string];
  addStray(first);
  const held = Promise.withResolvers<void>();
  mounter.unmountGate = held.promise;
  const before = mounter.calls.length;
  const calls = [
    unpublish(first),
    node.NodePublishVolume(request((r) => (r.target_path = first))),
  ];
  const stats = assert.rejects(
    node.NodeGetVolumeStats({ volume_id: "v", volume_path: first }),
    /does not exist/,
  );
  await settled();
  assert.equal(mounter.unmounting, 1);
  assert.equal(mounter.calls.length, before + 1, "the same volume's calls wait for its umount");
  held.resolve();
  assert.deepEqual(await Promise.all(calls), [{}, {}]);
  await stats;
  assert.deepEqual(mounter.calls.slice(before).map((c) => c.action), ["unmount", "bind"]);
});

Deno.test("NodeGetVolumeStats: InvalidArgument, NotFound, then an abnormal condition with usage", async () => {
  await using setup = await service();
  const { tree, node } = setup;
  await assert.rejects(
    node.NodeGetVolumeStats({ volume_path: "/x" }),
    /missing required volume id/,
  );
  await assert.rejects(
    node.NodeGetVolumeStats({ volume_id: "v" }),
    /missing required volume path/,
  );
  const target = await tree.target("uid-1");
  await assertCsiError(
    node.NodeGetVolumeStats({ volume_id: "v", volume_path: target }),
    Code.NOT_FOUND,
  );
  await assertCsiError(
    node.NodeGetVolumeStats({ volume_id: "v", volume_path: "some/path" }),
    Code.NOT_FOUND,
  );
  await Deno.mkdir(target);
  const stats = await node.NodeGetVolumeStats({ volume_id: "v", volume_path: target });
  assert.equal(stats.volume_condition.abnormal, true);
  assert.match(
    stats.volume_condition.message,
    /not a mount of the Workload API socket directory/,
  );
  assert.deepEqual(stats.usage.map((u) => u.unit), ["BYTES", "INODES"]);
});

Deno.test("NodeGetInfo, NodeGetCapabilities and the unsupported RPCs", async () => {
  await using setup = await service();
  const { node } = setup;
  assert.deepEqual(await node.NodeGetInfo({}), { node_id: "node-1", max_volumes_per_node: "0" });
  assert.deepEqual(
    (await node.NodeGetCapabilities({})).capabilities.map((c) => c.rpc.type).sort(),
    ["GET_VOLUME_STATS", "VOLUME_CONDITION"],
  );
  for (const rpc of ["NodeStageVolume", "NodeUnstageVolume", "NodeExpandVolume"] as const) {
    await assertCsiError(node[rpc]({}), Code.UNIMPLEMENTED);
  }
});
