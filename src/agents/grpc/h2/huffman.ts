// HPACK Huffman code (RFC 7541 §5.2, Appendix B).
//
// The code of Appendix B is canonical: codes are assigned in order of bit length, and within one
// length in symbol order. So the 257 code lengths below (symbols 0–255 and EOS = 256, copied from
// the "len" column of Appendix B) determine every code; the unit test checks the derived codes
// against values of the RFC's "code as hex" column and the Appendix C examples.
//
// Header blocks are decoded a handful of times per connection (response headers and trailers of
// one long-lived stream), so the decoder favours being obviously correct over speed: canonical
// decoding, one bit at a time.

const LENGTHS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12,
  13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
  7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14,
  13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
  21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19,
  22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21,
  23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
] as const;

const EOS = 256;
const MAX_LEN = 30;

/** Code of every symbol (right-aligned), indexed by symbol; EOS included. */
export const HUFFMAN_CODES = new Uint32Array(257);
/** Bit length of every symbol's code. */
export const HUFFMAN_LENGTHS = Uint8Array.from(LENGTHS);

/** Canonical decoding tables, indexed by code length. */
const firstCode = new Int32Array(MAX_LEN + 2);
const countOf = new Int32Array(MAX_LEN + 2);
const firstIndex = new Int32Array(MAX_LEN + 2);
/** Symbols sorted by (length, symbol). */
const sorted = new Uint16Array(257);

(() => {
  const order = Array.from({ length: 257 }, (_, i) => i).sort((a, b) => LENGTHS[a]! - LENGTHS[b]! || a - b);
  let code = 0;
  let prevLen = LENGTHS[order[0]!]!;
  for (let i = 0; i < order.length; i++) {
    const sym = order[i]!;
    const len = LENGTHS[sym]!;
    if (i > 0) code = (code + 1) * 2 ** (len - prevLen);
    prevLen = len;
    HUFFMAN_CODES[sym] = code;
    sorted[i] = sym;
    if (countOf[len] === 0) {
      firstCode[len] = code;
      firstIndex[len] = i;
    }
    countOf[len]!++;
  }
})();

export class HuffmanError extends Error {}

/**
 * Decode `len` Huffman-coded bytes of `buf` from `off` to a byte string (one char per octet).
 * Errors (RFC 7541 §5.2): an EOS symbol in the data, padding longer than 7 bits, or padding that
 * is not the most significant bits of EOS (all ones).
 */
export function huffmanDecode(buf: Uint8Array, off: number, len: number): string {
  const end = off + len;
  let out = "";
  const chunk: number[] = [];
  let code = 0;
  let codeLen = 0;
  for (let i = off; i < end; i++) {
    const byte = buf[i]!;
    for (let bit = 7; bit >= 0; bit--) {
      code = code * 2 + ((byte >> bit) & 1);
      codeLen++;
      if (codeLen >= 5) {
        const c = countOf[codeLen]!;
        if (c > 0) {
          const k = code - firstCode[codeLen]!;
          if (k >= 0 && k < c) {
            const sym = sorted[firstIndex[codeLen]! + k]!;
            if (sym === EOS) throw new HuffmanError("EOS symbol in a Huffman-coded string");
            chunk.push(sym);
            if (chunk.length >= 4096) {
              out += String.fromCharCode.apply(null, chunk);
              chunk.length = 0;
            }
            code = 0;
            codeLen = 0;
            continue;
          }
        }
      }
      if (codeLen > MAX_LEN) throw new HuffmanError("invalid Huffman code");
    }
  }
  // Padding: fewer than 8 bits, all ones (a prefix of EOS).
  if (codeLen > 7) throw new HuffmanError("Huffman padding longer than 7 bits");
  if (codeLen > 0 && code !== 2 ** codeLen - 1) throw new HuffmanError("Huffman padding is not a prefix of EOS");
  if (chunk.length > 0) out += String.fromCharCode.apply(null, chunk);
  return out;
}

/** Encoded length in bytes of a byte string (chars 0–255). */
export function huffmanEncodedLength(s: string): number {
  let bits = 0;
  for (let i = 0; i < s.length; i++) bits += HUFFMAN_LENGTHS[s.charCodeAt(i) & 0xff]!;
  return Math.ceil(bits / 8);
}

/** Huffman-encode a byte string (chars 0–255), padded with the most significant bits of EOS. */
export function huffmanEncode(s: string): Uint8Array {
  const out = new Uint8Array(huffmanEncodedLength(s));
  let acc = 0; // pending bits, right-aligned; at most 7 + 30 bits, kept below 2^53
  let accLen = 0;
  let o = 0;
  for (let i = 0; i < s.length; i++) {
    const sym = s.charCodeAt(i) & 0xff;
    const len = HUFFMAN_LENGTHS[sym]!;
    acc = acc * 2 ** len + HUFFMAN_CODES[sym]!;
    accLen += len;
    while (accLen >= 8) {
      accLen -= 8;
      const byte = Math.floor(acc / 2 ** accLen);
      out[o++] = byte;
      acc -= byte * 2 ** accLen;
    }
  }
  if (accLen > 0) out[o++] = (acc * 2 ** (8 - accLen) + (2 ** (8 - accLen) - 1)) & 0xff;
  return out;
}
