import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { createServer, listen, shutdown } from "./server.ts";
import { setupLogging } from "./log.ts";
import { Code, CsiError } from "./csi/errors.ts";
import { createIdentityService } from "./csi/identity.ts";
import type { NodeService } from "./csi/node.ts";
import { CsiClient } from "../tests/_csi_client.ts";

Deno.test({
  name:
    "the server maps a CsiError to its status and anything else to a bare Internal, logging it in full",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    const lines: string[] = [];
    const log = await setupLogging({ level: "debug", format: "json", write: (l) => lines.push(l) });
    const fail = (error: unknown) => () => Promise.reject(error);
    const node = {
      NodeGetInfo: fail(new TypeError("secret detail at /internal/path")),
      NodeGetCapabilities: fail(new CsiError(Code.NOT_FOUND, "volume path does not exist")),
    } as unknown as NodeService;
    const identity = createIdentityService({
      pluginName: "csi.spiffe.io",
      version: "1.2.3",
      ready: () => Promise.resolve(true),
    });
    const server = createServer({ log, identity, node });
    await listen(server, `${dir}/csi.sock`);
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
      await shutdown(server, `${dir}/csi.sock`, 1000);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
