// Path normalisation for routing (RFC 3986 §6.2.2): the router matches on the normalised path
// and the upstream receives exactly that path, so what was authorised is what is served.
//
// Policy (documented in SECURITY.md):
// - percent-encoded unreserved characters are decoded (%61 → a, %2E → .), other escapes are kept
//   with upper-case hex;
// - encoded '/', '\', ';', NUL, control characters and overlong UTF-8 lead bytes (%C0, %C1) are
//   rejected (400): an upstream that decodes them would see a different path than we routed;
// - dot segments are resolved and repeated slashes merged; a dot segment carrying parameters
//   ("..;x", ".;x", as Tomcat-style upstreams strip ";x" and then resolve the dots) is rejected;
// - raw control characters, spaces, '\', '#' and non-ASCII bytes are rejected (Bun turns invalid
//   raw bytes into U+FFFD, %EF%BF%BD, which is rejected as well);
// - the characters fetch() would percent-encode on the way out (" < > ` { }) are encoded here,
//   so that the path the router matched is byte for byte the path the upstream receives.

export type NormalizeResult = { ok: true; path: string } | { ok: false; reason: string };

const HEX = "0123456789ABCDEF";
/** The rest of an encoded U+FFFD (EF BF BD) after its first byte. */
const REPLACEMENT_TAIL = /^%BF%BD/i;

function hexVal(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 65 && c <= 70) return c - 55;
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

function isUnreserved(b: number): boolean {
  return (
    (b >= 0x61 && b <= 0x7a) || (b >= 0x41 && b <= 0x5a) || (b >= 0x30 && b <= 0x39) || b === 0x2d || b === 0x2e || b === 0x5f || b === 0x7e
  );
}

/** Raw characters WHATWG URL serialisation (hence fetch) percent-encodes in a path. */
const ENCODE_RAW: Record<number, string> = { 0x22: "%22", 0x3c: "%3C", 0x3e: "%3E", 0x60: "%60", 0x7b: "%7B", 0x7d: "%7D" };

/** Fast check: nothing to do for the common case of a clean path. */
function isClean(path: string): boolean {
  let prev = 0;
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c === 0x25 || c <= 0x20 || c >= 0x7f || c === 0x5c || c === 0x23 || ENCODE_RAW[c] !== undefined) return false; // % ctl sp \ # non-ASCII
    if (c === 0x2f && prev === 0x2f) return false; // //
    if (c === 0x2e && prev === 0x2f) return false; // /. (possible dot segment)
    prev = c;
  }
  return path.charCodeAt(0) === 0x2f;
}

export function normalizePath(path: string): NormalizeResult {
  if (path.length === 0) return { ok: true, path: "/" };
  if (isClean(path)) return { ok: true, path };

  // 1. percent-decoding of unreserved characters, validation of everything else
  let decoded = "";
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c === 0x25) {
      const hi = hexVal(path.charCodeAt(i + 1));
      const lo = hexVal(path.charCodeAt(i + 2));
      if (hi < 0 || lo < 0) return { ok: false, reason: "malformed percent-encoding in path" };
      const b = hi * 16 + lo;
      i += 2;
      if (b === 0x2f || b === 0x5c || b === 0x3b) return { ok: false, reason: "encoded slash, backslash or semicolon in path" };
      if (b < 0x20 || b === 0x7f) return { ok: false, reason: "encoded control character in path" };
      if (b === 0xc0 || b === 0xc1) return { ok: false, reason: "overlong UTF-8 sequence in path" };
      // Bun turns invalid raw bytes in the request target into U+FFFD (%EF%BF%BD): reject it.
      if (b === 0xef && REPLACEMENT_TAIL.test(path.slice(i + 1, i + 7))) return { ok: false, reason: "invalid byte in request target" };
      if (isUnreserved(b)) decoded += String.fromCharCode(b);
      else decoded += "%" + HEX[hi] + HEX[lo];
      continue;
    }
    if (c <= 0x20 || c === 0x7f) return { ok: false, reason: "control character or space in path" };
    if (c > 0x7f) return { ok: false, reason: "non-ASCII character in path" };
    if (c === 0x5c) return { ok: false, reason: "backslash in path" };
    if (c === 0x23) return { ok: false, reason: "fragment in request target" };
    decoded += ENCODE_RAW[c] ?? path[i];
  }
  if (decoded.charCodeAt(0) !== 0x2f) decoded = "/" + decoded;

  // 2. merge slashes and resolve dot segments
  const segments = decoded.split("/");
  const out: string[] = [];
  for (let i = 1; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === "" && !last) continue; // repeated slash
    if (seg.startsWith("..;") || seg.startsWith(".;")) return { ok: false, reason: "dot segment with parameters in path" };
    if (seg === ".") {
      if (last) out.push("");
      continue;
    }
    if (seg === "..") {
      out.pop();
      if (last) out.push("");
      continue;
    }
    out.push(seg);
  }
  return { ok: true, path: "/" + out.join("/") };
}

/**
 * A route's `path` / `path-prefix` as the router compares it: what normalizePath makes of a
 * request for that path, so that a pattern written in another form ("/café", "/a%7eb",
 * "/p/../q") still matches the requests it names. Characters a client must percent-encode
 * (non-ASCII, space, controls) are encoded first, as a browser would. Not ok: no request can
 * ever match it (every request for it is refused with 400), or it names a query.
 */
export function normalizeRoutePath(pattern: string): NormalizeResult {
  if (pattern.includes("?")) return { ok: false, reason: "paths are matched without the query; use a query-param condition" };
  let encoded = "";
  for (const ch of pattern) {
    const c = ch.codePointAt(0)!;
    if (c > 0x7e || c <= 0x20) {
      try {
        encoded += encodeURIComponent(ch);
      } catch {
        return { ok: false, reason: "invalid Unicode in path" };
      }
    } else encoded += ch;
  }
  return normalizePath(encoded);
}

/** Escapes of the reserved characters a path may hold raw: sub-delims but ';', and ':' '@'. */
const RESERVED_ESCAPE = /%(21|24|26|27|28|29|2A|2B|2C|3D|3A|40)/g;

/**
 * The form a path is MATCHED in (never forwarded): a normalised path with the escapes of the
 * reserved characters it may also hold raw decoded (`%40` → `@`, `%3A` → `:`…). Most upstreams
 * decode them before routing, so `/users/%40me` and `/users/@me` must hit the same route.
 * (Encoded `/`, `\` and `;` never get this far: normalizePath refuses them.)
 */
export function matchForm(normalized: string): string {
  return normalized.indexOf("%") < 0 ? normalized : normalized.replace(RESERVED_ESCAPE, decodeReserved);
}

function decodeReserved(_m: string, hex: string): string {
  return String.fromCharCode(parseInt(hex, 16));
}
