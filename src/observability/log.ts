// Structured operational logs: one JSON object per line on stderr, filtered by level
// (`observability { logging { level … } }`, or SENTINEL_LOG_LEVEL until the config is loaded).
// With `logging { error-log { file … } }` the lines at or above the error-log level are also
// written to that file (through a non-blocking line sink).
// Never throws, never blocks on I/O (stderr writes are buffered by the runtime).
export type LogLevel = "debug" | "info" | "warn" | "error";
const order: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

let threshold = order[(process.env.SENTINEL_LOG_LEVEL as LogLevel) ?? "info"] ?? order.info;

interface ExtraSink {
  write(line: string): void;
}
let extra: { sink: ExtraSink; threshold: number } | undefined;

export function setLogLevel(level: LogLevel): void {
  threshold = order[level] ?? order.info;
}

export function getLogLevel(): LogLevel {
  return (Object.keys(order) as LogLevel[]).find((k) => order[k] === threshold) ?? "info";
}

/** Also write lines at or above `level` to `sink` (the error log); undefined to stop. */
export function setErrorLogSink(sink: ExtraSink | undefined, level: LogLevel = "warn"): void {
  extra = sink ? { sink, threshold: order[level] ?? order.warn } : undefined;
}

export function log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
  const n = order[level];
  const toExtra = extra !== undefined && n >= extra.threshold;
  if (n < threshold && !toExtra) return;
  let line: string;
  try {
    line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields });
  } catch {
    line = JSON.stringify({ time: new Date().toISOString(), level, msg });
  }
  if (n >= threshold) process.stderr.write(line + "\n");
  if (toExtra) extra!.sink.write(line);
}

export type Logger = typeof log;
