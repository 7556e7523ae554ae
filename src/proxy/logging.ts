// Phase 6 — logging: metrics, the access log line and the audit line of one request.
import type { RequestContext } from "./context.ts";
import { requestDuration, requestsTotal } from "../observability/metrics.ts";
import type { LineSink } from "../observability/access-log.ts";

export interface LogSinks {
  access?: { sink: LineSink; format: "json" | "combined" };
  audit?: LineSink;
}

let sinks: LogSinks = {};

export function setLogSinks(next: LogSinks): void {
  sinks = next;
}

const STATUS_CLASS = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

function combined(ctx: RequestContext): string {
  const t = new Date();
  const ua = ctx.req.headers.get("user-agent") ?? "-";
  const ref = ctx.req.headers.get("referer") ?? "-";
  const q = (s: string) => s.replace(/["\\]/g, (c) => "\\" + c);
  return `${ctx.clientIp || "-"} - - [${t.toISOString()}] "${ctx.method} ${q(ctx.path + ctx.query)} HTTP/1.1" ${ctx.status} ${ctx.bytesOut} "${q(ref)}" "${q(ua)}"`;
}

export function logRequest(ctx: RequestContext, durationMs: number): void {
  const routeId = ctx.plan?.route.id ?? "none";
  requestsTotal.labels(routeId, ctx.method, STATUS_CLASS[Math.floor(ctx.status / 100)] ?? "0xx").inc();
  requestDuration.labels(routeId).observe(durationMs / 1000);
  const access = sinks.access;
  if (access) {
    if (access.format === "combined") access.sink.write(combined(ctx));
    else
      access.sink.write(
        JSON.stringify({
          time: new Date().toISOString(),
          trace_id: ctx.traceId,
          client_ip: ctx.clientIp,
          method: ctx.method,
          path: ctx.path,
          route: ctx.plan?.route.id ?? null,
          upstream: ctx.plan?.route.upstream ?? null,
          target: ctx.target?.address ?? null,
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
  if (sinks.audit && ctx.agentTrace.length > 0) {
    for (const a of ctx.agentTrace) {
      if (a.decision === "allow") continue;
      sinks.audit.write(
        JSON.stringify({
          time: new Date().toISOString(),
          trace_id: ctx.traceId,
          client_ip: ctx.clientIp,
          method: ctx.method,
          path: ctx.path,
          route: ctx.plan?.route.id ?? null,
          agent: a.agent,
          decision: a.decision,
          rule_ids: a.ruleIds ?? [],
          tags: a.tags ?? [],
          status: ctx.status,
        }),
      );
    }
  }
}
