// One prom-client registry for the whole process. Metric objects are created once here and
// imported where they are moved; label values are always bounded (ids from config, status
// classes, fixed kinds), never raw paths.
import client from "./prom.ts";

export const registry = new client.Registry();

const histogramBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

// --- agents ---------------------------------------------------------------------------------
export const agentHealth = new client.Gauge({
  name: "sentinel_agent_health",
  aggregator: "min", // across worker processes (src/proxy/workers.ts)
  help: "1 when the agent is connected, passes its health check and its circuit is not open",
  labelNames: ["agent"],
  registers: [registry],
});
export const agentLatency = new client.Histogram({
  name: "sentinel_agent_latency_seconds",
  help: "Agent call latency (successful answers)",
  labelNames: ["agent"],
  buckets: histogramBuckets,
  registers: [registry],
});
export const agentCalls = new client.Counter({
  name: "sentinel_agent_calls_total",
  help: "Agent calls by outcome decision (allow, block, redirect, challenge, error, skipped)",
  labelNames: ["agent", "decision"],
  registers: [registry],
});
export const agentErrors = new client.Counter({
  name: "sentinel_agent_errors_total",
  help: "Agent call failures by kind (timeout, connect, protocol, circuit_open, overload, body_limit)",
  labelNames: ["agent", "kind"],
  registers: [registry],
});
export const agentCircuitState = new client.Gauge({
  name: "sentinel_agent_circuit_state",
  aggregator: "max", // across worker processes (src/proxy/workers.ts)
  help: "Circuit breaker state: 0 closed, 1 open, 2 half-open",
  labelNames: ["agent"],
  registers: [registry],
});

// --- live values read at scrape time ------------------------------------------------------
// The server installs these suppliers; the gauges below compute their value only when scraped,
// so nothing on the request path touches them.
export interface LiveSources {
  inFlight(): number;
  /** Every target of every pool of the current runtime. */
  targets(): Iterable<{ upstream: string; target: string; healthy: boolean }>;
  /** Open client connections per listener id. */
  connections(): Iterable<[string, number]>;
  websockets(): number;
  /** Readiness as the builtin "status" handler reports it. */
  ready(): boolean;
}
let live: LiveSources = { inFlight: () => 0, targets: () => [], connections: () => [], websockets: () => 0, ready: () => false };
export function setLiveSources(sources: LiveSources): void {
  live = sources;
}

// --- requests and upstreams -----------------------------------------------------------------
export const requestsTotal = new client.Counter({
  name: "sentinel_requests_total",
  help: "Requests by route (route id, or \"none\" when no route matched), method (standard methods, else OTHER) and status class",
  labelNames: ["route", "method", "status_class"],
  registers: [registry],
});
export const requestDuration = new client.Histogram({
  name: "sentinel_request_duration_seconds",
  help: "Request duration from the request head to the end of the response body, by route",
  labelNames: ["route"],
  buckets: histogramBuckets,
  registers: [registry],
});
export const inFlightRequests = new client.Gauge({
  name: "sentinel_requests_in_flight",
  help: "Requests being processed (including open WebSockets)",
  registers: [registry],
  collect() {
    this.set(live.inFlight());
  },
});
export const openConnections = new client.Gauge({
  name: "sentinel_open_connections",
  help: "Open client TCP connections per listener (this process's accepted sockets in any state but LISTEN, from /proc)",
  labelNames: ["listener"],
  registers: [registry],
  collect() {
    this.reset();
    for (const [listener, n] of live.connections()) this.labels(listener).set(n);
  },
});
export const openWebSockets = new client.Gauge({
  name: "sentinel_websocket_connections",
  help: "Relayed WebSocket connections currently open",
  registers: [registry],
  collect() {
    this.set(live.websockets());
  },
});
export const upstreamDuration = new client.Histogram({
  name: "sentinel_upstream_request_duration_seconds",
  help: "Time from sending an upstream request to its response headers (or failure), per attempt, by upstream and target",
  labelNames: ["upstream", "target"],
  buckets: histogramBuckets,
  registers: [registry],
});
export const upstreamErrors = new client.Counter({
  name: "sentinel_upstream_errors_total",
  help: "Failed upstream attempts by upstream, target and kind (connect, timeout, error, status_5xx)",
  labelNames: ["upstream", "target", "kind"],
  registers: [registry],
});
export const upstreamTargetHealth = new client.Gauge({
  name: "sentinel_upstream_target_healthy",
  aggregator: "min", // across worker processes (src/proxy/workers.ts)
  help: "1 when the upstream target is in rotation (healthy and not ejected), else 0",
  labelNames: ["upstream", "target"],
  registers: [registry],
  collect() {
    this.reset();
    for (const t of live.targets()) this.labels(t.upstream, t.target).set(t.healthy ? 1 : 0);
  },
});
export const rejectedRequests = new client.Counter({
  name: "sentinel_rejected_requests_total",
  help: "Requests refused before routing, by status (400, 405, 414, 431)",
  labelNames: ["reason"],
  registers: [registry],
});

export const ready = new client.Gauge({
  name: "sentinel_ready",
  aggregator: "min", // across worker processes (src/proxy/workers.ts)
  help: "1 when ready to serve (what the builtin status handler answers with 200), 0 while draining or when a fail-closed agent every route needs is down",
  registers: [registry],
  collect() {
    this.set(live.ready() ? 1 : 0);
  },
});

// --- configuration --------------------------------------------------------------------------
export const configReloads = new client.Counter({
  name: "sentinel_config_reloads_total",
  help: "Configuration reloads by result (success, failure)",
  labelNames: ["result"],
  registers: [registry],
});
export const configLastReloadSuccess = new client.Gauge({
  name: "sentinel_config_last_reload_success_timestamp_seconds",
  aggregator: "min", // across worker processes (src/proxy/workers.ts)
  help: "Unix time of the last successful configuration load (start-up counts)",
  registers: [registry],
});
export const configRestartPending = new client.Gauge({
  name: "sentinel_config_restart_pending",
  aggregator: "max", // across worker processes (src/proxy/workers.ts)
  help: "1 when the last reloaded configuration changed settings that only a restart applies (listeners, system, metrics listener)",
  registers: [registry],
});
