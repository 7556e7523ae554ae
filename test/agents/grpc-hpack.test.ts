// HPACK decoder/encoder and Huffman code (src/agents/grpc/h2/{hpack,huffman}.ts) against the
// examples of RFC 7541 Appendix C and the code values of Appendix B.
import { describe, expect, test } from "bun:test";
import { HpackDecoder, HpackError, encodeHeaders, readInt, type HeaderField } from "../../src/agents/grpc/h2/hpack.ts";
import { HUFFMAN_CODES, HUFFMAN_LENGTHS, huffmanDecode, huffmanEncode } from "../../src/agents/grpc/h2/huffman.ts";

const hex = (s: string) => Uint8Array.from((s.replace(/\s+/g, "").match(/../g) ?? []).map((b) => parseInt(b, 16)));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("Huffman code (RFC 7541 Appendix B)", () => {
  test("codes derived from the lengths match the RFC's hex column", () => {
    const rfc: Record<number, [number, number]> = {
      0: [0x1ff8, 13],
      1: [0x7fffd8, 23],
      9: [0xffffea, 24],
      10: [0x3ffffffc, 30],
      13: [0x3ffffffd, 30],
      32: [0x14, 6],
      48: [0x0, 5],
      58: [0x5c, 7],
      97: [0x3, 5],
      126: [0x1ffd, 13],
      127: [0xffffffc, 28],
      128: [0xfffe6, 20],
      192: [0x3ffffe0, 26],
      255: [0x3ffffee, 26],
      256: [0x3fffffff, 30],
    };
    for (const [sym, [code, len]] of Object.entries(rfc)) {
      expect([HUFFMAN_CODES[Number(sym)], HUFFMAN_LENGTHS[Number(sym)]]).toEqual([code, len]);
    }
    // A complete prefix code: Kraft sum exactly 1.
    let kraft = 0;
    for (let i = 0; i < 257; i++) kraft += 2 ** -HUFFMAN_LENGTHS[i]!;
    expect(kraft).toBe(1);
  });

  test("C.4.1 www.example.com, C.4.2 no-cache, C.4.3 custom-key / custom-value", () => {
    expect(toHex(huffmanEncode("www.example.com"))).toBe("f1e3c2e5f23a6ba0ab90f4ff");
    expect(toHex(huffmanEncode("no-cache"))).toBe("a8eb10649cbf");
    expect(toHex(huffmanEncode("custom-key"))).toBe("25a849e95ba97d7f");
    expect(toHex(huffmanEncode("custom-value"))).toBe("25a849e95bb8e8b4bf");
    const b = hex("f1e3c2e5f23a6ba0ab90f4ff");
    expect(huffmanDecode(b, 0, b.length)).toBe("www.example.com");
  });

  test("every byte value round-trips", () => {
    const all = String.fromCharCode(...Array.from({ length: 256 }, (_, i) => i));
    const enc = huffmanEncode(all + all.split("").reverse().join(""));
    expect(huffmanDecode(enc, 0, enc.length)).toBe(all + all.split("").reverse().join(""));
  });

  test("invalid padding and EOS are refused", () => {
    // "a" = 00011 + padding 111 -> 0x1f. Padding with a zero bit is invalid.
    expect(huffmanDecode(Uint8Array.of(0x1f), 0, 1)).toBe("a");
    expect(() => huffmanDecode(Uint8Array.of(0x1e), 0, 1)).toThrow();
    // 8 bits or more of padding (a whole 0xff byte after a complete symbol) is invalid.
    expect(() => huffmanDecode(Uint8Array.of(0x1f, 0xff), 0, 2)).toThrow();
    // EOS encoded explicitly (30 ones) followed by padding.
    expect(() => huffmanDecode(Uint8Array.of(0xff, 0xff, 0xff, 0xff), 0, 4)).toThrow();
  });
});

describe("HPACK integers (RFC 7541 C.1)", () => {
  test("C.1.1 10 with a 5-bit prefix, C.1.2 1337 with a 5-bit prefix, C.1.3 42 at an octet boundary", () => {
    expect(readInt(Uint8Array.of(0x0a), 0, 5)).toEqual([10, 1]);
    expect(readInt(Uint8Array.of(0x1f, 0x9a, 0x0a), 0, 5)).toEqual([1337, 3]);
    expect(readInt(Uint8Array.of(0x2a), 0, 8)).toEqual([42, 1]);
  });
  test("overlong and truncated integers are refused", () => {
    expect(() => readInt(Uint8Array.of(0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f), 0, 5)).toThrow(HpackError);
    expect(() => readInt(Uint8Array.of(0x1f, 0x9a), 0, 5)).toThrow(HpackError);
    expect(() => readInt(Uint8Array.of(0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01), 0, 5)).toThrow(HpackError);
  });
});

function table(d: HpackDecoder): Array<[string, string]> {
  return d.dynamicTable.map(([n, v]) => [n, v]);
}

describe("HPACK decoder (RFC 7541 Appendix C)", () => {
  test("C.2 header field representations", () => {
    const d = new HpackDecoder();
    expect(d.decode(hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"))).toEqual([["custom-key", "custom-header"]]);
    expect(table(d)).toEqual([["custom-key", "custom-header"]]);
    expect(d.dynamicTableSize).toBe(55);

    const d2 = new HpackDecoder();
    expect(d2.decode(hex("040c 2f73 616d 706c 652f 7061 7468"))).toEqual([[":path", "/sample/path"]]);
    expect(d2.dynamicTableSize).toBe(0);

    const d3 = new HpackDecoder();
    expect(d3.decode(hex("1008 7061 7373 776f 7264 0673 6563 7265 74"))).toEqual([["password", "secret"]]);
    expect(d3.dynamicTableSize).toBe(0);

    const d4 = new HpackDecoder();
    expect(d4.decode(hex("82"))).toEqual([[":method", "GET"]]);
    expect(d4.dynamicTableSize).toBe(0);
  });

  const req1: HeaderField[] = [
    [":method", "GET"],
    [":scheme", "http"],
    [":path", "/"],
    [":authority", "www.example.com"],
  ];
  const req2: HeaderField[] = [...req1, ["cache-control", "no-cache"]];
  const req3: HeaderField[] = [
    [":method", "GET"],
    [":scheme", "https"],
    [":path", "/index.html"],
    [":authority", "www.example.com"],
    ["custom-key", "custom-value"],
  ];

  function requests(blocks: string[]): void {
    const d = new HpackDecoder();
    expect(d.decode(hex(blocks[0]!))).toEqual(req1);
    expect(table(d)).toEqual([[":authority", "www.example.com"]]);
    expect(d.dynamicTableSize).toBe(57);
    expect(d.decode(hex(blocks[1]!))).toEqual(req2);
    expect(table(d)).toEqual([
      ["cache-control", "no-cache"],
      [":authority", "www.example.com"],
    ]);
    expect(d.dynamicTableSize).toBe(110);
    expect(d.decode(hex(blocks[2]!))).toEqual(req3);
    expect(table(d)).toEqual([
      ["custom-key", "custom-value"],
      ["cache-control", "no-cache"],
      [":authority", "www.example.com"],
    ]);
    expect(d.dynamicTableSize).toBe(164);
  }

  test("C.3 requests without Huffman coding", () => {
    requests([
      "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "8286 84be 5808 6e6f 2d63 6163 6865",
      "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ]);
  });

  test("C.4 requests with Huffman coding", () => {
    requests(["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", "8286 84be 5886 a8eb 1064 9cbf", "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"]);
  });

  const date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
  const date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
  const loc = "https://www.example.com";
  const cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

  function responses(blocks: string[]): void {
    // SETTINGS_HEADER_TABLE_SIZE 256: evictions happen.
    const d = new HpackDecoder({ maxTableSize: 256 });
    expect(d.decode(hex(blocks[0]!))).toEqual([
      [":status", "302"],
      ["cache-control", "private"],
      ["date", date1],
      ["location", loc],
    ]);
    expect(table(d)).toEqual([
      ["location", loc],
      ["date", date1],
      ["cache-control", "private"],
      [":status", "302"],
    ]);
    expect(d.dynamicTableSize).toBe(222);
    expect(d.decode(hex(blocks[1]!))).toEqual([
      [":status", "307"],
      ["cache-control", "private"],
      ["date", date1],
      ["location", loc],
    ]);
    expect(table(d)).toEqual([
      [":status", "307"],
      ["location", loc],
      ["date", date1],
      ["cache-control", "private"],
    ]);
    expect(d.dynamicTableSize).toBe(222);
    expect(d.decode(hex(blocks[2]!))).toEqual([
      [":status", "200"],
      ["cache-control", "private"],
      ["date", date2],
      ["location", loc],
      ["content-encoding", "gzip"],
      ["set-cookie", cookie],
    ]);
    expect(table(d)).toEqual([
      ["set-cookie", cookie],
      ["content-encoding", "gzip"],
      ["date", date2],
    ]);
    expect(d.dynamicTableSize).toBe(215);
  }

  test("C.5 responses without Huffman coding (table size 256, evictions)", () => {
    responses([
      "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "4803 3330 37c1 c0bf",
      "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
    ]);
  });

  test("C.6 responses with Huffman coding (table size 256, evictions)", () => {
    responses([
      "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
      "4883 640e ffc1 c0bf",
      "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ]);
  });

  test("dynamic table size updates: accepted at the start, refused later or above the limit", () => {
    const d = new HpackDecoder({ maxTableSize: 256 });
    d.decode(hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"));
    expect(d.dynamicTableSize).toBe(55);
    // size update to 0 (0x20) empties the table, then indexed :method GET.
    expect(d.decode(hex("20 82"))).toEqual([[":method", "GET"]]);
    expect(d.dynamicTableSize).toBe(0);
    expect(() => d.decode(hex("82 20"))).toThrow(HpackError);
    expect(() => d.decode(hex("3f e2 1f"))).toThrow(HpackError); // 4096 > 256
    // With a zero-size table, an added entry does not stay.
    expect(d.decode(hex("20 400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"))).toEqual([["custom-key", "custom-header"]]);
    expect(d.dynamicTableSize).toBe(0);
  });

  test("bad indexes, truncated literals and oversized header lists are refused", () => {
    const d = new HpackDecoder({ maxHeaderListSize: 100 });
    expect(() => d.decode(hex("80"))).toThrow(HpackError); // index 0
    expect(() => d.decode(hex("be"))).toThrow(HpackError); // index 62, empty dynamic table
    expect(() => d.decode(hex("400a 6375"))).toThrow(HpackError);
    expect(() => d.decode(hex("0f"))).toThrow(HpackError);
    const big = encodeHeaders([["x-big", "v".repeat(200)]]);
    expect(() => d.decode(big)).toThrow(HpackError);
  });
});

describe("HPACK encoder", () => {
  test("static matches are indexed; everything decodes back; the decoder's table is untouched", () => {
    const fields: HeaderField[] = [
      [":method", "POST"],
      [":scheme", "http"],
      [":path", "/zentinel.agent.v2.AgentServiceV2/ProcessStream"],
      [":authority", "127.0.0.1:50051"],
      ["content-type", "application/grpc"],
      ["te", "trailers"],
      ["x-long", "y".repeat(300)],
    ];
    const block = encodeHeaders(fields);
    expect(block[0]).toBe(0x83); // :method POST
    expect(block[1]).toBe(0x86); // :scheme http
    const d = new HpackDecoder();
    expect(d.decode(block)).toEqual(fields);
    expect(d.dynamicTableSize).toBe(0);
  });
});
