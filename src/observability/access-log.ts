// Line sinks for the access, audit and error logs: one line per call, written without blocking
// the request path and with bounded memory.
//
// write() only appends the line to an in-memory buffer. The buffer is handed to the kernel with
// an asynchronous fs.write (the runtime's I/O thread pool, not the event loop) once it holds
// flushBytes (buffer-size; FLUSH_BYTES by default) or FLUSH_MS after the oldest buffered line;
// one write is in flight at a time. While the disk is slow, lines keep accumulating up to
// max(MAX_BUFFER, 2 × flushBytes); beyond that they are dropped and counted
// (sentinel_log_lines_dropped_total{log}) instead of growing memory. So at most that bound
// twice (pending + in flight), 4 MiB with the largest buffer-size, is ever held.
//
// A file is opened once, in append mode (O_APPEND: safe with several writers and with
// logrotate's copytruncate); a reload opens it again, which is how rotation by rename works:
// rename the file, then send SIGHUP.
import { close as closeFd, openSync, write as writeFd } from "node:fs";
import client from "./prom.ts";
import { registry } from "./metrics.ts";

const MAX_BUFFER = 1024 * 1024;
const FLUSH_BYTES = 64 * 1024;
const FLUSH_MS = 100;

const dropped = new client.Counter({
  name: "sentinel_log_lines_dropped_total",
  help: "Log lines dropped because the log buffer was full or the write failed, by log",
  labelNames: ["log"],
  registers: [registry],
});
const written = new client.Counter({
  name: "sentinel_log_lines_total",
  help: "Log lines handed to the log buffer, by log",
  labelNames: ["log"],
  registers: [registry],
});

export interface LineSink {
  readonly name: string;
  readonly file?: string;
  /** Buffer one line (no trailing newline). Never throws, never blocks. */
  write(line: string): void;
  /** Resolves once every line buffered so far has been written (or dropped). */
  flush(): Promise<void>;
  /** Flush (waiting at most `timeoutMs` for a stuck disk), then close the file. Later writes are dropped. */
  close(timeoutMs?: number): Promise<void>;
}

export interface SinkOptions {
  maxBuffer?: number;
  flushBytes?: number;
  flushMs?: number;
  /** Called (at most once a minute) when a write fails. */
  onError?: (err: unknown) => void;
}

/**
 * A sink writing to `file` (opened now, in append mode; throws if it cannot be opened) or, with
 * no file, to stdout.
 */
export function createSink(name: string, file?: string, opts: SinkOptions = {}): LineSink {
  const flushBytes = opts.flushBytes ?? FLUSH_BYTES;
  // Room for a full buffer plus what arrives while it is written, whatever buffer-size says.
  const maxBuffer = Math.max(opts.maxBuffer ?? MAX_BUFFER, 2 * flushBytes);
  const flushMs = opts.flushMs ?? FLUSH_MS;
  const fd = file ? openSync(file, "a", 0o640) : 1;
  const mDropped = dropped.labels(name);
  const mWritten = written.labels(name);
  mDropped.inc(0);

  let pending: string[] = [];
  let size = 0;
  /** When the oldest pending line was logged (it goes out flushMs after that at the latest). */
  let oldestAt = 0;
  let writing = false;
  let closed = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let idle: Array<() => void> = [];
  let lastErrorAt = 0;

  const settle = () => {
    if (writing || pending.length > 0) return;
    const w = idle;
    idle = [];
    for (const f of w) f();
  };

  const onWritten = (lines: number, err: unknown) => {
    writing = false;
    if (err) {
      mDropped.inc(lines);
      const now = Date.now();
      if (opts.onError && now - lastErrorAt > 60_000) {
        lastErrorAt = now;
        opts.onError(err);
      }
    }
    if (pending.length === 0) return settle();
    if (size >= flushBytes || idle.length > 0 || performance.now() - oldestAt >= flushMs) kick();
    else arm();
  };

  const writeAll = (buf: Buffer, off: number, lines: number) => {
    writeFd(fd, buf, off, buf.length - off, null, (err, n) => {
      if (err) return onWritten(lines, err);
      if (off + n < buf.length) return writeAll(buf, off + n, lines); // short write (pipes)
      onWritten(lines, null);
    });
  };

  function kick(): void {
    if (timer !== undefined) {
      clearTimeout(timer);
      timer = undefined;
    }
    if (writing || pending.length === 0) return settle();
    writing = true;
    const lines = pending.length;
    const chunk = pending.join("\n") + "\n";
    pending = [];
    size = 0;
    writeAll(Buffer.from(chunk), 0, lines);
  }

  function arm(): void {
    if (timer !== undefined || writing) return;
    timer = setTimeout(kick, Math.max(0, flushMs - (performance.now() - oldestAt)));
    (timer as { unref?: () => void }).unref?.();
  }

  return {
    name,
    file,
    write(line) {
      if (closed || size + line.length + 1 > maxBuffer) {
        mDropped.inc();
        return;
      }
      if (pending.length === 0) oldestAt = performance.now();
      pending.push(line);
      size += line.length + 1;
      mWritten.inc();
      if (size >= flushBytes) {
        if (!writing) kick();
      } else arm();
    },
    flush() {
      if (!writing && pending.length === 0) return Promise.resolve();
      const p = new Promise<void>((resolve) => idle.push(resolve));
      if (!writing) kick();
      return p;
    },
    async close(timeoutMs = 2_000) {
      if (closed) return;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const flushed = await Promise.race([
        this.flush().then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
      ]);
      clearTimeout(timer);
      closed = true;
      if (!flushed) {
        mDropped.inc(pending.length);
        pending = [];
        size = 0;
        return; // a write is stuck in the kernel: leave the fd to the process exit
      }
      if (fd !== 1) await new Promise<void>((resolve) => closeFd(fd, () => resolve()));
    },
  };
}
