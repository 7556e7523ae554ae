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
