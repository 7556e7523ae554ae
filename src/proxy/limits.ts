// Every limit and timeout on the request path, in one place: what it bounds, where its value
// comes from, and the function that enforces it. SECURITY.md carries the same table.
//
//   limit / timeout          config (default)                                 answer
//   ───────────────────────  ───────────────────────────────────────────────  ──────────────────────
//   request head (Bun)       fixed 16 KiB, ~200 lines                          431 (Bun)
//   request target           limits max-uri-length (8192)                      414            checkRequestHead
//   header count / bytes     limits max-header-count (100) / max-header-size   431            checkRequestHead
//   request body             limits max-body-size (10 MiB), route policies     413 (+ close)  declaredBodyProblem,
//                              max-body-size                                   (CL: at once; chunked: when crossing)   guardRequestBody
//   request body idle        system idle-timeout-secs (60)                     408 / abort    guardRequestBody
//   body drain after an      fixed: 1 s pause, 5 s in all                      close          linger.ts
//     early answer
//   slow request head        fixed by Bun: 10 s (observed 10–12 s)             close (Bun)
//   idle keep-alive          listener keepalive-timeout-secs (75; at least     close          keepAliveIdleSecs
//     connection               5 s, Bun's timer has 4 s ticks)
//   request in progress      5 s after the longest timeout that applies to     close          inFlightIdleSecs
//     with no I/O Bun sees     the request (request-timeout-secs, idle-timeout-
//     (backstop)               secs, the route's upstream timeouts)
//   agent call               agent timeout-ms, max-concurrent-calls, body       503/504/413 by failure mode (src/agents)
//                              limits, circuit-breaker
//   upstream response head   route timeout-secs, else upstream timeouts        504            forward.ts (per attempt)
//                              request-secs (60)
//   upstream body idle       upstream timeouts read-secs (30): no progress     connection     guardResponseBody
//     (slow upstream or        in either direction (a slow reader stops the     aborted
//     slow reader)             pulls)
//   upstream response head   fixed 64 KiB                                      502            downstreamResponseHeaders
//     size
//   agent block body         fixed 64 KiB (truncated)                                         agent-phases.ts
//   WebSocket message        fixed 16 MiB, idle 120 s                          close 1009     websocket.ts
import type { Server } from "bun";
import type { ListenerConfig, LimitsConfig, SentinelConfig } from "../config/types.ts";
import type { RoutePlan } from "./runtime.ts";
import { meteredStream, type Meter } from "../upstreams/body.ts";

/** Largest upstream response head (status line excluded) relayed to a client. */
export const MAX_RESPONSE_HEAD_BYTES = 64 * 1024;

/** Status for a request head over a limit, or 0. `target` is path + query as received. */
/** Why a request head is refused before routing: status and the reason logged with it. */
export interface HeadProblem {
  readonly status: 400 | 414 | 431;
  readonly reason: string;
}
const URI_TOO_LONG: HeadProblem = { status: 414, reason: "request target over max-uri-length" };
const HEADERS_TOO_LARGE: HeadProblem = { status: 431, reason: "header fields over max-header-count or max-header-size" };
const DEL_IN_FIELD: HeadProblem = { status: 400, reason: "DEL (0x7F) in a header field value" };
const BODY_ON_GET: HeadProblem = { status: 400, reason: "GET or HEAD request with a body" };

export function checkRequestHead(targetLength: number, headers: Headers, limits: LimitsConfig, bodyless: boolean): HeadProblem | null {
  if (targetLength > limits.maxUriLength) return URI_TOO_LONG;
  const tally: RequestHeadTally = { count: 0, size: 0, bad: false, body: false };
  headers.forEach(countRequestHeader, tally);
  if (tally.count > limits.maxHeaderCount || tally.size > limits.maxHeaderSize) return HEADERS_TOO_LARGE;
  // DEL is not a field-vchar (RFC 9110 §5.5) though Bun's parser lets it through. A GET or HEAD
  // body: Bun reads and drops it (its Request has none), so it cannot be forwarded, and a proxy
  // must not change the message silently (RFC 9110 §9.3.1 gives it no meaning anyway).
  if (tally.bad) return DEL_IN_FIELD;
  return bodyless && tally.body ? BODY_ON_GET : null;
}

interface RequestHeadTally extends HeadTally {
  /** A field value with DEL (0x7F). */
  bad: boolean;
  /** The head declares a body: Transfer-Encoding, or a Content-Length other than 0. */
  body: boolean;
}

/** "0", "000", or identical zeros repeated ("0, 0": Bun joins duplicate fields). */
function allZero(value: string): boolean {
  for (const part of value.split(",")) if (Number(part) !== 0 || part.trim() === "") return false;
  return true;
}

/** countHeader for a request head, which also looks for DEL and a declared body. */
function countRequestHeader(this: RequestHeadTally, value: string, name: string): void {
  this.count++;
  this.size += name.length + value.length + 4;
  if (value.indexOf("\x7f") >= 0) this.bad = true;
  if ((name === "content-length" && value !== "0" && !allZero(value)) || name === "transfer-encoding") this.body = true;
}

/** Header count and size of a head (`forEach` with this state: no closure per request). */
export interface HeadTally {
  count: number;
  size: number;
}

/** Each field as on the wire: name, ": ", value, CRLF. */
export function countHeader(this: HeadTally, value: string, name: string): void {
  this.count++;
  this.size += name.length + value.length + 4;
}

/** A declared Content-Length: 400 for differing list values, 413 over the limit, else the length. */
export function declaredBodyProblem(declared: number, maxBodySize: number): 0 | 413 {
  return declared > maxBodySize ? 413 : 0;
}

/**
 * The request body as forwarded: at most `maxBodySize` bytes, no idle gap longer than `idleMs`.
 * Past the limit, the BodyLimitError given to `onEnd` carries the rest of the body (`rest`), to
 * be drained before the connection closes (linger.ts).
 */
export function guardRequestBody(
  body: ReadableStream<Uint8Array>,
  maxBodySize: number,
  idleMs: number,
  meter: Meter,
  onEnd: (err?: unknown) => void,
): ReadableStream<Uint8Array> {
  return meteredStream(body, { limit: maxBodySize, idleMs, meter, onEnd, handOver: true });
}

/** The response body as relayed: aborted when no byte moves for `idleMs` (upstream or client stalled). */
export function guardResponseBody(body: ReadableStream<Uint8Array>, idleMs: number, meter: Meter, onEnd: (err?: unknown) => void): ReadableStream<Uint8Array> {
  return meteredStream(body, { limit: Number.MAX_SAFE_INTEGER, idleMs, meter, onEnd });
}

// ---- connection timers -------------------------------------------------------------------
// Bun.serve has one idle timer per connection (`idleTimeout`, whole seconds, checked every 4 s,
// at most 255). Measured on Bun 1.4.5: a request arriving on a kept-alive connection does NOT
// restart it (a connection idle for 3 s with idleTimeout 4 is cut 1 s into its next request),
// and `server.timeout(req, n)` re-arms it from now only when n differs from the current value.
// So every request re-arms it twice: with the in-flight backstop when it starts, with the
// keep-alive idle time when its response is done.

const clampSecs = (s: number) => Math.min(255, Math.max(1, Math.ceil(s)));

/**
 * Idle time allowed between requests on a kept-alive connection. Bun counts in 4 s ticks from
 * the next tick on (n s fire after ⌈n/4⌉ ticks, the first of which may be a moment away), so
 * values under 5 s are raised to 5: a connection is never cut sooner than 4 s after its last
 * response (which would race the client's next request).
 */
export function keepAliveIdleSecs(listener: ListenerConfig): number {
  return Math.max(5, clampSecs(listener.keepaliveTimeoutMs / 1000));
}

/** Backstop for a request in progress: 5 s after the longest of its own timeouts (never equal to the keep-alive value). */
export function inFlightIdleSecs(listener: ListenerConfig, config: SentinelConfig, plan?: RoutePlan): number {
  const ms = Math.max(listener.requestTimeoutMs, config.system.idleTimeoutMs, plan?.upstreamTimeoutMs ?? 0, plan?.readTimeoutMs ?? 0);
  let secs = clampSecs(ms / 1000 + 5);
  if (secs === keepAliveIdleSecs(listener)) secs = secs === 255 ? 254 : secs + 1;
  return secs;
}

/** Re-arm the connection's idle timer (a no-op once the request's connection is gone). */
export function armConnectionTimer(server: Server<unknown>, req: Request, secs: number): void {
  try {
    server.timeout(req, secs);
  } catch {
    /* connection already closed or upgraded */
  }
}
