// Phase 6 — logging: metrics, the access log line and the audit line of one request.
//
// Hot path: the labelled metric children are cached per route id (and method × status class),
// so a request costs two Map lookups, an inc and an observe; the log lines are serialised and
// handed to a non-blocking sink (src/observability/access-log.ts).
import type { RequestContext } from "./context.ts";
import { requestDuration, requestsTotal } from "../observability/metrics.ts";
import { fastCounterChild, fastHistogramChild } from "../observability/fast-series.ts";
import type { LineSink } from "../observability/access-log.ts";
import { log } from "../observability/log.ts";

export interface LogSinks {
  access?: { sink: LineSink; format: "json" | "combined" };
  audit?: LineSink;
  /** audit-log log-waf-events: also audit allow answers that report rule ids. */
  auditWafEvents?: boolean;
}

let sinks: LogSinks = {};

export function setLogSinks(next: LogSinks): void {
  sinks = next;
}

export function getLogSinks(): LogSinks {
  return sinks;
}

// ---- metrics -------------------------------------------------------------------------------

/** Bounded method label: the standard methods, everything else is OTHER. */
const METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER"];
const METHOD_INDEX = new Map(METHODS.map((m, i) => [m, i]));
const OTHER = METHODS.length - 1;
const STATUS_CLASS = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

interface RouteSeries {
  route: string;
  duration: { observe(v: number): void };
  counts: Array<{ inc(): void } | undefined>; // [method * 6 + class]
}

/** Label value for requests that matched no route. */
export const NO_ROUTE = "none";
const byRoute = new Map<string, RouteSeries>();
/** Routes a reload removed: requests still finishing on the old config must not resurrect their series. */
const removedRoutes = new Set<string>();
const NOOP_SERIES: RouteSeries = { route: "", duration: { observe() {} }, counts: new Array(METHODS.length * STATUS_CLASS.length).fill({ inc() {} }) };

function routeSeries(route: string): RouteSeries {
  let s = byRoute.get(route);
  if (!s) {
    if (removedRoutes.has(route)) return NOOP_SERIES;
    s = { route, duration: fastHistogramChild(requestDuration, { route }), counts: new Array(METHODS.length * STATUS_CLASS.length) };
    requestDuration.zero({ route }); // exported (empty) from the start
    byRoute.set(route, s);
  }
  return s;
}

function countRequest(s: RouteSeries, method: string, status: number): void {
  const m = METHOD_INDEX.get(method) ?? OTHER;
  const c = status >= 100 && status < 600 ? Math.floor(status / 100) : 0;
  const i = m * STATUS_CLASS.length + c;
  let child = s.counts[i];
  if (child === undefined) child = s.counts[i] = fastCounterChild(requestsTotal, { route: s.route, method: METHODS[m]!, status_class: STATUS_CLASS[c]! });
  child.inc();
}

/** After a reload: pre-create the duration series of the configured routes and drop those of removed routes. */
export function syncRouteSeries(routeIds: Iterable<string>): void {
  const keep = new Set(routeIds);
  keep.add(NO_ROUTE);
  for (const id of keep) {
    removedRoutes.delete(id);
    routeSeries(id);
  }
  for (const [id, s] of byRoute) {
    if (keep.has(id)) continue;
    byRoute.delete(id);
    removedRoutes.add(id);
    requestDuration.remove(id);
    for (let i = 0; i < s.counts.length; i++)
      if (s.counts[i]) requestsTotal.remove(id, METHODS[Math.floor(i / STATUS_CLASS.length)]!, STATUS_CLASS[i % STATUS_CLASS.length]!);
  }
}

// ---- lines -----------------------------------------------------------------------------------

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const pad = (n: number) => (n < 10 ? "0" + n : String(n));

/** Common Log Format time, in UTC: 10/Oct/2000:13:55:36 +0000 */
function clfTime(d: Date): string {
  return `${pad(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`;
}

/** Escape a value for a quoted CLF field: quotes, backslashes and control characters. */
const CLF_ESCAPED = /["\\\x00-\x1f\x7f]/g;
const clfEscape = (c: string) => (c === '"' || c === "\\" ? "\\" + c : "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
const clfQuote = (s: string) => s.replace(CLF_ESCAPED, clfEscape);

/** NCSA combined format (the path is the normalised one, the query is not logged). */
function combined(ctx: RequestContext, now: Date): string {
  const ua = ctx.req.headers.get("user-agent") ?? "-";
  const ref = ctx.req.headers.get("referer") ?? "-";
  const bytes = ctx.bytesOut > 0 ? String(ctx.bytesOut) : "-";
  return `${ctx.clientIp || "-"} - - [${clfTime(now)}] "${ctx.method} ${clfQuote(ctx.path)} HTTP/1.1" ${ctx.status} ${bytes} "${clfQuote(ref)}" "${clfQuote(ua)}"`;
}

/** Decisions that changed the outcome and so get an audit line. */
function audited(decision: string): boolean {
  return decision === "block" || decision === "redirect" || decision === "challenge" || decision.startsWith("error:");
}

/** At most one operational line per upstream target this often; the rest are counted into it. */
const UPSTREAM_FAILURE_LOG_MS = 1000;
const upstreamFailures = new Map<string, { loggedAt: number; suppressed: number }>();

/**
 * An exchange with an upstream that failed (502, 503, 504): a `warn` line in the operational log
 * (and so in the error log), as nginx writes "connect() failed … while connecting to upstream".
 * At most one per target and second: an outage must not flood the log; the line says how many
 * failures it stands for.
 */
export function logUpstreamFailure(ctx: RequestContext, status: number, reason: string): void {
  const key = ctx.targetAddress ?? ctx.plan?.route.upstream ?? "-";
  const now = performance.now();
  const seen = upstreamFailures.get(key);
  if (seen !== undefined && now - seen.loggedAt < UPSTREAM_FAILURE_LOG_MS) {
    seen.suppressed++;
    return;
  }
  if (upstreamFailures.size > 4096) upstreamFailures.clear(); // bounded: targets come from the config
  upstreamFailures.set(key, { loggedAt: now, suppressed: 0 });
  log("warn", "upstream request failed", {
    status,
    error: reason,
    target: ctx.targetAddress ?? null,
    upstream: ctx.plan?.route.upstream ?? null,
    route: ctx.plan?.route.id ?? null,
    trace_id: ctx.traceId,
    similar_failures_not_logged: seen?.suppressed ?? 0,
  });
}

/** Longest raw target or Host written for a refused request (the rest is cut, with "…"). */
const MAX_LOGGED_TARGET = 1024;
const cut = (s: string) => (s.length > MAX_LOGGED_TARGET ? s.slice(0, MAX_LOGGED_TARGET) + "…" : s);

/**
 * A request refused before routing (receive's 400/405/414/431): one access line with what is
 * known, the raw target (it may not normalise) and the reason. Counted apart, in
 * sentinel_rejected_requests_total, not in the per-route series.
 */
export function logRejected(req: Request, clientIp: string, status: number, traceId: string, reason: string): void {
  const access = sinks.access;
  if (!access) return;
  const url = req.url;
  const slash = url.charCodeAt(0) === 0x2f ? 0 : url.indexOf("/", url.indexOf("://") + 3);
  const q = slash < 0 ? -1 : url.indexOf("?", slash);
  const target = cut(slash < 0 ? "/" : q < 0 ? url.slice(slash) : url.slice(slash, q)); // no query, as for served requests
  const now = new Date();
  if (access.format === "combined") {
    const ua = req.headers.get("user-agent") ?? "-";
    const ref = req.headers.get("referer") ?? "-";
    access.sink.write(`${clientIp || "-"} - - [${clfTime(now)}] "${req.method} ${clfQuote(target)} HTTP/1.1" ${status} - "${clfQuote(ref)}" "${clfQuote(ua)}"`);
    return;
  }
  access.sink.write(
    JSON.stringify({
      time: now.toISOString(),
      trace_id: traceId,
      client_ip: clientIp,
      method: req.method,
      path: target,
      host: cut(req.headers.get("host") ?? ""),
      route: null,
      upstream: null,
      target: null,
      status,
      bytes_in: 0,
      bytes_out: 0,
      duration_ms: 0,
      attempts: 0,
      agents: [],
      error: `refused: ${reason}`,
    }),
  );
}

export function logRequest(ctx: RequestContext, durationMs: number): void {
  const routeId = ctx.plan?.route.id ?? NO_ROUTE;
  const series = routeSeries(routeId);
  countRequest(series, ctx.method, ctx.status);
  series.duration.observe(durationMs / 1000);

  const access = sinks.access;
  const audit = sinks.audit;
  if (!access && !audit) return;
  const now = new Date();
  if (access) {
    if (access.format === "combined") access.sink.write(combined(ctx, now));
    else
      access.sink.write(
        JSON.stringify({
          time: now.toISOString(),
          trace_id: ctx.traceId,
          client_ip: ctx.clientIp,
          method: ctx.method,
          path: ctx.path,
          host: ctx.host,
          route: ctx.plan?.route.id ?? null,
          upstream: ctx.plan?.route.upstream ?? null,
          target: ctx.target?.address ?? ctx.targetAddress ?? null,
          status: ctx.status,
          bytes_in: ctx.bytesIn,
          bytes_out: ctx.bytesOut,
          duration_ms: Math.round(durationMs * 1000) / 1000,
          attempts: ctx.attempts,
          agents: ctx.agentTrace,
          error: ctx.error ?? null,
        }),
      );
  }
  if (audit && ctx.agentTrace.length > 0) {
    for (const a of ctx.agentTrace) {
      if (!audited(a.decision) && !(sinks.auditWafEvents === true && a.ruleIds !== undefined && a.ruleIds.length > 0)) continue;
      audit.write(
        JSON.stringify({
          time: now.toISOString(),
          trace_id: ctx.traceId,
          client_ip: ctx.clientIp,
          method: ctx.method,
          path: ctx.path,
          route: ctx.plan?.route.id ?? null,
          agent: a.agent,
          decision: a.decision,
          rule_ids: a.ruleIds ?? [],
          tags: a.tags ?? [],
          latency_ms: a.latencyMs,
          status: ctx.status,
        }),
      );
    }
  }
}
