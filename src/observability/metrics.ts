// One prom-client registry for the whole process. Metric objects are created once here and
// imported where they are moved; label values are always bounded (ids from config, status
// classes, fixed kinds), never raw paths.
import client from "prom-client";

export const registry = new client.Registry();

const histogramBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

// --- agents ---------------------------------------------------------------------------------
export const agentHealth = new client.Gauge({
  name: "sentinel_agent_health",
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
  help: "Circuit breaker state: 0 closed, 1 open, 2 half-open",
  labelNames: ["agent"],
  registers: [registry],
});

// --- requests and upstreams -----------------------------------------------------------------
export const requestsTotal = new client.Counter({
  name: "sentinel_requests_total",
  help: "Requests by route, method and status class",
  labelNames: ["route", "method", "status_class"],
  registers: [registry],
});
export const requestDuration = new client.Histogram({
  name: "sentinel_request_duration_seconds",
  help: "Request duration from first byte to the end of the response, by route",
  labelNames: ["route"],
  buckets: histogramBuckets,
  registers: [registry],
});
let inFlightSupplier: () => number = () => 0;
export function setInFlightSupplier(fn: () => number): void {
  inFlightSupplier = fn;
}
export const inFlightRequests = new client.Gauge({
  name: "sentinel_requests_in_flight",
  help: "Requests being processed (including open WebSockets)",
  registers: [registry],
  collect() {
    this.set(inFlightSupplier());
  },
});
export const upstreamDuration = new client.Histogram({
  name: "sentinel_upstream_request_duration_seconds",
  help: "Time to upstream response headers, by upstream and target",
  labelNames: ["upstream", "target"],
  buckets: histogramBuckets,
  registers: [registry],
});
export const upstreamErrors = new client.Counter({
  name: "sentinel_upstream_errors_total",
  help: "Failed upstream attempts by upstream, target and kind (connect, timeout, status_5xx)",
  labelNames: ["upstream", "target", "kind"],
  registers: [registry],
});
export const upstreamTargetHealth = new client.Gauge({
  name: "sentinel_upstream_target_healthy",
  help: "1 when the upstream target is in rotation (healthy and not ejected)",
  labelNames: ["upstream", "target"],
  registers: [registry],
});
export const rejectedRequests = new client.Counter({
  name: "sentinel_rejected_requests_total",
  help: "Requests refused before routing, by reason",
  labelNames: ["reason"],
  registers: [registry],
});
export const configReloads = new client.Counter({
  name: "sentinel_config_reloads_total",
  help: "Configuration reloads by result",
  labelNames: ["result"],
  registers: [registry],
});
export const configLastReloadSuccess = new client.Gauge({
  name: "sentinel_config_last_reload_success_timestamp_seconds",
  help: "Unix time of the last successful configuration load",
  registers: [registry],
});
