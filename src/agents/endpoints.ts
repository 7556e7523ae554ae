// Endpoints of one agent: "pattern 3" (replicated agents). An agent may name several endpoints
// (`grpc "http://a:50051" "http://b:50051"`, `unix-socket "/a.sock" "/b.sock"`) or a DNS name
// whose every address is an endpoint (`grpc "dns://agents.svc:50051"`, re-resolved every
// `resolve-interval-secs`). Each endpoint has its own transport, circuit breaker and health
// monitor (AgentEndpoint below); the Agent (agent.ts) picks among them per call.
//
// Selection is rendezvous (highest-random-weight) hashing of the call's correlation id over the
// endpoints that are usable right now:
// - every event of one request (headers, body chunks, response, request_complete) goes to the
//   same replica while it stays usable, with no per-request state in the proxy (agents that keep
//   per-request state, e.g. a WAF accumulating a body, see the whole request);
// - requests spread evenly over the replicas (the hash is seeded per process, so a client that
//   chooses its request id cannot choose, or pile onto, a replica);
// - when an endpoint leaves (or comes back), only the requests that hashed to it move.
//
// This file also owns the endpoint-labelled metrics; they exist only for replicated agents, so a
// single-endpoint agent costs nothing extra. Label cardinality is bounded: endpoints come from
// the config or a DNS answer, at most MAX_AGENT_ENDPOINTS per agent, and the series of an
// endpoint that goes away are removed.

import { lookup as dnsLookup } from "node:dns/promises";
import client from "../observability/prom.ts";
import { MAX_AGENT_ENDPOINTS, type AgentConfig } from "../config/types.ts";
import { registry } from "../observability/metrics.ts";
import { CircuitBreaker, type CircuitState } from "./breaker.ts";
import { sharedDeadlines, type DeadlineHandle } from "./deadline.ts";
import { HealthMonitor } from "./health.ts";
import type { AgentTransport } from "./types.ts";

// ---- hashing and selection ---------------------------------------------------------------------

/** murmur3's 32-bit finaliser: a bijection with full avalanche. */
export function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** FNV-1a of `s` (UTF-16 code units) with a seed, finalised. */
export function hashString(s: string, seed = 0): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return mix32(h);
}

/** Rendezvous weight of an endpoint (by its salt) for a key hash. */
export function weight(keyHash: number, salt: number): number {
  return mix32((keyHash ^ salt) >>> 0);
}

export interface Selectable {
  /** hashString(address): fixed per address, so the same key prefers the same address everywhere. */
  readonly salt: number;
}

/**
 * The endpoint with the highest rendezvous weight for `keyHash` among those `ok` accepts and
 * `skip` does not hold; null when there is none. No allocation.
 */
export function pickEndpoint<E extends Selectable>(eps: readonly E[], keyHash: number, ok: (e: E) => boolean, skip: ReadonlySet<E> | null): E | null {
  let best: E | null = null;
  let bestW = -1;
  for (let i = 0; i < eps.length; i++) {
    const e = eps[i]!;
    if (skip !== null && skip.has(e)) continue;
    if (!ok(e)) continue;
    const w = weight(keyHash, e.salt);
    if (w > bestW) {
      best = e;
      bestW = w;
    }
  }
  return best;
}

// ---- DNS ------------------------------------------------------------------------------------------

export type LookupAll = (name: string) => Promise<string[]>;

/** Every address `name` resolves to (A and AAAA, via getaddrinfo: /etc/hosts applies). */
export const systemLookup: LookupAll = async (name) => (await dnsLookup(name, { all: true, verbatim: true })).map((r) => r.address);

/**
 * The endpoint URLs of a DNS-named agent: each distinct address of `name` as
 * `scheme://ip:port` (IPv6 in brackets), sorted, at most MAX_AGENT_ENDPOINTS. Rejects when the
 * lookup fails; resolves [] when the name has no address.
 */
export async function resolveEndpoints(
  dns: NonNullable<AgentConfig["transport"]["dns"]>,
  lookup: LookupAll = systemLookup,
): Promise<{ endpoints: string[]; dropped: number }> {
  const ips = [...new Set(await lookup(dns.name))].sort();
  const urls = ips.map((ip) => endpointUrl(dns.scheme, ip, dns.port));
  return { endpoints: urls.slice(0, MAX_AGENT_ENDPOINTS), dropped: Math.max(0, urls.length - MAX_AGENT_ENDPOINTS) };
}

export function endpointUrl(scheme: "http" | "https", ip: string, port: number): string {
  return `${scheme}://${ip.includes(":") ? `[${ip}]` : ip}:${port}`;
}

// ---- metrics (replicated agents only) ----------------------------------------------------------

export const agentEndpointHealth = new client.Gauge({
  name: "sentinel_agent_endpoint_health",
  help: "Replicated agents: 1 when the endpoint is connected, passes its health check and its circuit is not open (it receives calls)",
  labelNames: ["agent", "endpoint"],
  registers: [registry],
});
export const agentEndpointCircuitState = new client.Gauge({
  name: "sentinel_agent_endpoint_circuit_state",
  help: "Replicated agents: the endpoint's circuit breaker state: 0 closed, 1 open, 2 half-open",
  labelNames: ["agent", "endpoint"],
  registers: [registry],
});
export const agentEndpointCalls = new client.Counter({
  name: "sentinel_agent_endpoint_calls_total",
  help: "Replicated agents: call attempts sent to the endpoint (a failed-over call counts once per endpoint tried)",
  labelNames: ["agent", "endpoint"],
  registers: [registry],
});
export const agentEndpointErrors = new client.Counter({
  name: "sentinel_agent_endpoint_errors_total",
  help: "Replicated agents: failed call attempts by endpoint and kind (timeout, connect, protocol, closed, overload), including those another endpoint then answered",
  labelNames: ["agent", "endpoint", "kind"],
  registers: [registry],
});
export const agentEndpointCount = new client.Gauge({
  name: "sentinel_agent_endpoints",
  help: "Replicated agents: endpoints currently configured or resolved",
  labelNames: ["agent"],
  registers: [registry],
});
export const agentFailovers = new client.Counter({
  name: "sentinel_agent_failovers_total",
  help: "Replicated agents: calls moved to another endpoint after one failed without an answer (not sent, connect, connection closed)",
  labelNames: ["agent"],
  registers: [registry],
});

export type EndpointErrorKind = "timeout" | "connect" | "protocol" | "closed" | "overload";
type Counter = { inc(v?: number): void };

export interface EndpointMetrics {
  calls: Counter;
  errors: Record<EndpointErrorKind, Counter>;
  health: { set(v: number): void };
  circuit: { set(v: number): void };
}

/** Which endpoint object last published the series of an (agent, endpoint) pair (hot reload). */
const seriesOwner = new Map<string, AgentEndpoint>();
const seriesKey = (agent: string, endpoint: string) => `${agent}\u0000${endpoint}`;

function bindMetrics(agent: string, endpoint: string): EndpointMetrics {
  const err = (kind: EndpointErrorKind) => agentEndpointErrors.labels({ agent, endpoint, kind });
  return {
    calls: agentEndpointCalls.labels({ agent, endpoint }),
    errors: { timeout: err("timeout"), connect: err("connect"), protocol: err("protocol"), closed: err("closed"), overload: err("overload") },
    health: agentEndpointHealth.labels({ agent, endpoint }),
    circuit: agentEndpointCircuitState.labels({ agent, endpoint }),
  };
}

// ---- one endpoint --------------------------------------------------------------------------------

export interface EndpointHooks {
  connectivity(ep: AgentEndpoint, connected: boolean): void;
  healthCheck(ep: AgentEndpoint, passing: boolean, reason: string): void;
  circuit(ep: AgentEndpoint, from: CircuitState, to: CircuitState): void;
}

export const CIRCUIT_GAUGE: Record<CircuitState, number> = { closed: 0, open: 1, half_open: 2 };

/** One address of an agent: its transport, breaker and health monitor. */
export class AgentEndpoint implements Selectable {
  readonly salt: number;
  readonly breaker: CircuitBreaker;
  readonly health: HealthMonitor;
  /** Endpoint-labelled metrics; null for a single-endpoint agent. */
  readonly m: EndpointMetrics | null;
  /** Last published eligibility (replicated agents' endpoint gauge and logs). */
  lastEligible: boolean | null = null;
  /** Taken out of the agent (DNS answer no longer has it, or the agent closed). */
  removed = false;
  private reopenPoll: DeadlineHandle | null = null;

  constructor(
    readonly agentId: string,
    readonly address: string,
    readonly transport: AgentTransport,
    config: AgentConfig,
    hooks: EndpointHooks,
    withMetrics: boolean,
  ) {
    this.salt = hashString(address);
    this.breaker = new CircuitBreaker({
      ...config.circuitBreaker,
      onStateChange: (from, to) => {
        if (this.removed) return;
        if (to === "open") {
          // Flip to half-open on time even with no traffic, so gauges, logs and selection are truthful.
          this.reopenPoll?.cancel();
          this.reopenPoll = sharedDeadlines.schedule(this.breaker.timeoutMs, () => {
            this.reopenPoll = null;
            this.breaker.state();
          });
        }
        hooks.circuit(this, from, to);
      },
    });
    this.health = new HealthMonitor(config.healthCheck, {
      ping: (ms) => this.transport.ping(ms),
      isConnected: () => this.transport.isConnected(),
      onChange: (passing, reason) => {
        if (!this.removed) hooks.healthCheck(this, passing, reason);
      },
      onUnanswered: (since, reason) => {
        // `unhealthyThreshold` pings in a row went unanswered on a live-looking connection (a
        // lost connection is reported after the transport has already noticed). The transport
        // drops the connections that received nothing at all since the first of those pings (a
        // silent agent, not a slow one still answering calls), so pings and calls go to fresh
        // connections instead of waiting minutes for keepalive or TCP to notice.
        if (!this.removed && this.transport.isConnected()) this.transport.reconnect?.(`health check failing: ${reason}`, since);
      },
    });
    this.transport.onConnectivity((connected) => {
      if (!this.removed) hooks.connectivity(this, connected);
    });
    if (withMetrics) {
      this.m = bindMetrics(agentId, address);
      seriesOwner.set(seriesKey(agentId, address), this);
    } else {
      this.m = null;
    }
  }

  /** Usable for a call now: connected, health check passing, circuit not open. */
  eligible(): boolean {
    return this.transport.isConnected() && this.health.passing() && this.breaker.state() !== "open";
  }

  start(): void {
    this.transport.start();
    this.health.start();
  }

  /** Stop timers (health loop, reopen poll); the transport is closed by the caller. */
  stop(): void {
    this.removed = true;
    this.health.stop();
    this.reopenPoll?.cancel();
    this.reopenPoll = null;
  }

  /** Drop this endpoint's series unless a successor endpoint (hot reload) publishes them now. */
  dropSeries(): void {
    if (this.m === null) return;
    const key = seriesKey(this.agentId, this.address);
    if (seriesOwner.get(key) !== this) return;
    seriesOwner.delete(key);
    const labels = { agent: this.agentId, endpoint: this.address };
    agentEndpointHealth.remove(labels);
    agentEndpointCircuitState.remove(labels);
    agentEndpointCalls.remove(labels);
    for (const kind of ["timeout", "connect", "protocol", "closed", "overload"] as const) agentEndpointErrors.remove({ ...labels, kind });
  }
}
