// Access and audit logs: one line per request, written without blocking the request path.
// Lines go into a bounded in-memory buffer flushed every 100 ms or at 64 KiB; when the buffer
// is full (a stuck disk), lines are dropped and counted rather than growing memory.
import { appendFileSync } from "node:fs";
import client from "prom-client";
import { registry } from "./metrics.ts";

const MAX_BUFFER = 1024 * 1024;
const FLUSH_BYTES = 64 * 1024;

const dropped = new client.Counter({
  name: "sentinel_log_lines_dropped_total",
  help: "Log lines dropped because the log buffer was full",
  labelNames: ["log"],
  registers: [registry],
});

export interface LineSink {
  write(line: string): void;
  flush(): void;
  close(): void;
}

export function createSink(name: string, file?: string): LineSink {
  let buf: string[] = [];
  let size = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const out = file ? (s: string) => appendFileSync(file, s) : (s: string) => void process.stdout.write(s);
  const flush = () => {
    if (timer) {
      clearTimeout(timer);
      timer = undefined;
    }
    if (buf.length === 0) return;
    const chunk = buf.join("");
    buf = [];
    size = 0;
    try {
      out(chunk);
    } catch {
      dropped.labels(name).inc(chunk.split("\n").length - 1);
    }
  };
  return {
    write(line) {
      if (size + line.length > MAX_BUFFER) {
        dropped.labels(name).inc();
        return;
      }
      buf.push(line + "\n");
      size += line.length + 1;
      if (size >= FLUSH_BYTES) flush();
      else if (!timer) {
        timer = setTimeout(flush, 100);
        (timer as { unref?: () => void }).unref?.();
      }
    },
    flush,
    close: flush,
  };
}
