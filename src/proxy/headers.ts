// The one place that sanitises headers in each direction (RFC 9110 §7.6.1).
//
// Client → upstream, in three steps driven by the pipeline:
//   1. `upstreamRequestHeaders` (before agents): drops hop-by-hop headers, header names with an
//      underscore (CGI/WSGI/PHP upstreams fold '_' into '-': `X_Auth_User` would become
//      `X-Auth-User`), `Expect`, and every header only the proxy may set (PROXY_OWNED); then adds
//      the proxy's own forwarding headers. Agents see exactly this view, which still includes the
//      names the client listed in `Connection` (the auth agent must see an Authorization header
//      even when the client nominated it).
//   2. the agents decide;
//   3. `finishUpstreamRequestHeaders`: removes the Connection-nominated names, applies the
//      agents' operations (a name an agent writes is agent-owned: values the client sent under
//      that name are removed first, so `add` cannot append to a forged identity), the route's
//      policies, and finally the proxy's own headers again, so that neither clients, agents nor
//      policies can forge them.
// Upstream → client (`downstreamResponseHeaders`): hop-by-hop and Connection-nominated headers
// removed, Content-Length dropped (Bun frames the body), the whole head bounded
// (MAX_RESPONSE_HEAD_BYTES, else 502), Via added.
import type { HeaderMap, HeaderOp } from "../agents/types.ts";
import type { HeaderOpConfig } from "../config/types.ts";
import { applyPolicyOps } from "./policies.ts";
import { countHeader, MAX_RESPONSE_HEAD_BYTES, type HeadTally } from "./limits.ts";
import { HOP_BY_HOP } from "../http/hop-by-hop.ts";
import { isValidHeaderName, isValidHeaderValue, mutationProblem } from "../http/fields.ts";
import { listDelete, listSet, listTarget, type HeaderList, type HeaderTarget } from "../http/header-list.ts";

export { HOP_BY_HOP, isValidHeaderName, isValidHeaderValue, mutationProblem };

/**
 * Request headers only the proxy sets. A client's value is dropped (X-Forwarded-For is kept as
 * the prior chain the proxy appends to, X-Request-Id becomes the trace id when it is valid);
 * X-Original-URL / X-Rewrite-URL are routing overrides some frameworks honour, never a client's
 * to send. The other X-Forwarded-* and client-address headers are what frameworks that trust
 * their proxy read for the scheme, port, path prefix or client (Rails: X-Forwarded-Ssl and
 * -Scheme; Spring: -Port and -Prefix; others: True-Client-IP, X-Client-IP): a client must not be
 * able to claim them through us.
 */
const PROXY_OWNED = new Set([
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "x-forwarded-port",
  "x-forwarded-prefix",
  "x-forwarded-scheme",
  "x-forwarded-ssl",
  "x-forwarded-server",
  "forwarded",
  "x-real-ip",
  "x-client-ip",
  "true-client-ip",
  "x-cluster-client-ip",
  "x-request-id",
  "x-correlation-id",
  "x-trace-id",
  "x-original-url",
  "x-rewrite-url",
  "via",
  "expect",
]);

/** Our pseudonym in Via (RFC 9110 §7.6.3). */
export const VIA = "1.1 sentinel";

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

// A peer may not use Connection to delete headers the proxy itself relies on for framing.
const PROTECTED_FROM_CONNECTION = new Set(["host", "content-length"]);

export interface ForwardingInfo {
  /** The TCP peer: the hop appended to X-Forwarded-For. */
  peerIp: string;
  proto: string;
  /** Host as received ("" when absent). */
  hostHeader: string;
  traceId: string;
}

export interface UpstreamRequestHeaders {
  /**
   * The headers agents see, then (finished) what the upstream receives: a flat name/value list
   * (src/http/header-list.ts); agents' and policies' operations change it in place.
   */
  list: HeaderList;
  /** Names the client listed in Connection (removed after the agents have seen them). */
  nominated: string[];
  /** The proxy's own headers, set before the agents and again last. */
  own: Array<[string, string]>;
}

/** What step 1 takes from the client's headers in its one pass. */
interface IncomingScan {
  list: HeaderList;
  connection: string | null;
  priorXff: string | null;
  priorVia: string | null;
}

/** `Headers.forEach` callback with the scan as `this` (a module function: no closure per request). */
function scanIncoming(this: IncomingScan, value: string, name: string): void {
  if (HOP_BY_HOP.has(name)) {
    if (name === "connection") this.connection = value;
    return;
  }
  if (PROXY_OWNED.has(name)) {
    if (name === "x-forwarded-for") this.priorXff = value;
    else if (name === "via") this.priorVia = value;
    return;
  }
  if (name.includes("_")) return;
  this.list.push(name, value);
}

/** Step 1: the sanitised view of the client's headers plus the proxy's own (see the top), in one pass. */
export function upstreamRequestHeaders(incoming: Headers, fwd: ForwardingInfo): UpstreamRequestHeaders {
  const scan: IncomingScan = { list: [], connection: null, priorXff: null, priorVia: null };
  incoming.forEach(scanIncoming, scan);
  const list = scan.list;
  let priorXff = scan.priorXff;
  let priorVia = scan.priorVia;
  const connection = scan.connection;
  const nominated: string[] = [];
  if (connection !== null) {
    for (const raw of connection.split(",")) {
      const name = raw.trim().toLowerCase();
      if (!name) continue;
      // A client may not use Connection to hide the forwarding chain it sent.
      if (name === "x-forwarded-for") priorXff = null;
      else if (name === "via") priorVia = null;
      if (!PROTECTED_FROM_CONNECTION.has(name) && !HOP_BY_HOP.has(name) && !PROXY_OWNED.has(name)) nominated.push(name);
    }
  }
  const own: Array<[string, string]> = [
    ["x-forwarded-for", priorXff ? `${priorXff}, ${fwd.peerIp}` : fwd.peerIp],
    ["x-forwarded-proto", fwd.proto],
    ["x-request-id", fwd.traceId],
    ["x-correlation-id", fwd.traceId],
    ["x-trace-id", fwd.traceId],
    ["via", priorVia ? `${priorVia}, ${VIA}` : VIA],
  ];
  if (fwd.hostHeader) own.push(["x-forwarded-host", fwd.hostHeader]);
  // Every own name is PROXY_OWNED, so none of them is in the list yet.
  for (const [n, v] of own) list.push(n, v);
  return { list, nominated, own };
}

/** Step 3: Connection-nominated names out, agent operations, policies, the proxy's own headers. */
export function finishUpstreamRequestHeaders(u: UpstreamRequestHeaders, agentOps: readonly HeaderOp[], policyOps: readonly HeaderOpConfig[]): void {
  const list = u.list;
  for (const name of u.nominated) listDelete(list, name);
  if (agentOps.length === 0 && policyOps.length === 0) return; // the own headers set in step 1 are intact
  const h = listTarget(list);
  for (const op of agentOps) if (op.op !== "remove") h.delete(op.name); // agent-owned from here on
  applyHeaderOps(h, agentOps);
  applyPolicyOps(h, policyOps);
  // The proxy's own headers again, where an operation touched one of them.
  const touched = new Set<string>();
  for (const op of agentOps) touched.add(op.name.toLowerCase());
  for (const op of policyOps) {
    if (op.op === "rename") touched.add(op.from.toLowerCase()).add(op.to.toLowerCase());
    else touched.add(op.name.toLowerCase());
  }
  for (const [n, v] of u.own) if (touched.has(n)) listSet(list, n, v);
}

/** Set (or, with null, remove) one header on the upstream request. */
export function setUpstreamHeader(u: UpstreamRequestHeaders, name: string, value: string | null): void {
  if (value === null) listDelete(u.list, name);
  else listSet(u.list, name, value);
}

/**
 * Upstream → client: hop-by-hop and Connection-nominated headers removed, Content-Length dropped,
 * Via added. Null when the upstream's head is larger than MAX_RESPONSE_HEAD_BYTES (→ 502).
 */
export function downstreamResponseHeaders(upstream: Headers): Headers | null {
  const tally: HeadTally = { count: 0, size: 0 };
  upstream.forEach(countHeader, tally);
  if (tally.size > MAX_RESPONSE_HEAD_BYTES) return null;
  const headers = new Headers(upstream);
  stripHopByHop(headers);
  headers.delete("content-length");
  const via = headers.get("via");
  headers.set("via", via ? `${via}, ${VIA}` : VIA);
  return headers;
}

/**
 * The upstream client's own response headers (h1client): hop-by-hop and Connection-nominated
 * names are already gone and the head is already bounded (64 KiB, else 502), so only
 * Content-Length and Via are left to do, in place.
 */
export function downstreamResponseHeadersSanitized(headers: Headers): Headers {
  headers.delete("content-length");
  const via = headers.get("via");
  headers.set("via", via ? `${via}, ${VIA}` : VIA);
  return headers;
}

/** Headers (or a header list) → protocol header map (lower-case name → values), built once per request. */
export function toHeaderMap(headers: Headers | HeaderList): HeaderMap {
  // No prototype: names are client text, and "constructor" or "__proto__" is a valid header name.
  const map: HeaderMap = Object.create(null);
  if (Array.isArray(headers)) {
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!;
      const list = map[name];
      if (list) list.push(headers[i + 1]!);
      else map[name] = [headers[i + 1]!];
    }
    return map;
  }
  // forEach: markedly cheaper than for…of over Headers in Bun.
  headers.forEach(addToMap, map);
  if (headers.has("set-cookie")) map["set-cookie"] = headers.getSetCookie();
  return map;
}

/** `Headers.forEach` callback with the map as `this`. */
function addToMap(this: HeaderMap, value: string, name: string): void {
  if (name === "set-cookie") return; // toHeaderMap adds them apart: Headers joins them when iterating
  const list = this[name];
  if (list) list.push(value);
  else this[name] = [value];
}

/** Apply already-validated operations in order. Names are case-insensitive (Headers is). */
export function applyHeaderOps(headers: HeaderTarget, ops: readonly HeaderOp[]): void {
  for (const op of ops) {
    if (op.op === "set") headers.set(op.name, op.value);
    else if (op.op === "add") headers.append(op.name, op.value);
    else headers.delete(op.name);
  }
}
