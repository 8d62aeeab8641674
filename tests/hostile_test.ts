/**
 * Hostile-input suite: the real driver (under its permission set, real bind mounts) gets requests
 * and bytes no kubelet would send. Every case must end with the expected status and a clear
 * message, must create and mount nothing outside the allowed root, and must leave the driver
 * answering Probe. Run inside tests/run.sh's private mount namespace:
 * `sh tests/run.sh tests/hostile_test.ts`.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import { type CallResult, CsiClient, describe, publishRequest } from "./_csi_client.ts";
import { type DriverProcess, startDriver } from "./_driver.ts";
import {
  layersAt,
  makeTempTree,
  mountTable,
  prng,
  REAL_MOUNTS,
  say,
  sleep,
  type TempTree,
  testSeed,
} from "./_env.ts";
import { CSI_LIMITS } from "../lib/server.ts";
import { errorMessage } from "../lib/errors.ts";
import { concat, frame, PREFACE, PROBE_HEADERS, SETTINGS } from "./_http2.ts";

const { status } = grpc;
const MIB = 1024 * 1024;

/** Every path under `dir` with its type and inode (symlinks are listed, never followed). */
async function listTree(dir: string, out: string[] = []): Promise<string[]> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    const info = await Deno.lstat(path);
    const kind = info.isSymlink ? `-> ${await Deno.readLink(path)}` : info.isDirectory ? "dir" : "";
    out.push(`${path} ${info.ino} ${kind}`);
    if (info.isDirectory) await listTree(path, out);
  }
  return out.sort();
}

/**
 * /etc as names, inodes and modification times (a created, removed or rewritten entry shows):
 * its top level around every case, all of it once around the whole suite.
 */
async function listEtc(dir = "/etc", out: string[] = [], deep = true): Promise<string[]> {
  const info = await Deno.lstat(dir);
  out.push(`${dir} ${info.ino} ${info.mtime?.getTime()}`);
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory && deep) {
      await listEtc(path, out);
    } else {
      const file = await Deno.lstat(path).catch(() => undefined);
      out.push(`${path} ${file?.ino} ${file?.mtime?.getTime()} ${file?.size}`);
    }
  }
  return out;
}

interface Snapshot {
  mounts: string[];
  tree: string[];
  etc: string[];
}

async function snapshot(tree: TempTree): Promise<Snapshot> {
  const mounts = (await mountTable()).map((entry) => `${entry.target} ${entry.options.join(",")}`);
  return { mounts, tree: await listTree(tree.root), etc: await listEtc("/etc", [], false) };
}

/** The suite's state: one driver, one client, and the cases counted so far. */
class Suite {
  readonly tree: TempTree;
  driver: DriverProcess;
  client: CsiClient;
  cases = 0;
  readonly byGroup = new Map<string, number>();

  constructor(tree: TempTree, driver: DriverProcess) {
    this.tree = tree;
    this.driver = driver;
    this.client = new CsiClient(tree.csiSocketPath);
  }

  /** Counts one case of `group`. */
  count(group: string, n = 1): void {
    this.cases += n;
    this.byGroup.set(group, (this.byGroup.get(group) ?? 0) + n);
  }

  /** Runs `body`, then asserts nothing changed (mounts, the temp tree, /etc) and Probe still works. */
  async isolated(body: () => Promise<void>): Promise<void> {
    const before = await snapshot(this.tree);
    await body();
    const after = await snapshot(this.tree);
    assert.deepEqual(after.mounts, before.mounts, "the mount table changed");
    assert.deepEqual(after.tree, before.tree, "the temp tree changed");
    assert.deepEqual(after.etc, before.etc, "/etc changed");
    await this.assertServing();
  }

  /** Asserts the driver is alive and answers Probe on a fresh connection. */
  async assertServing(): Promise<void> {
    const client = new CsiClient(this.tree.csiSocketPath);
    try {
      const result = await client.call("Probe", {}, 5000);
      assert.ok(result.ok, `Probe after a hostile case: ${describe(result)}`);
    } finally {
      client.close();
    }
  }

  /** Sends `request`, asserts the status code and a message matching `message`, and that nothing changed. */
  async expect(
    group: string,
    method: string,
    request: unknown,
    code: grpc.status | grpc.status[],
    message: RegExp,
  ): Promise<void> {
    this.count(group);
    const codes = Array.isArray(code) ? code : [code];
    await this.isolated(async () => {
      const result = await this.client.call(method, request);
      assert.ok(!result.ok, `${group}: ${method} succeeded`);
      assert.ok(
        codes.includes(result.code),
        `${group}: expected ${codes.map((c) => status[c]).join(" or ")}, got ${describe(result)}`,
      );
      assert.match(result.details, message, `${group}: message`);
      assert.ok(result.details.length < 1024, `${group}: message too long to read`);
    });
  }

  /** Publishes `target` expecting OK (a strange but valid request), checks one layer there, unpublishes. */
  async expectPublishable(group: string, target: string, overrides = {}): Promise<void> {
    this.count(group);
    await this.isolated(async () => {
      const request = publishRequest(target, overrides);
      const published = await this.client.call("NodePublishVolume", request);
      assert.ok(published.ok, `${group}: ${describe(published)}`);
      assert.equal(layersAt(await mountTable(), target), 1, `${group}: layers at ${target}`);
      const unpublished = await this.client.call("NodeUnpublishVolume", {
        volume_id: request.volume_id,
        target_path: target,
      });
      assert.ok(unpublished.ok, `${group}: unpublish: ${describe(unpublished)}`);
    });
  }
}

const INVALID = status.INVALID_ARGUMENT;

/** Request-shaped cases: bad paths, bad capabilities, bad context. */
async function requestCases(suite: Suite): Promise<void> {
  const { tree } = suite;
  const pods = `${tree.kubeletDir}/pods`;
  const target = await tree.target("pod-a");
  const shape = /is not .*<pod-uid>\/volumes\/kubernetes\.io~csi\/<volume-name>\/mount/;
  const notUnder = /is not under/;
  const normalized = /is not a normalized path/;
  const pathCases: [string, string, RegExp][] = [
    [
      "..",
      `${pods}/pod-a/volumes/kubernetes.io~csi/spiffe/../../../../../../etc/mount`,
      normalized,
    ],
    ["..", `${pods}/../../../../etc/volumes/kubernetes.io~csi/spiffe/mount`, normalized],
    ["..", `${pods}/pod-a/volumes/kubernetes.io~csi/spiffe/mount/..`, normalized],
    [
      "..",
      `${tree.kubeletDir}/../kubelet/pods/pod-a/volumes/kubernetes.io~csi/spiffe/mount`,
      notUnder,
    ],
    ["..", `${pods}/pod-a/./volumes/kubernetes.io~csi/spiffe/mount`, normalized],
    ["..", `${pods}/pod-a//volumes/kubernetes.io~csi/spiffe/mount`, normalized],
    ["..", `${pods}/pod-a/volumes/kubernetes.io~csi/spiffe/mount/`, normalized],
    ["..", `${pods}/..`, normalized],
    ["elsewhere", "/etc", notUnder],
    ["elsewhere", "/etc/", notUnder],
    ["elsewhere", "/", notUnder],
    ["elsewhere", "/var/lib/kubelet/pods/pod-a/volumes/kubernetes.io~csi/spiffe/mount", notUnder],
    [
      "elsewhere",
      `${tree.kubeletDir}/pods-evil/pod-a/volumes/kubernetes.io~csi/spiffe/mount`,
      notUnder,
    ],
    ["elsewhere", "kubelet/pods/pod-a/volumes/kubernetes.io~csi/spiffe/mount", notUnder],
    ["elsewhere", `${pods}`, notUnder],
    ["elsewhere", `${pods}/pod-a`, shape],
    ["elsewhere", `${pods}/pod-a/volumes/kubernetes.io~csi/spiffe`, shape],
    ["elsewhere", `${pods}/pod-a/volumes/kubernetes.io~empty-dir/spiffe/mount`, shape],
    ["elsewhere", `${pods}/pod-a/volumes/kubernetes.io~csi/spiffe/mount/deeper`, shape],
    ["control characters", `${pods}/pod-a/volumes/kubernetes.io~csi/spiffe/mount\0`, /control/],
    ["control characters", `${pods}/pod-a\0/volumes/kubernetes.io~csi/spiffe/mount`, /control/],
    ["control characters", `${pods}/pod-a\n/volumes/kubernetes.io~csi/spiffe/mount`, /control/],
    ["control characters", `${pods}/pod-a/volumes/kubernetes.io~csi/spiffe\r/mount`, /control/],
    [
      "control characters",
      `${pods}/\x1b[31mpod-a/volumes/kubernetes.io~csi/spiffe/mount`,
      /control/,
    ],
    ["control characters", `${pods}/pod-a/volumes/kubernetes.io~csi/spiffe/mount\x7f`, /control/],
    ["control characters", `/etc\0${pods}/pod-a/volumes/kubernetes.io~csi/spiffe/mount`, /control/],
    ["unicode", `${pods}/pod-a/volumes/kubernetes.io~csi/spiffe/\u2025/mount`, shape],
    ["unicode", `${pods}\u2215pod-a/volumes/kubernetes.io~csi/spiffe/mount`, notUnder],
    ["unicode", `/\uff45tc/kubelet/pods/pod-a/volumes/kubernetes.io~csi/spiffe/mount`, notUnder],
  ];
  for (const [group, path, message] of pathCases) {
    await suite.expect(group, "NodePublishVolume", publishRequest(path), INVALID, message);
    await suite.expect(
      group,
      "NodeUnpublishVolume",
      { volume_id: "csi-x", target_path: path },
      INVALID,
      message,
    );
  }
  for (const path of ["/etc", "/", `${pods}/..`]) {
    await suite.expect(
      "elsewhere",
      "NodeGetVolumeStats",
      { volume_id: "csi-x", volume_path: path },
      status.NOT_FOUND,
      /is not a volume of this driver/,
    );
  }

  const capability = (value: unknown) => publishRequest(target, { volume_capability: value });
  const mount = { fs_type: "", mount_flags: [] };
  const writer = { mode: "SINGLE_NODE_WRITER" };
  const simple = /access type must be a simple mount/;
  const requestCases: [string, Record<string, unknown>, RegExp][] = [
    [
      "pod uid mismatch",
      publishRequest(target, { volume_context: ephemeral({ uid: "pod-b" }) }),
      /does not match/,
    ],
    [
      "pod uid mismatch",
      publishRequest(target, { volume_context: ephemeral({ uid: "" }) }),
      /does not match/,
    ],
    [
      "pod uid mismatch",
      publishRequest(target, { volume_context: ephemeral({ uid: "pod-a\n" }) }),
      /does not match/,
    ],
    [
      "pod uid mismatch",
      publishRequest(target, { volume_context: ephemeral({ uid: "POD-A" }) }),
      /does not match/,
    ],
    ["non-ephemeral", publishRequest(target, { volume_context: {} }), /only ephemeral volumes/],
    [
      "non-ephemeral",
      publishRequest(target, { volume_context: { "csi.storage.k8s.io/ephemeral": "false" } }),
      /only ephemeral volumes/,
    ],
    [
      "non-ephemeral",
      publishRequest(target, { volume_context: { "csi.storage.k8s.io/ephemeral": "TRUE" } }),
      /only ephemeral volumes/,
    ],
    [
      "readonly false",
      publishRequest(target, { readonly: false }),
      /readOnly must be set to 'true'/,
    ],
    [
      "SINGLE_NODE_READER_ONLY",
      capability({ mount, access_mode: { mode: "SINGLE_NODE_READER_ONLY" } }),
      /access mode is not valid/,
    ],
    ["block access", capability({ block: {}, access_mode: writer }), simple],
    [
      "fs_type or mount_flags",
      capability({ mount: { fs_type: "ext4", mount_flags: [] }, access_mode: writer }),
      simple,
    ],
    [
      "fs_type or mount_flags",
      capability({ mount: { fs_type: "", mount_flags: ["rw"] }, access_mode: writer }),
      simple,
    ],
    [
      "fs_type or mount_flags",
      capability({ mount: { fs_type: "", mount_flags: ["suid,dev,exec"] }, access_mode: writer }),
      simple,
    ],
    [
      "fs_type or mount_flags",
      capability({ mount: { fs_type: "none", mount_flags: ["bind"] }, access_mode: writer }),
      simple,
    ],
    ["missing fields", capability(null), /missing required volume capability/],
    [
      "missing fields",
      capability({ access_mode: writer }),
      /missing required volume capability access type/,
    ],
    ["missing fields", capability({ mount }), /missing required volume capability access mode/],
    ["missing fields", publishRequest(target, { volume_id: "" }), /missing required volume id/],
    ["missing fields", publishRequest(""), /missing required target path/],
  ];
  for (const [group, request, message] of requestCases) {
    await suite.expect(group, "NodePublishVolume", request, INVALID, message);
  }

  // The unicode pod uid: NFC in the path, NFD in the context.
  const nfc = "caf\u00e9";
  const nfcTarget = await tree.target(nfc);
  await suite.expect(
    "unicode",
    "NodePublishVolume",
    publishRequest(nfcTarget, { volume_context: ephemeral({ uid: nfc.normalize("NFD") }) }),
    INVALID,
    /does not match/,
  );
  // Strange but valid: the volume id is opaque, names are any bytes but "/" and NUL.
  for (
    const uid of ["p\u00f6d-\u65e5\u672c-\u{1f642}", "a\uff0f..\uff0f..\uff0fetc", "\u202eevil"]
  ) {
    await suite.expectPublishable("unicode", await tree.target(uid), {
      volume_context: ephemeral({ uid }),
    });
  }
  // A lone surrogate has no UTF-8 form (protobufjs writes its CESU-8 bytes): refused at decode.
  await suite.expect(
    "unicode",
    "NodePublishVolume",
    publishRequest(target, { volume_id: "csi-\u{1f642}-\ud800" }),
    INVALID,
    /^request field volume_id is not valid UTF-8$/,
  );
  await suite.expectPublishable("NUL and newline in ids", target, { volume_id: "csi-\0-x" });
  await suite.expectPublishable("NUL and newline in ids", target, {
    volume_id: 'csi-x\n{"level":"ERROR","message":"forged"}',
  });
  await suite.expectPublishable("NUL and newline in ids", target, {
    volume_context: { ...ephemeral({}), "\0": "\n", "csi.storage.k8s.io/pod.name": "a\nb\0c" },
  });
  await suite.expect(
    "NUL and newline in ids",
    "NodePublishVolume",
    publishRequest(target, { volume_context: ephemeral({ uid: "pod-a\0" }) }),
    INVALID,
    /does not match/,
  );
}

function ephemeral(options: { uid?: string }): Record<string, string> {
  const context: Record<string, string> = { "csi.storage.k8s.io/ephemeral": "true" };
  if (options.uid !== undefined) context["csi.storage.k8s.io/pod.uid"] = options.uid;
  return context;
}

/** Strings of 4 MiB (and just under): what the gRPC layer and the handlers make of them. */
async function hugeCases(suite: Suite): Promise<void> {
  const target = await suite.tree.target("pod-huge");
  const pods = `${suite.tree.kubeletDir}/pods`;
  const huge = "a".repeat(4 * MIB);
  // A message over the server's limit (CSI_LIMITS, 16 KiB) never reaches a handler.
  const tooLarge = /Received message larger than max/;
  const overLimit: [string, unknown][] = [
    ["NodePublishVolume", publishRequest(target, { volume_id: huge })],
    ["NodePublishVolume", publishRequest(`${pods}/${huge}/volumes/kubernetes.io~csi/v/mount`)],
    [
      "NodePublishVolume",
      publishRequest(target, { volume_context: { ...ephemeral({}), x: huge } }),
    ],
    ["NodePublishVolume", publishRequest(target, { secrets: { token: huge } })],
    ["NodeUnpublishVolume", { volume_id: "csi-x", target_path: huge }],
    ["NodeGetVolumeStats", { volume_id: huge, volume_path: target }],
  ];
  for (const [method, request] of overLimit) {
    await suite.expect("4 MiB strings", method, request, status.RESOURCE_EXHAUSTED, tooLarge);
  }
  // Just under the limit the handlers see it, reject it, and quote only a short prefix.
  const big = "a".repeat(CSI_LIMITS.messageBytes - 1024);
  await suite.expect(
    "4 MiB strings",
    "NodePublishVolume",
    publishRequest(`${pods}/${big}/volumes/kubernetes.io~csi/v/mount`),
    INVALID,
    /is too long \(at most 4095 bytes, 255 per name\)/,
  );
  await suite.expect(
    "4 MiB strings",
    "NodeUnpublishVolume",
    { volume_id: "csi-x", target_path: `${pods}/${big}/volumes/kubernetes.io~csi/v/mount` },
    INVALID,
    /is too long/,
  );
  // The system's own limits: a 256-byte name, a path over 4095 bytes.
  await suite.expect(
    "4 MiB strings",
    "NodePublishVolume",
    publishRequest(`${pods}/${"u".repeat(256)}/volumes/kubernetes.io~csi/v/mount`),
    INVALID,
    /is too long/,
  );
  await suite.expect(
    "4 MiB strings",
    "NodePublishVolume",
    publishRequest(
      `${pods}/u/volumes/kubernetes.io~csi/v/mount`.replace("/u/", `/${"\u00e9".repeat(128)}/`),
    ),
    INVALID,
    /is too long/,
  );
  await suite.expect(
    "4 MiB strings",
    "NodePublishVolume",
    publishRequest(target, { volume_context: ephemeral({ uid: big }) }),
    INVALID,
    /does not match/,
  );
  await suite.expect(
    "4 MiB strings",
    "NodeUnpublishVolume",
    { volume_id: "csi-x", target_path: `/etc/${big}` },
    INVALID,
    /is not under/,
  );
}

/** Symlinked components: to /etc, to a directory outside the root, to another pod's directory. */
async function symlinkCases(suite: Suite): Promise<void> {
  const { tree } = suite;
  const pods = `${tree.kubeletDir}/pods`;
  const victim = await tree.target("pod-victim");
  const published = await suite.client.call("NodePublishVolume", publishRequest(victim));
  assert.ok(published.ok, describe(published));
  const decoy = `${tree.root}/decoy`;
  await Deno.mkdir(`${decoy}/volumes/kubernetes.io~csi/spiffe/mount`, { recursive: true });
  const symlinked = /is a symlink|resolves through a symlink/;

  const links: [string, string, string][] = [
    // [uid, link path relative to the pod dir ("" = the pod dir itself), link target]
    ["sym-pod-etc", "", "/etc"],
    ["sym-pod-decoy", "", decoy],
    ["sym-pod-victim", "", `${pods}/pod-victim`],
    ["sym-volumes-etc", "volumes", "/etc"],
    [
      "sym-plugin-victim",
      "volumes/kubernetes.io~csi",
      `${pods}/pod-victim/volumes/kubernetes.io~csi`,
    ],
    ["sym-vol-etc", "volumes/kubernetes.io~csi/spiffe", "/etc"],
    [
      "sym-vol-victim",
      "volumes/kubernetes.io~csi/spiffe",
      `${pods}/pod-victim/volumes/kubernetes.io~csi/spiffe`,
    ],
    ["sym-mount-etc", "volumes/kubernetes.io~csi/spiffe/mount", "/etc"],
    ["sym-mount-victim", "volumes/kubernetes.io~csi/spiffe/mount", victim],
    [
      "sym-mount-decoy",
      "volumes/kubernetes.io~csi/spiffe/mount",
      `${decoy}/volumes/kubernetes.io~csi/spiffe/mount`,
    ],
  ];
  for (const [uid, link, to] of links) {
    const podDir = `${pods}/${uid}`;
    const linkPath = link === "" ? podDir : `${podDir}/${link}`;
    const parent = linkPath.slice(0, linkPath.lastIndexOf("/"));
    await Deno.mkdir(parent, { recursive: true });
    await Deno.symlink(to, linkPath);
    const target = `${podDir}/volumes/kubernetes.io~csi/spiffe/mount`;
    await suite.expect(
      "symlinked component",
      "NodePublishVolume",
      publishRequest(target),
      INVALID,
      symlinked,
    );
    await suite.expect(
      "symlinked component",
      "NodeUnpublishVolume",
      { volume_id: "csi-x", target_path: target },
      INVALID,
      symlinked,
    );
    await suite.expect(
      "symlinked component",
      "NodeGetVolumeStats",
      { volume_id: "csi-x", volume_path: target },
      // NOT_FOUND when the path does not resolve at all (e.g. into /etc).
      [INVALID, status.NOT_FOUND],
      /is a symlink|resolves through a symlink|does not exist/,
    );
    assert.equal(layersAt(await mountTable(), victim), 1, `${uid}: the other pod's mount changed`);
  }
  // The pods dir itself replaced by a symlink.
  const realPods = `${tree.kubeletDir}/pods.real`;
  await Deno.rename(pods, realPods);
  await Deno.symlink(realPods, pods);
  try {
    await suite.expect(
      "symlinked component",
      "NodePublishVolume",
      publishRequest(`${pods}/pod-x/volumes/kubernetes.io~csi/spiffe/mount`),
      INVALID,
      symlinked,
    );
  } finally {
    await Deno.remove(pods);
    await Deno.rename(realPods, pods);
  }
  const unpublished = await suite.client.call("NodeUnpublishVolume", {
    volume_id: "csi-x",
    target_path: victim,
  });
  assert.ok(unpublished.ok, describe(unpublished));
}

/** Writes `bytes` on a fresh connection, reads whatever comes back for a moment, and closes. */
async function rawExchange(path: string, bytes: Uint8Array, readMs = 100): Promise<number> {
  const conn = await Deno.connect({ transport: "unix", path });
  let received = 0;
  try {
    await conn.write(bytes).catch(() => 0);
    const buffer = new Uint8Array(64 * 1024);
    const deadline = Date.now() + readMs;
    while (Date.now() < deadline) {
      const timeout = sleep(deadline - Date.now()).then(() => "timeout" as const);
      const read = await Promise.race([conn.read(buffer).catch(() => null), timeout]);
      if (read === "timeout" || read === null) break;
      received += read;
    }
  } finally {
    try {
      conn.close();
    } catch { /* already closed */ }
  }
  return received;
}

/** Random bytes and truncated HTTP/2 frames written raw on the Unix socket. */
async function rawSocketCases(suite: Suite, seed: number): Promise<void> {
  const path = suite.tree.csiSocketPath;
  const random = prng(seed);
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(random() * 256));
  await suite.isolated(async () => {
    for (let i = 0; i < 60; i++) {
      const garbage = bytes(1 + Math.floor(random() * 4096));
      // Half behind a valid preface, so the garbage reaches the frame parser.
      await rawExchange(path, i % 2 === 0 ? garbage : concat(PREFACE, garbage), 30);
    }
  });
  suite.count("random bytes on the socket", 60);

  const headers = frame(1, 0x4, 1, PROBE_HEADERS);
  const grpcMessage = (declared: number, body: Uint8Array) => {
    const prefix = new Uint8Array(5);
    new DataView(prefix.buffer).setUint32(1, declared);
    return concat(prefix, body);
  };
  const truncated: [string, Uint8Array][] = [
    ["half a preface", PREFACE.slice(0, 10)],
    ["preface, half a frame header", concat(PREFACE, SETTINGS.slice(0, 4))],
    ["SETTINGS declaring 600 bytes, carrying 12", concat(PREFACE, frame(4, 0, 0, bytes(12), 600))],
    ["SETTINGS with a length not a multiple of 6", concat(PREFACE, frame(4, 0, 0, bytes(7)))],
    [
      "HEADERS declaring 200 bytes, carrying 20",
      concat(PREFACE, SETTINGS, frame(1, 0x4, 1, PROBE_HEADERS.slice(0, 20), 200)),
    ],
    ["HEADERS with garbage HPACK", concat(PREFACE, SETTINGS, frame(1, 0x4, 1, bytes(64)))],
    [
      "HEADERS without END_HEADERS, no CONTINUATION",
      concat(PREFACE, SETTINGS, frame(1, 0, 1, PROBE_HEADERS)),
    ],
    [
      "HEADERS, then DATA declaring 100 bytes of gRPC message, carrying 3",
      concat(PREFACE, SETTINGS, headers, frame(0, 0, 1, grpcMessage(100, bytes(3)))),
    ],
    [
      "HEADERS, then DATA with END_STREAM and a truncated gRPC message",
      concat(PREFACE, SETTINGS, headers, frame(0, 1, 1, grpcMessage(100, bytes(3)))),
    ],
    [
      "HEADERS, then a gRPC message flagged compressed",
      concat(
        PREFACE,
        SETTINGS,
        headers,
        frame(0, 1, 1, concat(new Uint8Array([1, 0, 0, 0, 2]), bytes(2))),
      ),
    ],
    [
      "HEADERS, then a 4 GiB gRPC length prefix",
      concat(PREFACE, SETTINGS, headers, frame(0, 1, 1, grpcMessage(0xffffffff, bytes(8)))),
    ],
    ["DATA on stream 0", concat(PREFACE, SETTINGS, frame(0, 1, 0, bytes(16)))],
    ["DATA on a stream never opened", concat(PREFACE, SETTINGS, frame(0, 1, 7, bytes(16)))],
    ["WINDOW_UPDATE of 0", concat(PREFACE, SETTINGS, frame(8, 0, 0, new Uint8Array(4)))],
    ["RST_STREAM on an idle stream", concat(PREFACE, SETTINGS, frame(3, 0, 1, new Uint8Array(4)))],
    [
      "1,000 PINGs",
      concat(PREFACE, SETTINGS, ...Array.from({ length: 1000 }, () => frame(6, 0, 0, bytes(8)))),
    ],
    [
      "100 HEADERS then close",
      concat(
        PREFACE,
        SETTINGS,
        ...Array.from({ length: 100 }, (_, i) => frame(1, 0x4, 2 * i + 1, PROBE_HEADERS)),
      ),
    ],
    [
      "HEADERS then RST_STREAM",
      concat(PREFACE, SETTINGS, headers, frame(3, 0, 1, new Uint8Array([0, 0, 0, 8]))),
    ],
    [
      "GOAWAY from the client mid-stream",
      concat(PREFACE, SETTINGS, headers, frame(7, 0, 0, new Uint8Array(8))),
    ],
    ["an HTTP/1.1 request", new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n")],
    [
      "a TLS ClientHello start",
      new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]),
    ],
  ];
  for (const [label, payload] of truncated) {
    suite.count("truncated HTTP/2 frames");
    await suite.isolated(async () => {
      await rawExchange(path, payload);
    }).catch((error) => {
      throw new Error(`after "${label}": ${errorMessage(error)}`);
    });
  }
}

/** A raw gRPC call whose request bytes are whatever we say (grpc-js with a pass-through serializer). */
function rawCall(socketPath: string, method: string, body: Uint8Array): Promise<CallResult> {
  const client = new grpc.Client(`unix:${socketPath}`, grpc.credentials.createInsecure());
  return new Promise<CallResult>((resolve) => {
    client.makeUnaryRequest(
      method,
      (value: Uint8Array) => Buffer.from(value),
      (value: Buffer) => value,
      body,
      { deadline: Date.now() + 10_000 },
      (error, response) => {
        client.close();
        if (error) resolve({ ok: false, code: error.code, details: error.details });
        else resolve({ ok: true, response: { bytes: response?.length ?? 0 } });
      },
    );
  });
}

/** Protobuf bytes that do not decode, or decode to nonsense. */
async function protobufCases(suite: Suite): Promise<void> {
  const socket = suite.tree.csiSocketPath;
  const publish = "/csi.v1.Node/NodePublishVolume";
  const text = new TextEncoder();
  const field = (tag: number, bytes: Uint8Array) =>
    concat(new Uint8Array([tag, bytes.length]), bytes);
  // What does not parse, on the wire, is refused before protobufjs (lenient: it cuts a string
  // running past the end short, skips wire type 7 and field number 0) decodes anything.
  const notProtobuf = /^request is not a valid protobuf message$/;
  const undecodable: [string, Uint8Array][] = [
    ["all 0xff", new Uint8Array(32).fill(0xff)],
    ["a truncated varint", new Uint8Array([0x30, 0xff, 0xff])],
    ["a nested capability that does not decode", field(0x2a, new Uint8Array([0x0a, 50, 1]))],
    ["end-group without start-group", new Uint8Array([0x7c])],
    ["a string declaring 100 bytes, carrying 3", new Uint8Array([0x0a, 100, 1, 2, 3])],
    [
      "a target path declaring 100 bytes, carrying 4",
      concat(field(0x0a, text.encode("v")), new Uint8Array([0x22, 100]), text.encode("/etc")),
    ],
    [
      "a target path declaring 2^32 bytes",
      new Uint8Array([0x22, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x2f]),
    ],
    ["a map entry that does not decode", field(0x42, new Uint8Array([0x0a, 9, 0x41]))],
  ];
  for (const [label, bytes] of undecodable) {
    suite.count("malformed protobuf");
    await suite.isolated(async () => {
      const result = await rawCall(socket, publish, bytes);
      assert.ok(!result.ok, `${label}: accepted`);
      assert.equal(result.code, INVALID, `${label}: ${describe(result)}`);
      assert.match(result.details, notProtobuf, label);
    });
  }
  // Bytes that parse reach the checks of each field and then the handlers' validation.
  const decodable: [string, string, Uint8Array, grpc.status, RegExp][] = [
    [
      "wire type 7 on volume_id",
      publish,
      new Uint8Array([0x0f, 0x00]),
      INVALID,
      /^request field volume_id has wire type 7$/,
    ],
    [
      "field number 0",
      publish,
      new Uint8Array([0x02, 0x01, 0x00]),
      INVALID,
      /missing required volume id/,
    ],

    [
      "invalid UTF-8 id, no target",
      publish,
      field(0x0a, new Uint8Array([0xff, 0xfe, 0xc0])),
      INVALID,
      /^request field volume_id is not valid UTF-8$/,
    ],
    [
      "target path as invalid UTF-8",
      publish,
      concat(field(0x0a, text.encode("v")), field(0x22, new Uint8Array([0x2f, 0xff, 0x2f]))),
      INVALID,
      /^request field target_path is not valid UTF-8$/,
    ],
    [
      "unknown fields only",
      publish,
      concat(field(0x7a, text.encode("x")), new Uint8Array([0xf8, 0x07, 0x01])),
      INVALID,
      /missing required volume id/,
    ],
    ["an empty message", publish, new Uint8Array(), INVALID, /missing required volume id/],
    [
      "an unknown method",
      "/csi.v1.Node/NodeRootShell",
      new Uint8Array(),
      status.UNIMPLEMENTED,
      /NodeRootShell|not implemented|unimplemented/i,
    ],
    [
      "an unknown service",
      "/csi.v1.Controller/CreateVolume",
      new Uint8Array(),
      status.UNIMPLEMENTED,
      /CreateVolume|not implemented|unimplemented/i,
    ],
    [
      "a path without a service",
      "/Probe",
      new Uint8Array(),
      status.UNIMPLEMENTED,
      /Probe|not implemented|unimplemented/i,
    ],
  ];
  for (const [label, method, bytes, code, message] of decodable) {
    suite.count("malformed protobuf");
    await suite.isolated(async () => {
      const result = await rawCall(socket, method, bytes);
      assert.ok(!result.ok, `${label}: accepted`);
      assert.equal(result.code, code, `${label}: ${describe(result)}`);
      assert.match(result.details, message, label);
    });
  }
}

/** 1,000 connections opened and dropped: bare, after the preface, and mid-call. */
async function connectionCases(suite: Suite): Promise<void> {
  const path = suite.tree.csiSocketPath;
  const requestBytes = concat(PREFACE, SETTINGS, frame(1, 0x4, 1, PROBE_HEADERS));
  let refused = 0;
  // A full listen backlog refuses a connect with EAGAIN (WouldBlock): wait, then connect again.
  const connect = async (): Promise<Deno.UnixConn> => {
    for (let attempt = 0;; attempt++) {
      try {
        return await Deno.connect({ transport: "unix", path });
      } catch (error) {
        if (!(error instanceof Deno.errors.WouldBlock) || attempt > 100) throw error;
        refused++;
        await sleep(5);
      }
    }
  };
  await suite.isolated(async () => {
    for (let batch = 0; batch < 10; batch++) {
      await Promise.all(Array.from({ length: 100 }, async (_, i) => {
        const conn = await connect();
        try {
          if (i % 3 === 1) await conn.write(PREFACE);
          if (i % 3 === 2) await conn.write(requestBytes);
        } finally {
          conn.close();
        }
      }));
    }
  });
  say(
    `1,000 connections: ${refused} connects refused with EAGAIN (listen backlog full) and retried`,
  );
  suite.count("1,000 connections opened and dropped");
  // And 100 grpc-js clients dropped in the middle of a call.
  await suite.isolated(async () => {
    await Promise.all(Array.from({ length: 100 }, () => {
      const client = new CsiClient(path);
      const pending = client.call("Probe", {}, 2000);
      setTimeout(() => client.close(), 1);
      return pending;
    }));
  });
  suite.count("1,000 connections opened and dropped");
}

Deno.test({
  name:
    "hostile inputs get clear errors, touch nothing outside the root, and leave the driver serving",
  ignore: !REAL_MOUNTS,
  async fn(t) {
    const seed = testSeed("HOSTILE_SEED", "hostile");
    const etcBefore = await listEtc();
    const tree = await makeTempTree();
    const driver = await startDriver({
      socketDir: tree.socketDir,
      csiSocketPath: tree.csiSocketPath,
      kubeletDir: tree.kubeletDir,
      cwdLink: tree.cwdLink,
    });
    const suite = new Suite(tree, driver);
    const started = performance.now();
    try {
      await t.step(
        "paths, capabilities, context, NUL, newlines and unicode",
        () => requestCases(suite),
      );
      await t.step("4 MiB strings", () => hugeCases(suite));
      await t.step("symlinked components", () => symlinkCases(suite));
      await t.step(
        "random bytes and truncated frames on the socket",
        () => rawSocketCases(suite, seed),
      );
      await t.step("malformed protobuf", () => protobufCases(suite));
      await t.step("1,000 connections opened and dropped", () => connectionCases(suite));
      await suite.assertServing();
      // Newlines and NUL in ids never split a log line: every line is one JSON object.
      for (const line of driver.logs().split("\n").filter((l) => l !== "")) {
        assert.doesNotThrow(
          () => JSON.parse(line),
          `a log line is not JSON: ${line.slice(0, 200)}`,
        );
      }
    } catch (error) {
      say(`driver logs (tail):\n${driver.logs().slice(-3000)}`);
      throw error;
    } finally {
      suite.client.close();
      const exit = await driver.stop();
      say(`driver exit after SIGTERM: code ${exit.code}`);
      const groups = [...suite.byGroup].map(([group, n]) => `${group}: ${n}`).join(", ");
      say(
        `hostile cases tried: ${suite.cases} in ${
          ((performance.now() - started) / 1000).toFixed(1)
        } s (${groups})`,
      );
    }
    const left = (await mountTable()).filter((e) => e.target.startsWith(`${tree.root}/`));
    for (const entry of left.reverse()) {
      await new Deno.Command("/usr/bin/umount", { args: [entry.target] }).output();
    }
    assert.deepEqual(left.map((entry) => entry.target), [], "mounts left under the temp tree");
    await tree.remove();
    assert.deepEqual(await listEtc(), etcBefore, "/etc changed");
  },
});
