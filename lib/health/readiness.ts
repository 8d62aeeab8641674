/** Probe's readiness, with the reason logged once each time it changes (not once per call). */
import type { Logger } from "../log.ts";
import { inspectSocketDir } from "./socket_dir.ts";

/** Readiness of the driver: the Workload API socket dir can be listed. */
export function socketDirReadiness(socketDir: string, log: Logger): () => Promise<boolean> {
  // The driver starts out assumed ready: only a change is worth a line.
  let lastReason = "";
  return async () => {
    const health = await inspectSocketDir(socketDir, {
      timeoutMs: 0,
      listOnly: true,
      subject: socketDir,
    });
    const reason = health.healthy ? "" : health.message;
    if (reason !== lastReason) {
      lastReason = reason;
      if (health.healthy) log.info("Probe: ready again", { ready: true });
      else log.warn("Probe: not ready: {reason}", { ready: false, reason });
    }
    return health.healthy;
  };
}
