// Field rules shared by the proxy's header handling and the agent layer's check of an agent's
// answer: valid names and values (RFC 9110 §5.1, §5.5), the headers nobody but the proxy may
// touch, and which redirect targets are safe to send to a browser.
import type { HeaderOp } from "../agents/types.ts";
import { HOP_BY_HOP } from "./hop-by-hop.ts";

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: visible ASCII, SP, HTAB and obs-text; never CR, LF or NUL.
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/** Headers an agent (or policy) may never set, add or remove. */
const PROTECTED: ReadonlySet<string> = new Set([...HOP_BY_HOP, "host", "content-length"]);

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

/** A redirect target a browser may be sent to: a same-origin path, or an http(s) URL. */
export function isSafeRedirect(url: string): boolean {
  if (!isValidHeaderValue(url) || url.length > 8192) return false;
  if (url.startsWith("/")) return !url.startsWith("//") && !url.startsWith("/\\");
  try {
    const u = new URL(url);
    return u.protocol === "https:" || u.protocol === "http:";
  } catch {
    return false;
  }
}
