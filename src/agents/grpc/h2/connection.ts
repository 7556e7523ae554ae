// A small HTTP/2 client connection on Bun.connect (RFC 9113): h2c with prior knowledge, or TLS
// with ALPN "h2". Client-initiated streams only (no server push), HPACK (hpack.ts), flow control
// in both directions, SETTINGS (our SETTINGS must be acknowledged in time, §6.5.3), PING
// (answered, and sent as keepalive), GOAWAY, RST_STREAM, CONTINUATION.
//
// Writes are appended to one output buffer and flushed once per event-loop turn (setImmediate),
// so frames produced by every request handled in that turn leave in one write. Bun's
// socket.write() may take only part of a buffer; the rest stays in the buffer until `drain`.
// Outgoing DATA never exceeds the peer's windows (connection and stream) or its
// SETTINGS_MAX_FRAME_SIZE; what does not fit waits in the stream's queue for WINDOW_UPDATE.
//
// Incoming DATA is handed to the stream as a view into the received chunk (no copy), valid only
// during the callback. We advertise large receive windows and return credit as soon as a DATA
// frame has been delivered (the stream consumer processes it synchronously).
import type { Socket } from "bun";
import {
  DEFAULT_MAX_FRAME_SIZE,
  DEFAULT_WINDOW,
  ErrorCode,
  FRAME_HEADER_BYTES,
  Flag,
  FrameReader,
  FrameType,
  H2ConnectionError,
  MAX_MAX_FRAME_SIZE,
  MAX_WINDOW,
  PREFACE,
  Setting,
  errorCodeName,
  goawayFrame,
  headersFrames,
  pingFrame,
  readU32,
  rstStreamFrame,
  settingsAckFrame,
  settingsFrame,
  windowUpdateFrame,
  writeFrameHeader,
} from "./frames.ts";
import { HpackDecoder, HpackError, encodeHeaders, type HeaderField } from "./hpack.ts";

/** Our receive windows: per stream (SETTINGS_INITIAL_WINDOW_SIZE) and for the connection. */
const STREAM_RECV_WINDOW = 4 * 1024 * 1024;
const CONN_RECV_WINDOW = 8 * 1024 * 1024;
/** Largest header block (HEADERS + CONTINUATION) we accept before decoding. */
const MAX_HEADER_BLOCK = 256 * 1024;
/**
 * Most CONTINUATION frames in one header block. Empty ones do not grow headerBytes, so without
 * this an endless run of them would grow headerParts without bound (the "CONTINUATION flood",
 * CVE-2024-27316 class). A full-size block needs 16 frames at the default frame size.
 */
const MAX_CONTINUATIONS = 64;
const OUT_INITIAL = 64 * 1024;
/**
 * Output buffer size above which a frame that asks us for an answer (PING, SETTINGS) is refused
 * with ENHANCE_YOUR_CALM: a peer that sends them but does not read would otherwise grow the
 * buffer without bound. DATA is bounded by the callers (GrpcCall's maxBufferedBytes, 16 MiB).
 */
const MAX_OUT_BUFFER = 32 * 1024 * 1024;
/** ALPN protocol list in TLS wire format: one length-prefixed name. */
const ALPN_H2 = Uint8Array.of(2, 0x68, 0x32);

export interface H2TlsOptions {
  ca?: string;
  cert?: string;
  key?: string;
  rejectUnauthorized: boolean;
  serverName?: string;
}

export interface H2ConnectionOptions {
  host: string;
  port: number;
  /** TLS with ALPN h2; absent = h2c with prior knowledge. */
  tls?: H2TlsOptions;
  /** Send a PING when nothing was received for this long (0 = never). */
  keepaliveIntervalMs?: number;
  /** Close the connection when a keepalive PING is not answered within this. */
  keepaliveTimeoutMs?: number;
  /**
   * Fail the connection with SETTINGS_TIMEOUT when our SETTINGS are not acknowledged this long
   * after the socket opened (RFC 9113 §6.5.3; 0 or absent = never).
   */
  settingsTimeoutMs?: number;
  /** Called once when the connection is gone (after every stream heard onReset). */
  onClose?: (err: Error) => void;
  /** Called on GOAWAY (streams above lastStreamId have already been reset). */
  onGoaway?: (code: number, lastStreamId: number, debug: string) => void;
}

export interface H2StreamHandler {
  /** A header block (response headers, or trailers when endStream). */
  onHeaders(stream: H2Stream, fields: HeaderField[], endStream: boolean): void;
  /** DATA payload (padding removed): a view valid only during the call. */
  onData(stream: H2Stream, data: Uint8Array, endStream: boolean): void;
  /**
   * The stream ended abnormally: RST_STREAM from the peer (code), refused by GOAWAY
   * (REFUSED_STREAM), or the connection failed (`connectionError` set). Called at most once, and
   * never after onHeaders/onData with endStream.
   */
  onReset(stream: H2Stream, code: number, reason: string, connectionError?: Error): void;
}

export class H2Stream {
  sendWindow: number;
  recvWindow = STREAM_RECV_WINDOW;
  recvUnacked = 0;
  localEnded = false;
  remoteEnded = false;
  closed = false;
  /** DATA waiting for flow-control credit: pieces and the offset into the first one. */
  readonly queue: Uint8Array[] = [];
  queueOffset = 0;
  queuedBytes = 0;
  endAfterQueue = false;

  constructor(
    readonly conn: H2Connection,
    readonly id: number,
    readonly handler: H2StreamHandler,
    sendWindow: number,
  ) {
    this.sendWindow = sendWindow;
  }
}

type Sock = Socket<undefined>;

export class H2Connection {
  private socket: Sock | null = null;
  private open = false;
  private closed = false;
  private closeError: Error | null = null;

  private out = new Uint8Array(OUT_INITIAL);
  private outLen = 0;
  private flushScheduled = false;
  private blocked = false;

  private readonly reader: FrameReader;
  private readonly hpack = new HpackDecoder({ maxTableSize: 4096, maxHeaderListSize: 64 * 1024 });
  private readonly streams = new Map<number, H2Stream>();
  private nextStreamId = 1;
  private goawayReceived = false;

  // Peer settings.
  private peerMaxFrameSize = DEFAULT_MAX_FRAME_SIZE;
  private peerInitialWindow = DEFAULT_WINDOW;
  private peerMaxConcurrentStreams = Infinity;
  private gotPeerSettings = false;
  /** Armed when the socket opens; cleared by the peer's SETTINGS ACK. */
  private settingsTimer: ReturnType<typeof setTimeout> | undefined;

  private connSendWindow = DEFAULT_WINDOW;
  private connRecvWindow = CONN_RECV_WINDOW;
  private connRecvUnacked = 0;

  // CONTINUATION state.
  private headerStream = 0;
  private headerEndStream = false;
  private headerParts: Uint8Array[] = [];
  private headerBytes = 0;
  private headerFrames = 0;

  // Keepalive.
  private readonly keepaliveTimer: ReturnType<typeof setInterval> | undefined;
  private received = 0;
  private receivedAtCheck = 0;
  private idleSince = performance.now();
  private pingSentAt = 0;

  constructor(private readonly opts: H2ConnectionOptions) {
    this.reader = new FrameReader((t, f, s, p) => this.onFrame(t, f, s, p));
    // Connection preface, our SETTINGS and the connection window, queued before the socket
    // exists: they go out first, as soon as it opens.
    this.append(PREFACE);
    this.append(
      settingsFrame([
        [Setting.ENABLE_PUSH, 0],
        [Setting.INITIAL_WINDOW_SIZE, STREAM_RECV_WINDOW],
        [Setting.MAX_HEADER_LIST_SIZE, 64 * 1024],
      ]),
    );
    this.append(windowUpdateFrame(0, CONN_RECV_WINDOW - DEFAULT_WINDOW));
    const interval = opts.keepaliveIntervalMs ?? 0;
    if (interval > 0) {
      const timeout = opts.keepaliveTimeoutMs ?? 5_000;
      this.keepaliveTimer = setInterval(() => this.keepalive(interval, timeout), Math.min(interval, timeout) / 2);
      (this.keepaliveTimer as { unref?: () => void }).unref?.();
    }
    this.connect();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Bytes written by us but not yet taken by the socket. */
  get bufferedBytes(): number {
    return this.outLen;
  }

  private connect(): void {
    const { host, port, tls } = this.opts;
    const handlers = {
      open: (s: Sock) => this.onOpen(s),
      data: (_s: Sock, data: Uint8Array) => this.onData(data),
      drain: () => {
        this.blocked = false;
        this.flush();
      },
      close: (_s: Sock, err?: Error) => this.destroy(err ?? new Error(this.open ? "connection closed by the agent" : "connection closed before it was established")),
      end: () => this.destroy(new Error("connection closed by the agent")),
      error: (_s: Sock, err: Error) => this.destroy(err),
      connectError: (_s: Sock, err: Error) => this.destroy(err),
      timeout: () => {},
    };
    try {
      const p = tls
        ? Bun.connect({
            hostname: host,
            port,
            tls: {
              ca: tls.ca,
              cert: tls.cert,
              key: tls.key,
              rejectUnauthorized: tls.rejectUnauthorized,
              serverName: tls.serverName,
              ALPNProtocols: ALPN_H2,
            },
            socket: handlers,
          })
        : Bun.connect({ hostname: host, port, socket: handlers });
      p.catch((err: unknown) => this.destroy(err instanceof Error ? err : new Error(String(err))));
    } catch (err) {
      queueMicrotask(() => this.destroy(err instanceof Error ? err : new Error(String(err))));
    }
  }

  private onOpen(s: Sock): void {
    if (this.closed) {
      s.end();
      return;
    }
    if (this.opts.tls) {
      if (this.opts.tls.rejectUnauthorized && !s.authorized) {
        const e = s.getAuthorizationError?.();
        this.socket = s;
        this.destroy(e ?? new Error("agent certificate not authorized"));
        return;
      }
      if (s.alpnProtocol !== "h2") {
        this.socket = s;
        this.destroy(new Error(`agent did not negotiate HTTP/2 over TLS (ALPN: ${String(s.alpnProtocol)})`));
        return;
      }
    }
    this.socket = s;
    this.open = true;
    this.armSettingsTimeout();
    this.flush();
  }

  /**
   * Our SETTINGS leave with the preface; a peer that never acknowledges them has not applied
   * them (window sizes, no push) or is not reading at all, while TCP may stay up for a long time.
   */
  private armSettingsTimeout(): void {
    const ms = this.opts.settingsTimeoutMs ?? 0;
    if (ms <= 0) return;
    this.settingsTimer = setTimeout(() => {
      this.settingsTimer = undefined;
      this.fail(new H2ConnectionError(ErrorCode.SETTINGS_TIMEOUT, `the agent did not acknowledge our SETTINGS within ${ms} ms`));
    }, ms);
    (this.settingsTimer as { unref?: () => void }).unref?.();
  }

  // ------------------------------------------------------------------------- writing

  private reserve(n: number): void {
    const need = this.outLen + n;
    if (need <= this.out.length) return;
    const grown = new Uint8Array(Math.max(need, this.out.length * 2));
    grown.set(this.out.subarray(0, this.outLen), 0);
    this.out = grown;
  }

  private append(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.out.set(bytes, this.outLen);
    this.outLen += bytes.length;
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || !this.open) return;
    this.flushScheduled = true;
    setImmediate(this.flushTask);
  }

  private readonly flushTask = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  /** Hand everything buffered to the socket now. */
  flush(): void {
    const s = this.socket;
    if (!this.open || s === null || this.blocked || this.outLen === 0 || this.closed) return;
    let w: number;
    try {
      w = s.write(this.out, 0, this.outLen);
    } catch (err) {
      this.destroy(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (w < 0) {
      this.destroy(new Error("write to the agent failed"));
      return;
    }
    if (w >= this.outLen) {
      this.outLen = 0;
      if (this.out.length > 4 * OUT_INITIAL) this.out = new Uint8Array(OUT_INITIAL);
      return;
    }
    this.out.copyWithin(0, w, this.outLen);
    this.outLen -= w;
    this.blocked = true; // the rest goes out on drain
  }

  // ------------------------------------------------------------------------- streams

  /** Open a stream with a request header block. Throws if the connection cannot take one. */
  openStream(headers: readonly HeaderField[], handler: H2StreamHandler, endStream = false): H2Stream {
    if (this.closed) throw this.closeError ?? new Error("connection closed");
    if (this.goawayReceived) throw new Error("connection is going away");
    if (this.streams.size >= this.peerMaxConcurrentStreams) throw new Error("too many concurrent streams");
    if (this.nextStreamId > MAX_WINDOW) throw new Error("stream ids exhausted");
    const id = this.nextStreamId;
    this.nextStreamId += 2;
    const st = new H2Stream(this, id, handler, this.peerInitialWindow);
    this.streams.set(id, st);
    this.append(headersFrames(id, encodeHeaders(headers), endStream, this.peerMaxFrameSize));
    if (endStream) st.localEnded = true;
    return st;
  }

  /**
   * Send `head` followed by `body` as DATA on the stream (either may be empty), as one unit: the
   * bytes are copied (or queued) before this returns, so the caller may reuse its buffers.
   */
  writeData(st: H2Stream, head: Uint8Array, body: Uint8Array, endStream = false): void {
    if (st.closed || st.localEnded) throw new Error("stream is closed for writing");
    if (this.closed) throw this.closeError ?? new Error("connection closed");
    const total = head.length + body.length;
    if (st.queuedBytes === 0 && total <= this.peerMaxFrameSize && total <= st.sendWindow && total <= this.connSendWindow) {
      // Fast path: one DATA frame straight into the output buffer.
      this.reserve(FRAME_HEADER_BYTES + total);
      const o = this.outLen;
      writeFrameHeader(this.out, o, total, FrameType.DATA, endStream ? Flag.END_STREAM : 0, st.id);
      this.out.set(head, o + FRAME_HEADER_BYTES);
      this.out.set(body, o + FRAME_HEADER_BYTES + head.length);
      this.outLen = o + FRAME_HEADER_BYTES + total;
      st.sendWindow -= total;
      this.connSendWindow -= total;
      if (endStream) this.markLocalEnd(st);
      this.scheduleFlush();
      return;
    }
    if (total > 0) {
      const piece = new Uint8Array(total);
      piece.set(head, 0);
      piece.set(body, head.length);
      st.queue.push(piece);
      st.queuedBytes += total;
    }
    if (endStream) st.endAfterQueue = true;
    this.pump(st);
  }

  /** Half-close: END_STREAM after whatever is queued. */
  endStream(st: H2Stream): void {
    if (st.closed || st.localEnded || st.endAfterQueue) return;
    this.writeData(st, EMPTY, EMPTY, true);
  }

  /** RST_STREAM from our side; the handler hears nothing more. */
  resetStream(st: H2Stream, code: number = ErrorCode.CANCEL): void {
    if (st.closed) return;
    this.forget(st);
    if (!this.closed) this.append(rstStreamFrame(st.id, code));
  }

  private forget(st: H2Stream): void {
    st.closed = true;
    st.queue.length = 0;
    st.queuedBytes = 0;
    this.streams.delete(st.id);
  }

  private markLocalEnd(st: H2Stream): void {
    st.localEnded = true;
    if (st.remoteEnded) this.forget(st);
  }

  /** Move queued DATA out as far as the windows allow. */
  private pump(st: H2Stream): void {
    let wrote = false;
    while (st.queuedBytes > 0) {
      const piece = st.queue[0]!;
      const left = piece.length - st.queueOffset;
      const n = Math.min(left, st.sendWindow, this.connSendWindow, this.peerMaxFrameSize);
      if (n <= 0) break;
      const last = n === left && st.queue.length === 1;
      const end = last && st.endAfterQueue;
      this.reserve(FRAME_HEADER_BYTES + n);
      writeFrameHeader(this.out, this.outLen, n, FrameType.DATA, end ? Flag.END_STREAM : 0, st.id);
      this.out.set(piece.subarray(st.queueOffset, st.queueOffset + n), this.outLen + FRAME_HEADER_BYTES);
      this.outLen += FRAME_HEADER_BYTES + n;
      wrote = true;
      st.sendWindow -= n;
      this.connSendWindow -= n;
      st.queuedBytes -= n;
      if (n === left) {
        st.queue.shift();
        st.queueOffset = 0;
      } else {
        st.queueOffset += n;
      }
      if (end) {
        st.endAfterQueue = false;
        this.markLocalEnd(st);
      }
    }
    if (st.queuedBytes === 0 && st.endAfterQueue) {
      st.endAfterQueue = false;
      this.reserve(FRAME_HEADER_BYTES);
      writeFrameHeader(this.out, this.outLen, 0, FrameType.DATA, Flag.END_STREAM, st.id);
      this.outLen += FRAME_HEADER_BYTES;
      wrote = true;
      this.markLocalEnd(st);
    }
    if (wrote) this.scheduleFlush();
  }

  private pumpAll(): void {
    for (const st of this.streams.values()) if (st.queuedBytes > 0 || st.endAfterQueue) this.pump(st);
  }

  // ------------------------------------------------------------------------- reading

  private onData(data: Uint8Array): void {
    if (this.closed) return;
    this.received++;
    try {
      if (!this.gotPeerSettings && this.received === 1 && data.length >= 5 && data[0] === 0x48 && data[1] === 0x54 && data[2] === 0x54 && data[3] === 0x50 && data[4] === 0x2f) {
        throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "the agent answered with HTTP/1.x, not HTTP/2");
      }
      this.reader.push(data);
    } catch (err) {
      this.fail(err);
      return;
    }
    // Credit returned while handling these frames goes out with this turn's writes.
    if (this.outLen > 0) this.scheduleFlush();
  }

  private fail(err: unknown): void {
    if (this.closed) return;
    if (err instanceof H2ConnectionError) {
      this.append(goawayFrame(this.lastPeerStream(), err.code, err.message));
      this.flush();
      this.destroy(new Error(`HTTP/2 ${errorCodeName(err.code)}: ${err.message}`));
    } else if (err instanceof HpackError) {
      this.append(goawayFrame(this.lastPeerStream(), ErrorCode.COMPRESSION_ERROR, err.message));
      this.flush();
      this.destroy(new Error(`HTTP/2 COMPRESSION_ERROR: ${err.message}`));
    } else {
      this.destroy(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private lastPeerStream(): number {
    return 0; // we never accept peer-initiated streams
  }

  private onFrame(type: number, flags: number, streamId: number, p: Uint8Array): void {
    if (this.closed) return;
    if (!this.gotPeerSettings && type !== FrameType.SETTINGS) {
      throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "the agent's first frame was not SETTINGS");
    }
    if (this.headerStream !== 0 && type !== FrameType.CONTINUATION) {
      throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION");
    }
    switch (type) {
      case FrameType.DATA:
        return this.onDataFrame(flags, streamId, p);
      case FrameType.HEADERS:
        return this.onHeadersFrame(flags, streamId, p);
      case FrameType.CONTINUATION:
        return this.onContinuation(flags, streamId, p);
      case FrameType.PRIORITY:
        if (streamId === 0) throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0");
        if (p.length !== 5) throw new H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY length");
        return;
      case FrameType.RST_STREAM:
        return this.onRstStream(streamId, p);
      case FrameType.SETTINGS:
        return this.onSettings(flags, streamId, p);
      case FrameType.PUSH_PROMISE:
        throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled");
      case FrameType.PING:
        if (streamId !== 0) throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "PING on a stream");
        if (p.length !== 8) throw new H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING length");
        if (flags & Flag.ACK) this.pingSentAt = 0;
        else {
          this.checkOutBacklog();
          this.append(pingFrame(p.slice(), true));
        }
        return;
      case FrameType.GOAWAY:
        return this.onGoaway(streamId, p);
      case FrameType.WINDOW_UPDATE:
        return this.onWindowUpdate(streamId, p);
      default:
        return; // unknown frame types are ignored (§5.5)
    }
  }

  /** Strip padding (§6.1, §6.2). Returns the content without pad-length byte and padding. */
  private unpad(flags: number, p: Uint8Array, extra: number): Uint8Array {
    let start = 0;
    let end = p.length;
    if (flags & Flag.PADDED) {
      if (p.length < 1) throw new H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "padded frame too short");
      const pad = p[0]!;
      start = 1;
      end -= pad;
    }
    start += extra;
    if (end < start) throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding exceeds the frame");
    return start === 0 && end === p.length ? p : p.subarray(start, end);
  }

  private checkPeerStreamId(streamId: number, what: string): void {
    if (streamId === 0) throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, `${what} on stream 0`);
    if ((streamId & 1) === 0 || streamId >= this.nextStreamId) {
      throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, `${what} on idle stream ${streamId}`);
    }
  }

  private onDataFrame(flags: number, streamId: number, p: Uint8Array): void {
    this.checkPeerStreamId(streamId, "DATA");
    const len = p.length;
    this.connRecvWindow -= len;
    if (this.connRecvWindow < 0) throw new H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "connection receive window exceeded");
    this.connRecvUnacked += len;
    if (this.connRecvUnacked >= CONN_RECV_WINDOW / 2) {
      this.append(windowUpdateFrame(0, this.connRecvUnacked));
      this.connRecvWindow += this.connRecvUnacked;
      this.connRecvUnacked = 0;
    }
    const st = this.streams.get(streamId);
    if (st === undefined || st.remoteEnded) return; // closed (reset by us): ignore (§5.1)
    st.recvWindow -= len;
    if (st.recvWindow < 0) {
      this.resetWithError(st, ErrorCode.FLOW_CONTROL_ERROR, "stream receive window exceeded");
      return;
    }
    const data = this.unpad(flags, p, 0);
    const end = (flags & Flag.END_STREAM) !== 0;
    if (end) {
      st.remoteEnded = true;
      if (st.localEnded) this.forget(st);
    } else {
      st.recvUnacked += len;
      if (st.recvUnacked >= STREAM_RECV_WINDOW / 2) {
        this.append(windowUpdateFrame(st.id, st.recvUnacked));
        st.recvWindow += st.recvUnacked;
        st.recvUnacked = 0;
      }
    }
    st.handler.onData(st, data, end);
  }

  private onHeadersFrame(flags: number, streamId: number, p: Uint8Array): void {
    this.checkPeerStreamId(streamId, "HEADERS");
    const fragment = this.unpad(flags, p, flags & Flag.PRIORITY ? 5 : 0);
    const endStream = (flags & Flag.END_STREAM) !== 0;
    if (flags & Flag.END_HEADERS) {
      this.onHeaderBlock(streamId, fragment, endStream);
      return;
    }
    this.headerStream = streamId;
    this.headerEndStream = endStream;
    this.headerParts = [fragment.slice()];
    this.headerBytes = fragment.length;
    this.headerFrames = 0;
  }

  private onContinuation(flags: number, streamId: number, p: Uint8Array): void {
    if (this.headerStream === 0 || streamId !== this.headerStream) {
      throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION");
    }
    this.headerBytes += p.length;
    if (this.headerBytes > MAX_HEADER_BLOCK) throw new H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large");
    if (++this.headerFrames > MAX_CONTINUATIONS) throw new H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "too many CONTINUATION frames");
    if (p.length > 0) this.headerParts.push(p.slice());
    if ((flags & Flag.END_HEADERS) === 0) return;
    const block = new Uint8Array(this.headerBytes);
    let o = 0;
    for (const part of this.headerParts) {
      block.set(part, o);
      o += part.length;
    }
    const id = this.headerStream;
    const end = this.headerEndStream;
    this.headerStream = 0;
    this.headerParts = [];
    this.headerBytes = 0;
    this.onHeaderBlock(id, block, end);
  }

  private onHeaderBlock(streamId: number, block: Uint8Array, endStream: boolean): void {
    // Always decode: the HPACK dynamic table must stay in step even for closed streams.
    const fields = this.hpack.decode(block);
    const st = this.streams.get(streamId);
    if (st === undefined || st.remoteEnded) return;
    if (endStream) {
      st.remoteEnded = true;
      if (st.localEnded) this.forget(st);
    }
    st.handler.onHeaders(st, fields, endStream);
  }

  private onRstStream(streamId: number, p: Uint8Array): void {
    if (p.length !== 4) throw new H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM length");
    this.checkPeerStreamId(streamId, "RST_STREAM");
    const st = this.streams.get(streamId);
    if (st === undefined) return;
    const code = readU32(p, 0);
    this.forget(st);
    st.handler.onReset(st, code, `stream reset by the agent (${errorCodeName(code)})`);
  }

  private resetWithError(st: H2Stream, code: number, reason: string): void {
    this.forget(st);
    this.append(rstStreamFrame(st.id, code));
    st.handler.onReset(st, code, reason);
  }

  private onSettings(flags: number, streamId: number, p: Uint8Array): void {
    if (streamId !== 0) throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream");
    if (flags & Flag.ACK) {
      if (p.length !== 0) throw new H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload");
      // We send SETTINGS once (with the preface): the first ACK is for them.
      if (this.settingsTimer !== undefined) {
        clearTimeout(this.settingsTimer);
        this.settingsTimer = undefined;
      }
      return;
    }
    if (p.length % 6 !== 0) throw new H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length");
    this.checkOutBacklog();
    for (let i = 0; i < p.length; i += 6) {
      const id = (p[i]! << 8) | p[i + 1]!;
      const value = readU32(p, i + 2);
      switch (id) {
        case Setting.INITIAL_WINDOW_SIZE: {
          if (value > MAX_WINDOW) throw new H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large");
          const delta = value - this.peerInitialWindow;
          this.peerInitialWindow = value;
          for (const st of this.streams.values()) {
            st.sendWindow += delta;
            if (st.sendWindow > MAX_WINDOW) throw new H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow");
          }
          break;
        }
        case Setting.MAX_FRAME_SIZE:
          if (value < DEFAULT_MAX_FRAME_SIZE || value > MAX_MAX_FRAME_SIZE) {
            throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, `invalid SETTINGS_MAX_FRAME_SIZE ${value}`);
          }
          this.peerMaxFrameSize = value;
          break;
        case Setting.MAX_CONCURRENT_STREAMS:
          this.peerMaxConcurrentStreams = value;
          break;
        case Setting.ENABLE_PUSH:
          if (value > 1) throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH");
          break;
        default:
          // HEADER_TABLE_SIZE: our encoder never uses the peer's dynamic table, so any size is
          // fine. MAX_HEADER_LIST_SIZE: advisory. Unknown settings are ignored (§6.5.2).
          break;
      }
    }
    this.gotPeerSettings = true;
    this.append(settingsAckFrame());
    this.pumpAll();
  }

  private checkOutBacklog(): void {
    if (this.outLen > MAX_OUT_BUFFER) {
      throw new H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, `the agent does not read: ${this.outLen} bytes unsent, refusing to answer more control frames`);
    }
  }

  private onGoaway(streamId: number, p: Uint8Array): void {
    if (streamId !== 0) throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream");
    if (p.length < 8) throw new H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY length");
    const last = readU32(p, 0) & 0x7fffffff;
    const code = readU32(p, 4);
    const debug = new TextDecoder().decode(p.subarray(8));
    this.goawayReceived = true;
    for (const st of [...this.streams.values()]) {
      if (st.id > last) {
        this.forget(st);
        st.handler.onReset(st, ErrorCode.REFUSED_STREAM, `refused by GOAWAY (${errorCodeName(code)})`);
      }
    }
    this.opts.onGoaway?.(code, last, debug);
    if (code !== ErrorCode.NO_ERROR) {
      this.destroy(new Error(`agent sent GOAWAY ${errorCodeName(code)}${debug ? `: ${debug}` : ""}`));
    }
  }

  private onWindowUpdate(streamId: number, p: Uint8Array): void {
    if (p.length !== 4) throw new H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE length");
    const inc = readU32(p, 0) & 0x7fffffff;
    if (streamId === 0) {
      if (inc === 0) throw new H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
      this.connSendWindow += inc;
      if (this.connSendWindow > MAX_WINDOW) throw new H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow");
      this.pumpAll();
      return;
    }
    this.checkPeerStreamId(streamId, "WINDOW_UPDATE");
    const st = this.streams.get(streamId);
    if (st === undefined) return;
    if (inc === 0) return this.resetWithError(st, ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
    st.sendWindow += inc;
    if (st.sendWindow > MAX_WINDOW) return this.resetWithError(st, ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow");
    if (st.queuedBytes > 0 || st.endAfterQueue) this.pump(st);
  }

  // ------------------------------------------------------------------------- lifecycle

  private keepalive(interval: number, timeout: number): void {
    if (this.closed || !this.open) return;
    const now = performance.now();
    if (this.received !== this.receivedAtCheck) {
      this.receivedAtCheck = this.received;
      this.idleSince = now;
      this.pingSentAt = 0;
      return;
    }
    if (this.pingSentAt !== 0) {
      if (now - this.pingSentAt >= timeout) this.destroy(new Error(`no answer to a keepalive PING within ${timeout} ms`));
      return;
    }
    if (now - this.idleSince >= interval) {
      this.pingSentAt = now;
      this.append(pingFrame(new Uint8Array(8), false));
    }
  }

  /** Graceful close: GOAWAY(NO_ERROR), flush, then end the socket. Streams still open are reset. */
  close(): void {
    if (this.closed) return;
    if (this.open) {
      this.append(goawayFrame(0, ErrorCode.NO_ERROR));
      this.flush();
    }
    this.destroy(new Error("connection closed"));
  }

  /** Tear down now; every open stream hears onReset with the error. */
  destroy(err: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.closeError = err;
    if (this.keepaliveTimer !== undefined) clearInterval(this.keepaliveTimer);
    if (this.settingsTimer !== undefined) clearTimeout(this.settingsTimer);
    const s = this.socket;
    this.socket = null;
    this.open = false;
    this.outLen = 0;
    try {
      s?.end();
    } catch {
      // already gone
    }
    const list = [...this.streams.values()];
    this.streams.clear();
    for (const st of list) {
      st.closed = true;
      try {
        st.handler.onReset(st, ErrorCode.CANCEL, err.message, err);
      } catch {
        // a handler's failure is not the connection's
      }
    }
    this.opts.onClose?.(err);
  }
}

const EMPTY = new Uint8Array(0);
