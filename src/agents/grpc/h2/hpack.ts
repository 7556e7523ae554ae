// HPACK (RFC 7541): a complete decoder (static and dynamic table, Huffman, table size updates)
// and a minimal encoder (never touches the peer's dynamic table: static-table indexes and
// literals without indexing, no Huffman), which is all a client sending one request header block
// per stream needs.
//
// Strings are byte strings: one JS char per octet (latin1). Header names and values on the wire
// are octets; callers that need UTF-8 (grpc-message) decode it themselves.
import { HuffmanError, huffmanDecode } from "./huffman.ts";

export type HeaderField = [name: string, value: string];

/** RFC 7541 Appendix A. Index 1 is STATIC_TABLE[0]. */
export const STATIC_TABLE: readonly HeaderField[] = [
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];

const STATIC_COUNT = STATIC_TABLE.length; // 61

/** A malformed header block: a connection error of type COMPRESSION_ERROR (RFC 7540 §4.3). */
export class HpackError extends Error {}

/** Size of an entry in the dynamic table (RFC 7541 §4.1). */
function entrySize(name: string, value: string): number {
  return name.length + value.length + 32;
}

export interface HpackDecoderOptions {
  /** SETTINGS_HEADER_TABLE_SIZE we advertised: the largest table the encoder may ask for. */
  maxTableSize?: number;
  /** Largest decoded header list (RFC 7540 §6.5.2 counting) accepted in one block. */
  maxHeaderListSize?: number;
}

export class HpackDecoder {
  /** Newest entry first: dynamic index 62 is entries[0]. */
  private entries: HeaderField[] = [];
  private size = 0;
  /** Current maximum size of the dynamic table (changed by dynamic table size updates). */
  private capacity: number;
  private readonly maxTableSize: number;
  private readonly maxHeaderListSize: number;

  constructor(opts: HpackDecoderOptions = {}) {
    this.maxTableSize = opts.maxTableSize ?? 4096;
    this.capacity = this.maxTableSize;
    this.maxHeaderListSize = opts.maxHeaderListSize ?? 64 * 1024;
  }

  /** Entries in the dynamic table, newest first (for tests). */
  get dynamicTable(): readonly HeaderField[] {
    return this.entries;
  }

  get dynamicTableSize(): number {
    return this.size;
  }

  /** Decode one complete header block (HEADERS + CONTINUATION payloads joined). */
  decode(block: Uint8Array): HeaderField[] {
    const out: HeaderField[] = [];
    let listSize = 0;
    let pos = 0;
    let sawField = false;
    const n = block.length;
    while (pos < n) {
      const b = block[pos]!;
      let field: HeaderField;
      if (b & 0x80) {
        // Indexed header field (§6.1).
        const [index, p] = readInt(block, pos, 7);
        pos = p;
        field = this.get(index);
      } else if (b & 0x40) {
        // Literal with incremental indexing (§6.2.1).
        const r = this.readLiteral(block, pos, 6);
        pos = r.pos;
        field = [r.name, r.value];
        this.add(r.name, r.value);
      } else if (b & 0x20) {
        // Dynamic table size update (§6.3): only at the start of a block (§4.2).
        if (sawField) throw new HpackError("dynamic table size update after a header field");
        const [size, p] = readInt(block, pos, 5);
        pos = p;
        if (size > this.maxTableSize) throw new HpackError(`dynamic table size update to ${size} exceeds ${this.maxTableSize}`);
        this.capacity = size;
        this.evict(0);
        continue;
      } else {
        // Literal without indexing (0000) or never indexed (0001) (§6.2.2, §6.2.3).
        const r = this.readLiteral(block, pos, 4);
        pos = r.pos;
        field = [r.name, r.value];
      }
      sawField = true;
      listSize += entrySize(field[0], field[1]);
      if (listSize > this.maxHeaderListSize) throw new HpackError(`header list larger than ${this.maxHeaderListSize} bytes`);
      out.push(field);
    }
    return out;
  }

  private get(index: number): HeaderField {
    if (index === 0) throw new HpackError("header index 0");
    if (index <= STATIC_COUNT) return STATIC_TABLE[index - 1]!;
    const e = this.entries[index - STATIC_COUNT - 1];
    if (e === undefined) throw new HpackError(`header index ${index} is outside the tables`);
    return e;
  }

  private readLiteral(block: Uint8Array, pos: number, prefix: number): { name: string; value: string; pos: number } {
    const [index, p] = readInt(block, pos, prefix);
    let name: string;
    if (index === 0) {
      const s = readString(block, p);
      name = s.value;
      pos = s.pos;
    } else {
      name = this.get(index)[0];
      pos = p;
    }
    const v = readString(block, pos);
    return { name, value: v.value, pos: v.pos };
  }

  private add(name: string, value: string): void {
    const sz = entrySize(name, value);
    if (sz > this.capacity) {
      // An entry larger than the table empties it and is not added (§4.4).
      this.entries = [];
      this.size = 0;
      return;
    }
    this.evict(sz);
    this.entries.unshift([name, value]);
    this.size += sz;
  }

  /** Evict oldest entries until `incoming` more bytes fit. */
  private evict(incoming: number): void {
    while (this.size + incoming > this.capacity && this.entries.length > 0) {
      const e = this.entries.pop()!;
      this.size -= entrySize(e[0], e[1]);
    }
  }
}

/** Prefix-coded integer (§5.1). Returns [value, next position]. */
export function readInt(buf: Uint8Array, pos: number, prefix: number): [number, number] {
  const mask = (1 << prefix) - 1;
  let v = buf[pos]! & mask;
  pos++;
  if (v < mask) return [v, pos];
  let m = 0;
  for (;;) {
    if (pos >= buf.length) throw new HpackError("truncated integer");
    const b = buf[pos++]!;
    v += (b & 0x7f) * 2 ** m;
    if (v > 0x7fffffff) throw new HpackError("integer too large");
    if ((b & 0x80) === 0) return [v, pos];
    m += 7;
    if (m > 35) throw new HpackError("integer encoding too long");
  }
}

/** String literal (§5.2). */
function readString(buf: Uint8Array, pos: number): { value: string; pos: number } {
  if (pos >= buf.length) throw new HpackError("truncated string literal");
  const huffman = (buf[pos]! & 0x80) !== 0;
  const [len, p] = readInt(buf, pos, 7);
  if (p + len > buf.length) throw new HpackError("truncated string literal");
  let value: string;
  if (huffman) {
    try {
      value = huffmanDecode(buf, p, len);
    } catch (err) {
      if (err instanceof HuffmanError) throw new HpackError(err.message);
      throw err;
    }
  } else {
    value = latin1(buf, p, len);
  }
  return { value, pos: p + len };
}

function latin1(buf: Uint8Array, off: number, len: number): string {
  if (len <= 1024) return String.fromCharCode.apply(null, buf.subarray(off, off + len) as unknown as number[]);
  let s = "";
  for (let i = 0; i < len; i += 1024) s += String.fromCharCode.apply(null, buf.subarray(off + i, off + Math.min(len, i + 1024)) as unknown as number[]);
  return s;
}

// ------------------------------------------------------------------------------------ encoder

function writeInt(out: number[], first: number, prefix: number, v: number): void {
  const mask = (1 << prefix) - 1;
  if (v < mask) {
    out.push(first | v);
    return;
  }
  out.push(first | mask);
  v -= mask;
  while (v >= 128) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
}

function writeString(out: number[], s: string): void {
  writeInt(out, 0, 7, s.length);
  for (let i = 0; i < s.length; i++) out.push(s.charCodeAt(i) & 0xff);
}

/**
 * Encode a header list without touching the decoder's dynamic table: an exact static-table
 * match is indexed, a static name is referenced, anything else is a literal without indexing.
 * Names must be lower-case (RFC 7540 §8.1.2); values are byte strings.
 */
export function encodeHeaders(fields: readonly HeaderField[]): Uint8Array {
  const out: number[] = [];
  for (const [name, value] of fields) {
    let nameIndex = 0;
    let exact = 0;
    for (let i = 0; i < STATIC_COUNT; i++) {
      const e = STATIC_TABLE[i]!;
      if (e[0] !== name) continue;
      if (nameIndex === 0) nameIndex = i + 1;
      if (e[1] === value) {
        exact = i + 1;
        break;
      }
    }
    if (exact > 0) {
      writeInt(out, 0x80, 7, exact);
      continue;
    }
    writeInt(out, 0x00, 4, nameIndex);
    if (nameIndex === 0) writeString(out, name);
    writeString(out, value);
  }
  return Uint8Array.from(out);
}
