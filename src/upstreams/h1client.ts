// HTTP/1.1 upstream client written directly on Bun.connect, with keep-alive pooling per target.
//
// Why: on the proxy's hot path fetch() costs more CPU per request than the whole of nginx (see
// docs/benchmarks.md): a Request object, header copies, an AbortController, a response body
// stream. This client writes the request head as one string, parses the response head in one
// pass and, when the whole response is small and already here, hands back its bytes, so the
// proxy answers with a plain Uint8Array instead of piping a stream.
//
// Contract (the subset of fetch() that forward.ts relies on):
//   - plain HTTP/1.1 to host:port (TLS targets keep using fetch());
//   - the caller's headers are sent as they are (hop-by-hop already removed by the caller),
//     plus `host` if missing; framing (content-length / transfer-encoding: chunked) is ours;
//   - no decompression, no redirects, no cookies;
//   - `timeoutMs` bounds connect + request write + response head, on the shared deadline queue
//     (one runtime timer for all requests, no setTimeout per request);
//   - `signal` (client disconnect) aborts at any point and closes the upstream connection. An
//     exchange that has not been answered after ABORT_WATCH_AFTER_MS starts listening for it
//     (and checks it then): most exchanges end sooner and never pay for a listener, and an abort
//     before that is acted on at that mark at the latest;
//   - response hop-by-hop headers (and names listed in Connection) are removed;
//   - a response that is complete and at most `maxBufferedBody` bytes is returned as bytes,
//     anything else as a ReadableStream that reads from the socket only when pulled (socket
//     paused otherwise), with an idle timeout between chunks;
//   - a connection is reused only after a complete exchange on a keep-alive response;
//     a reused connection that dies before any response byte is retried once on a fresh one
//     when the request can be replayed (no streamed body).
import { ABORT_WATCH_AFTER_MS, sharedDeadlines, type DeadlineHandle } from "../agents/deadline.ts";

import { unwatchIdle, watchIdle, type IdleWatch } from "./idle.ts";
import { HOP_BY_HOP } from "../http/hop-by-hop.ts";
import { headerValue, type HeaderList } from "../http/header-list.ts";

/** See deadline.ts: when an exchange starts listening on the client's abort signal. */
export { ABORT_WATCH_AFTER_MS };

type BunSocket = import("bun").Socket<Conn>;

export interface H1Request {
  method: string;
  /** Path and query, forwarded as is. */
  path: string;
  /** A Headers object, or a flat lower-case name/value list (src/http/header-list.ts). */
  headers: Headers | HeaderList;
  body: Uint8Array | ReadableStream<Uint8Array> | null;
  /** Client disconnect. */
  signal?: AbortSignal;
  /** Until the response head has arrived (connect and request write included). */
  timeoutMs: number;
  /** A new connection for it not established in this long fails as a connect failure (default: the pool's). */
  connectTimeoutMs?: number;
  /** Idle limit between response body chunks once streaming (default 30 s). */
  bodyIdleMs?: number;
}

export interface H1Response {
  status: number;
  statusText: string;
  /** Owned by the caller; hop-by-hop headers already removed. */
  headers: Headers;
  /** Whole body as bytes (small, complete responses), a stream, or null (no body). */
  body: Uint8Array | ReadableStream<Uint8Array> | null;
  /** Declared body length, when the upstream sent one. */
  contentLength: number;
  /** True when this exchange used a pooled (reused) connection. */
  reused: boolean;
  /** Always true: hop-by-hop headers are gone and the head is bounded (forward.ts passes this on as is). */
  readonly sanitized: true;
}

/** Error codes match the ones fetch() uses, so forward.ts classifies both the same way. */
export class H1Error extends Error {
  constructor(
    message: string,
    readonly code: string,
    /** True when nothing of the request can have been processed (safe to retry). */
    readonly notSent = false,
  ) {
    super(message);
    this.name = "H1Error";
  }
}

export class H1TimeoutError extends Error {
  constructor(ms: number) {
    super(`upstream did not answer within ${ms} ms`);
    this.name = "HeadersTimeout";
  }
}

/** The upstream took no request byte for the pool's writeTimeoutMs while some were waiting (upstream `timeouts { write }`). */
export class H1WriteTimeoutError extends Error {
  constructor(readonly ms: number) {
    super(`upstream accepted no request bytes for ${ms} ms`);
    this.name = "WriteTimeout";
  }
}

export interface PoolOptions {
  /** Idle connections kept per target once idle for a second (default 256; see release()). */
  maxIdle?: number;
  /** Idle connections are closed after this long (default 60 s). */
  idleTimeoutMs?: number;
  /** Largest response body returned as bytes instead of a stream (default 64 KiB). */
  maxBufferedBody?: number;
  /** Largest response head (default 64 KiB). */
  maxHeadBytes?: number;
  /** A connection not established in this long fails as a connect failure (default: none). */
  connectTimeoutMs?: number;
  /** A connection older than this is closed instead of being reused (default: none). */
  maxLifetimeMs?: number;
  /** Request bytes the upstream does not take for this long fail the exchange (default: none). */
  writeTimeoutMs?: number;
}

/** A Content-Length value we accept (up to 15 digits: stays an exact number). */
const CONTENT_LENGTH = /^\d{1,15}$/;
const DIGITS = /^\d+$/;
const CHUNK_SIZE = /^[0-9a-fA-F]{1,12}$/;
const BODYLESS_STATUS = (s: number) => s === 204 || s === 304 || (s >= 100 && s < 200);
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);
const CRLF2 = Buffer.from("\r\n\r\n");
const NON_ASCII = /[^\x00-\x7f]/;
const STATUS_LINE = /^HTTP\/1\.[01] [1-9]\d\d(?: |$)/;
const EMPTY = new Uint8Array(0);
/** Idle connections beyond max-idle are closed once idle this long (and checked this often). */
const TRIM_AFTER_MS = 1000;

// Response parser states.
const S_HEAD = 0;
const S_BODY_LENGTH = 1;
const S_CHUNK_SIZE = 2;
const S_CHUNK_DATA = 3;
const S_CHUNK_CRLF = 4;
const S_TRAILERS = 5;
const S_BODY_CLOSE = 6; // read until the upstream closes
const S_DONE = 7;

/** One in-flight exchange. Allocated per request; holds no closures. */
class Exchange {
  resolve!: (r: H1Response) => void;
  reject!: (e: Error) => void;
  settled = false;
  deadline: DeadlineHandle | null = null;
  signal: AbortSignal | null = null;
  /** True once `this` is registered as the signal's abort listener. */
  listening = false;
  /** When the head timeout expires (deadline-queue clock), while the first deadline is the abort-watch mark. */
  expiresAt = 0;
  // response state
  state: number = S_HEAD;
  head: Buffer | null = null; // partial head
  status = 0;
  statusText = "";
  headers: Headers | null = null;
  remaining = 0; // bytes left in the body (length) or in the current chunk
  contentLength = -1;
  keepAlive = true;
  /** Buffered body parts while deciding bytes vs stream. */
  parts: Uint8Array[] | null = null;
  partsBytes = 0;
  stream: ReadableStreamDefaultController<Uint8Array> | null = null;
  chunkLine: string = ""; // partial chunk-size / trailer line
  requestDone = false; // request fully written
  responseBytes = 0;
  idle: IdleWatch | null = null;
  headOnly: boolean;
  /** May be replayed on a fresh connection if a pooled one dies before answering. */
  retryable = false;
  conn: Conn | null = null;

  constructor(
    readonly pool: H1Pool,
    readonly req: H1Request,
  ) {
    this.headOnly = req.method === "HEAD";
  }

  handleEvent(): void {
    // AbortSignal listener (client went away).
    this.abort(new DOMException("client went away", "AbortError"));
  }

  abort(err: Error): void {
    const c = this.conn;
    if (c) c.destroy(err);
    else this.fail(err);
  }

  fail(err: Error): void {
    this.cleanup();
    if (!this.settled && this.parts !== null && this.headers !== null) {
      // The head had arrived and part of a small body: the caller gets the head and a body that
      // breaks off, as with fetch(), so the truncation stays visible downstream.
      const parts = this.parts;
      this.parts = null;
      this.settled = true;
      this.resolve({
        status: this.status,
        statusText: this.statusText,
        headers: this.headers,
        body: new ReadableStream<Uint8Array>(
          {
            // error() would discard queued chunks: hand out the parts first, then fail.
            pull(c) {
              const p = parts.shift();
              if (p !== undefined) c.enqueue(p);
              else c.error(err);
            },
          },
          { highWaterMark: 0 },
        ),
        contentLength: this.contentLength,
        reused: false,
        sanitized: true,
      });
      return;
    }
    if (!this.settled) {
      this.settled = true;
      this.reject(err);
    } else if (this.stream) {
      try {
        this.stream.error(err);
      } catch {
        /* already closed */
      }
      this.stream = null;
    }
  }

  cleanup(): void {
    if (this.deadline) {
      this.deadline.cancel();
      this.deadline = null;
    }
    if (this.signal) {
      if (this.listening) this.signal.removeEventListener("abort", this);
      this.listening = false;
      this.signal = null;
    }
    if (this.idle) {
      unwatchIdle(this.idle);
      this.idle = null;
    }
  }
}

class Conn {
  socket: BunSocket | null = null;
  ex: Exchange | null = null;
  /** Unwritten request bytes (short writes). */
  pending: Uint8Array[] = [];
  pendingOffset = 0;
  drainWaiter: (() => void) | null = null;
  /** Armed while request bytes wait for the upstream to take them (pool.writeTimeoutMs). */
  writeDeadline: DeadlineHandle | null = null;
  reused = 0;
  idleSince = 0;
  closed = false;
  connectWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
  /** performance.now() when it was opened (connection-pool max-lifetime). */
  readonly openedAt = performance.now();
  /** The connect deadline it was opened with (for the error message). */
  connectTimeoutMs = 0;

  constructor(readonly pool: H1Pool) {}

  write(data: Uint8Array | string): void {
    const s = this.socket;
    if (!s) return;
    if (this.pending.length > 0) {
      this.pending.push(typeof data === "string" ? Buffer.from(data, "latin1") : data);
      return;
    }
    const len = typeof data === "string" ? Buffer.byteLength(data, "latin1") : data.byteLength;
    const w = s.write(data as never);
    if (w < 0) {
      this.destroy(new H1Error("write to upstream failed", "ECONNRESET"));
      return;
    }
    if (w < len) {
      const buf = typeof data === "string" ? Buffer.from(data, "latin1") : data;
      this.pending.push(buf);
      this.pendingOffset = w;
      this.armWrite();
    }
  }

  /** (Re)start the write timeout: from the last progress, like nginx's proxy_send_timeout. */
  private armWrite(): void {
    const ms = this.pool.writeTimeoutMs;
    if (ms <= 0) return;
    this.writeDeadline?.cancel();
    this.writeDeadline = sharedDeadlines.schedule(ms, expireWrite, this);
  }

  /** Hand queued bytes to the kernel; true when it took any. */
  flush(): boolean {
    const s = this.socket;
    let progress = false;
    while (s && this.pending.length > 0) {
      const buf = this.pending[0]!;
      const w = s.write(buf, this.pendingOffset, buf.byteLength - this.pendingOffset);
      if (w < 0) {
        this.destroy(new H1Error("write to upstream failed", "ECONNRESET"));
        return progress;
      }
      if (w > 0) progress = true;
      this.pendingOffset += w;
      if (this.pendingOffset < buf.byteLength) {
        if (progress) this.armWrite();
        return progress;
      }
      this.pending.shift();
      this.pendingOffset = 0;
    }
    if (this.writeDeadline !== null && this.pending.length === 0) {
      this.writeDeadline.cancel();
      this.writeDeadline = null;
    }
    if (this.pending.length === 0 && this.drainWaiter) {
      const w = this.drainWaiter;
      this.drainWaiter = null;
      w();
    }
    return progress;
  }

  /** Resolves when every queued byte has been handed to the kernel. */
  drained(): Promise<void> | null {
    if (this.pending.length === 0) return null;
    return new Promise((r) => (this.drainWaiter = r));
  }

  /** Close the connection; its exchange fails with `err` (or completes, see below). */
  destroy(err: Error, peerClosed = false): void {
    if (this.closed) return;
    this.closed = true;
    if (this.writeDeadline !== null) {
      this.writeDeadline.cancel();
      this.writeDeadline = null;
    }
    const s = this.socket;
    this.socket = null;
    this.pool.forget(this);
    if (s) s.terminate();
    const ex = this.ex;
    this.ex = null;
    if (this.drainWaiter) {
      const w = this.drainWaiter;
      this.drainWaiter = null;
      w();
    }
    if (ex === null) return;
    ex.conn = null;
    if (peerClosed && ex.state === S_BODY_CLOSE) {
      // Close-delimited body: the close is its end.
      finishBody(ex, this);
      return;
    }
    if (peerClosed && ex.retryable && ex.responseBytes === 0 && !ex.settled) {
      // A pooled connection the upstream had just closed: replay once on a fresh one.
      ex.retryable = false;
      ex.requestDone = false;
      this.pool.restart(ex);
      return;
    }
    ex.fail(err);
  }
}

const socketHandlers: import("bun").SocketHandler<Conn> = {
  open(s) {
    const c = s.data;
    if (c.closed) {
      // Its connect timed out (H1Pool.connect) and the caller moved on: not ours to keep.
      s.end();
      return;
    }
    c.socket = s;
    s.setNoDelay(true);
    const w = c.connectWaiter;
    c.connectWaiter = null;
    w?.resolve();
  },
  data(s, chunk) {
    const c = s.data;
    const ex = c.ex;
    if (!ex) {
      // Bytes on an idle connection: the upstream is confused; never reuse it.
      c.destroy(new H1Error("unexpected data from upstream", "ECONNRESET"));
      return;
    }
    ex.responseBytes += chunk.byteLength;
    try {
      onData(c, ex, chunk as Buffer);
    } catch (err) {
      c.destroy(err instanceof Error ? err : new H1Error(String(err), "EPROTO"));
    }
  },
  drain(s) {
    s.data.flush();
  },
  close(s, err) {
    const c = s.data;
    if (c.socket !== s && c.socket !== null) return;
    c.destroy(new H1Error(err ? `upstream connection closed: ${err.message}` : "upstream closed the connection", "ECONNRESET"), true);
  },
  end(s) {
    s.data.destroy(new H1Error("upstream closed the connection", "ECONNRESET"), true);
  },
  error(s, err) {
    s.data.destroy(new H1Error(`upstream socket error: ${err.message}`, (err as { code?: string }).code ?? "ECONNRESET"), true);
  },
  connectError(s, err) {
    const c = s.data;
    const w = c.connectWaiter;
    c.connectWaiter = null;
    c.closed = true;
    c.pool.forget(c);
    w?.reject(new H1Error(`connect to ${c.pool.address} failed: ${err.message}`, (err as { code?: string }).code ?? "ECONNREFUSED", true));
  },
};

function protocolError(msg: string): H1Error {
  return new H1Error(`invalid response from upstream: ${msg}`, "EPROTO");
}

function onData(c: Conn, ex: Exchange, chunk: Buffer): void {
  let buf: Buffer = chunk;
  if (ex.state === S_HEAD) {
    if (ex.head !== null) buf = Buffer.concat([ex.head, chunk]);
    const end = buf.indexOf(CRLF2);
    if (end < 0) {
      if (buf.byteLength > ex.pool.maxHeadBytes) throw protocolError("response head too large");
      ex.head = buf;
      return;
    }
    ex.head = null;
    if (end > ex.pool.maxHeadBytes) throw protocolError("response head too large");
    const state = parseHead(ex, buf.toString("latin1", 0, end));
    const rest = buf.subarray(end + 4);
    if (ex.status < 200) {
      // Interim response (100 Continue, 103 Early Hints): skip it, parse what follows.
      if (ex.status === 101) return deliverHead(c, ex, null);
      ex.state = S_HEAD;
      ex.headers = null;
      if (rest.byteLength > 0) onData(c, ex, rest);
      return;
    }
    if (state === S_DONE) {
      // No body. Anything after it is a protocol error on a keep-alive connection.
      if (rest.byteLength > 0) ex.keepAlive = false;
      deliverHead(c, ex, EMPTY);
      return;
    }
    if (state === S_BODY_LENGTH && ex.remaining <= ex.pool.maxBufferedBody && rest.byteLength >= ex.remaining) {
      // The whole (small) body is here: the common fast path.
      const body = rest.subarray(0, ex.remaining);
      if (rest.byteLength > ex.remaining) ex.keepAlive = false;
      ex.remaining = 0;
      ex.state = S_DONE;
      deliverHead(c, ex, body);
      return;
    }
    if (state === S_BODY_LENGTH && ex.remaining <= ex.pool.maxBufferedBody) {
      // Small declared body, not complete yet: collect it, answer with bytes. From here on the
      // body idle limit applies, as for a streamed body.
      if (ex.deadline) {
        ex.deadline.cancel();
        ex.deadline = null;
      }
      if (!watchAbort(ex)) return; // (before `parts`: an abort now rejects, it is no truncated answer)
      ex.parts = [];
      ex.partsBytes = 0;
      watchBody(c, ex);
      if (rest.byteLength > 0) bodyBytes(c, ex, rest);
      return;
    }
    deliverHead(c, ex, null);
    if (rest.byteLength > 0) bodyBytes(c, ex, rest);
    return;
  }
  bodyBytes(c, ex, buf);
}

/** Parse a response head into `ex`; returns the parser state it leaves (S_DONE: no body). */
function parseHead(ex: Exchange, text: string): number {
  // One pass over the head with indexOf (no split, no line strings): this runs per request.
  let eol = text.indexOf("\r\n");
  if (eol < 0) eol = text.length;
  const sl = text.slice(0, eol);
  if (!STATUS_LINE.test(sl)) throw protocolError(`bad status line ${JSON.stringify(sl.slice(0, 40))}`);
  const status = Number(sl.slice(9, 12));
  ex.status = status;
  ex.statusText = sl.length > 13 ? sl.slice(13) : "";
  const http10 = sl.charCodeAt(7) === 0x30;
  let keepAlive = !http10;
  let contentLength = -1;
  let chunked = false;
  let te = false;
  let connectionTokens: string[] | null = null;
  const pairs: string[] = []; // name, value, name, value…
  for (let pos = eol + 2; pos < text.length; pos = eol + 2) {
    eol = text.indexOf("\r\n", pos);
    if (eol < 0) eol = text.length;
    if (eol === pos) continue;
    const colon = text.indexOf(":", pos);
    if (colon <= pos || colon > eol) {
      const first = text.charCodeAt(pos);
      throw protocolError(first === 0x20 || first === 0x09 ? "obsolete header line folding" : "header line without a colon");
    }
    const name = text.slice(pos, colon).toLowerCase();
    let a = colon + 1;
    let b = eol;
    while (a < b && (text.charCodeAt(a) === 0x20 || text.charCodeAt(a) === 0x09)) a++;
    while (b > a && (text.charCodeAt(b - 1) === 0x20 || text.charCodeAt(b - 1) === 0x09)) b--;
    const value = text.slice(a, b);
    switch (name) {
      case "content-length": {
        if (!CONTENT_LENGTH.test(value)) {
          // "5, 5" is tolerated when every element is the same (RFC 9112 §6.3).
          const parts = value.split(",").map((s) => s.trim());
          if (!CONTENT_LENGTH.test(parts[0]!) || parts.some((p) => p !== parts[0])) throw protocolError("bad content-length");
          const n = Number(parts[0]);
          if (contentLength >= 0 && contentLength !== n) throw protocolError("conflicting content-length");
          contentLength = n;
        } else {
          const n = Number(value);
          if (contentLength >= 0 && contentLength !== n) throw protocolError("conflicting content-length");
          contentLength = n;
        }
        pairs.push(name, String(contentLength));
        continue;
      }
      case "transfer-encoding": {
        te = true;
        const v = value.toLowerCase();
        chunked = v === "chunked" || v.endsWith(",chunked") || v.endsWith(", chunked");
        continue;
      }
      case "connection": {
        const v = value.toLowerCase();
        for (const t of v.split(",")) {
          const tok = t.trim();
          if (tok === "close") keepAlive = false;
          else if (tok === "keep-alive") keepAlive = true;
          else if (tok) (connectionTokens ??= []).push(tok);
        }
        continue;
      }
      default:
        if (HOP_BY_HOP.has(name)) continue;
        pairs.push(name, value);
    }
  }
  if (connectionTokens !== null) {
    const drop = new Set(connectionTokens.filter((t) => t !== "content-length" && t !== "host"));
    for (let i = pairs.length - 2; i >= 0; i -= 2) if (drop.has(pairs[i]!)) pairs.splice(i, 2);
  }
  if (te && contentLength >= 0) {
    // Both: transfer-encoding wins and the connection is not reused (RFC 9112 §6.3).
    keepAlive = false;
    contentLength = -1;
    for (let i = pairs.length - 2; i >= 0; i -= 2) if (pairs[i] === "content-length") pairs.splice(i, 2);
  }
  ex.keepAlive = ex.keepAlive && keepAlive;
  ex.contentLength = contentLength;
  // new Headers() + append is the cheapest way to build one (pairs or an object cost more).
  const headers = new Headers();
  try {
    for (let i = 0; i < pairs.length; i += 2) headers.append(pairs[i]!, pairs[i + 1]!);
  } catch (err) {
    throw protocolError(`bad header: ${(err as Error).message}`);
  }
  ex.headers = headers;
  if (status < 200) return S_HEAD;
  if (ex.headOnly || BODYLESS_STATUS(status)) {
    ex.state = S_DONE;
  } else if (te) {
    if (chunked) ex.state = S_CHUNK_SIZE;
    else {
      ex.state = S_BODY_CLOSE;
      ex.keepAlive = false;
    }
  } else if (contentLength >= 0) {
    ex.remaining = contentLength;
    ex.state = contentLength === 0 ? S_DONE : S_BODY_LENGTH;
  } else {
    ex.state = S_BODY_CLOSE;
    ex.keepAlive = false;
  }
  return ex.state;
}

/** Hand the response to the caller. `body`: bytes (complete), or null to stream the rest. */
function deliverHead(c: Conn, ex: Exchange, body: Uint8Array | null): void {
  if (ex.deadline) {
    ex.deadline.cancel();
    ex.deadline = null;
  }
  const res: H1Response = {
    status: ex.status,
    statusText: ex.statusText,
    headers: ex.headers!,
    body: null,
    contentLength: ex.contentLength,
    reused: c.reused > 0,
    sanitized: true,
  };
  if (ex.status === 101) {
    // Not ours to relay: the caller refuses it. The connection is not reusable.
    ex.keepAlive = false;
    settle(ex, res);
    c.destroy(new H1Error("protocol switched", "EPROTO"));
    return;
  }
  if (body !== null) {
    res.body = ex.state === S_DONE && body.byteLength === 0 && (ex.headOnly || BODYLESS_STATUS(ex.status)) ? null : body;
    settle(ex, res);
    exchangeDone(c, ex);
    return;
  }
  // Streamed from here on: a client that goes away must end it (and the connection).
  if (!watchAbort(ex)) return;
  const pool = c.pool;
  res.body = new ReadableStream<Uint8Array>(
    {
      start(controller) {
        ex.stream = controller;
      },
      pull() {
        c.socket?.resume();
        if (ex.idle) ex.idle.last = performance.now();
      },
      cancel() {
        ex.stream = null;
        c.destroy(new H1Error("response body cancelled", "ECANCELED"));
      },
    },
    { highWaterMark: pool.maxBufferedBody, size: (chunk) => chunk?.byteLength ?? 0 },
  );
  if (ex.idle === null) watchBody(c, ex);
  settle(ex, res);
}

/** Body idle limit (no byte from the upstream for bodyIdleMs while it is wanted). */
function watchBody(c: Conn, ex: Exchange): void {
  const idleMs = ex.req.bodyIdleMs ?? 30_000;
  ex.idle = watchIdle(idleMs, () => {
    ex.idle = null;
    c.destroy(new H1Error(`upstream body idle for more than ${idleMs} ms`, "ETIMEDOUT"));
  });
}

function settle(ex: Exchange, res: H1Response): void {
  if (ex.settled) return;
  ex.settled = true;
  ex.resolve(res);
}

function emit(c: Conn, ex: Exchange, piece: Uint8Array): void {
  if (ex.parts !== null) {
    ex.parts.push(piece);
    ex.partsBytes += piece.byteLength;
    if (ex.idle) ex.idle.last = performance.now();
    return;
  }
  const s = ex.stream;
  if (s === null) return;
  s.enqueue(piece);
  if (ex.idle) ex.idle.last = performance.now();
  if ((s.desiredSize ?? 1) <= 0) c.socket?.pause();
}

function finishBody(ex: Exchange, c: Conn): void {
  ex.state = S_DONE;
  if (ex.parts !== null) {
    const parts = ex.parts;
    ex.parts = null;
    let body: Uint8Array;
    if (parts.length === 1) body = parts[0]!;
    else {
      body = new Uint8Array(ex.partsBytes);
      let off = 0;
      for (const p of parts) {
        body.set(p, off);
        off += p.byteLength;
      }
    }
    deliverHead(c, ex, body);
    return;
  }
  if (ex.stream) {
    try {
      ex.stream.close();
    } catch {
      /* cancelled */
    }
    ex.stream = null;
  }
  exchangeDone(c, ex);
}

function bodyBytes(c: Conn, ex: Exchange, buf: Uint8Array): void {
  let off = 0;
  const n = buf.byteLength;
  while (off < n && c.ex === ex) {
    switch (ex.state) {
      case S_BODY_LENGTH: {
        const take = Math.min(ex.remaining, n - off);
        emit(c, ex, buf.subarray(off, off + take));
        off += take;
        ex.remaining -= take;
        if (ex.remaining === 0) {
          if (off < n) ex.keepAlive = false; // bytes beyond the response
          finishBody(ex, c);
          return;
        }
        break;
      }
      case S_BODY_CLOSE:
        emit(c, ex, off === 0 ? buf : buf.subarray(off));
        return;
      case S_CHUNK_SIZE:
      case S_TRAILERS: {
        let e = off;
        while (e < n && buf[e] !== 0x0a) e++;
        ex.chunkLine += Buffer.from(buf.buffer, buf.byteOffset + off, e - off).toString("latin1");
        if (ex.chunkLine.length > 4096) throw protocolError("chunk line too long");
        if (e >= n) return;
        off = e + 1;
        let line = ex.chunkLine;
        ex.chunkLine = "";
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (ex.state === S_TRAILERS) {
          if (line.length === 0) {
            if (off < n) ex.keepAlive = false;
            finishBody(ex, c);
            return;
          }
          break; // trailer fields are dropped
        }
        const semi = line.indexOf(";");
        const hex = (semi >= 0 ? line.slice(0, semi) : line).trim();
        if (!CHUNK_SIZE.test(hex)) throw protocolError("bad chunk size");
        const size = parseInt(hex, 16);
        if (size === 0) ex.state = S_TRAILERS;
        else {
          ex.remaining = size;
          ex.state = S_CHUNK_DATA;
        }
        break;
      }
      case S_CHUNK_DATA: {
        const take = Math.min(ex.remaining, n - off);
        emit(c, ex, buf.subarray(off, off + take));
        off += take;
        ex.remaining -= take;
        if (ex.remaining === 0) {
          ex.state = S_CHUNK_CRLF;
          ex.remaining = 2;
        }
        break;
      }
      case S_CHUNK_CRLF: {
        // Exactly CRLF after the chunk data (a bare LF is tolerated).
        const b = buf[off]!;
        if (ex.remaining === 2 && b === 0x0d) {
          ex.remaining = 1;
          off++;
        } else if (b === 0x0a) {
          off++;
          ex.state = S_CHUNK_SIZE;
        } else throw protocolError("missing CRLF after chunk data");
        break;
      }
      default:
        // S_DONE / S_HEAD with bytes left over: the upstream sent more than one response.
        ex.keepAlive = false;
        return;
    }
  }
}

/** The response has been read completely: recycle or close the connection. */
function exchangeDone(c: Conn, ex: Exchange): void {
  ex.cleanup();
  if (c.ex !== ex) return;
  c.ex = null;
  ex.conn = null;
  if (!ex.keepAlive || !ex.requestDone || c.closed || c.socket === null) {
    c.destroy(new H1Error("not reusable", "ECONNRESET"));
    return;
  }
  c.socket.resume();
  c.pool.release(c);
}

interface HeadText {
  head: string;
  hasHost: boolean;
}

/** `acc.head` with one more field line. Framing is ours; hop-by-hop was removed by the caller (again here for safety). */
function headLine(acc: HeadText, name: string, value: string): string {
  if (name === "content-length" || name === "transfer-encoding" || name === "connection" || name === "keep-alive") return acc.head;
  if (name === "host") acc.hasHost = true;
  return acc.head + `${name}: ${value}\r\n`;
}

function appendHeadLine(this: HeadText, value: string, name: string): void {
  this.head = headLine(this, name, value);
}

/** The response head did not arrive within the request's timeout. */
function expireExchange(ex: Exchange): void {
  ex.deadline = null;
  ex.abort(new H1TimeoutError(ex.req.timeoutMs));
}

/**
 * Listen for the client's abort from now on (after checking it): false when it already
 * happened, and the exchange was aborted.
 */
function watchAbort(ex: Exchange): boolean {
  const signal = ex.signal;
  if (signal === null || ex.listening) return true;
  if (signal.aborted) {
    ex.handleEvent();
    return false;
  }
  signal.addEventListener("abort", ex);
  ex.listening = true;
  return true;
}

/** The abort-watch mark (ABORT_WATCH_AFTER_MS): start listening, then wait out the head timeout. */
function abortWatchMark(ex: Exchange): void {
  ex.deadline = null;
  if (!watchAbort(ex)) return;
  // From the absolute expiry, so that a mark that fired late does not delay the timeout.
  ex.deadline = sharedDeadlines.scheduleAt(ex.expiresAt, expireExchange, ex);
}

/** Serialise the request head. Header names/values come from a Headers object (validated). */
function requestHead(req: H1Request, hostDefault: string, framing: string): string {
  const acc: HeadText = { head: `${req.method} ${req.path} HTTP/1.1\r\n`, hasHost: false };
  const h = req.headers;
  if (Array.isArray(h)) for (let i = 0; i < h.length; i += 2) acc.head = headLine(acc, h[i]!, h[i + 1]!);
  else h.forEach(appendHeadLine, acc); // forEach is markedly cheaper than for…of over Headers in Bun
  let head = acc.head;
  if (!acc.hasHost) head += `host: ${hostDefault}\r\n`;
  // Explicit, as fetch() sends it (HTTP/1.1 implies it; some upstreams log or expect it).
  return head + framing + "connection: keep-alive\r\n\r\n";
}

/** The deadline queue's callback for request bytes the upstream has not taken within writeTimeoutMs. */
function expireWrite(c: Conn): void {
  c.writeDeadline = null;
  if (c.pending.length === 0) return;
  // The kernel's send buffer was full at the last short write; if it takes bytes now, the
  // upstream read some since (its wake-up for writability comes only once much has drained).
  if (c.flush() || c.closed) return; // flush() re-armed the timeout, or it is all written
  // Once the upstream has answered, its response's own timeouts govern, not the rest of the request.
  if (c.ex !== null && c.ex.state !== S_HEAD) return;
  c.destroy(new H1WriteTimeoutError(c.pool.writeTimeoutMs));
}

/** The deadline queue's callback for a connection still connecting at connectTimeoutMs. */
function expireConnect(c: Conn): void {
  const w = c.connectWaiter;
  if (w === null) return; // connected (or failed) in time
  c.connectWaiter = null;
  c.closed = true; // socketHandlers.open ends it if it connects after all
  c.pool.forget(c);
  w.reject(new H1Error(`connect to ${c.pool.address} timed out after ${c.connectTimeoutMs} ms`, "ETIMEDOUT", true));
}

export class H1Pool {
  readonly address: string;
  readonly maxIdle: number;
  readonly idleTimeoutMs: number;
  readonly maxBufferedBody: number;
  readonly maxHeadBytes: number;
  readonly connectTimeoutMs: number;
  readonly maxLifetimeMs: number;
  readonly writeTimeoutMs: number;
  private readonly idle: Conn[] = [];
  private readonly all = new Set<Conn>();
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private closed = false;

  constructor(
    readonly host: string,
    readonly port: number,
    opts: PoolOptions = {},
  ) {
    this.address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    this.maxIdle = opts.maxIdle ?? 256;
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 60_000;
    this.maxBufferedBody = opts.maxBufferedBody ?? 64 * 1024;
    this.maxHeadBytes = opts.maxHeadBytes ?? 64 * 1024;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 0;
    this.maxLifetimeMs = opts.maxLifetimeMs ?? 0;
    this.writeTimeoutMs = opts.writeTimeoutMs ?? 0;
  }

  /** Connections open (idle + busy). */
  get size(): number {
    return this.all.size;
  }

  get idleCount(): number {
    return this.idle.length;
  }

  /** @internal */
  forget(c: Conn): void {
    this.all.delete(c);
    const i = this.idle.lastIndexOf(c);
    if (i >= 0) this.idle.splice(i, 1);
  }

  /** @internal */
  release(c: Conn): void {
    // max-idle is a soft bound (trimmed by the sweeper once connections have been idle for
    // TRIM_AFTER_MS), so that a burst wider than it does not close and reopen connections on
    // every request; the hard bound keeps a flood from hoarding sockets.
    if (this.closed || this.idle.length >= Math.max(2 * this.maxIdle, this.maxIdle + 256)) {
      c.destroy(new H1Error("pool full", "ECONNRESET"));
      return;
    }
    if (this.maxLifetimeMs > 0 && performance.now() - c.openedAt >= this.maxLifetimeMs) {
      c.destroy(new H1Error("over max-lifetime", "ECONNRESET"));
      return;
    }
    c.reused++;
    c.idleSince = performance.now();
    this.idle.push(c);
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(), TRIM_AFTER_MS);
      (this.sweeper as { unref?: () => void }).unref?.();
    }
  }

  private sweep(): void {
    const now = performance.now();
    const limit = now - this.idleTimeoutMs;
    // Oldest first: the stack's bottom holds the longest-idle connections.
    while (this.idle.length > 0 && this.idle[0]!.idleSince < limit) this.idle[0]!.destroy(new H1Error("idle", "ECONNRESET"));
    while (this.idle.length > this.maxIdle && this.idle[0]!.idleSince < now - TRIM_AFTER_MS) this.idle[0]!.destroy(new H1Error("over max-idle", "ECONNRESET"));
    if (this.all.size === 0 && this.sweeper !== null) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
  }

  private connect(timeoutMs = this.connectTimeoutMs): Conn | Promise<Conn> {
    const c = new Conn(this);
    this.all.add(c);
    return new Promise<Conn>((resolve, reject) => {
      c.connectWaiter = { resolve: () => resolve(c), reject };
      if (timeoutMs > 0) {
        c.connectTimeoutMs = timeoutMs;
        sharedDeadlines.schedule(timeoutMs, expireConnect, c);
      }
      Bun.connect<Conn>({ hostname: this.host, port: this.port, data: c, socket: socketHandlers }).catch((err: Error) => {
        if (c.connectWaiter) {
          c.connectWaiter = null;
          this.forget(c);
          reject(new H1Error(`connect to ${this.address} failed: ${err.message}`, (err as { code?: string }).code ?? "ECONNREFUSED", true));
        }
      });
    });
  }

  /** Send one request; resolves with the response head (and small bodies), rejects on failure. */
  request(req: H1Request): Promise<H1Response> {
    if (this.closed) return Promise.reject(new H1Error("pool closed", "ECONNRESET", true));
    if (req.signal?.aborted) return Promise.reject(new DOMException("client went away", "AbortError"));
    const ex = new Exchange(this, req);
    const { promise: p, resolve, reject } = Promise.withResolvers<H1Response>(); // no executor closure per request
    ex.resolve = resolve;
    ex.reject = reject;
    if (req.signal && req.timeoutMs > ABORT_WATCH_AFTER_MS) {
      ex.signal = req.signal;
      ex.deadline = sharedDeadlines.schedule(ABORT_WATCH_AFTER_MS, abortWatchMark, ex);
      ex.expiresAt = ex.deadline.deadline - ABORT_WATCH_AFTER_MS + req.timeoutMs;
    } else {
      if (req.signal) {
        ex.signal = req.signal;
        watchAbort(ex);
      }
      ex.deadline = sharedDeadlines.schedule(req.timeoutMs, expireExchange, ex);
    }
    this.start(ex, true);
    return p;
  }

  /** @internal replay an exchange whose pooled connection died before answering. */
  restart(ex: Exchange): void {
    this.start(ex, false);
  }

  private start(ex: Exchange, mayRetry: boolean): void {
    const c = this.idle.pop();
    if (c !== undefined) return this.send(c, ex, mayRetry);
    const pc = this.connect(ex.req.connectTimeoutMs);
    if (pc instanceof Conn) return this.send(pc, ex, false);
    pc.then(
      (conn) => {
        if (ex.settled) {
          // Timed out or aborted while connecting: keep the fresh connection for the next one.
          this.release(conn);
          return;
        }
        this.send(conn, ex, false);
      },
      (err: Error) => ex.fail(err),
    );
  }

  private send(c: Conn, ex: Exchange, mayRetry: boolean): void {
    const reused = c.reused > 0;
    c.ex = ex;
    ex.conn = c;
    const req = ex.req;
    const body = req.body;
    // A pooled connection may have been closed by the upstream just now; if it dies before any
    // response byte, the exchange is replayed once on a fresh connection (see Conn.destroy).
    ex.retryable = reused && mayRetry && !(body instanceof ReadableStream) && IDEMPOTENT.has(req.method);
    if (body === null) {
      const head = requestHead(req, this.address, req.method === "POST" || req.method === "PUT" || req.method === "PATCH" ? "content-length: 0\r\n" : "");
      c.write(NON_ASCII.test(head) ? Buffer.from(head, "latin1") : head);
      ex.requestDone = true;
      return;
    }
    if (body instanceof Uint8Array) {
      const head = requestHead(req, this.address, `content-length: ${body.byteLength}\r\n`);
      if (body.byteLength <= 16 * 1024) {
        const h = Buffer.from(head, "latin1");
        const all = new Uint8Array(h.byteLength + body.byteLength);
        all.set(h, 0);
        all.set(body, h.byteLength);
        c.write(all);
      } else {
        c.write(Buffer.from(head, "latin1"));
        c.write(body);
      }
      ex.requestDone = true;
      return;
    }
    const declared = headerValue(req.headers, "content-length");
    const length = declared !== null && DIGITS.test(declared) ? Number(declared) : -1;
    const head = requestHead(req, this.address, length >= 0 ? `content-length: ${length}\r\n` : "transfer-encoding: chunked\r\n");
    c.write(Buffer.from(head, "latin1"));
    void this.pump(c, ex, body, length);
  }

  /** Stream a request body (chunked when `length` < 0), honouring socket backpressure. */
  private async pump(c: Conn, ex: Exchange, body: ReadableStream<Uint8Array>, length: number): Promise<void> {
    const reader = body.getReader();
    const chunked = length < 0;
    let sent = 0;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (c.ex !== ex || c.closed) {
          reader.cancel().catch(() => {});
          return;
        }
        if (done) break;
        if (value.byteLength === 0) continue;
        if (chunked) c.write(`${value.byteLength.toString(16)}\r\n`);
        c.write(value);
        if (chunked) c.write("\r\n");
        sent += value.byteLength;
        if (!chunked && sent >= length) ex.requestDone = true; // the upstream may answer now
        const d = c.drained();
        if (d) await d;
      }
      if (chunked) c.write("0\r\n\r\n");
      if (!chunked && sent !== length) throw new H1Error(`request body ended after ${sent} of ${length} bytes`, "ECONNRESET");
      ex.requestDone = true;
    } catch (err) {
      // The body failed (client went away, limit, idle): the exchange cannot complete.
      if (c.ex === ex) c.destroy(err instanceof Error ? err : new H1Error(String(err), "ECONNRESET"));
      else reader.cancel(err).catch(() => {});
    }
  }

  /** Close every connection (busy ones fail their exchange). */
  close(): void {
    this.closed = true;
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
    for (const c of [...this.all]) c.destroy(new H1Error("pool closed", "ECONNRESET"));
  }
}

const pools = new Map<string, H1Pool>();

/** The shared pool for host:port (created on first use). */
export function h1Pool(host: string, port: number, opts?: PoolOptions): H1Pool {
  const key = `${host}|${port}`;
  let p = pools.get(key);
  if (p === undefined) {
    p = new H1Pool(host, port, opts);
    pools.set(key, p);
  }
  return p;
}

/** Close and forget every shared pool (tests, shutdown). */
export function closeAllH1Pools(): void {
  for (const p of pools.values()) p.close();
  pools.clear();
}
