// gRPC message framing (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md): every
// message is a 1-byte compressed flag, a 4-byte big-endian length and the message bytes. Shared
// by the proxy's client call (grpc.ts) and the SDK's direct ProcessStream server
// (sdk/grpc-direct.ts); each side words its own errors.

/** Why a byte stream is not acceptable gRPC framing. */
export type FramingProblem = { kind: "compressed" } | { kind: "flag"; flag: number } | { kind: "size"; length: number };

/** The 5-byte prefix of a message of `length` bytes (not compressed). */
export function messagePrefix(length: number): Uint8Array {
  const head = new Uint8Array(5);
  head[1] = (length >>> 24) & 0xff;
  head[2] = (length >>> 16) & 0xff;
  head[3] = (length >>> 8) & 0xff;
  head[4] = length & 0xff;
  return head;
}

const EMPTY = new Uint8Array(0);

/**
 * Reassembles messages from DATA payloads of any size. A message inside one payload is handed out
 * as a view (no copy); one that spans payloads is copied once into a buffer of its declared size,
 * which is checked against `maxBytes` before anything is allocated.
 */
export class MessageDeframer {
  private readonly prefix = new Uint8Array(5);
  private prefixHave = 0;
  private msg: Uint8Array | null = null;
  private msgHave = 0;

  constructor(private readonly maxBytes: number) {}

  /** True between the first and the last byte of a message (a stream must not end there). */
  get midMessage(): boolean {
    return this.prefixHave > 0 || this.msg !== null;
  }

  /**
   * Feed one payload. `onMessage` gets each whole message (a view valid during the call); feeding
   * stops early once `stopped()` is true. Returns the first framing problem (stop feeding then).
   */
  push(data: Uint8Array, onMessage: (bytes: Uint8Array) => void, stopped: () => boolean): FramingProblem | null {
    let pos = 0;
    const n = data.length;
    while (pos < n && !stopped()) {
      if (this.msg !== null) {
        // Continue a message that spans payloads.
        const take = Math.min(n - pos, this.msg.length - this.msgHave);
        this.msg.set(data.subarray(pos, pos + take), this.msgHave);
        this.msgHave += take;
        pos += take;
        if (this.msgHave === this.msg.length) {
          const m = this.msg;
          this.msg = null;
          this.msgHave = 0;
          onMessage(m);
        }
        continue;
      }
      let len: number;
      if (this.prefixHave === 0 && n - pos >= 5) {
        const bad = this.check(data[pos]!, (len = ((data[pos + 1]! << 24) | (data[pos + 2]! << 16) | (data[pos + 3]! << 8) | data[pos + 4]!) >>> 0));
        if (bad !== null) return bad;
        pos += 5;
        if (n - pos >= len) {
          // Whole message inside this payload: hand out a view, no copy.
          const m = data.subarray(pos, pos + len);
          pos += len;
          onMessage(m);
          continue;
        }
      } else {
        const take = Math.min(5 - this.prefixHave, n - pos);
        this.prefix.set(data.subarray(pos, pos + take), this.prefixHave);
        this.prefixHave += take;
        pos += take;
        if (this.prefixHave < 5) break;
        this.prefixHave = 0;
        const p = this.prefix;
        const bad = this.check(p[0]!, (len = ((p[1]! << 24) | (p[2]! << 16) | (p[3]! << 8) | p[4]!) >>> 0));
        if (bad !== null) return bad;
        if (len === 0) {
          onMessage(EMPTY);
          continue;
        }
      }
      this.msg = new Uint8Array(len);
      this.msgHave = 0;
    }
    return null;
  }

  private check(flag: number, length: number): FramingProblem | null {
    if (flag === 1) return { kind: "compressed" };
    if (flag !== 0) return { kind: "flag", flag };
    if (length > this.maxBytes) return { kind: "size", length };
    return null;
  }
}
