// Agent Protocol v2 UDS framing (spec §2.2, §2.4, §2.9) and the legacy v1 framing (§5).
//
// v2 frame: u32 BE LEN | u8 TYPE | PAYLOAD, LEN = 1 + payload length, 1 ≤ LEN ≤ 16 777 216.
// v1 frame: u32 BE LEN | JSON (LEN bytes), no type byte.
//
// The decoder is streaming: it accepts arbitrary chunk boundaries, validates LEN and the type
// byte before it allocates or buffers any payload, and never holds more than one partial frame.

/** Message type ids (§2.4). */
export const FrameType = {
  HandshakeRequest: 0x01,
  HandshakeResponse: 0x02,
  RequestHeaders: 0x10,
  RequestBodyChunk: 0x11,
  ResponseHeaders: 0x12,
  ResponseBodyChunk: 0x13,
  RequestComplete: 0x14,
  WebSocketFrame: 0x15,
  GuardrailInspect: 0x16,
  Configure: 0x17,
  AgentResponse: 0x20,
  HealthStatus: 0x30,
  MetricsReport: 0x31,
  ConfigUpdateRequest: 0x32,
  FlowControl: 0x33,
  Cancel: 0x40,
  Ping: 0x41,
  Pong: 0x42,
} as const;
export type FrameTypeId = (typeof FrameType)[keyof typeof FrameType];

/** Largest LEN value a peer accepts (type byte included). */
export const MAX_FRAME_LEN = 16_777_216;
/** Largest payload we write: LEN = payload + 1 must stay ≤ MAX_FRAME_LEN (§2.2). */
export const MAX_PAYLOAD_LEN = MAX_FRAME_LEN - 1;
/** v1: the largest frame we accept from an SDK runner (they send at most 10 MiB). */
export const MAX_V1_FRAME_LEN = 16_777_216;

const KNOWN = new Uint8Array(256);
for (const t of Object.values(FrameType)) KNOWN[t] = 1;

export function isKnownFrameType(t: number): boolean {
  return KNOWN[t & 0xff] === 1 && t >= 0 && t <= 0xff;
}

/** A protocol violation on the byte level. The connection must be dropped. */
export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FrameError";
  }
}

/** One v2 frame as a single buffer (so it can go out in one write). */
export function encodeFrame(type: number, payload: Uint8Array): Uint8Array {
  if (payload.length > MAX_PAYLOAD_LEN) throw new FrameError(`payload too large (${payload.length} bytes)`);
  const out = new Uint8Array(5 + payload.length);
  const len = payload.length + 1;
  out[0] = len >>> 24;
  out[1] = (len >>> 16) & 0xff;
  out[2] = (len >>> 8) & 0xff;
  out[3] = len & 0xff;
  out[4] = type;
  out.set(payload, 5);
  return out;
}

/** One v2 frame with a UTF-8 string payload, encoded straight into the frame buffer (no extra copy). */
export function encodeFrameString(type: number, text: string): Uint8Array {
  const n = Buffer.byteLength(text, "utf8");
  if (n > MAX_PAYLOAD_LEN) throw new FrameError(`payload too large (${n} bytes)`);
  const out = Buffer.allocUnsafe(5 + n);
  out.writeUInt32BE(n + 1, 0);
  out[4] = type;
  out.write(text, 5, n, "utf8");
  return out;
}

/** One v1 frame (length prefix + JSON text) as a single buffer. */
export function encodeV1FrameString(text: string): Uint8Array {
  const n = Buffer.byteLength(text, "utf8");
  if (n > MAX_V1_FRAME_LEN) throw new FrameError(`v1 frame too large (${n} bytes)`);
  const out = Buffer.allocUnsafe(4 + n);
  out.writeUInt32BE(n, 0);
  out.write(text, 4, n, "utf8");
  return out;
}

export interface FrameDecoderOptions {
  /** "v2" (type byte, default) or "v1" (length + JSON only; `type` is reported as -1). */
  framing?: "v2" | "v1";
  /** Largest LEN accepted (default 16 MiB for both framings). */
  maxLen?: number;
}

/**
 * Streaming frame decoder. `push()` calls `onFrame(type, payload)` once per complete frame, in
 * order, and throws FrameError on a protocol violation (after which the decoder is unusable and
 * the connection must be dropped). The payload is either a view into the pushed chunk or a
 * buffer the decoder allocated for this frame alone; it is never reused by the decoder, so the
 * callee may keep it.
 */
export class FrameDecoder {
  private readonly v1: boolean;
  private readonly maxLen: number;
  /** Header bytes collected so far (LEN, plus TYPE in v2). */
  private readonly hdr = new Uint8Array(5);
  private hdrHave = 0;
  /** Current frame: type and a payload buffer being filled. */
  private type = -1;
  private body: Uint8Array | null = null;
  private bodyHave = 0;
  private failed: FrameError | null = null;

  constructor(opts: FrameDecoderOptions = {}) {
    this.v1 = opts.framing === "v1";
    this.maxLen = opts.maxLen ?? (this.v1 ? MAX_V1_FRAME_LEN : MAX_FRAME_LEN);
  }

  /** Bytes currently held for an incomplete frame (header + payload). */
  get buffered(): number {
    return this.hdrHave + this.bodyHave;
  }

  push(chunk: Uint8Array, onFrame: (type: number, payload: Uint8Array) => void): void {
    if (this.failed) throw this.failed;
    const hdrLen = this.v1 ? 4 : 5;
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      if (this.body !== null) {
        // Continue filling the current payload.
        const need = this.body.length - this.bodyHave;
        const take = Math.min(need, end - pos);
        this.body.set(chunk.subarray(pos, pos + take), this.bodyHave);
        this.bodyHave += take;
        pos += take;
        if (this.bodyHave === this.body.length) {
          const payload = this.body;
          const type = this.type;
          this.body = null;
          this.bodyHave = 0;
          onFrame(type, payload);
        }
        continue;
      }
      // Fast path: a whole header available in the chunk and nothing half-read.
      let len: number;
      let type: number;
      if (this.hdrHave === 0 && end - pos >= hdrLen) {
        len = ((chunk[pos]! << 24) | (chunk[pos + 1]! << 16) | (chunk[pos + 2]! << 8) | chunk[pos + 3]!) >>> 0;
        type = this.v1 ? -1 : chunk[pos + 4]!;
        this.check(len, type);
        pos += hdrLen;
      } else {
        while (this.hdrHave < hdrLen && pos < end) this.hdr[this.hdrHave++] = chunk[pos++]!;
        if (this.hdrHave < hdrLen) {
          // LEN may already be complete: reject a bad one as early as possible.
          if (this.hdrHave >= 4) this.checkLen(this.readHdrLen());
          return;
        }
        len = this.readHdrLen();
        type = this.v1 ? -1 : this.hdr[4]!;
        this.hdrHave = 0;
        this.check(len, type);
      }
      const payloadLen = this.v1 ? len : len - 1;
      if (end - pos >= payloadLen) {
        // Whole payload in this chunk: hand out a view, no copy.
        const payload = chunk.subarray(pos, pos + payloadLen);
        pos += payloadLen;
        onFrame(type, payload);
      } else {
        this.type = type;
        this.body = new Uint8Array(payloadLen);
        this.bodyHave = 0;
      }
    }
  }

  private readHdrLen(): number {
    const h = this.hdr;
    return ((h[0]! << 24) | (h[1]! << 16) | (h[2]! << 8) | h[3]!) >>> 0;
  }

  private checkLen(len: number): void {
    if (len === 0) this.fail("zero-length message");
    if (len > this.maxLen) this.fail(`message too large (${len} > ${this.maxLen})`);
  }

  private check(len: number, type: number): void {
    this.checkLen(len);
    if (!this.v1 && !isKnownFrameType(type)) this.fail(`unknown message type 0x${type.toString(16).padStart(2, "0")}`);
  }

  private fail(msg: string): never {
    this.failed = new FrameError(msg);
    this.body = null;
    this.bodyHave = 0;
    this.hdrHave = 0;
    throw this.failed;
  }
}
