// Structured operational logs: one JSON object per line on stderr, filtered by level.
// Never throws, never blocks on I/O (stderr writes are buffered by the runtime).
export type LogLevel = "debug" | "info" | "warn" | "error";
const order: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

let threshold = order[(process.env.SENTINEL_LOG_LEVEL as LogLevel) ?? "info"] ?? order.info;

export function setLogLevel(level: LogLevel): void {
  threshold = order[level] ?? order.info;
}

export function log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
  if (order[level] < threshold) return;
  let line: string;
  try {
    line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields });
  } catch {
    line = JSON.stringify({ time: new Date().toISOString(), level, msg });
  }
  process.stderr.write(line + "\n");
}

export type Logger = typeof log;
