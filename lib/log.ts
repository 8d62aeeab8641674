/** Logger setup (logtape, synchronous stderr sink) and the log field names, in one place. */
import {
  configure,
  getLogger,
  jsonLinesFormatter,
  type Logger,
  type LogLevel as LogtapeLevel,
  type LogRecord,
} from "@logtape/logtape";
import type { LogFormat, LogLevel } from "./config/flags.ts";

export type { Logger };

/** Log field names (one place, as upstream's logkeys). */
export const KEYS = {
  method: "method",
  code: "code",
  durationMs: "duration_ms",
  volumeId: "volume_id",
  targetPath: "target_path",
  podName: "pod_name",
  podNamespace: "pod_namespace",
  podUid: "pod_uid",
  error: "error",
} as const;

const LEVELS: Record<LogLevel, LogtapeLevel> = {
  debug: "debug",
  info: "info",
  warn: "warning",
  error: "error",
};

/** Options for setupLogging. */
export interface LogOptions {
  level: LogLevel;
  format: LogFormat;
  /** Where lines go; default stderr. */
  write?: (line: string) => void;
}

/** Formats a record as one line of text: time, level, message, then key=value pairs quoted as JSON. */
export function textFormatter(record: LogRecord): string {
  const message = record.message.map((part) =>
    typeof part === "string" ? part : JSON.stringify(part)
  )
    .join("");
  const fields = Object.entries(record.properties)
    .map(([key, value]) => `${key}=${JSON.stringify(value)}`)
    .join(" ");
  const time = new Date(record.timestamp).toISOString();
  return `${time} ${record.level.toUpperCase()} ${JSON.stringify(message)}${
    fields ? ` ${fields}` : ""
  }\n`;
}

/** Configures the driver's logger and returns it. Lines are written synchronously, so none is lost at exit. */
export async function setupLogging(options: LogOptions): Promise<Logger> {
  const encoder = new TextEncoder();
  const write = options.write ?? ((line: string) => {
    Deno.stderr.writeSync(encoder.encode(line));
  });
  const formatter = options.format === "json" ? jsonLinesFormatter : textFormatter;
  await configure({
    reset: true,
    sinks: { out: (record: LogRecord) => write(formatter(record)) },
    loggers: [
      { category: ["spiffe-csi"], lowestLevel: LEVELS[options.level], sinks: ["out"] },
      { category: ["logtape", "meta"], lowestLevel: "error", sinks: ["out"] },
    ],
  });
  return getLogger(["spiffe-csi"]);
}
