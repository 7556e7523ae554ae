import { describe, expect, test } from "bun:test";
import { encodeFrame, encodeFrameString, encodeV1FrameString, FrameDecoder, FrameError, FrameType, MAX_FRAME_LEN } from "./frame.ts";

function collect(dec: FrameDecoder, chunks: Uint8Array[]): Array<[number, string]> {
  const out: Array<[number, string]> = [];
  for (const c of chunks) dec.push(c, (t, p) => out.push([t, Buffer.from(p).toString("utf8")]));
  return out;
}

function hdr(len: number, type?: number): Uint8Array {
  const b = Buffer.alloc(type === undefined ? 4 : 5);
  b.writeUInt32BE(len, 0);
  if (type !== undefined) b[4] = type;
  return b;
}

describe("encodeFrame", () => {
  test("ping example from the spec", () => {
    const f = encodeFrame(FrameType.Ping, new TextEncoder().encode("{}"));
    expect(Array.from(f)).toEqual([0, 0, 0, 3, 0x41, 0x7b, 0x7d]);
    expect(Array.from(encodeFrameString(FrameType.Ping, "{}"))).toEqual([0, 0, 0, 3, 0x41, 0x7b, 0x7d]);
  });
  test("empty payload has LEN 1", () => {
    expect(Array.from(encodeFrame(FrameType.Pong, new Uint8Array(0)))).toEqual([0, 0, 0, 1, 0x42]);
  });
  test("string encoding counts UTF-8 bytes", () => {
    const f = encodeFrameString(FrameType.AgentResponse, '"é☃"');
    expect(f.length).toBe(5 + 7);
    expect(Buffer.from(f).readUInt32BE(0)).toBe(8);
  });
  test("v1 frame has no type byte", () => {
    expect(Array.from(encodeV1FrameString("{}"))).toEqual([0, 0, 0, 2, 0x7b, 0x7d]);
  });
  test("refuses payloads that would exceed LEN 16 MiB", () => {
    expect(() => encodeFrame(0x20, new Uint8Array(MAX_FRAME_LEN))).toThrow(FrameError);
  });
});

describe("FrameDecoder", () => {
  const frames = [
    encodeFrameString(FrameType.AgentResponse, '{"a":1}'),
    encodeFrameString(FrameType.Pong, ""),
    encodeFrameString(FrameType.HealthStatus, '{"state":1,"x":"' + "y".repeat(300) + '"}'),
  ];
  const all = Buffer.concat(frames);
  const expected: Array<[number, string]> = [
    [0x20, '{"a":1}'],
    [0x42, ""],
    [0x30, '{"state":1,"x":"' + "y".repeat(300) + '"}'],
  ];

  test("one chunk with several frames", () => {
    expect(collect(new FrameDecoder(), [all])).toEqual(expected);
  });

  test("every split point and byte-by-byte", () => {
    for (let i = 0; i <= all.length; i++) {
      expect(collect(new FrameDecoder(), [all.subarray(0, i), all.subarray(i)])).toEqual(expected);
    }
    const bytes = Array.from(all, (b) => Uint8Array.of(b));
    expect(collect(new FrameDecoder(), bytes)).toEqual(expected);
  });

  test("random chunking", () => {
    for (let round = 0; round < 50; round++) {
      const chunks: Uint8Array[] = [];
      let pos = 0;
      while (pos < all.length) {
        const n = 1 + Math.floor(Math.random() * 40);
        chunks.push(all.subarray(pos, pos + n));
        pos += n;
      }
      expect(collect(new FrameDecoder(), chunks)).toEqual(expected);
    }
  });

  test("LEN 0 is rejected", () => {
    const d = new FrameDecoder();
    expect(() => d.push(hdr(0, 0x20), () => {})).toThrow(/zero-length/);
    // and stays failed
    expect(() => d.push(frames[0]!, () => {})).toThrow(FrameError);
  });

  test("LEN 0 is rejected as soon as the 4 length bytes are in", () => {
    const d = new FrameDecoder();
    expect(() => d.push(hdr(0), () => {})).toThrow(/zero-length/);
  });

  test("LEN > 16 MiB is rejected before any payload arrives or is allocated", () => {
    const d = new FrameDecoder();
    expect(() => d.push(hdr(MAX_FRAME_LEN + 1, 0x20), () => {})).toThrow(/too large/);
    const d2 = new FrameDecoder();
    expect(() => d2.push(hdr(0xfffffff0), () => {})).toThrow(/too large/);
    expect(d2.buffered).toBe(0);
  });

  test("LEN == 16 MiB is accepted (header only so far)", () => {
    const d = new FrameDecoder();
    d.push(hdr(MAX_FRAME_LEN, 0x20), () => {});
  });

  test("unknown type byte is rejected before the payload", () => {
    for (const t of [0x00, 0x03, 0x18, 0x21, 0x34, 0x43, 0x7b, 0xf0, 0xff]) {
      const d = new FrameDecoder();
      expect(() => d.push(hdr(100, t), () => {})).toThrow(/unknown message type/);
    }
  });

  test("every known type is accepted", () => {
    for (const t of Object.values(FrameType)) {
      const out = collect(new FrameDecoder(), [encodeFrameString(t, "{}")]);
      expect(out).toEqual([[t, "{}"]]);
    }
  });

  test("buffers at most one partial frame", () => {
    const d = new FrameDecoder();
    const big = encodeFrameString(0x20, "x".repeat(10_000));
    let n = 0;
    d.push(big.subarray(0, 5000), () => n++);
    expect(d.buffered).toBe(4995);
    d.push(Buffer.concat([big.subarray(5000), big.subarray(0, 3)]), () => n++);
    expect(n).toBe(1);
    expect(d.buffered).toBe(3);
  });

  test("v1 framing: no type byte", () => {
    const d = new FrameDecoder({ framing: "v1" });
    const f = Buffer.concat([encodeV1FrameString('{"a":1}'), encodeV1FrameString('{"b":2}')]);
    const out: string[] = [];
    for (let i = 0; i < f.length; i++) d.push(f.subarray(i, i + 1), (t, p) => {
      expect(t).toBe(-1);
      out.push(Buffer.from(p).toString());
    });
    expect(out).toEqual(['{"a":1}', '{"b":2}']);
    expect(() => new FrameDecoder({ framing: "v1" }).push(hdr(0), () => {})).toThrow(FrameError);
  });
});
