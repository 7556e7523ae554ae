// Built-in handlers (`builtin-handler` on a route): health, status, metrics, not-found,
// config (redacted) and upstreams (target health).
import type { RouteConfig, SentinelConfig } from "../config/types.ts";
import type { RequestContext } from "./context.ts";
import type { ProxyState } from "./pipeline.ts";
import { registry } from "../observability/metrics.ts";
import { errorResponse } from "./errors.ts";
import { waitingFor } from "../upstreams/slots.ts";

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", "cache-control": "no-store" } });

// Redaction of the effective config (builtin "config"): values under secret-looking keys, the
// value of header operations / matches on credential headers, URL userinfo, and each agent's
// free-form `config {}` block (delivered to the agent, often holding its secrets) as a whole.
const SECRET_KEY = /(secret|password|passwd|token|key|credential|hmac|auth|cookie|signature|private)/i;
const SECRET_HEADER = /^(authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key|x-auth-token|x-csrf-token)$|secret|token|password|api[-_]?key|signature/i;
const URL_USERINFO = /(\b[a-z][a-z0-9+.-]*:\/\/)[^/@\s]+@/gi;

function redact(value: unknown, depth = 0): unknown {
  if (depth > 20) return "[deep]";
  if (value instanceof Map) return Object.fromEntries([...value].map(([k, v]) => [k, redact(v, depth + 1)]));
  if (value instanceof RegExp) return value.source;
  if (typeof value === "string") return value.replace(URL_USERINFO, "$1[redacted]@");
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    const o = value as Record<string, unknown>;
    const headerName = typeof o.name === "string" ? o.name : typeof o.from === "string" ? o.from : undefined;
    const secretHeader = headerName !== undefined && SECRET_HEADER.test(headerName);
    for (const [k, v] of Object.entries(o)) {
      if (k === "loc") continue;
      if (secretHeader && k === "value" && v !== undefined) out[k] = "[redacted]";
      else out[k] = SECRET_KEY.test(k) && (typeof v === "string" || typeof v === "number") ? "[redacted]" : redact(v, depth + 1);
    }
    return out;
  }
  return value;
}

export function redactedConfig(config: SentinelConfig): unknown {
  const agents = [...config.agents.values()].map((a) => ({ ...a, config: a.config === undefined ? undefined : "[redacted]" }));
  return redact({ ...config, agents });
}

/** Readiness: not ready while draining, or when a fail-closed agent that every route needs is down. */
export function readiness(state: ProxyState): { ready: boolean; reason?: string } {
  if (state.draining) return { ready: false, reason: "draining" };
  const rt = state.current;
  const proxied = [...rt.plans.values()].filter((p) => !p.route.builtinHandler);
  if (proxied.length === 0) return { ready: true };
  for (const agent of rt.agents.all()) {
    if (agent.isHealthy()) continue;
    const requiredEverywhere = proxied.every((p) => p.agents.some((s) => s.agent === agent && s.failureMode === "closed"));
    if (requiredEverywhere) return { ready: false, reason: `agent ${agent.id} unavailable` };
  }
  return { ready: true };
}

export function upstreamsReport(state: ProxyState): unknown {
  const now = Date.now();
  return Object.fromEntries(
    [...state.current.pools.values()].map((p) => [
      p.id,
      {
        load_balancing: p.config.loadBalancing,
        targets: p.targets.map((t) => ({
          address: t.address,
          weight: t.weight,
          healthy: t.healthy,
          ejected: t.ejectedUntil > now,
          active_requests: t.active,
          waiting: waitingFor(t),
        })),
      },
    ]),
  );
}

export async function handleBuiltin(ctx: RequestContext, state: ProxyState, handler: NonNullable<RouteConfig["builtinHandler"]>): Promise<Response> {
  switch (handler) {
    case "health":
      return json({ status: "ok" });
    case "status": {
      const r = readiness(state);
      return json({ status: r.ready ? "ready" : "not_ready", reason: r.reason }, r.ready ? 200 : 503);
    }
    case "metrics":
      return new Response(await registry.metrics(), { headers: { "content-type": registry.contentType } });
    case "config":
      return json(redactedConfig(state.current.config));
    case "upstreams":
      return json(upstreamsReport(state));
    case "not-found":
      return errorResponse(404, ctx.traceId);
  }
}
