// A Runtime is one immutable snapshot of everything a request needs, built from one config.
// Reload builds a new Runtime (reusing unchanged pools and agents) and swaps it atomically;
// a request keeps the snapshot it started with.
import type { FailureMode, HeaderOpConfig, RouteConfig, SentinelConfig } from "../config/types.ts";
import { buildRouter, type Router } from "../routing/router.ts";
import { createPool, type Pool } from "../upstreams/pool.ts";
import { startHealthChecks } from "../upstreams/health.ts";
import type { Agent } from "../agents/agent.ts";
import { createAgentRegistry, type AgentRegistry } from "../agents/registry.ts";

export interface AgentStep {
  agent: Agent;
  failureMode: FailureMode;
  filterId: string;
}

export interface RoutePlan {
  route: RouteConfig;
  pool?: Pool;
  /** Agent filters in route order. */
  agents: AgentStep[];
  requestHeadersAgents: AgentStep[];
  requestBodyAgents: AgentStep[];
  responseHeadersAgents: AgentStep[];
  responseBodyAgents: AgentStep[];
  completeAgents: AgentStep[];
  requestHeaderOps: HeaderOpConfig[];
  responseHeaderOps: HeaderOpConfig[];
  /** Deadline for the upstream response headers. */
  upstreamTimeoutMs: number;
  /** Deadline for a new upstream connection (the upstream's `timeouts connect`, or a timeout filter's). */
  connectTimeoutMs: number;
  readTimeoutMs: number;
  maxBodySize: number;
  /** Largest agent request-body inspection limit (0 when no agent inspects bodies). */
  needsRequestBody: boolean;
}

export interface Runtime {
  config: SentinelConfig;
  router: Router;
  pools: Map<string, Pool>;
  agents: AgentRegistry;
  plans: Map<string, RoutePlan>;
  /** Stop functions of background work owned by this runtime (upstream health checks). */
  stops: Array<() => void>;
  /** Requests currently served with this snapshot (counted by the pipeline); reload waits for 0 before closing what it retired. */
  inFlight: number;
}

function plan(route: RouteConfig, config: SentinelConfig, pools: Map<string, Pool>, agents: AgentRegistry): RoutePlan {
  const steps: AgentStep[] = [];
  const requestHeaderOps = [...route.requestHeaderOps];
  const responseHeaderOps = [...route.responseHeaderOps];
  const pool = route.upstream ? pools.get(route.upstream) : undefined;
  let upstreamTimeoutMs = route.timeoutMs ?? pool?.config.requestTimeoutMs ?? 60_000;
  let connectTimeoutMs = pool?.config.connectTimeoutMs ?? 10_000;
  for (const filterId of route.filters) {
    const f = config.filters.get(filterId);
    if (!f) continue;
    if (f.type === "agent") {
      const agent = agents.get(f.agent);
      if (agent) steps.push({ agent, failureMode: f.failureMode ?? route.failureMode ?? agent.config.failureMode, filterId });
    } else if (f.type === "headers") {
      if (f.phase === "request" || f.phase === "both") requestHeaderOps.push(...f.ops);
      if (f.phase === "response" || f.phase === "both") responseHeaderOps.push(...f.ops);
    } else if (f.type === "timeout") {
      upstreamTimeoutMs = f.upstreamTimeoutMs ?? f.requestTimeoutMs ?? upstreamTimeoutMs;
      connectTimeoutMs = f.connectTimeoutMs ?? connectTimeoutMs;
    }
  }
  const by = (e: Parameters<Agent["subscribes"]>[0]) => steps.filter((s) => s.agent.subscribes(e));
  const requestBodyAgents = by("request_body");
  return {
    route,
    pool,
    agents: steps,
    requestHeadersAgents: by("request_headers"),
    requestBodyAgents,
    responseHeadersAgents: by("response_headers"),
    responseBodyAgents: by("response_body"),
    completeAgents: by("request_complete"),
    requestHeaderOps,
    responseHeaderOps,
    upstreamTimeoutMs,
    connectTimeoutMs,
    readTimeoutMs: pool?.config.readTimeoutMs ?? 30_000,
    maxBodySize: route.maxBodySize ?? config.limits.maxBodySize,
    needsRequestBody: requestBodyAgents.length > 0,
  };
}

/** Config equality ignoring source locations (a moved block is not a changed block). */
function sameConfig(a: unknown, b: unknown): boolean {
  const strip = (k: string, v: unknown) => (k === "loc" ? undefined : v);
  return JSON.stringify(a, strip) === JSON.stringify(b, strip);
}

export function buildRuntime(config: SentinelConfig, previous?: Runtime): Runtime {
  const pools = new Map<string, Pool>();
  for (const [id, uc] of config.upstreams) {
    // An unchanged upstream keeps its Pool object (health, ejections, balancing state, active counts).
    const prev = previous?.pools.get(id);
    pools.set(id, prev && sameConfig(prev.config, uc) ? prev : createPool(uc, prev));
  }
  const agents = createAgentRegistry(config.agents, previous?.agents);
  const plans = new Map<string, RoutePlan>();
  for (const r of config.routes) plans.set(r.id, plan(r, config, pools, agents));
  return { config, router: buildRouter(config.routes), pools, agents, plans, stops: [], inFlight: 0 };
}

/** Start the runtime's background work (agent connections, upstream health checks). */
export function startRuntime(rt: Runtime): void {
  for (const pool of rt.pools.values()) rt.stops.push(startHealthChecks(pool));
  for (const a of rt.agents.all()) a.start();
}

export function stopHealthChecks(rt: Runtime): void {
  for (const stop of rt.stops.splice(0)) stop();
}
