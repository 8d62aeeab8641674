/** Assertions on the driver's own errors, shared by the unit tests. */
import assert from "node:assert/strict";
import { type Code, CsiError } from "../lib/errors.ts";

/**
 * Asserts that `call` (a promise, or a function that throws or rejects) fails with a CsiError of
 * `code` whose message equals `message` (a string) or matches it (a RegExp), when one is given.
 */
export async function assertCsiError(
  call: Promise<unknown> | (() => unknown),
  code: Code,
  message?: string | RegExp,
  note = "",
): Promise<void> {
  let error: unknown = undefined;
  let failed = false;
  try {
    await (typeof call === "function" ? call() : call);
  } catch (thrown) {
    failed = true;
    error = thrown;
  }
  const where = note === "" ? "" : `${note}: `;
  assert.ok(failed, `${where}expected a ${code} CsiError, the call succeeded`);
  assert.ok(error instanceof CsiError, `${where}expected a CsiError, got ${String(error)}`);
  assert.equal(error.code, code, `${where}${error.message}`);
  if (typeof message === "string") assert.equal(error.message, message, note);
  else if (message !== undefined) assert.match(error.message, message, note);
}
