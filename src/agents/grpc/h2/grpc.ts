// gRPC over one HTTP/2 stream (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
// request headers, length-prefixed messages (5-byte prefix; compression is not negotiated and a
// compressed message is refused), response headers (1xx blocks before them are skipped),
// trailers with grpc-status / grpc-message, trailers-only responses, message size limits, and the
// mapping of HTTP/2 failures to status codes. Messages are raw bytes here; protobuf encoding is
// the caller's.
import type { H2Connection, H2Stream, H2StreamHandler } from "./connection.ts";
import { ErrorCode } from "./frames.ts";
import type { HeaderField } from "./hpack.ts";
import { MessageDeframer, messagePrefix, type FramingProblem } from "./messages.ts";

/** gRPC status codes. */
export const Status = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

const STATUS_NAMES = Object.fromEntries(Object.entries(Status).map(([k, v]) => [v, k.toLowerCase()])) as Record<number, string>;

export function statusName(code: number): string {
  return STATUS_NAMES[code] ?? `code ${code}`;
}

/** How a call ended: the agent's trailers, or a local/transport failure mapped to a status. */
export class GrpcStatusError extends Error {
  constructor(
    readonly code: number,
    readonly detail: string,
  ) {
    super(`[${statusName(code)}] ${detail}`);
  }
}

export interface GrpcCallHandler {
  /** One whole message: a view valid only during the call. */
  onMessage(bytes: Uint8Array): void;
  /** Called once: `null` for status OK, else the failure. */
  onEnd(err: GrpcStatusError | null): void;
}

export interface GrpcCallOptions {
  /** ":authority" (host:port). */
  authority: string;
  scheme: "http" | "https";
  /** "/package.Service/Method". */
  path: string;
  /** Largest message accepted from the peer (default 16 MiB). */
  maxReceiveBytes?: number;
  /** Largest message we send (default 4 MiB). */
  maxSendBytes?: number;
  /**
   * Most bytes sent but not yet taken by the socket (stream queue waiting for flow-control credit
   * plus the connection's output buffer) before send() refuses (default 16 MiB). A message is
   * always accepted when nothing is buffered.
   */
  maxBufferedBytes?: number;
  userAgent?: string;
}

/** HTTP status -> gRPC status, for responses that are not gRPC (PROTOCOL-HTTP2.md). */
function statusFromHttp(status: number): number {
  switch (status) {
    case 400:
      return Status.INTERNAL;
    case 401:
      return Status.UNAUTHENTICATED;
    case 403:
      return Status.PERMISSION_DENIED;
    case 404:
      return Status.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return Status.UNAVAILABLE;
    default:
      return Status.UNKNOWN;
  }
}

/** A 1xx status ("100".."199"): an interim response, not the final one. */
function isInformational(status: string): boolean {
  return status.length === 3 && status.charCodeAt(0) === 0x31 && /^1\d\d$/.test(status);
}

/** RST_STREAM error code -> gRPC status. */
function statusFromReset(code: number): number {
  switch (code) {
    case ErrorCode.REFUSED_STREAM:
      return Status.UNAVAILABLE;
    case ErrorCode.CANCEL:
      return Status.CANCELLED;
    case ErrorCode.ENHANCE_YOUR_CALM:
      return Status.RESOURCE_EXHAUSTED;
    case ErrorCode.INADEQUATE_SECURITY:
      return Status.PERMISSION_DENIED;
    default:
      return Status.INTERNAL;
  }
}

/** grpc-message is percent-encoded UTF-8. */
export function decodeGrpcMessage(raw: string): string {
  if (!raw.includes("%")) return utf8FromLatin1(raw);
  const bytes: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c === 0x25 && i + 2 < raw.length && /^[0-9a-fA-F]{2}$/.test(raw.slice(i + 1, i + 3))) {
      bytes.push(parseInt(raw.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(c & 0xff);
    }
  }
  return new TextDecoder().decode(Uint8Array.from(bytes));
}

function utf8FromLatin1(s: string): string {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return new TextDecoder().decode(Uint8Array.from(s, (ch) => ch.charCodeAt(0)));
  return s;
}

/**
 * One gRPC call on its own HTTP/2 stream. Streaming in both directions: send() any number of
 * messages, end() to half-close; messages and the final status arrive through the handler.
 */
export class GrpcCall implements H2StreamHandler {
  private readonly stream: H2Stream;
  private readonly maxReceive: number;
  private readonly maxSend: number;
  private readonly maxBuffered: number;
  private ended = false;
  private gotHeaders = false;
  private encoding = "identity";

  /** Message reassembly across DATA frames. */
  private readonly deframer: MessageDeframer;
  private readonly deliver = (bytes: Uint8Array) => this.handler.onMessage(bytes);
  private readonly isOver = () => this.ended;

  constructor(
    private readonly conn: H2Connection,
    opts: GrpcCallOptions,
    private readonly handler: GrpcCallHandler,
  ) {
    this.maxReceive = opts.maxReceiveBytes ?? 16 * 1024 * 1024;
    this.deframer = new MessageDeframer(this.maxReceive);
    this.maxSend = opts.maxSendBytes ?? 4 * 1024 * 1024;
    this.maxBuffered = opts.maxBufferedBytes ?? 16 * 1024 * 1024;
    const headers: HeaderField[] = [
      [":method", "POST"],
      [":scheme", opts.scheme],
      [":path", opts.path],
      [":authority", opts.authority],
      ["content-type", "application/grpc"],
      ["te", "trailers"],
      ["grpc-accept-encoding", "identity"],
      ["user-agent", opts.userAgent ?? "sentinel-grpc"],
    ];
    this.stream = conn.openStream(headers, this);
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Bytes sent but not yet handed to the socket (this stream's queue + the connection buffer). */
  get bufferedBytes(): number {
    return this.stream.queuedBytes + this.conn.bufferedBytes;
  }

  /**
   * Send one message (raw protobuf bytes). Throws GrpcStatusError(RESOURCE_EXHAUSTED) when it is
   * larger than maxSendBytes or the send buffer is full (nothing is sent), or an Error when the
   * stream is closed.
   */
  send(bytes: Uint8Array): void {
    if (this.ended) throw new Error("gRPC call has ended");
    const n = bytes.length;
    if (n > this.maxSend) throw new GrpcStatusError(Status.RESOURCE_EXHAUSTED, `message of ${n} bytes exceeds the send limit of ${this.maxSend} bytes`);
    const buffered = this.bufferedBytes;
    if (buffered > 0 && buffered + 5 + n > this.maxBuffered) {
      throw new GrpcStatusError(Status.RESOURCE_EXHAUSTED, `send buffer full: ${buffered} bytes not yet taken by the agent (limit ${this.maxBuffered})`);
    }
    this.conn.writeData(this.stream, messagePrefix(n), bytes);
  }

  /** Half-close: no more messages from us. */
  end(): void {
    if (this.ended) return;
    this.conn.endStream(this.stream);
  }

  /** Abandon the call (RST_STREAM CANCEL). The handler hears nothing more. */
  cancel(): void {
    if (this.ended) return;
    this.ended = true;
    this.conn.resetStream(this.stream, ErrorCode.CANCEL);
  }

  private finish(err: GrpcStatusError | null, reset: boolean): void {
    if (this.ended) return;
    this.ended = true;
    if (reset) this.conn.resetStream(this.stream, ErrorCode.CANCEL);
    // The agent ended the stream (END_STREAM) while our side is still open: the call is over, so
    // release the stream (RST_STREAM NO_ERROR, as grpc-go does) instead of leaving it half-closed
    // in the connection's stream table, where it would count against MAX_CONCURRENT_STREAMS and
    // keep any queued DATA. No-op when both sides have already ended.
    else this.conn.resetStream(this.stream, ErrorCode.NO_ERROR);
    this.handler.onEnd(err);
  }

  // ------------------------------------------------------------------------- H2StreamHandler

  onHeaders(_st: H2Stream, fields: HeaderField[], endStream: boolean): void {
    if (this.ended) return;
    if (!this.gotHeaders) {
      let status = "";
      let contentType = "";
      let encoding: string | undefined;
      for (const [name, value] of fields) {
        if (name === ":status") status = value;
        else if (name === "content-type") contentType = value;
        else if (name === "grpc-encoding") encoding = value;
      }
      if (isInformational(status)) {
        this.onInformational(status, endStream);
        return;
      }
      if (encoding !== undefined) this.encoding = encoding;
      this.gotHeaders = true;
      if (status !== "200") {
        const code = statusFromHttp(Number(status));
        this.finish(new GrpcStatusError(code, `HTTP status ${status || "(none)"} from the agent`), !endStream);
        return;
      }
      if (!endStream && !/^application\/grpc(?:[+;]|$)/.test(contentType)) {
        this.finish(new GrpcStatusError(Status.UNKNOWN, `unexpected content-type ${JSON.stringify(contentType)} from the agent`), true);
        return;
      }
      if (!endStream) return;
      // Trailers-only response: status in the same block.
    } else if (!endStream) {
      this.finish(new GrpcStatusError(Status.INTERNAL, "unexpected second header block without END_STREAM"), true);
      return;
    }
    this.onTrailers(fields);
  }

  /**
   * A 1xx header block before the response headers (RFC 9113 §8.1): 100 Continue, 103 Early
   * Hints and the like are skipped, the final headers are still to come. 101 cannot occur in
   * HTTP/2 (§8.6), and an informational block that ends the stream is malformed (§8.1.1): both
   * are stream errors of type PROTOCOL_ERROR.
   */
  private onInformational(status: string, endStream: boolean): void {
    if (status !== "101" && !endStream) return;
    this.ended = true;
    this.conn.resetStream(this.stream, ErrorCode.PROTOCOL_ERROR);
    const why = endStream ? `informational HTTP status ${status} ended the stream` : "HTTP status 101 (Switching Protocols) is not allowed in HTTP/2";
    this.handler.onEnd(new GrpcStatusError(Status.INTERNAL, `${why} (from the agent)`));
  }

  private onTrailers(fields: HeaderField[]): void {
    let code = -1;
    let message = "";
    for (const [name, value] of fields) {
      if (name === "grpc-status") code = /^\d+$/.test(value) ? Number(value) : Status.UNKNOWN;
      else if (name === "grpc-message") message = decodeGrpcMessage(value);
    }
    if (code < 0) {
      this.finish(new GrpcStatusError(Status.INTERNAL, "missing grpc-status in the agent's trailers"), false);
      return;
    }
    if (this.deframer.midMessage) {
      this.finish(new GrpcStatusError(Status.INTERNAL, "stream ended in the middle of a message"), false);
      return;
    }
    this.finish(code === Status.OK ? null : new GrpcStatusError(code, message || "(no message)"), false);
  }

  onData(_st: H2Stream, data: Uint8Array, endStream: boolean): void {
    if (this.ended) return;
    if (!this.gotHeaders) {
      this.finish(new GrpcStatusError(Status.INTERNAL, "DATA before response headers"), true);
      return;
    }
    const bad = this.deframer.push(data, this.deliver, this.isOver);
    if (bad !== null) {
      this.finish(this.framingError(bad), true);
      return;
    }
    if (endStream && !this.ended) {
      this.finish(new GrpcStatusError(Status.INTERNAL, "stream ended without trailers (missing grpc-status)"), false);
    }
  }

  private framingError(bad: FramingProblem): GrpcStatusError {
    switch (bad.kind) {
      case "compressed":
        return new GrpcStatusError(Status.INTERNAL, `the agent sent a compressed message (grpc-encoding ${this.encoding}); compression is not supported`);
      case "flag":
        return new GrpcStatusError(Status.INTERNAL, `invalid message flags 0x${bad.flag.toString(16)}`);
      case "size":
        return new GrpcStatusError(Status.RESOURCE_EXHAUSTED, `message of ${bad.length} bytes exceeds the receive limit of ${this.maxReceive} bytes`);
    }
  }

  onReset(_st: H2Stream, code: number, reason: string, connectionError?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.handler.onEnd(new GrpcStatusError(connectionError ? Status.UNAVAILABLE : statusFromReset(code), reason));
  }
}
