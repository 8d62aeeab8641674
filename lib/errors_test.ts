import assert from "node:assert/strict";
import { Code, CsiError, toRpcStatus } from "./errors.ts";

Deno.test("toRpcStatus() keeps a CsiError's code and message", () => {
  assert.deepEqual(toRpcStatus(new CsiError(Code.NOT_FOUND, "volume path does not exist")), {
    code: Code.NOT_FOUND,
    details: "volume path does not exist",
  });
});

Deno.test("toRpcStatus() turns anything else into a short Internal status without a stack", () => {
  for (const error of [new Error("secret detail\n    at x.ts:1"), "text", null, { code: 5 }]) {
    assert.deepEqual(toRpcStatus(error), { code: Code.INTERNAL, details: "internal error" });
  }
});
