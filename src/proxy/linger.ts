// Lingering close (RFC 9112 §9.6): an error answered while the client is still sending its
// request body (an agent denial, a declared body over max-body-size, no upstream) must close the
// connection, so that the unread body is never parsed as a request; but closing a socket with
// unread input makes the kernel send a reset, and a reset can discard the answer before the
// client has read it. Clients that send the whole body before reading (Node's fetch, most HTTP
// libraries) then see EPIPE / ECONNRESET instead of the 401 or 413.
//
// So, like nginx's lingering_close and Envoy's delayed close: the answer goes out at once with
// `Connection: close`, and the connection is closed only after the rest of the body was read and
// discarded, or the client paused for LINGER_IDLE_MS, or LINGER_TOTAL_MS passed (whichever is
// first). Bun.serve closes after the last byte of a `Connection: close` response, so the answer's
// body is a stream whose end waits for that drain; Bun frames it chunked, so a client sees status,
// headers and body at once and only the terminating chunk after the drain.
//
// A body nobody has started reading qualifies, and so does one whose limit was crossed while it
// was streamed (the limit hands its reader over). A body still held by another reader (an
// upstream that failed mid-upload) cannot be drained, and its answer closes at once.

import type { BodyReader } from "../upstreams/body.ts";

/**
 * A pause in the client's body longer than this ends the drain. Shorter than nginx's 5 s
 * lingering_timeout: covers a TCP retransmission, and a client that sends no body at all (some
 * raw clients after an early answer) sees the answer complete after this long.
 */
export const LINGER_IDLE_MS = 1_000;
/** The drain never lasts longer than this (nginx's lingering_time is 30 s, Envoy's delayed close 1 s). */
export const LINGER_TOTAL_MS = 5_000;

const IDLE = Symbol("idle");
const EMPTY = new Uint8Array(0);

/** Read and discard `reader`'s body until it ends, pauses for `idleMs`, or `totalMs` passed; then release it. True when it ended. */
export async function drainBody(reader: BodyReader, idleMs: number, totalMs: number): Promise<boolean> {
  const deadline = performance.now() + totalMs;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    for (;;) {
      const left = deadline - performance.now();
      if (left <= 0) return false;
      const idle = new Promise<typeof IDLE>((resolve) => (timer = setTimeout(resolve, Math.min(idleMs, left), IDLE)));
      const r = await Promise.race([reader.read(), idle]);
      clearTimeout(timer);
      if (r === IDLE) return false;
      if (r.done) return true;
    }
  } catch {
    return false; // the client went away
  } finally {
    clearTimeout(timer);
    reader.cancel().catch(() => {});
  }
}

/** What is left of a request body to drain: the untouched body stream, or a reader handed over. */
export type BodyRest = ReadableStream<Uint8Array> | BodyReader;

/**
 * The rest of the request body when it may still be arriving: the body itself when nothing has
 * read any of it, else what the body limit handed over when it was crossed (`rest`), else null
 * (partly read and still held by another reader: not drainable).
 */
export function unreadBody(req: Request, rest: BodyReader | undefined): BodyRest | null {
  const body = req.body;
  if (body !== null && !req.bodyUsed && !body.locked) return body;
  return rest ?? null;
}

function readerOf(rest: BodyRest): BodyReader {
  return rest instanceof ReadableStream ? rest.getReader() : rest;
}

/**
 * `res` with `Connection: close`, sent at once; the connection closes once the request body
 * was drained (bounded, see above). Never rejects: an answer whose body cannot be read is sent
 * without one.
 */
export async function lingeringClose(res: Response, rest: BodyRest): Promise<Response> {
  let bytes: Uint8Array = EMPTY;
  try {
    bytes = await res.bytes();
  } catch {
    /* keep the status and headers */
  }
  const headers = new Headers(res.headers); // a copy: never throws on immutable headers
  headers.set("connection", "close");
  headers.delete("content-length");
  let pulled = false;
  const stream = new ReadableStream<Uint8Array>({
    type: "direct",
    async pull(controller) {
      pulled = true;
      try {
        if (bytes.byteLength > 0) controller.write(bytes);
        controller.flush();
      } catch {
        /* the client already left: the drain below ends at once */
      }
      await drainBody(readerOf(rest), LINGER_IDLE_MS, LINGER_TOTAL_MS);
      try {
        controller.close();
      } catch {
        /* the client already left */
      }
    },
    cancel() {
      if (!pulled) rest.cancel().catch(() => {});
    },
  });
  return new Response(stream, { status: res.status, statusText: res.statusText, headers });
}
