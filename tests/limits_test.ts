// deno-lint-ignore-file no-console
// What the CSI socket lets in, against the real driver process under its permission set and V8
// heap: floods and oversize requests get a status and one log line each, and the driver keeps
// serving everyone else.
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { Client, credentials, status } from "@grpc/grpc-js";
import protobuf from "protobufjs";
import { type DriverProcess, logRecords, startDriver } from "./_driver.ts";
import { CsiClient, publishRequest } from "./_csi_client.ts";
import { layers, makeTempTree, type TempTree, waitFor } from "./_env.ts";
import { CSI_LIMITS } from "../lib/server.ts";
import { concat, frame, PREFACE, PROBE_HEADERS, SETTINGS } from "./_http2.ts";

const test = (name: string, fn: (s: { tree: TempTree; driver: DriverProcess }) => Promise<void>) =>
  Deno.test({
    name,
    async fn() {
      const tree = await makeTempTree();
      const driver = await startDriver({ ...tree });
      try {
        await fn({ tree, driver });
        // Serving again once the flood's connections are closed (the driver sees each close a
        // moment after the client makes it).
        await waitFor("a Probe that succeeds", async () => {
          const client = new CsiClient(tree.csiSocketPath);
          try {
            return (await client.call("Probe", {}, 2000)).ok || undefined;
          } finally {
            client.close();
          }
        }, 20_000);
        assert.ok(driver.running(), "the driver process is still running");
      } catch (error) {
        console.error(driver.logs().slice(-4000));
        throw error;
      } finally {
        await driver.stop("SIGKILL");
        await tree.remove();
      }
    },
  });

/** Opens a connection and starts `streams` calls that send HEADERS and nothing more. */
async function openEmptyStreams(path: string, streams: number): Promise<Deno.UnixConn | null> {
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path });
  } catch {
    return null;
  }
  const chunks = [PREFACE, SETTINGS];
  for (let i = 0; i < streams; i++) chunks.push(frame(1, 0x4, 1 + 2 * i, PROBE_HEADERS));
  const all = concat(...chunks);
  try {
    for (let written = 0; written < all.length;) written += await conn.write(all.subarray(written));
  } catch { /* the server reset the connection: that is a refusal, as intended */ }
  return conn;
}

test(
  "12,000 empty streams on one connection, then 300 connections of them, leave the driver serving",
  async ({ tree, driver }) => {
    const one = await openEmptyStreams(tree.csiSocketPath, 12_000);
    const many = await Promise.all(
      Array.from({ length: 300 }, () => openEmptyStreams(tree.csiSocketPath, 60)),
    );
    // While every flooding connection is still open, a new caller may be refused, but the
    // process must be alive and, once they close, serve again.
    assert.ok(driver.running(), "alive under the flood");
    // connect() returns once the kernel queues a connection, before the driver accepts it: the
    // refusals come as the driver works through the queue, so wait for one before closing.
    await waitFor(
      "connections past the limit refused, and logged",
      () =>
        logRecords(driver.logs()).some((r) => r.message.startsWith("Refused a connection"))
          ? true
          : undefined,
    );
    for (const conn of [one, ...many]) conn?.close();
  },
);

/** A client that sends `bytes` as the request of `method` as they are. */
async function callRaw(path: string, method: string, bytes: Uint8Array) {
  const client = new Client(`unix:${path}`, credentials.createInsecure());
  try {
    return await new Promise<{ code: number; details: string }>((resolve) => {
      client.makeUnaryRequest(
        method,
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from(bytes),
        (error) => resolve({ code: error?.code ?? status.OK, details: error?.details ?? "" }),
      );
    });
  } finally {
    client.close();
  }
}

/** A NodePublishVolume request for `target` with `entries` extra volume_context entries. */
function publishBytes(target: string, entries: number, valueBytes = 1): Uint8Array {
  const writer = protobuf.Writer.create();
  const request = publishRequest(target);
  writer.uint32((1 << 3) | 2).string(request.volume_id as string);
  writer.uint32((4 << 3) | 2).string(target);
  const capability = protobuf.Writer.create();
  capability.uint32((2 << 3) | 2).bytes(new Uint8Array()); // mount {}
  capability.uint32((3 << 3) | 2).bytes(Uint8Array.from([8, 1])); // access_mode SINGLE_NODE_WRITER
  writer.uint32((5 << 3) | 2).bytes(capability.finish());
  writer.uint32(6 << 3).bool(true); // readonly
  const entry = (key: string, value: string) => {
    const e = protobuf.Writer.create();
    e.uint32((1 << 3) | 2).string(key).uint32((2 << 3) | 2).string(value);
    writer.uint32((8 << 3) | 2).bytes(e.finish());
  };
  entry("csi.storage.k8s.io/ephemeral", "true");
  for (let i = 0; i < entries; i++) entry(i.toString(36), "x".repeat(valueBytes));
  return writer.finish();
}

test(
  "one huge publish (1.75 MB of tiny volume_context entries) is ResourceExhausted, logged once",
  async ({ tree, driver }) => {
    const target = await tree.target("pod-a");
    const bytes = publishBytes(target, 250_000);
    assert.ok(bytes.length > 1_700_000, `${bytes.length} bytes`);
    const result = await callRaw(tree.csiSocketPath, "/csi.v1.Node/NodePublishVolume", bytes);
    assert.equal(result.code, status.RESOURCE_EXHAUSTED, result.details);
    const logged = () =>
      logRecords(driver.logs()).filter((r) =>
        r.message === "RPC failed" && r.properties.code === "RESOURCE_EXHAUSTED"
      );
    await waitFor("the refusal's log line", () => logged().length > 0 || undefined);
    assert.equal(logged().length, 1, "one log line for the refusal");
    assert.equal(await layers(target), 0);
  },
);

test(
  "a publish under the size limit with too many volume_context entries is refused before decoding",
  async ({ tree, driver }) => {
    const target = await tree.target("pod-a");
    const bytes = publishBytes(target, 1_000);
    assert.ok(bytes.length <= CSI_LIMITS.messageBytes, `${bytes.length} bytes`);
    const result = await callRaw(tree.csiSocketPath, "/csi.v1.Node/NodePublishVolume", bytes);
    assert.equal(result.code, status.RESOURCE_EXHAUSTED);
    assert.equal(
      result.details,
      `request field volume_context has more than ${CSI_LIMITS.entries} entries`,
    );
    await waitFor(
      "the refusal's log line",
      () =>
        logRecords(driver.logs()).some((r) => r.properties.error === result.details) || undefined,
    );
    // As many entries as kubelet could send are fine.
    const ok = publishBytes(target, CSI_LIMITS.entries - 1, 100);
    const accepted = await callRaw(tree.csiSocketPath, "/csi.v1.Node/NodePublishVolume", ok);
    assert.notEqual(accepted.code, status.RESOURCE_EXHAUSTED, accepted.details);
    await callRaw(
      tree.csiSocketPath,
      "/csi.v1.Node/NodeUnpublishVolume",
      protobuf.Writer.create().uint32((1 << 3) | 2).string("v").uint32((2 << 3) | 2)
        .string(target).finish(),
    );
  },
);

test(
  "a string field sent with another wire type is InvalidArgument, and nothing is made",
  async ({ tree }) => {
    const target = await tree.target("pod-a");
    const good = publishBytes(target, 0);
    // target_path (4) as a varint after the real one: protobufjs would take its field number alone.
    const writer = protobuf.Writer.create();
    writer.uint32(4 << 3).uint32(7);
    const bytes = new Uint8Array([...good, ...writer.finish()]);
    const result = await callRaw(tree.csiSocketPath, "/csi.v1.Node/NodePublishVolume", bytes);
    assert.equal(result.code, status.INVALID_ARGUMENT);
    assert.equal(result.details, "request field target_path has wire type 0");
    await assert.rejects(Deno.lstat(target), Deno.errors.NotFound);
  },
);

test(
  "garbage, an unknown method and an oversize message each get a status and one log line",
  async ({ tree, driver }) => {
    const cases: [string, Uint8Array, number][] = [
      [
        "/csi.v1.Node/NodePublishVolume",
        Uint8Array.from([0x22, 0x05, 0x41]),
        status.INVALID_ARGUMENT,
      ],
      ["/csi.v1.Node/NoSuchMethod", new Uint8Array(), status.UNIMPLEMENTED],
      [
        "/csi.v1.Identity/Probe",
        new Uint8Array(CSI_LIMITS.messageBytes + 1),
        status.RESOURCE_EXHAUSTED,
      ],
    ];
    for (const [method, bytes, code] of cases) {
      const before = logRecords(driver.logs()).filter((r) => r.message === "RPC failed").length;
      const result = await callRaw(tree.csiSocketPath, method, bytes);
      assert.equal(result.code, code, `${method}: ${result.details}`);
      const failed = () => logRecords(driver.logs()).filter((r) => r.message === "RPC failed");
      await waitFor(`${method}: its log line`, () => failed().length > before || undefined);
      assert.equal(failed().length - before, 1, `${method}: one log line`);
    }
  },
);
