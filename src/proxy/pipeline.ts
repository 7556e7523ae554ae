// The request lifecycle as named phases (cf. Pingora's ProxyHttp):
//
//   receive → route → requestFilter (policies, agents on headers, agents on body)
//     → upstreamRequest (choose target, forward, retries) → responseFilter (agents on
//     response headers/body, policies) → logging (access log, metrics, request_complete)
//
// Each phase takes the one per-request context and either returns nothing (continue) or the
// Response that ends the request. Every exit goes through `finish` exactly once.
import type { Server } from "bun";
import type { ListenerConfig, RouteConfig } from "../config/types.ts";
import type { RequestContext } from "./context.ts";
import { errorResponse } from "./errors.ts";
import {
  downstreamResponseHeaders,
  downstreamResponseHeadersSanitized,
  finishUpstreamRequestHeaders,
  setUpstreamHeader,
  upstreamRequestHeaders,
} from "./headers.ts";
import { armConnectionTimer, checkRequestHead, guardRequestBody, guardResponseBody, inFlightIdleSecs, keepAliveIdleSecs } from "./limits.ts";
import { acceptTraceId, newTraceId } from "./ids.ts";
import { matchForm, normalizePath } from "../routing/normalize.ts";
import type { HeaderOp } from "../agents/types.ts";
import type { MatchInput } from "../routing/router.ts";
import type { Runtime } from "./runtime.ts";
import { forward, releaseTarget, type UpstreamResponse } from "../upstreams/forward.ts";
import { BodyLimitError, peekBody, type BodyReader } from "../upstreams/body.ts";
import {
  applyDeferredResponseOps,
  requestBodyPhase,
  requestCompletePhase,
  requestHeadersPhase,
  responseBodyPhase,
  responseHeadersPhase,
} from "./agent-phases.ts";
import { applyPolicyOps } from "./policies.ts";
import { handleBuiltin } from "./builtin.ts";
import { proxyWebSocket, isWebSocketUpgrade } from "./websocket.ts";
import { logRejected, logRequest, logUpstreamFailure } from "./logging.ts";
import { lingeringClose, unreadBody } from "./linger.ts";
import { realClientIp, trustedProxies } from "./client-ip.ts";
import { rejectedRequests } from "../observability/metrics.ts";

export interface ProxyState {
  current: Runtime;
  draining: boolean;
  /** The shutdown grace period is over: requests still in flight are being cut by the proxy. */
  aborting?: boolean;
  inFlight: number;
}

/** What the log says of a request the proxy cut at the end of the shutdown grace period. */
const SHUTDOWN_ABORT = "aborted by the proxy: the shutdown grace period ended";

/** Methods whose requests Bun.serve hands over without a body (one that declares a body is a 400). */
const BODYLESS_METHODS = new Set(["GET", "HEAD"]);
/** Request bodies up to this size (declared, no body agents) are read whole before forwarding. */
const SMALL_BODY = 64 * 1024;
/** How long the response waits for the first body chunk before relaying (see peekBody). */
const PEEK_WINDOW_MS = 5;
const REFUSED_METHODS = new Set(["CONNECT", "TRACE"]);
/** Extra header of error answers after which the connection must not be reused. */
const CLOSE: Readonly<Record<string, string>> = { connection: "close" };
// Host syntax (compiled once; a regex literal inside a function is a new object per call).
const PORT_SUFFIX = /^:\d{1,5}$/;
const PORT_DIGITS = /^\d{1,5}$/;
const REG_NAME = /^[A-Za-z0-9._~!$&'()*+;=%-]*$/;

function parseHost(raw: string): string | undefined {
  // One Host value, reg-name or IP literal, optional port; no userinfo, path or spaces.
  if (raw.length === 0 || raw.length > 255) return raw.length === 0 ? "" : undefined;
  let host = raw;
  if (host.startsWith("[")) {
    const end = host.indexOf("]");
    if (end < 0) return undefined;
    const rest = host.slice(end + 1);
    if (rest && !PORT_SUFFIX.test(rest)) return undefined;
    return host.slice(0, end + 1).toLowerCase();
  }
  const colon = host.indexOf(":");
  if (colon >= 0) {
    if (!PORT_DIGITS.test(host.slice(colon + 1))) return undefined;
    host = host.slice(0, colon);
  }
  if (!REG_NAME.test(host)) return undefined;
  host = host.toLowerCase();
  return host.endsWith(".") ? host.slice(0, -1) : host;
}

/** What a 405 names as allowed (RFC 9110 §15.5.6): every method but the refused ones. */
const ALLOW: Readonly<Record<string, string>> = { allow: "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH" };

/** A request refused in `receive`, before routing: answered, counted and logged with its reason. */
class Rejection {
  constructor(
    readonly status: number,
    readonly traceId: string,
    readonly reason: string,
  ) {}

  /** The answer; a malformed request (400) also closes its connection. */
  response(): Response {
    return errorResponse(this.status, this.traceId, this.status === 400 ? CLOSE : this.status === 405 ? ALLOW : undefined);
  }
}

/** The client's address: the peer's, or behind trusted proxies the first untrusted X-Forwarded-For hop. */
function clientIpFor(peerIp: string, req: Request, listener: ListenerConfig): string {
  const trusted = listener.trustedProxies === undefined ? null : trustedProxies(listener);
  return trusted === null ? peerIp : realClientIp(peerIp, req.headers.get("x-forwarded-for"), trusted);
}

/** Phase 1 — receive: validate the request line and head, normalise, identify. */
function receive(req: Request, server: Server<unknown>, listener: ListenerConfig, rt: Runtime): RequestContext | Rejection {
  const limits = rt.config.limits;
  const incoming = req.headers;
  const traceId = acceptTraceId(incoming.get("x-trace-id") ?? incoming.get("x-correlation-id") ?? incoming.get("x-request-id")) ?? newTraceId(rt.config.system.traceIdFormat);
  if (REFUSED_METHODS.has(req.method)) return new Rejection(405, traceId, `method ${req.method} is not proxied`);

  const url = req.url;
  let start = 0;
  if (url.charCodeAt(0) !== 0x2f) {
    const scheme = url.indexOf("://");
    start = scheme < 0 ? -1 : url.indexOf("/", scheme + 3);
  }
  let rawPath = "/";
  let query = "";
  if (start >= 0) {
    const q = url.indexOf("?", start);
    rawPath = q < 0 ? url.slice(start) : url.slice(start, q);
    query = q < 0 ? "" : url.slice(q);
    // A fragment is never part of a request target (RFC 9112 §3.2); Bun keeps one after '?'.
    if (query.length > 0 && query.indexOf("#") >= 0) return new Rejection(400, traceId, "fragment in request target");
  }
  const headProblem = checkRequestHead(rawPath.length + query.length, incoming, limits, BODYLESS_METHODS.has(req.method));
  if (headProblem) return new Rejection(headProblem.status, traceId, headProblem.reason);

  const hostField = incoming.get("host");
  const hostHeader = hostField ?? "";
  const host = parseHost(hostHeader);
  // An empty Host names no host at all (RFC 9110 §4.2.1); only an HTTP/1.0 request may omit it.
  if (host === undefined || hostField === "") return new Rejection(400, traceId, "invalid Host");

  const normalized = normalizePath(rawPath);
  if (!normalized.ok) return new Rejection(400, traceId, normalized.reason);

  const addr = server.requestIP(req);
  const peerIp = addr?.address ?? "";
  const clientIp = clientIpFor(peerIp, req, listener);
  return {
    rt,
    req,
    server,
    listener,
    startedAt: performance.now(),
    traceId,
    correlationId: newTraceId("tinyflake"),
    peerIp,
    clientIp,
    clientPort: clientIp === peerIp ? (addr?.port ?? 0) : 0,
    method: req.method,
    host,
    hostHeader,
    path: normalized.path,
    query,
    deferredResponseOps: [],
    attempts: 0,
    status: 0,
    bytesIn: 0,
    bytesOut: 0,
    agentTrace: [],
    signal: req.signal,
    finished: false,
  };
}

/** Phase 2 — route: match on the normalised path; the default route or 404 otherwise. */
function route(ctx: RequestContext): RouteConfig | undefined {
  const rt = ctx.rt;
  const path = matchForm(ctx.path); // the path itself unless it holds escapes
  const m: MatchInput = {
    method: ctx.method,
    host: ctx.host,
    path,
    pathLower: path.toLowerCase(),
    headers: ctx.req.headers,
    query: rt.router.needsQuery ? new URLSearchParams(ctx.query) : null,
  };
  const r = rt.router.match(m);
  if (r) return r;
  const fallback = ctx.listener.defaultRoute;
  return fallback ? rt.router.byId.get(fallback) : undefined;
}

const NO_HEADER_OPS: readonly HeaderOp[] = [];

/**
 * The one Content-Length value of a (Bun-validated) field: repeated identical values
 * ("5, 5", RFC 9112 §6.3) collapse to one; differing ones are null (400).
 */
function singleContentLength(field: string): string | null {
  if (!field.includes(",")) return field.trim();
  const parts = field.split(",");
  const first = parts[0]!.trim();
  for (let i = 1; i < parts.length; i++) if (parts[i]!.trim() !== first) return null;
  return first;
}

/** Phase 3 — request filter: request-header agents, policies, request body limits and agents. */
async function requestFilter(ctx: RequestContext): Promise<{ response?: Response; body: ReadableStream<Uint8Array> | Uint8Array | null }> {
  const plan = ctx.plan!;
  // headers.ts: sanitised, plus the proxy's own forwarding headers; agents see this view.
  const upstream = upstreamRequestHeaders(ctx.req.headers, {
    peerIp: ctx.peerIp,
    proto: ctx.listener.protocol,
    hostHeader: ctx.hostHeader,
    traceId: ctx.traceId,
  });
  ctx.upstreamHeaders = upstream;

  // (No await when no agent is subscribed: each await is a microtask turn on the hot path.)
  const verdict = plan.requestHeadersAgents.length === 0 ? NO_HEADER_OPS : await requestHeadersPhase(ctx);
  if (verdict instanceof Response) return { response: verdict, body: null };
  finishUpstreamRequestHeaders(upstream, verdict, plan.requestHeaderOps);

  // Body framing: Bun already rejected CL+TE, bad CL and bad chunking (reliability catalog §0.1).
  const cl = ctx.req.headers.get("content-length");
  let declared: number | undefined;
  if (cl !== null) {
    const value = singleContentLength(cl);
    if (value === null) return { response: errorResponse(400, ctx.traceId, CLOSE), body: null };
    declared = Number(value);
    setUpstreamHeader(upstream, "content-length", value);
  }
  const hasBody = !BODYLESS_METHODS.has(ctx.method) && ctx.req.body !== null && (declared === undefined ? ctx.req.headers.has("transfer-encoding") : declared > 0);
  if (!hasBody) {
    setUpstreamHeader(upstream, "content-length", null);
    return { body: null };
  }
  if (declared !== undefined && declared > plan.maxBodySize) {
    ctx.error = "request body over max-body-size";
    return { response: errorResponse(413, ctx.traceId, CLOSE), body: null };
  }
  if (declared !== undefined && plan.requestBodyAgents.length === 0) {
    // Fast path: Bun's parser already holds the body to its declared length (checked against
    // max-body-size above), and Bun's idle timeout cuts a stalled client. A small body is read
    // whole (one native call; the upstream then gets head and body in one write); a larger one
    // is handed over as the native stream, keeping the zero-copy pipe and its backpressure.
    ctx.bytesIn = declared;
    if (declared <= SMALL_BODY) {
      try {
        return { body: await ctx.req.bytes() };
      } catch (err) {
        ctx.error = `request body: ${(err as Error)?.message ?? err}`;
        return { response: errorResponse(ctx.signal.aborted ? 499 : 400, ctx.traceId, CLOSE), body: null };
      }
    }
    return { body: ctx.req.body! };
  }
  let inspectLimit = 0;
  for (const st of plan.requestBodyAgents) inspectLimit = Math.max(inspectLimit, st.agent.config.maxRequestBodyBytes);
  if (declared !== undefined && declared <= inspectLimit) {
    // Declared and within what the inspecting agents take: read whole (one native call) rather
    // than through two JS streams; Bun holds it to the declared length, its idle timeout cuts a
    // stalled client.
    let bytes: Uint8Array;
    try {
      bytes = await ctx.req.bytes();
    } catch (err) {
      ctx.error = `request body: ${(err as Error)?.message ?? err}`;
      return { response: errorResponse(ctx.signal.aborted ? 499 : 408, ctx.traceId, CLOSE), body: null };
    }
    ctx.bytesIn = bytes.byteLength;
    const inspected = await requestBodyPhase(ctx, bytes);
    if (inspected.body instanceof Uint8Array && !inspected.response) setUpstreamHeader(upstream, "content-length", String(inspected.body.byteLength));
    return inspected;
  }
  const meter = { bytes: 0 };
  const stream = guardRequestBody(ctx.req.body!, plan.maxBodySize, ctx.rt.config.system.idleTimeoutMs, meter, (err) => {
    ctx.bytesIn = meter.bytes;
    if (err instanceof BodyLimitError) ctx.bodyRest = err.rest;
  });
  if (plan.requestBodyAgents.length === 0) return { body: stream };
  try {
    const inspected = await requestBodyPhase(ctx, stream);
    if (inspected.body instanceof Uint8Array && !inspected.response) setUpstreamHeader(upstream, "content-length", String(inspected.body.byteLength));
    return inspected;
  } catch (err) {
    if (err instanceof BodyLimitError) return { response: errorResponse(413, ctx.traceId, CLOSE), body: null };
    ctx.error = `request body: ${(err as Error).message}`;
    return { response: errorResponse(ctx.signal.aborted ? 499 : 408, ctx.traceId, CLOSE), body: null };
  }
}

/**
 * Bun.serve writes a response produced after an await and larger than its cork buffer (~16 KiB
 * with the head) with one send() per head fragment (status, each name, ": ", value, CRLF): ~20
 * syscalls, ~80 µs for a 64 KiB body here. The same bytes as a one-chunk direct stream go out
 * in one write (~25 µs).
 */
const CORK_LIMIT = 8 * 1024;

function oneChunkStream(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    type: "direct",
    pull(controller) {
      controller.write(bytes);
      controller.close();
    },
  });
}

const DIGITS = /^\d{1,15}$/;

/** A Content-Length value that is one plain number (identical repeats collapsed), else null. */
function validLength(v: string | null): string | null {
  if (v === null) return null;
  const one = singleContentLength(v);
  return one !== null && DIGITS.test(one) ? one : null;
}

function cancel(body: UpstreamResponse["body"]): void {
  if (body instanceof ReadableStream) body.cancel().catch(() => {});
}

/** Phase 5 — response filter: sanitise, agents on response headers and body, policies. */
async function responseFilter(ctx: RequestContext, upstream: UpstreamResponse): Promise<Response> {
  const plan = ctx.plan!;
  const headLength = ctx.method === "HEAD" ? validLength(upstream.headers.get("content-length")) : null;
  const headers = upstream.sanitized ? downstreamResponseHeadersSanitized(upstream.headers) : downstreamResponseHeaders(upstream.headers);
  if (!headers) {
    cancel(upstream.body);
    ctx.error = "upstream response head too large";
    return errorResponse(502, ctx.traceId);
  }
  applyDeferredResponseOps(ctx, headers);
  applyPolicyOps(headers, plan.responseHeaderOps);

  const denied = plan.responseHeadersAgents.length === 0 ? undefined : await responseHeadersPhase(ctx, upstream.status, headers);
  if (denied) {
    cancel(upstream.body);
    return denied;
  }
  headers.set("x-correlation-id", ctx.traceId);
  const bodyless = ctx.method === "HEAD" || upstream.status === 204 || upstream.status === 304 || upstream.body === null;
  if (bodyless) {
    cancel(upstream.body);
    // HEAD: the length a GET would have had (RFC 9110 §9.3.2), as the upstream said it; with no
    // length from the upstream (chunked, close-delimited), chunked framing, so that Bun does
    // not claim a length of 0.
    if (ctx.method === "HEAD") {
      if (headLength !== null) headers.set("content-length", headLength);
      else headers.set("transfer-encoding", "chunked");
    }
    return new Response(null, { status: upstream.status, statusText: upstream.statusText, headers });
  }
  if (upstream.body instanceof Uint8Array) {
    // Complete and already framed correctly (h1client): answered as bytes, with no stream to
    // relay or peek into, unless response-body agents want to see it.
    let body: Uint8Array | ReadableStream<Uint8Array> = upstream.body;
    if (plan.responseBodyAgents.length > 0) {
      const inspected = await responseBodyPhase(ctx, new Blob([upstream.body]).stream());
      if (inspected.response) return inspected.response;
      body = inspected.body;
    }
    if (body instanceof Uint8Array) {
      ctx.bytesOut = body.byteLength;
      sized.add(ctx);
      if (body.byteLength > CORK_LIMIT) body = oneChunkStream(body);
    }
    return new Response(body, { status: upstream.status, statusText: upstream.statusText, headers });
  }
  // A body whose framing is broken from its first byte is a 502, not a truncated answer.
  const peeked = await peekBody(upstream.body!, PEEK_WINDOW_MS);
  if (!peeked.ok) {
    ctx.error = `upstream response body: ${(peeked.error as Error)?.message ?? peeked.error}`;
    return errorResponse(502, ctx.traceId);
  }
  let body: ReadableStream<Uint8Array> | Uint8Array = peeked.body;
  if (plan.responseBodyAgents.length > 0) {
    const inspected = await responseBodyPhase(ctx, body as ReadableStream<Uint8Array>);
    if (inspected.response) return inspected.response;
    body = inspected.body;
  }
  return new Response(body, { status: upstream.status, statusText: upstream.statusText, headers });
}

/** Phase 6 — logging: exactly once per request, when the response is complete. */
function finish(ctx: RequestContext, state: ProxyState): void {
  if (ctx.finished) return;
  ctx.finished = true;
  state.inFlight--;
  ctx.rt.inFlight--;
  if (ctx.status !== 101) armConnectionTimer(ctx.server, ctx.req, keepAliveIdleSecs(ctx.listener));
  if (ctx.target) releaseTarget(ctx.target);
  if (ctx.bodyRest) {
    // A body limit crossed after the upstream had answered: nothing will drain the rest.
    ctx.bodyRest.cancel().catch(() => {});
    ctx.bodyRest = undefined;
  }
  if (state.aborting && ctx.status === 499) {
    // Not the client: the proxy closed the connection (logged as unavailable, not as 499).
    ctx.status = 503;
    ctx.error = SHUTDOWN_ABORT;
  }
  const durationMs = performance.now() - ctx.startedAt;
  logRequest(ctx, durationMs);
  requestCompletePhase(ctx, durationMs);
}

/** Requests answered with a byte array of known size (bytesOut already counted). */
const sized = new WeakSet<RequestContext>();

/** Wrap the response body so that `finish` runs when it has been fully sent (or abandoned). */
function finishOnBodyEnd(ctx: RequestContext, state: ProxyState, res: Response): Response {
  ctx.status = res.status;
  if (sized.has(ctx) || res.body === null) {
    // No body, or bytes handed to Bun whole (reading res.body would turn them into a stream).
    finish(ctx, state);
    return res;
  }
  const meter = { bytes: 0 };
  const body = guardResponseBody(res.body, ctx.plan?.readTimeoutMs ?? 30_000, meter, (err) => {
    ctx.bytesOut = meter.bytes;
    if (err && !ctx.error) ctx.error = `response body: ${(err as Error)?.message ?? err}`;
    finish(ctx, state);
  });
  return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
}

let turnWaiters: (() => void)[] = [];

function releaseTurnWaiters(): void {
  const waiters = turnWaiters;
  turnWaiters = [];
  for (let i = 0; i < waiters.length; i++) waiters[i]!();
}

/**
 * Resolves on the next macrotask turn (after Bun has looked at the rest of the connection's
 * input). Every request that waits in the same turn shares one setImmediate.
 */
function nextTurn(): Promise<void> {
  const { promise, resolve } = Promise.withResolvers<void>(); // no executor closure per request
  if (turnWaiters.push(resolve) === 1) setImmediate(releaseTurnWaiters);
  return promise;
}

/** Entry point for every HTTP request on a proxy listener. */
export async function handleRequest(req: Request, server: Server<unknown>, listener: ListenerConfig, state: ProxyState): Promise<Response | undefined> {
  const rt = state.current;
  const received = receive(req, server, listener, rt);
  if (received instanceof Rejection) {
    rejectedRequests.labels(String(received.status)).inc();
    const peer = server.requestIP(req)?.address ?? "";
    const clientIp = clientIpFor(peer, req, listener);
    logRejected(req, clientIp, received.status, received.traceId, received.reason);
    armConnectionTimer(server, req, keepAliveIdleSecs(listener));
    const res = received.response();
    return carriesBody(req) ? closeAfterBody(req, res) : res;
  }
  const ctx = received;
  state.inFlight++;
  rt.inFlight++;
  try {
    const r = route(ctx);
    armConnectionTimer(server, req, inFlightIdleSecs(listener, rt.config, r ? rt.plans.get(r.id) : undefined));
    if (!r) return end(ctx, state, errorResponse(404, ctx.traceId));
    ctx.plan = rt.plans.get(r.id)!;
    if (r.builtinHandler) return finishOnBodyEnd(ctx, state, await handleBuiltin(ctx, state, r.builtinHandler));
    const upgrade = isWebSocketUpgrade(req);
    if (upgrade && !r.websocket) return end(ctx, state, errorResponse(400, ctx.traceId));

    // HTTP/1.1 pipelining (SECURITY.md): Bun.serve closes a connection on which a request arrives
    // before the previous response is complete, aborting that previous request — after draining
    // microtasks, before the next macrotask. Waiting one macrotask turn before the first side
    // effect (agent call, upstream fetch) means that of several requests sent together none ever
    // reaches an agent or an upstream: the connection is closed and nothing is answered.
    await nextTurn();
    if (ctx.signal.aborted) {
      ctx.error = "connection closed before processing (pipelined request)";
      return end(ctx, state, errorResponse(499, ctx.traceId));
    }

    if (upgrade) {
      const filtered = await requestFilter(ctx);
      if (filtered.response) return end(ctx, state, filtered.response);
      return proxyWebSocket(ctx, () => finish(ctx, state));
    }

    const filtered = await requestFilter(ctx);
    if (filtered.response) return end(ctx, state, filtered.response);

    // Phase 4 — upstream request: choose a target and forward (with safe retries).
    const pool = ctx.plan.pool;
    if (!pool) {
      ctx.error = `route ${r.id} has no upstream`;
      return end(ctx, state, errorResponse(503, ctx.traceId));
    }
    const result = await forward({
      pool,
      method: ctx.method,
      pathAndQuery: ctx.path + ctx.query,
      headers: ctx.upstreamHeaders!.list,
      body: filtered.body,
      clientIp: ctx.clientIp,
      hashKey: ctx.path,
      signal: ctx.signal,
      timeoutMs: ctx.plan.upstreamTimeoutMs,
      connectTimeoutMs: ctx.plan.connectTimeoutMs,
      retry: r.retryPolicy,
      tracker: ctx,
    });
    if (!result.ok) {
      ctx.error = result.reason;
      if (result.target) {
        ctx.targetAddress = result.target.address; // for the log: the exchange did reach it
        if (ctx.target === result.target) ctx.target = undefined; // already released
      }
      if (result.status >= 502) logUpstreamFailure(ctx, result.status, result.reason);
      return end(ctx, state, errorResponse(result.status, ctx.traceId, result.status === 413 ? CLOSE : undefined));
    }
    return finishOnBodyEnd(ctx, state, await responseFilter(ctx, result.response));
  } catch (err) {
    ctx.error = `internal: ${(err as Error)?.message ?? err}`;
    return end(ctx, state, errorResponse(500, ctx.traceId));
  }
}

function end(ctx: RequestContext, state: ProxyState, res: Response): Response | Promise<Response> {
  ctx.status = res.status;
  const closes = res.status >= 400 && carriesBody(ctx.req);
  // The rest of a body whose limit was crossed goes to the drain (finish would cancel it).
  const handedOver = closes ? ctx.bodyRest : undefined;
  if (closes) ctx.bodyRest = undefined;
  finish(ctx, state);
  return closes ? closeAfterBody(ctx.req, res, handedOver) : res;
}

/**
 * An error answered while the request body may still be arriving closes the connection (Bun
 * would otherwise keep reading a slow or endless body after the answer); when nothing read any
 * of that body yet, or the limit handed it over, only after draining it, bounded (linger.ts), so
 * that the client reliably gets the answer. A 400 (framing in doubt) always closes at once, and
 * so does HEAD (Bun sends no body for it, so never pulls the drain). Used by `end` and for
 * `receive`'s rejections.
 */
function closeAfterBody(req: Request, res: Response, handedOver?: BodyReader): Response | Promise<Response> {
  const rest = res.status === 400 || req.method === "HEAD" ? null : unreadBody(req, handedOver);
  if (rest) return lingeringClose(res, rest);
  handedOver?.cancel().catch(() => {});
  res.headers.set("connection", "close");
  return res;
}

function carriesBody(req: Request): boolean {
  if (req.headers.has("transfer-encoding")) return true;
  const cl = req.headers.get("content-length");
  return cl !== null && cl !== "0";
}

