// HTTP/2 frame layer (RFC 9113 §4, §6): constants, frame builders and an incremental frame
// reader. No state machine here (that is connection.ts).

export const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

export const Flag = {
  END_STREAM: 0x1,
  ACK: 0x1,
  END_HEADERS: 0x4,
  PADDED: 0x8,
  PRIORITY: 0x20,
} as const;

export const ErrorCode = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  SETTINGS_TIMEOUT: 0x4,
  STREAM_CLOSED: 0x5,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  CONNECT_ERROR: 0xa,
  ENHANCE_YOUR_CALM: 0xb,
  INADEQUATE_SECURITY: 0xc,
  HTTP_1_1_REQUIRED: 0xd,
} as const;

const ERROR_NAMES = Object.fromEntries(Object.entries(ErrorCode).map(([k, v]) => [v, k])) as Record<number, string>;

export function errorCodeName(code: number): string {
  return ERROR_NAMES[code] ?? `0x${code.toString(16)}`;
}

export const Setting = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
} as const;

export const FRAME_HEADER_BYTES = 9;
export const DEFAULT_MAX_FRAME_SIZE = 16_384;
export const MAX_MAX_FRAME_SIZE = 16_777_215;
export const DEFAULT_WINDOW = 65_535;
export const MAX_WINDOW = 0x7fffffff;

/** A connection error (RFC 9113 §5.4.1): the connection ends with GOAWAY(code). */
export class H2ConnectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export function writeFrameHeader(buf: Uint8Array, off: number, length: number, type: number, flags: number, streamId: number): void {
  buf[off] = (length >>> 16) & 0xff;
  buf[off + 1] = (length >>> 8) & 0xff;
  buf[off + 2] = length & 0xff;
  buf[off + 3] = type;
  buf[off + 4] = flags;
  buf[off + 5] = (streamId >>> 24) & 0x7f;
  buf[off + 6] = (streamId >>> 16) & 0xff;
  buf[off + 7] = (streamId >>> 8) & 0xff;
  buf[off + 8] = streamId & 0xff;
}

function writeU32(buf: Uint8Array, off: number, v: number): void {
  buf[off] = (v >>> 24) & 0xff;
  buf[off + 1] = (v >>> 16) & 0xff;
  buf[off + 2] = (v >>> 8) & 0xff;
  buf[off + 3] = v & 0xff;
}

export function readU32(buf: Uint8Array, off: number): number {
  return ((buf[off]! << 24) | (buf[off + 1]! << 16) | (buf[off + 2]! << 8) | buf[off + 3]!) >>> 0;
}

export function frame(type: number, flags: number, streamId: number, payload: Uint8Array = EMPTY): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  writeFrameHeader(out, 0, payload.length, type, flags, streamId);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

const EMPTY = new Uint8Array(0);

export function settingsFrame(entries: ReadonlyArray<readonly [id: number, value: number]>): Uint8Array {
  const p = new Uint8Array(entries.length * 6);
  entries.forEach(([id, value], i) => {
    p[i * 6] = (id >>> 8) & 0xff;
    p[i * 6 + 1] = id & 0xff;
    writeU32(p, i * 6 + 2, value);
  });
  return frame(FrameType.SETTINGS, 0, 0, p);
}

export function settingsAckFrame(): Uint8Array {
  return frame(FrameType.SETTINGS, Flag.ACK, 0);
}

export function pingFrame(payload: Uint8Array, ack: boolean): Uint8Array {
  return frame(FrameType.PING, ack ? Flag.ACK : 0, 0, payload);
}

export function windowUpdateFrame(streamId: number, increment: number): Uint8Array {
  const p = new Uint8Array(4);
  writeU32(p, 0, increment & 0x7fffffff);
  return frame(FrameType.WINDOW_UPDATE, 0, streamId, p);
}

export function rstStreamFrame(streamId: number, code: number): Uint8Array {
  const p = new Uint8Array(4);
  writeU32(p, 0, code);
  return frame(FrameType.RST_STREAM, 0, streamId, p);
}

export function goawayFrame(lastStreamId: number, code: number, debug = ""): Uint8Array {
  const d = new TextEncoder().encode(debug);
  const p = new Uint8Array(8 + d.length);
  writeU32(p, 0, lastStreamId & 0x7fffffff);
  writeU32(p, 4, code);
  p.set(d, 8);
  return frame(FrameType.GOAWAY, 0, 0, p);
}

/** HEADERS (+ CONTINUATION when the block exceeds `maxFrameSize`). */
export function headersFrames(streamId: number, block: Uint8Array, endStream: boolean, maxFrameSize: number): Uint8Array {
  const n = Math.max(1, Math.ceil(block.length / maxFrameSize));
  const out = new Uint8Array(block.length + n * FRAME_HEADER_BYTES);
  let o = 0;
  for (let i = 0; i < n; i++) {
    const part = block.subarray(i * maxFrameSize, Math.min(block.length, (i + 1) * maxFrameSize));
    const last = i === n - 1;
    const type = i === 0 ? FrameType.HEADERS : FrameType.CONTINUATION;
    const flags = (last ? Flag.END_HEADERS : 0) | (i === 0 && endStream ? Flag.END_STREAM : 0);
    writeFrameHeader(out, o, part.length, type, flags, streamId);
    out.set(part, o + FRAME_HEADER_BYTES);
    o += FRAME_HEADER_BYTES + part.length;
  }
  return out;
}

export type FrameHandler = (type: number, flags: number, streamId: number, payload: Uint8Array) => void;

/**
 * Splits a byte stream into frames. A frame that lies whole inside one chunk is passed as a view
 * of that chunk (no copy), valid only during the callback; only a frame spanning chunks is
 * copied. A frame longer than `maxFrameSize` (our SETTINGS_MAX_FRAME_SIZE) is a
 * FRAME_SIZE_ERROR.
 */
export class FrameReader {
  private pending: Uint8Array | null = null;
  private pendingLen = 0;
  maxFrameSize = DEFAULT_MAX_FRAME_SIZE;

  constructor(private readonly onFrame: FrameHandler) {}

  push(chunk: Uint8Array): void {
    let pos = 0;
    const n = chunk.length;
    if (this.pending !== null) {
      // Complete the frame that spans chunks first.
      if (this.pendingLen < FRAME_HEADER_BYTES) {
        const take = Math.min(FRAME_HEADER_BYTES - this.pendingLen, n);
        this.pending.set(chunk.subarray(0, take), this.pendingLen);
        this.pendingLen += take;
        pos = take;
        if (this.pendingLen < FRAME_HEADER_BYTES) return;
        this.ensure(this.frameSize(this.pending, 0));
      }
      const size = this.frameSize(this.pending, 0);
      const take = Math.min(size - this.pendingLen, n - pos);
      this.pending.set(chunk.subarray(pos, pos + take), this.pendingLen);
      this.pendingLen += take;
      pos += take;
      if (this.pendingLen < size) return;
      const whole = this.pending;
      this.pending = null;
      this.pendingLen = 0;
      this.dispatch(whole, 0);
    }
    while (n - pos >= FRAME_HEADER_BYTES) {
      const size = this.frameSize(chunk, pos);
      if (n - pos < size) break;
      this.dispatch(chunk, pos);
      pos += size;
    }
    if (pos < n) {
      const rest = n - pos;
      this.pending = new Uint8Array(rest >= FRAME_HEADER_BYTES ? this.frameSize(chunk, pos) : FRAME_HEADER_BYTES);
      this.pending.set(chunk.subarray(pos), 0);
      this.pendingLen = rest;
    }
  }

  private frameSize(buf: Uint8Array, pos: number): number {
    const len = (buf[pos]! << 16) | (buf[pos + 1]! << 8) | buf[pos + 2]!;
    if (len > this.maxFrameSize) throw new H2ConnectionError(0x6, `frame of ${len} bytes exceeds SETTINGS_MAX_FRAME_SIZE ${this.maxFrameSize}`);
    return FRAME_HEADER_BYTES + len;
  }

  private ensure(size: number): void {
    const p = this.pending!;
    if (p.length >= size) return;
    const q = new Uint8Array(size);
    q.set(p.subarray(0, this.pendingLen), 0);
    this.pending = q;
  }

  private dispatch(buf: Uint8Array, pos: number): void {
    const len = (buf[pos]! << 16) | (buf[pos + 1]! << 8) | buf[pos + 2]!;
    const type = buf[pos + 3]!;
    const flags = buf[pos + 4]!;
    const streamId = readU32(buf, pos + 5) & 0x7fffffff;
    this.onFrame(type, flags, streamId, buf.subarray(pos + FRAME_HEADER_BYTES, pos + FRAME_HEADER_BYTES + len));
  }
}
