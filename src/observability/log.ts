// Structured operational logs: one JSON object per line on stderr, filtered by level
// (`observability { logging { level … } }`, or SENTINEL_LOG_LEVEL until the config is loaded).
// With `logging { error-log { file … } }` the lines at or above the error-log level are also
// written to that file (through a non-blocking line sink).
// Never throws, never blocks on I/O (stderr writes are buffered by the runtime).
export type LogLevel = "debug" | "info" | "warn" | "error";
const order: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

const LEVELS = Object.keys(order) as LogLevel[];

/** A level name as the config reads it (any case, "warning" for warn); undefined if it is none. */
export function parseLogLevel(name: string): LogLevel | undefined {
  const n = name.trim().toLowerCase();
  const level = n === "warning" ? "warn" : n;
  return LEVELS.includes(level as LogLevel) ? (level as LogLevel) : undefined;
}

const envLevel = process.env.SENTINEL_LOG_LEVEL || undefined;
let threshold = order[parseLogLevel(envLevel ?? "info") ?? "info"];

interface ExtraSink {
  write(line: string): void;
}
let extra: { sink: ExtraSink; threshold: number } | undefined;

export function setLogLevel(level: LogLevel): void {
  threshold = order[level] ?? order.info;
}

export function getLogLevel(): LogLevel {
  return LEVELS.find((k) => order[k] === threshold) ?? "info";
}

/**
 * Say once, on stderr, that SENTINEL_LOG_LEVEL holds no level (a typo would otherwise silently
 * log at info). Not at import: the entry point decides which process reports it.
 */
export function warnInvalidEnvLogLevel(): void {
  if (envLevel === undefined || parseLogLevel(envLevel) !== undefined) return;
  log("warn", `SENTINEL_LOG_LEVEL ${JSON.stringify(envLevel)} is not a log level; using info until the config sets one (valid: ${LEVELS.join(", ")})`, {
    value: envLevel,
    valid: LEVELS,
  });
}

/** Also write lines at or above `level` to `sink` (the error log); undefined to stop. */
export function setErrorLogSink(sink: ExtraSink | undefined, level: LogLevel = "warn"): void {
  extra = sink ? { sink, threshold: order[level] ?? order.warn } : undefined;
}

/**
 * In a worker process (`worker-threads N`, src/proxy/workers.ts), its index on every line, so
 * that the N copies of a reload's lines can be told apart; undefined in a single process.
 */
const WORKER = Number(process.env.SENTINEL_WORKER) > 0 ? Number(process.env.SENTINEL_WORKER) : undefined;

export function log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
  const n = order[level];
  const toExtra = extra !== undefined && n >= extra.threshold;
  if (n < threshold && !toExtra) return;
  let line: string;
  try {
    line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...(WORKER !== undefined ? { worker: WORKER } : undefined), ...fields });
  } catch {
    line = JSON.stringify({ time: new Date().toISOString(), level, msg });
  }
  if (n >= threshold) process.stderr.write(line + "\n");
  if (toExtra) extra!.sink.write(line);
}

export type Logger = typeof log;
