// The one upstream-call module: always decompress:false, redirect:manual, duplex:half, our own
// deadlines on AbortController, client disconnect propagated, retries only where safe.
// Plain-HTTP targets go through the Bun.connect HTTP/1.1 client (h1client.ts: same contract,
// a fraction of fetch()'s CPU per request, small bodies as bytes); TLS targets through fetch().
import type { Pool, Target } from "./pool.ts";
import { BodyLimitError } from "./body.ts";
import { H1Pool, H1TimeoutError, H1WriteTimeoutError } from "./h1client.ts";
import { listToHeaders, type HeaderList } from "../http/header-list.ts";
import { sharedDeadlines, type DeadlineHandle } from "../agents/deadline.ts";
import { hasRoom, releaseSlot, takeSlot, waitingFor, type SlotOutcome } from "./slots.ts";

/** What the pipeline gets back: a fetch() Response fits, and so does an h1client answer. */
export interface UpstreamResponse {
  status: number;
  statusText: string;
  headers: Headers;
  /** A complete body as bytes (h1client, small responses), a stream, or null. */
  body: Uint8Array | ReadableStream<Uint8Array> | null;
  /** True when `headers` is the client's own sanitised copy (h1client): hop-by-hop gone, head bounded. */
  sanitized?: boolean;
}

export type ForwardResult =
  | { ok: true; response: UpstreamResponse; target: Target }
  | { ok: false; status: 502 | 503 | 504 | 413 | 499; reason: string; target?: Target; connectFailed?: boolean };

export interface ForwardInput {
  pool: Pool;
  method: string;
  pathAndQuery: string;
  /** Sanitised request headers: a Headers, or a flat name/value list (src/http/header-list.ts). */
  headers: Headers | HeaderList;
  body: ReadableStream<Uint8Array> | Uint8Array | null;
  clientIp: string;
  hashKey: string;
  signal: AbortSignal; // client disconnect
  timeoutMs: number; // until response headers, per attempt
  /** A new connection not established in this long is a connect failure (retryable). */
  connectTimeoutMs?: number;
  retry: { maxAttempts: number; timeoutMs?: number; backoffBaseMs: number; backoffMaxMs: number; retryableStatusCodes: number[] };
  /** Told of every attempt as it starts (the request context: `finish` releases `target`). */
  tracker?: AttemptTracker;
}

/** Where forward records its attempts while they run. */
export interface AttemptTracker {
  attempts: number;
  target?: Target;
}

function track(input: ForwardInput, target: Target): void {
  const t = input.tracker;
  if (t === undefined) return;
  t.attempts++;
  t.target = target;
}

/** An attempt that holds no slot any more: the tracker must not release it again. */
function untrack(input: ForwardInput, target: Target): void {
  const t = input.tracker;
  if (t !== undefined && t.target === target) t.target = undefined;
}

/** An upstream switching protocols unasked: a failed attempt (never relayed outside the WebSocket path). */
function unsolicited101(input: ForwardInput, target: Target): ForwardResult {
  releaseSlot(target);
  untrack(input, target);
  return { ok: false, status: 502, reason: "unsolicited 101 from upstream", target };
}

/** What is left of retry-policy timeout-ms (Infinity without one). */
function budgetLeft(policy: ForwardInput["retry"], started: number): number {
  return policy.timeoutMs === undefined ? Infinity : policy.timeoutMs - (performance.now() - started);
}

const HASHED = new Set(["ip_hash", "consistent_hash"]);

/**
 * The balancer's choice of target (not one of `tried` while others remain), except that under
 * max-connections a choice with no free slot yields, outside the hash policies (whose point is
 * the same target), to a healthy one with a free slot, or else to the one with the shortest
 * wait queue, as nginx's max_conns skips a full server. Also used by the WebSocket path.
 */
export function chooseTarget(pool: Pool, clientIp: string, hashKey: string, tried: Target[]): Target | undefined {
  const chosen = pool.select({ clientIp, hashKey, exclude: tried.length < pool.targets.length ? tried : undefined });
  if (chosen === undefined || hasRoom(chosen) || HASHED.has(pool.config.loadBalancing)) return chosen;
  const skip = [...tried, chosen];
  let best = chosen;
  const now = Date.now();
  while (skip.length < pool.targets.length) {
    const t = pool.select({ clientIp, hashKey, exclude: skip });
    if (t === undefined || skip.includes(t)) break;
    skip.push(t);
    // select() falls back to ejected targets when nothing else is left (panic mode): never here.
    if (!t.healthy || t.ejectedUntil > now) continue;
    if (hasRoom(t)) return t;
    if (waitingFor(t) < waitingFor(best)) best = t;
  }
  return best;
}

/** A request refused by `target`'s max-connections (queue full, or no slot in time), for the metrics. */
export function noteSlotRefused(pool: Pool, target: Target): void {
  slotRefusedObserver?.(pool, target);
}

/** A slot wait that did not end in a slot (src/upstreams/slots.ts). */
function slotFailure(o: Exclude<SlotOutcome, "ok">, target: Target, waitedMs: number): ForwardResult {
  if (o === "aborted") return { ok: false, status: 499, reason: "client went away", target };
  if (o === "full") return { ok: false, status: 503, reason: `upstream ${target.address}: max-connections (${target.maxConnections}) in use and the wait queue is full`, target };
  return { ok: false, status: 503, reason: `upstream ${target.address}: max-connections (${target.maxConnections}) in use; none free within ${Math.round(waitedMs)} ms`, target };
}

/** Outcome of one upstream attempt, for metrics: null on an answer (any status), else the failure kind. */
export type AttemptFailure = "connect" | "timeout" | "write_timeout" | "error";
export type AttemptObserver = (pool: Pool, target: Target, seconds: number, failure: AttemptFailure | null, status: number) => void;
let attemptObserver: AttemptObserver | undefined;
/** Install the observer of every upstream attempt (set once by the server; keep it cheap). */
export function setAttemptObserver(fn: AttemptObserver | undefined): void {
  attemptObserver = fn;
}

/** Told of every request refused by a target's max-connections (queue full, or no slot in time). */
export type SlotRefusedObserver = (pool: Pool, target: Target) => void;
let slotRefusedObserver: SlotRefusedObserver | undefined;
export function setSlotRefusedObserver(fn: SlotRefusedObserver | undefined): void {
  slotRefusedObserver = fn;
}

const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);

class HeadersTimeout extends Error {
  constructor() {
    super("upstream did not answer in time");
    this.name = "HeadersTimeout";
  }
}

function isConnectError(err: unknown): boolean {
  const code = (err as { code?: string })?.code ?? "";
  return code === "ConnectionRefused" || code === "ECONNREFUSED" || code === "FailedToOpenSocket" || code === "ENOTFOUND" || code === "EHOSTUNREACH" || code === "ETIMEDOUT";
}

/** fetch()'s (and the WebSocket client's) TLS options for a pool's `tls` block. */
export function tlsOptions(pool: Pool): Record<string, unknown> | undefined {
  const tls = pool.config.tls;
  if (!tls) return undefined;
  const o: Record<string, unknown> = { rejectUnauthorized: !tls.insecureSkipVerify };
  if (tls.sni) o.serverName = tls.sni;
  if (tls.caCert) o.ca = Bun.file(tls.caCert);
  if (tls.clientCert) o.cert = Bun.file(tls.clientCert);
  if (tls.clientKey) o.key = Bun.file(tls.clientKey);
  return o;
}

const h1Pools = new WeakMap<Target, H1Pool>();

function h1PoolFor(pool: Pool, target: Target): H1Pool {
  let p = h1Pools.get(target);
  if (p === undefined) {
    const c = pool.config.pool;
    p = new H1Pool(target.config.host, target.config.port, {
      maxIdle: c.maxIdle,
      idleTimeoutMs: c.idleTimeoutMs,
      maxLifetimeMs: c.maxLifetimeMs,
      connectTimeoutMs: pool.config.connectTimeoutMs,
      writeTimeoutMs: pool.config.writeTimeoutMs,
    });
    h1Pools.set(target, p);
  }
  return p;
}

function cancelBody(body: UpstreamResponse["body"]): void {
  if (body instanceof ReadableStream) body.cancel().catch(() => {});
}

async function attemptH1(input: ForwardInput, target: Target, body: ForwardInput["body"], timeoutMs: number): Promise<ForwardResult> {
  if (input.signal.aborted) {
    releaseSlot(target);
    untrack(input, target);
    return { ok: false, status: 499, reason: "client went away", target };
  }
  const t0 = performance.now();
  try {
    const response = await h1PoolFor(input.pool, target).request({
      method: input.method,
      path: input.pathAndQuery,
      headers: input.headers,
      body,
      signal: input.signal,
      timeoutMs,
      connectTimeoutMs: input.connectTimeoutMs,
      bodyIdleMs: input.pool.config.readTimeoutMs,
    });
    attemptObserver?.(input.pool, target, (performance.now() - t0) / 1000, null, response.status);
    if (response.status === 101) return unsolicited101(input, target);
    return { ok: true, response, target };
  } catch (err) {
    releaseSlot(target);
    untrack(input, target);
    if (input.signal.aborted) return { ok: false, status: 499, reason: "client went away", target };
    const writeTimedOut = err instanceof H1WriteTimeoutError;
    const timedOut = writeTimedOut || err instanceof H1TimeoutError;
    const bodyLimit = err instanceof BodyLimitError || (err as Error)?.name === "BodyLimitError";
    if (attemptObserver && !bodyLimit)
      attemptObserver(input.pool, target, (performance.now() - t0) / 1000, writeTimedOut ? "write_timeout" : timedOut ? "timeout" : isConnectError(err) ? "connect" : "error", 0);
    if (writeTimedOut) return { ok: false, status: 504, reason: writeTimeoutReason(target, err.ms), target };
    if (timedOut) return { ok: false, status: 504, reason: `upstream ${target.address} timed out after ${timeoutMs} ms`, target };
    if (bodyLimit) return { ok: false, status: 413, reason: "request body too large", target };
    const detail = (err as { code?: string })?.code ?? (err as Error)?.name ?? "error";
    return { ok: false, status: 502, reason: `upstream ${target.address}: ${detail}`, target, connectFailed: isConnectError(err) };
  }
}

const writeTimeoutReason = (target: Target, ms: number) => `upstream ${target.address} accepted no request bytes for ${ms} ms (write timeout)`;

/**
 * One fetch() attempt's abort: the client going away (it is the signal's EventListener) or the
 * response head's deadline, on the shared deadline queue (no timer, no closure per attempt).
 */
class FetchAttempt {
  readonly abort = new AbortController();
  timedOut = false;
  deadline: DeadlineHandle | null = null;

  handleEvent(): void {
    this.abort.abort(new DOMException("client went away", "AbortError"));
  }

  settled(): void {
    this.deadline?.cancel();
    this.deadline = null;
  }
}

function expireFetchAttempt(a: FetchAttempt): void {
  a.deadline = null;
  a.timedOut = true;
  a.abort.abort(new HeadersTimeout());
}

async function attempt(input: ForwardInput, target: Target, body: ForwardInput["body"], timeoutMs: number): Promise<ForwardResult> {
  if (!input.pool.config.tls) return attemptH1(input, target, body, timeoutMs);
  if (input.signal.aborted) {
    releaseSlot(target);
    untrack(input, target);
    return { ok: false, status: 499, reason: "client went away", target };
  }
  const a = new FetchAttempt();
  const abort = a.abort;
  // Listened to for the whole exchange: a client that leaves while the body streams aborts it.
  input.signal.addEventListener("abort", a, { once: true });
  a.deadline = sharedDeadlines.schedule(timeoutMs, expireFetchAttempt, a);
  const t0 = performance.now();
  try {
    const init: RequestInit & Record<string, unknown> = {
      method: input.method,
      headers: Array.isArray(input.headers) ? listToHeaders(input.headers) : input.headers,
      body,
      redirect: "manual",
      decompress: false,
      signal: abort.signal,
      keepalive: true,
    };
    if (body instanceof ReadableStream) init.duplex = "half";
    const tls = tlsOptions(input.pool);
    if (tls) init.tls = tls;
    const response = await fetch(target.baseUrl + input.pathAndQuery, init);
    a.settled();
    attemptObserver?.(input.pool, target, (performance.now() - t0) / 1000, null, response.status);
    if (response.status === 101) {
      // Unsolicited protocol switch: never relayed outside the WebSocket path.
      response.body?.cancel().catch(() => {});
      abort.abort();
      return unsolicited101(input, target);
    }
    return { ok: true, response, target };
  } catch (err) {
    a.settled();
    const timedOut = a.timedOut;
    releaseSlot(target);
    untrack(input, target);
    input.signal.removeEventListener("abort", a);
    if (input.signal.aborted) return { ok: false, status: 499, reason: "client went away", target };
    if (attemptObserver && !(err instanceof BodyLimitError || (err as Error)?.name === "BodyLimitError"))
      attemptObserver(input.pool, target, (performance.now() - t0) / 1000, timedOut ? "timeout" : isConnectError(err) ? "connect" : "error", 0);
    if (timedOut) return { ok: false, status: 504, reason: `upstream ${target.address} timed out after ${timeoutMs} ms`, target };
    if (err instanceof BodyLimitError || (err as Error)?.name === "BodyLimitError") return { ok: false, status: 413, reason: "request body too large", target };
    const detail = (err as { code?: string })?.code ?? (err as Error)?.name ?? "error";
    return { ok: false, status: 502, reason: `upstream ${target.address}: ${detail}`, target, connectFailed: isConnectError(err) };
  }
}

/** Release per-attempt bookkeeping when the response body is finished (or abandoned). */
export function releaseTarget(target: Target): void {
  releaseSlot(target);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}

/**
 * Forward with retries: another attempt only for idempotent requests without a streamed body,
 * or for connection failures before anything was sent. Each attempt tries a different target
 * when there is one.
 */
export async function forward(input: ForwardInput): Promise<ForwardResult> {
  const started = performance.now();
  const policy = input.retry;
  const replayable = input.body === null || input.body instanceof Uint8Array;
  const idempotent = IDEMPOTENT.has(input.method);
  const tried: Target[] = [];
  let last: ForwardResult | undefined;
  for (let n = 0; n < Math.max(1, policy.maxAttempts); n++) {
    if (n > 0) {
      const backoff = Math.min(policy.backoffBaseMs * 2 ** (n - 1), policy.backoffMaxMs);
      if (policy.timeoutMs !== undefined && performance.now() - started + backoff >= policy.timeoutMs) break;
      await sleep(backoff, input.signal);
      if (input.signal.aborted) break;
    }
    const target = chooseTarget(input.pool, input.clientIp, input.hashKey, tried);
    if (!target) {
      last = { ok: false, status: 503, reason: `no healthy target in upstream ${input.pool.id}` };
      break;
    }
    tried.push(target);
    // connection-pool max-connections: a slot on the target first. Waiting for one is bounded like
    // a connect (the connect timeout, within the retry budget); the exchange then has its whole timeout.
    const slot = takeSlot(target, Math.max(1, Math.min(input.connectTimeoutMs ?? input.pool.config.connectTimeoutMs, budgetLeft(policy, started))), input.signal);
    if (slot !== "ok") {
      const waitStart = performance.now();
      const o = await slot;
      if (o !== "ok") {
        if (o !== "aborted") noteSlotRefused(input.pool, target);
        return slotFailure(o, target, performance.now() - waitStart);
      }
    }
    // retry-policy timeout-ms is the budget of all attempts: the last one gets what is left of it.
    const timeoutMs = policy.timeoutMs === undefined ? input.timeoutMs : Math.max(1, Math.round(Math.min(input.timeoutMs, budgetLeft(policy, started))));
    // A timeout set by what was left of the budget says nothing about the target's health.
    const cutByBudget = timeoutMs < input.timeoutMs;
    track(input, target);
    const result = await (input.pool.config.tls ? attempt(input, target, input.body, timeoutMs) : attemptH1(input, target, input.body, timeoutMs));
    last = result;
    if (result.ok) {
      input.pool.report(target, result.response.status < 500);
      const retryable = idempotent && replayable && policy.retryableStatusCodes.includes(result.response.status);
      if (!retryable || n + 1 >= policy.maxAttempts) return result;
      cancelBody(result.response.body);
      releaseTarget(target);
      untrack(input, target);
      continue;
    }
    if (result.status === 499 || result.status === 413) return result;
    if (!(result.status === 504 && cutByBudget)) input.pool.report(target, false);
    // Connection failures (nothing was sent) are safe to retry when the body can be replayed;
    // other failures only for idempotent requests.
    const safe = replayable && (result.connectFailed === true || idempotent);
    if (!safe) return result;
  }
  return last ?? { ok: false, status: 502, reason: "no attempt made" };
}
