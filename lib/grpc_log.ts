/** grpc-js's own log lines, which it writes to the console, routed into the driver's logger. */
import { setLogger } from "@grpc/grpc-js";
import { format } from "node:util";
import type { Logger } from "./log.ts";

/**
 * Sends grpc-js's messages to `log` at debug level: the driver reports every failure itself, in its
 * own format, so they would only repeat it (e.g. "No address added out of total 1 resolved" before
 * the driver's "Cannot serve CSI" line). `-log-level=debug` shows them; GRPC_NODE_VERBOSITY and
 * GRPC_TRACE still choose which ones grpc-js emits.
 */
export function routeGrpcLogs(log: Logger): void {
  const write = (message?: unknown, ...rest: unknown[]) =>
    log.debug("grpc-js: {message}", { message: format(message, ...rest) });
  setLogger({ error: write, info: write, debug: write });
}
