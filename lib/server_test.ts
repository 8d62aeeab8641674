import assert from "node:assert/strict";
import { Client, credentials, status } from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import protobuf from "protobufjs";
import { createServer, CSI_LIMITS, listen, toRpcStatus } from "./server.ts";
import { setupLogging } from "./log.ts";
import { Code, CsiError } from "./errors.ts";
import { createIdentityService } from "./csi/identity.ts";
import type { NodeService } from "./csi/node.ts";
import { CsiClient } from "../tests/_csi_client.ts";

Deno.test("toRpcStatus() keeps a CsiError's code and message", () => {
  assert.deepEqual(toRpcStatus(new CsiError(Code.NOT_FOUND, "volume path does not exist")), {
    code: status.NOT_FOUND,
    details: "volume path does not exist",
  });
});

Deno.test("toRpcStatus() gives each domain code the gRPC status of the same name", () => {
  for (const code of Object.values(Code)) {
    assert.equal(status[toRpcStatus(new CsiError(code, "m")).code], code);
  }
});

Deno.test("toRpcStatus() turns anything else into a short Internal status without a stack", () => {
  for (const error of [new Error("secret detail\n    at x.ts:1"), "text", null, { code: 5 }]) {
    assert.deepEqual(toRpcStatus(error), { code: status.INTERNAL, details: "internal error" });
  }
});

const IDENTITY = createIdentityService({
  pluginName: "csi.spiffe.io",
  version: "1.2.3",
  ready: () => Promise.resolve(true),
});

Deno.test({
  name:
    "the server maps a CsiError to its status and anything else to a bare Internal, logging it in full",
  async fn() {
    const dir = await Deno.makeTempDir();
    const lines: string[] = [];
    const log = await setupLogging({ level: "debug", format: "json", write: (l) => lines.push(l) });
    const fail = (error: unknown) => () => Promise.reject(error);
    const node = {
      NodeGetInfo: fail(new TypeError("secret detail at /internal/path")),
      NodeGetCapabilities: fail(new CsiError(Code.NOT_FOUND, "volume path does not exist")),
    } as unknown as NodeService;
    const server = createServer({ log, identity: IDENTITY, node });
    const listener = await listen(server, `${dir}/csi.sock`, {
      limits: CSI_LIMITS,
      log,
      answers: () => Promise.resolve(false),
    });
    const client = new CsiClient(`${dir}/csi.sock`);
    try {
      const internal = await client.call("NodeGetInfo");
      assert.deepEqual(internal, { ok: false, code: status.INTERNAL, details: "internal error" });
      const known = await client.call("NodeGetCapabilities");
      assert.deepEqual(known, {
        ok: false,
        code: status.NOT_FOUND,
        details: "volume path does not exist",
      });
      const info = await client.ok("GetPluginInfo");
      assert.deepEqual(info, { name: "csi.spiffe.io", vendor_version: "1.2.3", manifest: {} });
      const records = lines.map((l) => JSON.parse(l));
      const logged = records.find((r) => r.properties.method === "NodeGetInfo");
      assert.equal(logged.level, "ERROR");
      assert.equal(logged.properties.code, "INTERNAL");
      assert.match(logged.properties.error, /secret detail/);
      assert.match(logged.properties.stack, /TypeError: secret detail/);
      const notFound = records.find((r) => r.properties.method === "NodeGetCapabilities");
      assert.equal(notFound.level, "WARN");
      assert.equal(notFound.properties.stack, undefined);
    } finally {
      client.close();
      await listener.shutdown(1000);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "the server refuses a string field that is not UTF-8 with InvalidArgument, before any handler",
  async fn() {
    const dir = await Deno.makeTempDir();
    const log = await setupLogging({ level: "error", format: "json", write: () => {} });
    const seen: unknown[] = [];
    const node = {
      NodePublishVolume: (request: unknown) => {
        seen.push(request);
        return Promise.resolve({});
      },
    } as unknown as NodeService;
    const server = createServer({ log, identity: IDENTITY, node });
    const listener = await listen(server, `${dir}/csi.sock`, {
      limits: CSI_LIMITS,
      log,
      answers: () => Promise.resolve(false),
    });
    const client = new Client(`unix:${dir}/csi.sock`, credentials.createInsecure());
    const call = (bytes: Uint8Array) =>
      new Promise<{ code: number; details: string }>((resolve) => {
        client.makeUnaryRequest(
          "/csi.v1.Node/NodePublishVolume",
          (b: Uint8Array) => Buffer.from(b),
          (b: Buffer) => b,
          bytes,
          (error) =>
            resolve(
              error ? { code: error.code, details: error.details } : {
                code: status.OK,
                details: "",
              },
            ),
        );
      });
    const field = (id: number, value: Uint8Array) => {
      const writer = protobuf.Writer.create();
      return writer.uint32((id << 3) | 2).bytes(value).finish();
    };
    try {
      // target_path (4) = "vol\xff\xfe": protobufjs alone would decode it to "vol\ufffd\ufffd".
      const bad = await call(field(4, Uint8Array.from([0x76, 0x6f, 0x6c, 0xff, 0xfe])));
      assert.deepEqual(bad, {
        code: status.INVALID_ARGUMENT,
        details: "request field target_path is not valid UTF-8",
      });
      assert.deepEqual(seen, [], "the handler never ran");
      const good = await call(field(4, new TextEncoder().encode("vol\ufffd")));
      assert.equal(good.code, status.OK);
      assert.equal(seen.length, 1, "valid UTF-8 (U+FFFD included) reaches the handler");
    } finally {
      client.close();
      await listener.shutdown(1000);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
