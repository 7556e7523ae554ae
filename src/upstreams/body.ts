// Body streams with a byte limit, an idle timeout and a byte counter, preserving backpressure
// (pull-based: nothing is read from the source until the consumer asks for it).
import { unwatchIdle, watchIdle } from "./idle.ts";

export class BodyLimitError extends Error {
  constructor(
    readonly limit: number,
    /** With `handOver`: the source's reader, the rest of the body still unread (see meteredStream). */
    readonly rest?: BodyReader,
  ) {
    super(`body exceeds ${limit} bytes`);
    this.name = "BodyLimitError";
  }
}

export class BodyIdleError extends Error {
  constructor(readonly limitMs: number) {
    super(`body idle for more than ${limitMs} ms`);
    this.name = "BodyIdleError";
  }
}

/** What is needed of a body's reader to drain it (the web and node:stream/web types differ). */
export interface BodyReader {
  read(): Promise<{ done: boolean; value?: Uint8Array }>;
  cancel(reason?: unknown): Promise<void>;
}

export interface Meter {
  bytes: number;
}

export function meteredStream(
  source: ReadableStream<Uint8Array>,
  opts: {
    limit: number;
    idleMs: number;
    meter: Meter;
    onEnd?: (err?: unknown) => void;
    /** Past the limit, hand the source's reader over in the BodyLimitError (to drain the rest) instead of cancelling it. */
    handOver?: boolean;
  },
): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  let finished = false;
  const finish = (err?: unknown) => {
    if (finished) return;
    finished = true;
    unwatchIdle(watch);
    opts.onEnd?.(err);
  };
  let controllerRef: ReadableStreamDefaultController<Uint8Array> | undefined;
  const watch = watchIdle(opts.idleMs, () => {
    const err = new BodyIdleError(opts.idleMs);
    reader.cancel(err).catch(() => {});
    try {
      controllerRef?.error(err);
    } catch {
      /* already closed */
    }
    finish(err);
  });
  return new ReadableStream<Uint8Array>(
    {
      start(controller) {
        controllerRef = controller;
      },
      async pull(controller) {
        try {
          const { done, value } = await reader.read();
          if (finished) return;
          watch.last = performance.now();
          if (done) {
            controller.close();
            finish();
            return;
          }
          opts.meter.bytes += value.byteLength;
          if (opts.meter.bytes > opts.limit) {
            const err = new BodyLimitError(opts.limit, opts.handOver ? reader : undefined);
            if (!opts.handOver) reader.cancel(err).catch(() => {});
            controller.error(err);
            finish(err);
            return;
          }
          controller.enqueue(value);
        } catch (err) {
          if (finished) return;
          try {
            controller.error(err);
          } catch {
            /* closed */
          }
          finish(err);
        }
      },
      cancel(reason) {
        reader.cancel(reason).catch(() => {});
        finish(reason ?? new Error("cancelled"));
      },
    },
    { highWaterMark: 0 },
  );
}

/** Read a whole body into memory, up to `limit` bytes (throws BodyLimitError past it). */
export async function readBounded(stream: ReadableStream<Uint8Array>, limit: number, idleMs: number): Promise<Uint8Array> {
  const meter: Meter = { bytes: 0 };
  const parts: Uint8Array[] = [];
  const reader = meteredStream(stream, { limit, idleMs, meter }).getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
  }
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(meter.bytes);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/**
 * Wait at most `windowMs` for the first chunk of an upstream body. A body that fails at once
 * (framing errors such as a bad chunk size, which fetch only reports when the body is read) is
 * reported, so that the client gets a 502 rather than a truncated 200; a body still pending after
 * the window is relayed as it comes, so streaming responses are never held back longer.
 */
export async function peekBody(
  body: ReadableStream<Uint8Array>,
  windowMs: number,
): Promise<{ ok: true; body: ReadableStream<Uint8Array> } | { ok: false; error: unknown }> {
  const reader = body.getReader();
  const first = reader.read();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const early = await Promise.race([
    first.then(
      () => null,
      (error: unknown) => ({ error }),
    ),
    new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), windowMs))),
  ]);
  clearTimeout(timer);
  if (early) {
    reader.cancel(early.error).catch(() => {});
    return { ok: false, error: early.error };
  }
  let pending: ReturnType<typeof reader.read> | null = first;
  return {
    ok: true,
    body: new ReadableStream<Uint8Array>(
      {
        async pull(c) {
          const next = pending ?? reader.read();
          pending = null;
          const { done, value } = await next;
          if (done) c.close();
          else c.enqueue(value);
        },
        cancel(reason) {
          return reader.cancel(reason);
        },
      },
      { highWaterMark: 0 },
    ),
  };
}
