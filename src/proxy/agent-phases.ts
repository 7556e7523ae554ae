// Where agents run: request headers, request body, response headers, response body and request
// complete. Each function takes the request context and returns either nothing (proceed) or the
// Response that ends the request. Failure modes are applied here, in one place.
import type { AgentCallResult } from "../agents/agent.ts";
import type { AgentEvent, AgentReply, HeaderOp, RequestMetadata } from "../agents/types.ts";
import { agentErrors } from "../observability/metrics.ts";
import type { AgentTrace, RequestContext } from "./context.ts";
import { errorResponse } from "./errors.ts";
import { isSafeRedirect } from "../http/fields.ts";
import { applyHeaderOps, isValidHeaderValue, mutationProblem, toHeaderMap } from "./headers.ts";
import type { AgentStep } from "./runtime.ts";

const MAX_BLOCK_BODY = 64 * 1024;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
/** Largest body chunk sent to an agent in one event (fits gRPC's 4 MiB and v1's framing). */
const CHUNK_BYTES = 64 * 1024;

type Outcome =
  | { kind: "allow"; reply: AgentReply }
  | { kind: "deny"; response: Response }
  | { kind: "failed"; status: 503 | 504 | 413; reason: string }
  | { kind: "skipped" };

const isValidOp = (op: HeaderOp): boolean => mutationProblem(op) === null;

/** A deny's response header operations: the valid ones (an invalid one must not undo the deny). */
function applyValidOps(headers: Headers, ops: readonly HeaderOp[]): void {
  applyHeaderOps(headers, ops.filter(isValidOp));
}

/** Turn a non-allow decision into the client response (bounded, sanitised). */
function decisionResponse(ctx: RequestContext, reply: AgentReply): Response {
  const d = reply.decision;
  const headers = new Headers({ "x-correlation-id": ctx.traceId, "cache-control": "no-store" });
  if (d.kind === "block") {
    const status = Number.isInteger(d.status) && d.status >= 400 && d.status <= 599 ? d.status : 403;
    if (d.headers) {
      for (const [name, value] of Object.entries(d.headers)) {
        if (typeof value !== "string" || mutationProblem({ op: "set", name, value })) continue;
        if (name.toLowerCase() === "location" && !isSafeRedirect(value)) continue; // e.g. javascript:
        headers.set(name, value);
      }
    }
    let body = typeof d.body === "string" ? d.body : "";
    if (body.length > MAX_BLOCK_BODY) body = body.slice(0, MAX_BLOCK_BODY);
    if (body && !headers.has("content-type")) headers.set("content-type", "text/plain; charset=utf-8");
    applyValidOps(headers, reply.responseHeaders);
    return new Response(body || null, { status, headers });
  }
  if (d.kind === "redirect") {
    // An unsafe target (javascript:, //host, bytes outside Latin-1, perhaps copied from the
    // request) cannot be sent, but the agent did deny: 403, never the request going through.
    if (!isSafeRedirect(d.url)) {
      applyValidOps(headers, reply.responseHeaders);
      return new Response(null, { status: 403, headers });
    }
    const status = REDIRECT_STATUSES.has(d.status) ? d.status : 302;
    headers.set("location", d.url);
    applyValidOps(headers, reply.responseHeaders);
    return new Response(null, { status, headers });
  }
  if (d.kind === "challenge") {
    // Documented in docs/agents.md: 401 when the agent names an HTTP auth scheme in
    // params["www-authenticate"], else 403; the challenge itself is described in a JSON body
    // and the X-Sentinel-Challenge header.
    const params: Record<string, string> = {};
    for (const [k, v] of Object.entries(d.params ?? {})) if (typeof v === "string") params[k] = v;
    const www = params["www-authenticate"];
    const status = www && isValidHeaderValue(www) ? 401 : 403;
    if (status === 401) headers.set("www-authenticate", www!);
    if (isValidHeaderValue(d.challengeType) && d.challengeType.length <= 128) headers.set("x-sentinel-challenge", d.challengeType);
    headers.set("content-type", "application/json");
    applyValidOps(headers, reply.responseHeaders);
    return new Response(JSON.stringify({ challenge: d.challengeType, params }), { status, headers });
  }
  return errorResponse(500, ctx.traceId);
}

function failure(ctx: RequestContext, step: AgentStep, result: AgentCallResult & { ok: false }): Outcome {
  if (step.failureMode === "open") {
    ctx.agentTrace.push({ agent: step.agent.id, decision: `skipped:${result.kind}`, latencyMs: 0 });
    return { kind: "skipped" };
  }
  ctx.agentTrace.push({ agent: step.agent.id, decision: `error:${result.kind}`, latencyMs: 0 });
  return { kind: "failed", status: result.kind === "timeout" ? 504 : 503, reason: `agent ${step.agent.id}: ${result.message}` };
}

/** Judge one agent's result: valid allow, a deny response, or a failure by the failure mode. */
function judge(ctx: RequestContext, step: AgentStep, result: AgentCallResult): Outcome {
  if (!result.ok) return failure(ctx, step, result); // an answer it may not apply included (agents/reply-check.ts)
  const d = result.reply.decision;
  const trace: AgentTrace = { agent: step.agent.id, decision: d.kind, latencyMs: Math.round(result.latencyMs * 1000) / 1000 };
  // A deny carries its audit metadata; an allow only when it reports rules (a detection-only WAF event).
  if (d.kind !== "allow" || result.reply.audit.ruleIds.length > 0) {
    trace.ruleIds = result.reply.audit.ruleIds;
    trace.tags = result.reply.audit.tags;
  }
  ctx.agentTrace.push(trace);
  if (d.kind === "allow") return { kind: "allow", reply: result.reply };
  return { kind: "deny", response: decisionResponse(ctx, result.reply) };
}

function metadata(ctx: RequestContext): RequestMetadata {
  return {
    correlationId: ctx.correlationId,
    requestId: ctx.traceId,
    clientIp: ctx.clientIp,
    clientPort: ctx.clientPort,
    serverName: ctx.host || null,
    protocol: "HTTP/1.1",
    tlsVersion: null,
    routeId: ctx.plan?.route.id ?? null,
    upstreamId: ctx.plan?.route.upstream ?? null,
    timestampMs: Date.now(),
    traceparent: ctx.req.headers.get("traceparent") ?? undefined,
  };
}

const NO_OPS: HeaderOp[] = [];

/**
 * Request headers: every subscribed agent in parallel; the first non-allow in route order wins;
 * fail-closed errors answer 503/504 only when no agent denied. Returns the Response that ends
 * the request, or the allowed agents' request-header operations merged in route order (the
 * pipeline applies them, see headers.ts); response-header operations are deferred on ctx.
 */
export async function requestHeadersPhase(ctx: RequestContext): Promise<Response | HeaderOp[]> {
  const steps = ctx.plan!.requestHeadersAgents;
  if (steps.length === 0) return NO_OPS;
  const event: AgentEvent = {
    type: "request_headers",
    correlationId: ctx.correlationId,
    metadata: metadata(ctx),
    method: ctx.method,
    uri: ctx.path + ctx.query,
    headers: toHeaderMap(ctx.upstreamHeaders!.list),
  };
  const results =
    steps.length === 1
      ? [await steps[0]!.agent.call(event, ctx.signal)]
      : await Promise.all(steps.map((s) => s.agent.call(event, ctx.signal)));
  let failed: Outcome | undefined;
  const allowed: AgentReply[] = [];
  for (let i = 0; i < steps.length; i++) {
    const o = judge(ctx, steps[i]!, results[i]!);
    if (o.kind === "deny") return o.response;
    if (o.kind === "failed") failed ??= o;
    else if (o.kind === "allow") allowed.push(o.reply);
  }
  if (failed && failed.kind === "failed") {
    ctx.error = failed.reason;
    return errorResponse(failed.status, ctx.traceId, failed.status === 503 ? { "retry-after": "1" } : undefined);
  }
  let ops = NO_OPS;
  for (const reply of allowed) {
    if (reply.requestHeaders.length > 0) ops = ops === NO_OPS ? [...reply.requestHeaders] : ops.concat(reply.requestHeaders);
    if (reply.responseHeaders.length > 0) ctx.deferredResponseOps.push(...reply.responseHeaders);
  }
  return ops;
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/** Read at most `limit` bytes; `rest` continues the stream after the prefix when not done. */
export async function readPrefix(
  stream: ReadableStream<Uint8Array>,
  limit: number,
): Promise<{ data: Uint8Array; done: boolean; rest: ReadableStream<Uint8Array> | null }> {
  const reader = stream.getReader();
  const parts: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      reader.releaseLock();
      return { data: concat(parts, total), done: true, rest: null };
    }
    parts.push(value);
    total += value.byteLength;
    if (total > limit) break;
  }
  const prefix = concat(parts, total);
  let sentPrefix = false;
  const rest = new ReadableStream<Uint8Array>(
    {
      async pull(c) {
        if (!sentPrefix) {
          sentPrefix = true;
          c.enqueue(prefix);
          return;
        }
        const { done, value } = await reader.read();
        if (done) c.close();
        else c.enqueue(value);
      },
      cancel(r) {
        return reader.cancel(r);
      },
    },
    { highWaterMark: 0 },
  );
  return { data: prefix, done: false, rest };
}

/** Send one body to one agent as chunks; returns the outcome and the (possibly mutated) body. */
async function inspectBody(
  ctx: RequestContext,
  step: AgentStep,
  body: Uint8Array,
  type: "request_body_chunk" | "response_body_chunk",
): Promise<{ outcome: Outcome; body: Uint8Array }> {
  const cfg = step.agent.config;
  const mode = type === "request_body_chunk" ? cfg.requestBodyMode : cfg.responseBodyMode;
  const streaming = mode.kind === "stream" || (mode.kind === "hybrid" && body.byteLength > mode.thresholdBytes);
  const size = streaming ? CHUNK_BYTES : Math.max(body.byteLength, 1);
  const out: Uint8Array[] = [];
  let outBytes = 0;
  let index = 0;
  let last: Outcome = { kind: "skipped" };
  for (let off = 0; off < body.byteLength || index === 0; off += size, index++) {
    const data = body.subarray(off, Math.min(off + size, body.byteLength));
    const isLast = off + size >= body.byteLength;
    const event: AgentEvent = {
      type,
      correlationId: ctx.correlationId,
      data,
      isLast,
      totalSize: streaming ? null : body.byteLength,
      chunkIndex: index,
      bytesTransferred: off + data.byteLength,
    };
    const result = await step.agent.call(event, ctx.signal, streaming ? cfg.chunkTimeoutMs : undefined);
    last = judge(ctx, step, result);
    if (last.kind !== "allow") return { outcome: last, body };
    const reply = last.reply;
    const mutation = type === "request_body_chunk" ? reply.requestBodyMutation : reply.responseBodyMutation;
    const chunk = mutation && mutation.data !== null ? mutation.data : data;
    out.push(chunk);
    outBytes += chunk.byteLength;
    if (isLast) break;
    if (!reply.needsMore) {
      // The agent decided before the end: keep the rest unchanged.
      const rest = body.subarray(off + size);
      out.push(rest);
      outBytes += rest.byteLength;
      break;
    }
  }
  return { outcome: last, body: concat(out, outBytes) };
}

/**
 * Request body: buffered up to the largest inspecting agent's limit. An agent whose limit the
 * body exceeds follows its failure mode (closed → 413, open → skipped and counted).
 * Returns the body to forward (bytes, or a stream when nobody needed the whole body).
 */
export async function requestBodyPhase(
  ctx: RequestContext,
  body: ReadableStream<Uint8Array> | Uint8Array,
): Promise<{ response?: Response; body: ReadableStream<Uint8Array> | Uint8Array }> {
  const steps = ctx.plan!.requestBodyAgents;
  let limit = 0;
  for (const s of steps) limit = Math.max(limit, s.agent.config.maxRequestBodyBytes);
  // A body already read whole (declared length within every limit) needs no prefix reading.
  const prefix = body instanceof Uint8Array ? { data: body, done: true, rest: null } : await readPrefix(body, limit);
  let current = prefix.data;
  let failed: Outcome | undefined;
  for (const step of steps) {
    if (!prefix.done || current.byteLength > step.agent.config.maxRequestBodyBytes) {
      agentErrors.labels(step.agent.id, "body_limit").inc();
      if (step.failureMode === "closed") {
        ctx.agentTrace.push({ agent: step.agent.id, decision: "error:body_limit", latencyMs: 0 });
        ctx.error = `request body too large for inspection by ${step.agent.id}`;
        prefix.rest?.cancel().catch(() => {});
        return { response: errorResponse(413, ctx.traceId, { connection: "close" }), body: current };
      }
      ctx.agentTrace.push({ agent: step.agent.id, decision: "skipped:body_limit", latencyMs: 0 });
      continue;
    }
    const { outcome, body: mutated } = await inspectBody(ctx, step, current, "request_body_chunk");
    if (outcome.kind === "deny") return { response: outcome.response, body: current };
    if (outcome.kind === "failed") {
      failed = outcome;
      break;
    }
    current = mutated;
  }
  if (failed && failed.kind === "failed") {
    ctx.error = failed.reason;
    return { response: errorResponse(failed.status, ctx.traceId), body: current };
  }
  return { body: prefix.done ? current : prefix.rest! };
}

/** Response headers: subscribed agents one after another in route order. */
export async function responseHeadersPhase(ctx: RequestContext, status: number, headers: Headers): Promise<Response | undefined> {
  const steps = ctx.plan!.responseHeadersAgents;
  if (steps.length === 0) return undefined;
  const event: AgentEvent = { type: "response_headers", correlationId: ctx.correlationId, status, headers: toHeaderMap(headers) };
  for (const step of steps) {
    const o = judge(ctx, step, await step.agent.call(event, ctx.signal));
    if (o.kind === "deny") return o.response;
    if (o.kind === "failed") {
      ctx.error = o.reason;
      return errorResponse(o.status, ctx.traceId);
    }
    if (o.kind === "allow") applyHeaderOps(headers, o.reply.responseHeaders);
  }
  return undefined;
}

/** Response body: buffered (bounded) and inspected; returns a replacement response or the body. */
export async function responseBodyPhase(
  ctx: RequestContext,
  body: ReadableStream<Uint8Array>,
): Promise<{ response?: Response; body: ReadableStream<Uint8Array> | Uint8Array }> {
  const steps = ctx.plan!.responseBodyAgents;
  let limit = 0;
  for (const s of steps) limit = Math.max(limit, s.agent.config.maxResponseBodyBytes);
  const prefix = await readPrefix(body, limit);
  let current = prefix.data;
  for (const step of steps) {
    if (!prefix.done || current.byteLength > step.agent.config.maxResponseBodyBytes) {
      agentErrors.labels(step.agent.id, "body_limit").inc();
      if (step.failureMode === "closed") {
        ctx.agentTrace.push({ agent: step.agent.id, decision: "error:body_limit", latencyMs: 0 });
        ctx.error = `response body too large for inspection by ${step.agent.id}`;
        prefix.rest?.cancel().catch(() => {});
        return { response: errorResponse(502, ctx.traceId), body: current };
      }
      ctx.agentTrace.push({ agent: step.agent.id, decision: "skipped:body_limit", latencyMs: 0 });
      continue;
    }
    const { outcome, body: mutated } = await inspectBody(ctx, step, current, "response_body_chunk");
    if (outcome.kind === "deny") return { response: outcome.response, body: current };
    if (outcome.kind === "failed") {
      ctx.error = outcome.reason;
      return { response: errorResponse(outcome.status === 413 ? 502 : outcome.status, ctx.traceId), body: current };
    }
    current = mutated;
  }
  return { body: prefix.done ? current : prefix.rest! };
}

/** Request complete: fire and forget to subscribed agents. */
export function requestCompletePhase(ctx: RequestContext, durationMs: number): void {
  const steps = ctx.plan?.completeAgents;
  if (!steps || steps.length === 0) return;
  const event: AgentEvent = {
    type: "request_complete",
    correlationId: ctx.correlationId,
    status: ctx.status,
    durationMs: Math.round(durationMs),
    requestBodySize: ctx.bytesIn,
    responseBodySize: ctx.bytesOut,
    upstreamAttempts: ctx.attempts,
    error: ctx.error ?? null,
  };
  for (const s of steps) s.agent.notify(event);
}

export function applyDeferredResponseOps(ctx: RequestContext, headers: Headers): void {
  if (ctx.deferredResponseOps.length > 0) applyHeaderOps(headers, ctx.deferredResponseOps as HeaderOp[]);
}
