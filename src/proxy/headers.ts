// The one place that sanitises headers in each direction (RFC 9110 §7.6.1).
import type { HeaderMap, HeaderOp } from "../agents/types.ts";

/** Hop-by-hop headers: never forwarded in either direction. */
export const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "proxy-authenticate",
  "proxy-authorization",
  "http2-settings",
]);

/** Headers an agent (or policy) may never set, add or remove. */
const PROTECTED = new Set([...HOP_BY_HOP, "host", "content-length"]);

/** Remove hop-by-hop headers and every name listed in Connection, in place. */
export function stripHopByHop(headers: Headers): void {
  const connection = headers.get("connection");
  if (connection) {
    for (const raw of connection.split(",")) {
      const name = raw.trim().toLowerCase();
      if (name && !PROTECTED_FROM_CONNECTION.has(name)) headers.delete(name);
    }
  }
  for (const name of HOP_BY_HOP) headers.delete(name);
}

// A client may not use Connection to delete headers the proxy itself relies on for framing.
const PROTECTED_FROM_CONNECTION = new Set(["host", "content-length"]);

/** Headers → protocol header map (lower-case name → values), built once per request. */
export function toHeaderMap(headers: Headers): HeaderMap {
  const map: HeaderMap = {};
  for (const [name, value] of headers) {
    if (name === "set-cookie") continue; // handled below: Headers joins them when iterating
    const list = map[name];
    if (list) list.push(value);
    else map[name] = [value];
  }
  const cookies = headers.getSetCookie();
  if (cookies.length > 0) map["set-cookie"] = cookies;
  return map;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: visible ASCII, SP, HTAB and obs-text; never CR, LF or NUL.
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

export function isValidHeaderName(name: string): boolean {
  return name.length > 0 && name.length <= 256 && TOKEN.test(name);
}

export function isValidHeaderValue(value: string): boolean {
  return value.length <= 16384 && FIELD_VALUE.test(value);
}

/** Why a header mutation is refused, or null if it is acceptable. */
export function mutationProblem(op: HeaderOp): string | null {
  if (!isValidHeaderName(op.name)) return `invalid header name ${JSON.stringify(op.name.slice(0, 64))}`;
  const lower = op.name.toLowerCase();
  if (PROTECTED.has(lower)) return `mutation of protected header '${lower}'`;
  if (op.op !== "remove" && !isValidHeaderValue(op.value)) return `invalid value for header '${lower}'`;
  return null;
}

/** Apply already-validated operations in order. Names are case-insensitive (Headers is). */
export function applyHeaderOps(headers: Headers, ops: readonly HeaderOp[]): void {
  for (const op of ops) {
    if (op.op === "set") headers.set(op.name, op.value);
    else if (op.op === "add") headers.append(op.name, op.value);
    else headers.delete(op.name);
  }
}
