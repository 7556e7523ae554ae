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
//   slow request head        fixed by Bun: 10 s (observed 10–12 s)             close (Bun)
//   idle / stalled connection  listener keepalive-timeout-secs, request-       close (Bun idleTimeout, server.ts)
//                              timeout-secs, system idle-timeout-secs: max + 5 s
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
import type { LimitsConfig } from "../config/types.ts";
import { meteredStream, type Meter } from "../upstreams/body.ts";

/** Largest upstream response head (status line excluded) relayed to a client. */
export const MAX_RESPONSE_HEAD_BYTES = 64 * 1024;

/** Status for a request head over a limit, or 0. `target` is path + query as received. */
export function checkRequestHead(targetLength: number, headers: Headers, limits: LimitsConfig): 0 | 414 | 431 {
  if (targetLength > limits.maxUriLength) return 414;
  let count = 0;
  let size = 0;
  for (const [name, value] of headers) {
    count++;
    size += name.length + value.length + 4;
  }
  return count > limits.maxHeaderCount || size > limits.maxHeaderSize ? 431 : 0;
}

/** A declared Content-Length: 400 for differing list values, 413 over the limit, else the length. */
export function declaredBodyProblem(declared: number, maxBodySize: number): 0 | 413 {
  return declared > maxBodySize ? 413 : 0;
}

/** The request body as forwarded: at most `maxBodySize` bytes, no idle gap longer than `idleMs`. */
export function guardRequestBody(body: ReadableStream<Uint8Array>, maxBodySize: number, idleMs: number, meter: Meter, onEnd: (err?: unknown) => void): ReadableStream<Uint8Array> {
  return meteredStream(body, { limit: maxBodySize, idleMs, meter, onEnd });
}

/** The response body as relayed: aborted when no byte moves for `idleMs` (upstream or client stalled). */
export function guardResponseBody(body: ReadableStream<Uint8Array>, idleMs: number, meter: Meter, onEnd: (err?: unknown) => void): ReadableStream<Uint8Array> {
  return meteredStream(body, { limit: Number.MAX_SAFE_INTEGER, idleMs, meter, onEnd });
}
