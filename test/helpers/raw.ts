// A raw TCP HTTP client for tests where the exact bytes matter (fetch would normalise them).
import { connect } from "node:net";

export interface RawResult {
  text: string;
  status: number;
  closed: boolean;
}

export function rawRequest(url: string, bytes: string | Uint8Array, opts: { timeoutMs?: number; waitClose?: boolean; localAddress?: string } = {}): Promise<RawResult> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const sock = connect({ host: u.hostname, port: Number(u.port), localAddress: opts.localAddress });
    let text = "";
    let closed = false;
    const done = () => {
      clearTimeout(timer);
      sock.destroy();
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      resolve({ text, status: m ? Number(m[1]) : 0, closed });
    };
    const timer = setTimeout(done, opts.timeoutMs ?? 3000);
    sock.on("connect", () => sock.write(bytes));
    sock.on("data", (d) => {
      text += d.toString("latin1");
      if (!opts.waitClose && /\r\n\r\n/.test(text)) {
        const cl = /content-length: (\d+)/i.exec(text);
        const head = text.indexOf("\r\n\r\n") + 4;
        if (cl && text.length - head >= Number(cl[1])) setTimeout(done, 5);
      }
    });
    sock.on("close", () => {
      closed = true;
      done();
    });
    sock.on("error", () => {
      closed = true;
      done();
    });
  });
}

export function get(path: string, host = "t", extra = ""): string {
  return `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}Connection: close\r\n\r\n`;
}

export interface UploadResult {
  /** Everything the server sent. */
  text: string;
  status: number;
  /** Body bytes written before the server closed (or all of them). */
  sent: number;
  /** The socket error that ended the exchange (EPIPE, ECONNRESET…), if any. */
  error?: string;
  /** Milliseconds from connect to the server's close. */
  closedMs: number;
}

/**
 * Send `head`, then `bodyBytes` bytes in 64 KiB writes that honour backpressure, the way
 * clients that write their whole request before reading the answer (Node's fetch) do; or, with
 * `forMs`, keep sending for that long. Read everything until the server closes (or `timeoutMs`).
 */
export function upload(
  url: string,
  head: string,
  opts: { bodyBytes?: number; forMs?: number; timeoutMs?: number; chunked?: boolean; /** With forMs: one 64 KiB write per this many ms. */ paceMs?: number },
): Promise<UploadResult> {
  const u = new URL(url);
  const data = Buffer.alloc(64 * 1024, 0x78);
  // With `chunked`, every write is one chunk of the same 64 KiB (the head must say chunked).
  const chunk = opts.chunked ? Buffer.concat([Buffer.from(`${data.byteLength.toString(16)}\r\n`), data, Buffer.from("\r\n")]) : data;
  return new Promise((resolve) => {
    const t0 = performance.now();
    const sock = connect({ host: u.hostname, port: Number(u.port) });
    let text = "";
    let sent = 0;
    let error: string | undefined;
    let ended = false;
    const done = () => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      sock.destroy();
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      resolve({ text, status: m ? Number(m[1]) : 0, sent, error, closedMs: performance.now() - t0 });
    };
    const timer = setTimeout(done, opts.timeoutMs ?? 15_000);
    const more = () => (opts.forMs !== undefined ? performance.now() - t0 < opts.forMs : sent < (opts.bodyBytes ?? 0));
    const pump = () => {
      while (!ended && !sock.destroyed && more()) {
        const n = opts.forMs !== undefined || opts.chunked ? chunk.byteLength : Math.min(chunk.byteLength, opts.bodyBytes! - sent);
        sent += n;
        const last = opts.chunked && !more();
        if (!sock.write(n === chunk.byteLength ? chunk : chunk.subarray(0, n))) return void sock.once("drain", last ? () => sock.write("0\r\n\r\n") : pump);
        if (last) sock.write("0\r\n\r\n");
        if (opts.paceMs) return void setTimeout(pump, opts.paceMs);
      }
    };
    sock.on("connect", () => {
      sock.write(head);
      pump();
    });
    sock.on("data", (d) => void (text += d.toString("latin1")));
    sock.on("error", (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
      done();
    });
    sock.on("close", done);
  });
}
