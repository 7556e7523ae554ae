// The transport-independent Agent: one configured external agent (auth, WAF…) as the proxy
// pipeline sees it. Wraps an AgentTransport (UDS or gRPC) with every per-agent knob:
// timeout-ms (and per-call overrides such as chunk-timeout-ms), max-concurrent-calls, the
// circuit breaker, retry, health-check, plus metrics and state-change logs.
//
// call() never throws and never queues: it either answers, or fails with a kind the pipeline maps
// to its failure mode (timeout → 504, others → 503 when fail-closed; skip when fail-open).
//
// Order of checks in call():
//   1. closed agent                     → "closed"        (transport not contacted)
//   2. caller signal already aborted    → "closed" (aborted; no metrics, breaker untouched)
//   3. breaker refuses (open / half-open slots taken) → "circuit_open" (transport not contacted)
//   4. max-concurrent-calls reached     → "overload" (breaker permit released: not a failure)
//   5. transport.call with an AbortSignal driven by the shared deadline queue (and the caller's
//      signal); retried per `retry` on notSent/closed/connect errors within the same deadline.
// The whole logical call (all attempts) is one breaker outcome: an answer (any decision,
// including Block) is a success; timeout/connect/protocol/closed is a failure; an overload
// from the transport and a caller abort count as neither.

import type { AgentConfig, AgentEventName } from "../config/types.ts";
import { agentCalls, agentCircuitState, agentErrors, agentHealth, agentLatency } from "../observability/metrics.ts";
import { log } from "../observability/log.ts";
import { CircuitBreaker, type CircuitState } from "./breaker.ts";
import { callDeadline, sharedDeadlines, sleep, type DeadlineHandle } from "./deadline.ts";
import { HealthMonitor } from "./health.ts";
import { TransportError, type AgentEvent, type AgentReply, type AgentTransport, type TransportOptions } from "./types.ts";
import { createUdsTransport } from "./uds/client.ts";
import { createGrpcTransport } from "./grpc/client.ts";

export type AgentFailureKind = "timeout" | "connect" | "protocol" | "closed" | "circuit_open" | "overload";

export type AgentCallResult =
  | { ok: true; reply: AgentReply; latencyMs: number }
  | { ok: false; kind: AgentFailureKind; message: string };

export interface Agent {
  readonly id: string;
  readonly config: AgentConfig;
  /** Never throws. Applies concurrency limit, circuit breaker, timeout (config.timeoutMs, or overrideTimeoutMs e.g. chunk-timeout-ms), retries. `signal` = client disconnect. */
  call(event: AgentEvent, signal?: AbortSignal, overrideTimeoutMs?: number): Promise<AgentCallResult>;
  /** request_complete etc: fire and forget, only if connected and circuit not open. */
  notify(event: AgentEvent): void;
  subscribes(event: AgentEventName): boolean;
  isHealthy(): boolean;
  start(): void;
  close(graceMs: number): Promise<void>;
  /** Current breaker state (for status pages and tests). */
  circuitState(): CircuitState;
  /** Calls currently in flight (counted against max-concurrent-calls). */
  inFlight(): number;
  /** Resolves true once the transport is connected, false after `timeoutMs` (or when closed). */
  whenConnected(timeoutMs: number): Promise<boolean>;
}

/** Sent as proxy_version in the handshake. */
export const PROXY_VERSION = "sentinel/0.1.0";

/** Build the transport named by `config.transport.kind`. */
export function createTransportFor(config: AgentConfig): AgentTransport {
  const opts: TransportOptions = {
    endpoint: config.transport.address,
    agentId: config.id,
    connectTimeoutMs: config.connectTimeoutMs,
    connections: config.connections,
    config: config.config,
    proxyVersion: PROXY_VERSION,
    protocol: config.transport.protocol,
    tls: config.transport.tls,
    log: (level, msg, fields) => log(level, msg, { agent: config.id, ...fields }),
  };
  return config.transport.kind === "grpc" ? createGrpcTransport(opts) : createUdsTransport(opts);
}

export function createAgent(config: AgentConfig, transport?: AgentTransport): Agent {
  return new AgentImpl(config, transport ?? createTransportFor(config));
}

/**
 * Which Agent object currently owns the per-agent gauges of an id. On hot reload a replacement
 * is created before its predecessor closes; the predecessor must then neither write nor remove
 * the series.
 */
const gaugeOwner = new Map<string, Agent>();

const CIRCUIT_GAUGE: Record<CircuitState, number> = { closed: 0, open: 1, half_open: 2 };

type Counter = { inc(v?: number): void };

/** Marker for "the call's signal aborted" in the race against the transport. */
const ABORTED = Symbol("aborted");

class AgentImpl implements Agent {
  readonly id: string;
  private readonly breaker: CircuitBreaker;
  private readonly health: HealthMonitor;
  private readonly subs: ReadonlySet<AgentEventName>;
  private readonly maxInFlight: number;
  private inflight = 0;
  private started = false;
  /** close() was called: health loop stopped, gauges no longer written (a successor may own them). */
  private closing = false;
  /** Transport closed: every call fails "closed". */
  private closed = false;
  private closePromise: Promise<void> | null = null;
  private drained: (() => void) | null = null;
  private reopenPoll: DeadlineHandle | null = null;
  private lastHealthy: boolean | null = null;
  private connectWaiters: Array<(ok: boolean) => void> = [];

  // Pre-bound metric children (hot path).
  private readonly mLatency: { observe(v: number): void };
  private readonly mDecision: Record<"allow" | "block" | "redirect" | "challenge" | "error", Counter>;
  private readonly mErrors: Record<AgentFailureKind, Counter>;
  private readonly mHealth: { set(v: number): void };
  private readonly mCircuit: { set(v: number): void };

  constructor(
    readonly config: AgentConfig,
    private readonly transport: AgentTransport,
  ) {
    this.id = config.id;
    this.subs = new Set(config.events);
    this.maxInFlight = Math.max(1, config.maxConcurrentCalls);
    const agent = config.id;
    this.mLatency = agentLatency.labels({ agent });
    this.mDecision = {
      allow: agentCalls.labels({ agent, decision: "allow" }),
      block: agentCalls.labels({ agent, decision: "block" }),
      redirect: agentCalls.labels({ agent, decision: "redirect" }),
      challenge: agentCalls.labels({ agent, decision: "challenge" }),
      error: agentCalls.labels({ agent, decision: "error" }),
    };
    const err = (kind: AgentFailureKind) => agentErrors.labels({ agent, kind });
    this.mErrors = {
      timeout: err("timeout"),
      connect: err("connect"),
      protocol: err("protocol"),
      closed: err("closed"),
      circuit_open: err("circuit_open"),
      overload: err("overload"),
    };
    this.mHealth = agentHealth.labels({ agent });
    this.mCircuit = agentCircuitState.labels({ agent });

    this.breaker = new CircuitBreaker({
      ...config.circuitBreaker,
      onStateChange: (from, to) => this.onCircuitChange(from, to),
    });
    this.health = new HealthMonitor(config.healthCheck, {
      ping: (ms) => this.transport.ping(ms),
      isConnected: () => this.transport.isConnected(),
      onChange: (passing, reason) => {
        if (this.closing) return;
        log(passing ? "info" : "warn", passing ? "agent health check passing" : "agent health check failing", {
          agent,
          reason,
        });
        this.refreshHealth();
      },
    });
    this.transport.onConnectivity((connected) => this.onConnectivity(connected));
    gaugeOwner.set(this.id, this);
    this.mCircuit.set(0);
    this.refreshHealth();
  }

  // ---- pipeline API ----------------------------------------------------------------------

  subscribes(event: AgentEventName): boolean {
    return this.subs.has(event);
  }

  isHealthy(): boolean {
    return this.transport.isConnected() && this.health.passing() && this.breaker.state() !== "open";
  }

  circuitState(): CircuitState {
    return this.breaker.state();
  }

  inFlight(): number {
    return this.inflight;
  }

  notify(event: AgentEvent): void {
    if (this.closed || !this.transport.isConnected() || this.breaker.state() === "open") return;
    try {
      this.transport.notify(event);
    } catch {
      // fire and forget
    }
  }

  async call(event: AgentEvent, signal?: AbortSignal, overrideTimeoutMs?: number): Promise<AgentCallResult> {
    if (this.closed) return this.fail("closed", `agent ${this.id} is closed`);
    if (signal?.aborted) return ABORTED_RESULT;
    const permit = this.breaker.tryAcquire();
    if (permit === null) return this.fail("circuit_open", `agent ${this.id}: circuit breaker open`);
    if (this.inflight >= this.maxInFlight) {
      permit.release();
      return this.fail("overload", `agent ${this.id}: max-concurrent-calls (${this.maxInFlight}) reached`);
    }
    this.inflight++;
    const timeoutMs = overrideTimeoutMs !== undefined && overrideTimeoutMs > 0 ? overrideTimeoutMs : this.config.timeoutMs;
    const started = performance.now();
    const dl = callDeadline(timeoutMs, signal);
    try {
      for (let attempt = 0; ; attempt++) {
        let outcome: AgentReply | typeof ABORTED;
        let error: unknown = null;
        try {
          outcome = await Promise.race([this.transport.call(event, dl.signal), dl.aborted.then((): typeof ABORTED => ABORTED)]);
        } catch (e) {
          outcome = ABORTED; // placeholder, replaced below
          error = e;
        }
        if (dl.signal.aborted) {
          // Whatever the transport said, the deadline or the caller ended this call.
          if (dl.timedOut()) {
            permit.failure();
            return this.fail("timeout", `agent ${this.id}: no answer within ${timeoutMs} ms`);
          }
          permit.release();
          return ABORTED_RESULT;
        }
        if (error === null && outcome !== ABORTED) {
          const latencyMs = performance.now() - started;
          this.mLatency.observe(latencyMs / 1000);
          const d = outcome.decision?.kind;
          (this.mDecision[d as keyof typeof this.mDecision] ?? this.mDecision.allow).inc();
          permit.success();
          return { ok: true, reply: outcome, latencyMs };
        }
        const te = error instanceof TransportError ? error : null;
        const kind: AgentFailureKind = te ? te.kind : "protocol";
        const message = error instanceof Error ? error.message : String(error);
        if (te && attempt < this.config.retry.attempts && retryable(te)) {
          const backoff = this.config.retry.backoffMs * 2 ** attempt;
          // Only if the retry can still start inside the call's deadline.
          if (performance.now() + backoff < dl.deadline) {
            log("debug", "agent call retry", { agent: this.id, attempt: attempt + 1, backoffMs: backoff, kind, error: message });
            if (backoff <= 0 || (await sleep(backoff, dl.signal))) continue;
            if (dl.timedOut()) {
              permit.failure();
              return this.fail("timeout", `agent ${this.id}: no answer within ${timeoutMs} ms`);
            }
            permit.release();
            return ABORTED_RESULT;
          }
        }
        if (kind === "overload") permit.release();
        else permit.failure();
        return this.fail(kind, `agent ${this.id}: ${message}`);
      }
    } finally {
      dl.dispose();
      if (--this.inflight === 0 && this.drained !== null) this.drained();
    }
  }

  private fail(kind: AgentFailureKind, message: string): AgentCallResult {
    this.mErrors[kind].inc();
    this.mDecision.error.inc();
    log("debug", "agent call failed", { agent: this.id, kind, error: message });
    return { ok: false, kind, message };
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  start(): void {
    if (this.started || this.closing) return;
    this.started = true;
    this.transport.start();
    this.health.start();
    this.refreshHealth();
  }

  whenConnected(timeoutMs: number): Promise<boolean> {
    if (this.transport.isConnected()) return Promise.resolve(true);
    if (this.closed) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      let done = false;
      const finish = (ok: boolean) => {
        if (done) return;
        done = true;
        h.cancel();
        this.connectWaiters = this.connectWaiters.filter((w) => w !== finish);
        resolve(ok);
      };
      const h = sharedDeadlines.schedule(timeoutMs, () => finish(false));
      this.connectWaiters.push(finish);
    });
  }

  /**
   * Graceful close: stop the health loop and the gauges at once, keep answering calls while any
   * are in flight (up to graceMs), then close the transport (its pending calls fail "closed")
   * and fail every later call with "closed". Idempotent.
   */
  close(graceMs: number): Promise<void> {
    if (this.closePromise !== null) return this.closePromise;
    this.closing = true;
    this.health.stop();
    this.reopenPoll?.cancel();
    this.reopenPoll = null;
    const t0 = performance.now();
    this.closePromise = (async () => {
      if (this.inflight > 0 && graceMs > 0) {
        await new Promise<void>((resolve) => {
          const h = sharedDeadlines.schedule(graceMs, () => {
            this.drained = null;
            resolve();
          });
          this.drained = () => {
            this.drained = null;
            h.cancel();
            resolve();
          };
        });
      }
      this.closed = true;
      for (const w of [...this.connectWaiters]) w(false);
      const left = Math.max(0, graceMs - (performance.now() - t0));
      try {
        await this.transport.close(left);
      } catch (err) {
        log("warn", "agent transport close failed", { agent: this.id, error: String(err) });
      }
      if (gaugeOwner.get(this.id) === this) {
        // Removed for good (no successor): drop the series rather than leave a stale value.
        gaugeOwner.delete(this.id);
        agentHealth.remove({ agent: this.id });
        agentCircuitState.remove({ agent: this.id });
      }
      log("info", "agent closed", { agent: this.id });
    })();
    return this.closePromise;
  }

  // ---- state changes ------------------------------------------------------------------------

  private onConnectivity(connected: boolean): void {
    if (this.closing) return;
    log(connected ? "info" : "warn", connected ? "agent connected" : "agent disconnected", {
      agent: this.id,
      endpoint: this.transport.endpoint,
    });
    this.health.connectivity(connected);
    if (connected) for (const w of [...this.connectWaiters]) w(true);
    this.refreshHealth();
  }

  /** Gauges and state-change logs belong to the live agent of this id only. */
  private reporting(): boolean {
    return !this.closing && gaugeOwner.get(this.id) === this;
  }

  private onCircuitChange(from: CircuitState, to: CircuitState): void {
    if (!this.reporting()) return;
    this.mCircuit.set(CIRCUIT_GAUGE[to]);
    const fields: Record<string, unknown> = { agent: this.id, from, to };
    if (to === "open") {
      fields.reopenInMs = this.breaker.timeoutMs;
      // Flip to half-open on time even with no traffic, so the gauges and logs are truthful.
      this.reopenPoll?.cancel();
      this.reopenPoll = sharedDeadlines.schedule(this.breaker.timeoutMs, () => {
        this.reopenPoll = null;
        this.breaker.state();
      });
    }
    log(to === "open" ? "warn" : "info", `agent circuit ${to === "half_open" ? "half-open" : to}`, fields);
    this.refreshHealth();
  }

  private refreshHealth(): void {
    if (!this.reporting()) return;
    const healthy = this.isHealthy();
    if (healthy === this.lastHealthy) return;
    const first = this.lastHealthy === null;
    this.lastHealthy = healthy;
    this.mHealth.set(healthy ? 1 : 0);
    if (first && !healthy && !this.started) return; // not started yet: nothing to report
    log(healthy ? "info" : "warn", healthy ? "agent healthy" : "agent unhealthy", {
      agent: this.id,
      connected: this.transport.isConnected(),
      healthCheck: this.health.passing(),
      circuit: this.breaker.state(),
    });
  }
}

const ABORTED_RESULT: AgentCallResult = Object.freeze({
  ok: false,
  kind: "closed",
  message: "call aborted by the caller (client disconnected)",
}) as AgentCallResult;

/** Retry only what provably did not produce an answer; never timeouts or protocol errors. */
function retryable(e: TransportError): boolean {
  if (e.kind === "timeout" || e.kind === "protocol") return false;
  return e.notSent || e.kind === "closed" || e.kind === "connect";
}
