// The transport-independent Agent: one configured external agent (auth, WAF…) as the proxy
// pipeline sees it. Wraps one AgentTransport (UDS or gRPC) per endpoint with every per-agent
// knob: timeout-ms (and per-call overrides such as chunk-timeout-ms), max-concurrent-calls, the
// circuit breaker, retry, health-check, plus metrics and state-change logs.
//
// call() never throws and never queues: it either answers, or fails with a kind the pipeline maps
// to its failure mode (timeout → 504, others → 503 when fail-closed; skip when fail-open).
//
// Single-endpoint agent — order of checks in call():
//   1. closed agent                     → "closed"        (transport not contacted)
//   2. caller signal already aborted    → "closed" (aborted; no metrics, breaker untouched)
//   3. breaker refuses (open / half-open slots taken) → "circuit_open" (transport not contacted)
//   4. max-concurrent-calls reached     → "overload" (breaker permit released: not a failure)
//   5. transport.call with an AbortSignal driven by the shared deadline queue (and the caller's
//      signal); retried per `retry` on notSent/closed/connect errors within the same deadline.
// The whole logical call (all attempts) is one breaker outcome: an answer (any decision,
// including Block) is a success; timeout/connect/protocol/closed is a failure; an overload
// from the transport and a caller abort count as neither.
//
// Replicated agent (several endpoints, or a DNS name; see endpoints.ts) — every endpoint has its
// own transport, breaker and health monitor; max-concurrent-calls, the timeout and the failure
// counters stay per agent. call():
//   1–2. as above; 3. max-concurrent-calls → "overload";
//   4. pick an endpoint by rendezvous hash of the correlation id among those connected, passing
//      their health check and admitted by their breaker; if none, among those connected and
//      admitted by their breaker (health is advisory then, as for a single endpoint); if none:
//      "circuit_open" when some endpoint is connected (all refused by their breakers), else
//      "connect";
//   5. on an error that provably produced no decision — not sent, connect, or the connection
//      closed before any answer — fail over AT ONCE (no backoff, not counted against `retry`) to
//      the next endpoint in hash order, within the same deadline. A call whose connection
//      closed after it was sent moves at most once (a request that crashes the agent must not
//      take every replica down); not-sent/connect failures move until no endpoint is left.
//      Timeouts and protocol errors are never retried elsewhere (the agent may have decided).
//   6. when every candidate failed that way, `retry { attempts; backoff-ms }` applies as for a
//      single endpoint (backoff, then the endpoints are tried again).
// Each attempt is one outcome of its endpoint's breaker; the agent-level breaker state is the
// best of its endpoints' (closed > half-open > open).

import type { AgentConfig, AgentEventName } from "../config/types.ts";
import { agentCalls, agentCircuitState, agentErrors, agentHealth, agentLatency } from "../observability/metrics.ts";
import { replyProblem } from "./reply-check.ts";
import { log } from "../observability/log.ts";
import { fastCounterChild, fastHistogramChild } from "../observability/fast-series.ts";
import type { BreakerPermit, CircuitState } from "./breaker.ts";
import { callDeadline, realClock, sharedDeadlines, sleep } from "./deadline.ts";
import {
  AgentEndpoint,
  CIRCUIT_GAUGE,
  agentEndpointCount,
  agentFailovers,
  hashString,
  pickEndpoint,
  resolveEndpoints,
  systemLookup,
  type EndpointHooks,
  type LookupAll,
} from "./endpoints.ts";
import { TransportError, type AgentEvent, type AgentReply, type AgentTransport, type TransportOptions } from "./types.ts";
import { createUdsTransport } from "./uds/client.ts";
// Lazy: the gRPC stack loads only when a gRPC agent is configured (start-up time, idle RSS).
import { createLazyGrpcTransport } from "./grpc/lazy.ts";

export type AgentFailureKind = "timeout" | "connect" | "protocol" | "closed" | "circuit_open" | "overload";

export type AgentCallResult =
  | { ok: true; reply: AgentReply; latencyMs: number }
  | { ok: false; kind: AgentFailureKind; message: string };

/** State of one endpoint (status pages, tests). */
export interface AgentEndpointStatus {
  endpoint: string;
  connected: boolean;
  healthCheck: boolean;
  circuit: CircuitState;
  /** Receives calls: connected, health check passing, circuit not open. */
  healthy: boolean;
}

export interface Agent {
  readonly id: string;
  readonly config: AgentConfig;
  /** Never throws. Applies concurrency limit, circuit breaker, timeout (config.timeoutMs, or overrideTimeoutMs e.g. chunk-timeout-ms), retries. `signal` = client disconnect. */
  call(event: AgentEvent, signal?: AbortSignal, overrideTimeoutMs?: number): Promise<AgentCallResult>;
  /** request_complete etc: fire and forget, only if connected and circuit not open. */
  notify(event: AgentEvent): void;
  subscribes(event: AgentEventName): boolean;
  /** Single endpoint: connected, health passing, circuit not open. Replicated: at least one endpoint is. */
  isHealthy(): boolean;
  start(): void;
  close(graceMs: number): Promise<void>;
  /** Current breaker state (for status pages and tests); replicated: the best endpoint's. */
  circuitState(): CircuitState;
  /** Calls currently in flight (counted against max-concurrent-calls). */
  inFlight(): number;
  /** Resolves true once the transport (replicated: any endpoint) is connected, false after `timeoutMs` (or when closed). */
  whenConnected(timeoutMs: number): Promise<boolean>;
  /** Every endpoint and its state (one entry for a single-endpoint agent). */
  endpoints?(): AgentEndpointStatus[];
}

/** Sent as proxy_version in the handshake. */
export const PROXY_VERSION = "sentinel/0.1.0";

/** Build the transport named by `config.transport.kind`, for `address` (default: the configured one). */
export function createTransportFor(config: AgentConfig, address: string = config.transport.address): AgentTransport {
  const replicated = isReplicated(config);
  const opts: TransportOptions = {
    endpoint: address,
    agentId: config.id,
    connectTimeoutMs: config.connectTimeoutMs,
    // A call's deadline is timeout-ms, or chunk-timeout-ms for streamed body chunks.
    callTimeoutMs: Math.max(config.timeoutMs, config.chunkTimeoutMs),
    connections: config.connections,
    config: config.config,
    proxyVersion: PROXY_VERSION,
    protocol: config.transport.protocol,
    tls: config.transport.tls,
    log: replicated
      ? (level, msg, fields) => log(level, msg, { agent: config.id, endpoint: address, ...fields })
      : (level, msg, fields) => log(level, msg, { agent: config.id, ...fields }),
  };
  return config.transport.kind === "grpc" ? createLazyGrpcTransport(opts) : createUdsTransport(opts);
}

/** Several endpoints, or a DNS name: calls are balanced over endpoints (endpoints.ts). */
export function isReplicated(config: AgentConfig): boolean {
  return config.transport.dns !== undefined || (config.transport.endpoints !== undefined && config.transport.endpoints.length > 1);
}

export interface CreateAgentOptions {
  /** Transport for one endpoint of a replicated agent (default createTransportFor). */
  transportFor?: (address: string) => AgentTransport;
  /** DNS lookup for `dns://` agents (default: the system resolver, all addresses). */
  lookup?: LookupAll;
}

/** Worker processes sharing every agent's max-concurrent-calls (1 outside multi-process mode). */
let concurrencyShare = 1;
/** Whether this process says how each agent's limit is shared (one worker does, for all). */
let concurrencyShareLogged = false;

/**
 * In a worker of `worker-threads N` (N ≥ 2): every agent created from now on (at start and on
 * reloads) admits floor(max-concurrent-calls / N) calls (at least 1), so that the N workers
 * together never put more than max-concurrent-calls calls in flight on one agent (unless it is
 * smaller than N). With `say`, this process logs the split when it is not exact.
 */
export function shareAgentConcurrency(workers: number, say: boolean): void {
  concurrencyShare = Math.max(1, Math.floor(workers));
  concurrencyShareLogged = say;
}

function logConcurrencyShare(config: AgentConfig): void {
  const n = concurrencyShare;
  if (!concurrencyShareLogged || n <= 1) return;
  const fields = { agent: config.id, max_concurrent_calls: config.maxConcurrentCalls, workers: n };
  if (config.maxConcurrentCalls < n) log("warn", "agent max-concurrent-calls is below the number of worker processes: each worker admits 1 call", fields);
  else if (config.maxConcurrentCalls % n !== 0)
    log("info", "agent max-concurrent-calls shared among worker processes, rounded down", { ...fields, per_worker: perProcessConcurrency(config.maxConcurrentCalls) });
}

/** What one process admits of an agent's max-concurrent-calls (see shareAgentConcurrency). */
export function perProcessConcurrency(maxConcurrentCalls: number): number {
  return Math.max(1, Math.floor(maxConcurrentCalls / concurrencyShare));
}

/**
 * `transport` replaces the configured transport of a single-endpoint agent (tests); a replicated
 * agent builds one transport per endpoint with `opts.transportFor`.
 */
export function createAgent(config: AgentConfig, transport?: AgentTransport, opts: CreateAgentOptions = {}): Agent {
  if (isReplicated(config)) return new AgentImpl(config, null, opts);
  return new AgentImpl(config, transport ?? createTransportFor(config), opts);
}

/**
 * Which Agent object currently owns the per-agent gauges of an id. On hot reload a replacement
 * is created before its predecessor closes; the predecessor must then neither write nor remove
 * the series.
 */
const gaugeOwner = new Map<string, Agent>();
/** The same for sentinel_agent_endpoints, which only replicated agents publish. */
const countOwner = new Map<string, Agent>();

type Counter = { inc(v?: number): void };

/** Marker for "the call's signal aborted" in the race against the transport. */
const ABORTED = Symbol("aborted");
/** `dl.aborted.then(toAborted)`: a module function, not a closure per call. */
const toAborted = (): typeof ABORTED => ABORTED;

/** DNS lookup retry after a failure: doubling from this, capped at the resolve interval. */
const RESOLVE_RETRY_MIN_MS = 500;
/** Grace for in-flight calls of an endpoint a new DNS answer no longer lists. */
const REMOVED_ENDPOINT_GRACE_MS = 5000;

class AgentImpl implements Agent {
  readonly id: string;
  private readonly subs: ReadonlySet<AgentEventName>;
  private readonly maxInFlight: number;
  private inflight = 0;
  private started = false;
  /** close() was called: health loops stopped, gauges no longer written (a successor may own them). */
  private closing = false;
  /** Transports closed: every call fails "closed". */
  private closed = false;
  private closePromise: Promise<void> | null = null;
  private drained: (() => void) | null = null;
  private lastHealthy: boolean | null = null;
  private lastCircuit: CircuitState = "closed";
  private connectWaiters: Array<(ok: boolean) => void> = [];

  /** Replicated: several endpoints (or DNS); otherwise `ep` is the only endpoint. */
  private readonly replicated: boolean;
  /** The single endpoint (hot path of a single-endpoint agent); for a replicated agent, unused. */
  private readonly ep: AgentEndpoint | null;
  /** Every endpoint (copy-on-write: replaced, never mutated, when DNS changes it). */
  private eps: readonly AgentEndpoint[] = [];
  /** Seed of the correlation-id hash (per agent object: clients cannot aim at a replica). */
  private readonly seed = (Math.random() * 0x100000000) >>> 0;
  private readonly hooks: EndpointHooks;
  private readonly transportFor: (address: string) => AgentTransport;
  private readonly lookup: LookupAll;
  private resolveTimer: unknown = null;
  private resolveBackoffMs = RESOLVE_RETRY_MIN_MS;

  // Pre-bound metric children (hot path).
  private readonly mLatency: { observe(v: number): void };
  private readonly mDecision: Record<"allow" | "block" | "redirect" | "challenge" | "error", Counter>;
  private readonly mErrors: Record<AgentFailureKind, Counter>;
  private readonly mHealth: { set(v: number): void };
  private readonly mCircuit: { set(v: number): void };
  private readonly mFailovers: Counter | null;

  constructor(
    readonly config: AgentConfig,
    transport: AgentTransport | null,
    opts: CreateAgentOptions,
  ) {
    this.id = config.id;
    this.subs = new Set(config.events);
    this.maxInFlight = perProcessConcurrency(config.maxConcurrentCalls);
    logConcurrencyShare(config);
    this.replicated = transport === null;
    this.transportFor = opts.transportFor ?? ((address) => createTransportFor(config, address));
    this.lookup = opts.lookup ?? systemLookup;
    const agent = config.id;
    this.mLatency = fastHistogramChild(agentLatency, { agent });
    const decision = (d: "allow" | "block" | "redirect" | "challenge" | "error") => fastCounterChild(agentCalls, { agent, decision: d });
    this.mDecision = {
      allow: decision("allow"),
      block: decision("block"),
      redirect: decision("redirect"),
      challenge: decision("challenge"),
      error: decision("error"),
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
    this.mFailovers = this.replicated ? agentFailovers.labels({ agent }) : null;
    this.hooks = {
      connectivity: (ep, connected) => this.onConnectivity(ep, connected),
      healthCheck: (ep, passing, reason) => this.onHealthCheck(ep, passing, reason),
      circuit: (ep, from, to) => this.onCircuitChange(ep, from, to),
    };
    gaugeOwner.set(this.id, this);
    if (transport !== null) {
      this.ep = new AgentEndpoint(agent, transport.endpoint, transport, config, this.hooks, false);
      this.eps = [this.ep];
    } else {
      this.ep = null;
      const statics = config.transport.dns ? [] : (config.transport.endpoints ?? [config.transport.address]);
      this.eps = statics.map((address) => this.newEndpoint(address));
      countOwner.set(agent, this);
      agentEndpointCount.labels({ agent }).set(this.eps.length);
    }
    this.mCircuit.set(0);
    this.refreshHealth();
  }

  private newEndpoint(address: string): AgentEndpoint {
    return new AgentEndpoint(this.id, address, this.transportFor(address), this.config, this.hooks, true);
  }

  // ---- pipeline API ----------------------------------------------------------------------

  subscribes(event: AgentEventName): boolean {
    return this.subs.has(event);
  }

  isHealthy(): boolean {
    const ep = this.ep;
    if (ep !== null) return ep.eligible();
    const eps = this.eps;
    for (let i = 0; i < eps.length; i++) if (eps[i]!.eligible()) return true;
    return false;
  }

  circuitState(): CircuitState {
    const ep = this.ep;
    if (ep !== null) return ep.breaker.state();
    let best: CircuitState = "open";
    for (const e of this.eps) {
      const s = e.breaker.state();
      if (s === "closed") return "closed";
      if (s === "half_open") best = "half_open";
    }
    return best;
  }

  inFlight(): number {
    return this.inflight;
  }

  endpoints(): AgentEndpointStatus[] {
    return this.eps.map((e) => ({
      endpoint: e.address,
      connected: e.transport.isConnected(),
      healthCheck: e.health.passing(),
      circuit: e.breaker.state(),
      healthy: e.eligible(),
    }));
  }

  notify(event: AgentEvent): void {
    if (this.closed) return;
    let transport: AgentTransport;
    const ep = this.ep;
    if (ep !== null) {
      if (!ep.transport.isConnected() || ep.breaker.state() === "open") return;
      transport = ep.transport;
    } else {
      // The replica that (by the same hash) answered this request's calls.
      const h = hashString(event.correlationId, this.seed);
      const target = pickEndpoint(this.eps, h, eligibleEp, null) ?? pickEndpoint(this.eps, h, connectedNotOpen, null);
      if (target === null) return;
      transport = target.transport;
    }
    try {
      transport.notify(event);
    } catch {
      // fire and forget
    }
  }

  async call(event: AgentEvent, signal?: AbortSignal, overrideTimeoutMs?: number): Promise<AgentCallResult> {
    const ep = this.ep;
    if (ep === null) return this.callReplicated(event, signal, overrideTimeoutMs);
    if (this.closed) return this.fail("closed", `agent ${this.id} is closed`);
    if (signal?.aborted) return ABORTED_RESULT;
    const permit = ep.breaker.tryAcquire();
    if (permit === null) return this.fail("circuit_open", `agent ${this.id}: circuit breaker open`);
    if (this.inflight >= this.maxInFlight) {
      permit.release();
      return this.fail("overload", `agent ${this.id}: max-concurrent-calls (${this.maxInFlight}) reached`);
    }
    this.inflight++;
    const timeoutMs = overrideTimeoutMs !== undefined && overrideTimeoutMs > 0 ? overrideTimeoutMs : this.config.timeoutMs;
    const started = performance.now();
    const dl = callDeadline(timeoutMs, signal);
    const transport = ep.transport;
    try {
      for (let attempt = 0; ; attempt++) {
        let outcome: AgentReply | typeof ABORTED;
        let error: unknown = null;
        try {
          outcome = await Promise.race([transport.call(event, dl.signal), dl.aborted.then(toAborted)]);
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
        if (error === null && outcome !== ABORTED) return this.answered(event, outcome, started, permit);
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

  /**
   * A call that got an answer: latency and decision metrics, breaker success. An answer the proxy
   * may not apply (replyProblem) is a protocol failure instead (metrics, failure mode).
   */
  private answered(event: AgentEvent, reply: AgentReply, started: number, permit: { success(): void; release(): void }): AgentCallResult {
    const problem = replyProblem(reply, event);
    if (problem !== null) {
      // Neutral for the breaker: a client can make an agent copy invalid bytes into a header,
      // and must not be able to open the circuit (skipping a fail-open agent for everyone).
      permit.release();
      return this.fail("protocol", `agent ${this.id}: invalid answer: ${problem}`);
    }
    const latencyMs = performance.now() - started;
    this.mLatency.observe(latencyMs / 1000);
    const d = reply.decision?.kind;
    (this.mDecision[d as keyof typeof this.mDecision] ?? this.mDecision.allow).inc();
    permit.success();
    return { ok: true, reply, latencyMs };
  }

  /** See the header: balance over endpoints, fail over at once when no decision was made. */
  private async callReplicated(event: AgentEvent, signal?: AbortSignal, overrideTimeoutMs?: number): Promise<AgentCallResult> {
    if (this.closed) return this.fail("closed", `agent ${this.id} is closed`);
    if (signal?.aborted) return ABORTED_RESULT;
    if (this.inflight >= this.maxInFlight) {
      return this.fail("overload", `agent ${this.id}: max-concurrent-calls (${this.maxInFlight}) reached`);
    }
    this.inflight++;
    const timeoutMs = overrideTimeoutMs !== undefined && overrideTimeoutMs > 0 ? overrideTimeoutMs : this.config.timeoutMs;
    const started = performance.now();
    const dl = callDeadline(timeoutMs, signal);
    const h = hashString(event.correlationId, this.seed);
    /** Endpoints this call already tried (or whose breaker refused it) since the last backoff. */
    let skip: Set<AgentEndpoint> | null = null;
    let retries = 0;
    let sentClosed = 0;
    let last: { kind: AgentFailureKind; message: string } | null = null;
    const timedOut = () => this.fail("timeout", `agent ${this.id}: no answer within ${timeoutMs} ms`);
    try {
      for (;;) {
        if (dl.signal.aborted) return dl.timedOut() ? timedOut() : ABORTED_RESULT;
        // Pick: healthy endpoints first, then any connected one; its breaker must admit the call.
        let ep: AgentEndpoint | null = null;
        let permit: BreakerPermit | null = null;
        for (let tier = 0; tier < 2 && permit === null; tier++) {
          const ok = tier === 0 ? eligibleEp : connectedEp;
          for (;;) {
            ep = pickEndpoint(this.eps, h, ok, skip);
            if (ep === null) break;
            permit = ep.breaker.tryAcquire();
            if (permit !== null) break;
            (skip ??= new Set()).add(ep); // open or half-open with its probe slots taken
          }
        }
        if (ep === null || permit === null) {
          if (last === null) {
            // Nothing was tried at all.
            const anyConnected = this.eps.some((e) => e.transport.isConnected());
            return anyConnected
              ? this.fail("circuit_open", `agent ${this.id}: circuit breaker open on every connected endpoint`)
              : this.fail("connect", `agent ${this.id}: no endpoint connected (${this.eps.length} known)`);
          }
          if (await this.backoffRetry(retries++, dl, last)) {
            skip = null;
            sentClosed = 0;
            continue;
          }
          if (dl.signal.aborted) return dl.timedOut() ? timedOut() : ABORTED_RESULT;
          return this.fail(last.kind, last.message);
        }

        ep.m!.calls.inc();
        let outcome: AgentReply | typeof ABORTED;
        let error: unknown = null;
        try {
          outcome = await Promise.race([ep.transport.call(event, dl.signal), dl.aborted.then(toAborted)]);
        } catch (e) {
          outcome = ABORTED;
          error = e;
        }
        if (dl.signal.aborted) {
          if (dl.timedOut()) {
            ep.m!.errors.timeout.inc();
            permit.failure();
            return timedOut();
          }
          permit.release();
          return ABORTED_RESULT;
        }
        if (error === null && outcome !== ABORTED) {
          const answer = this.answered(event, outcome, started, permit);
          if (!answer.ok) ep.m!.errors.protocol.inc(); // an answer it may not apply
          return answer;
        }
        const te = error instanceof TransportError ? error : null;
        const kind: AgentFailureKind = te ? te.kind : "protocol";
        const message = `agent ${this.id} (${ep.address}): ${error instanceof Error ? error.message : String(error)}`;
        ep.m!.errors[te ? te.kind : "protocol"].inc();
        if (kind === "overload") permit.release();
        else permit.failure();
        if (te === null || !retryable(te)) return this.fail(kind, message);
        last = { kind, message };
        (skip ??= new Set()).add(ep);
        const sentThenClosed = !te.notSent && te.kind === "closed";
        if (sentThenClosed) sentClosed++;
        if (!sentThenClosed || sentClosed <= 1) {
          // Provably no decision was made: the next endpoint in hash order, at once.
          this.mFailovers!.inc();
          log("debug", "agent call failover", { agent: this.id, endpoint: ep.address, kind, error: message });
          continue;
        }
        // A second connection closed under this very call: no more failover; `retry` decides.
        if (await this.backoffRetry(retries++, dl, last)) {
          skip = null;
          sentClosed = 0;
          continue;
        }
        if (dl.signal.aborted) return dl.timedOut() ? timedOut() : ABORTED_RESULT;
        return this.fail(kind, message);
      }
    } finally {
      dl.dispose();
      if (--this.inflight === 0 && this.drained !== null) this.drained();
    }
  }

  /** `retry { attempts; backoff-ms }` for a replicated call: true = try the endpoints again. */
  private async backoffRetry(attempt: number, dl: ReturnType<typeof callDeadline>, last: { kind: AgentFailureKind; message: string }): Promise<boolean> {
    if (attempt >= this.config.retry.attempts) return false;
    const backoff = this.config.retry.backoffMs * 2 ** attempt;
    if (performance.now() + backoff >= dl.deadline) return false;
    log("debug", "agent call retry", { agent: this.id, attempt: attempt + 1, backoffMs: backoff, kind: last.kind, error: last.message });
    return backoff <= 0 || (await sleep(backoff, dl.signal));
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
    for (const e of this.eps) e.start();
    if (this.config.transport.dns !== undefined && this.ep === null) void this.resolve();
    this.refreshHealth();
  }

  whenConnected(timeoutMs: number): Promise<boolean> {
    if (this.eps.some((e) => e.transport.isConnected())) return Promise.resolve(true);
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
   * Graceful close: stop the health loops, DNS re-resolution and the gauges at once, keep
   * answering calls while any are in flight (up to graceMs), then close the transports (their
   * pending calls fail "closed") and fail every later call with "closed". Idempotent.
   */
  close(graceMs: number): Promise<void> {
    if (this.closePromise !== null) return this.closePromise;
    this.closing = true;
    for (const e of this.eps) e.stop(); // health loops, reopen polls; state hooks ignored from now on
    if (this.resolveTimer !== null) {
      realClock.clearTimer(this.resolveTimer);
      this.resolveTimer = null;
    }
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
      const eps = this.eps;
      await Promise.all(
        eps.map(async (e) => {
          try {
            await e.transport.close(left);
          } catch (err) {
            log("warn", "agent transport close failed", { agent: this.id, endpoint: e.address, error: String(err) });
          }
        }),
      );
      for (const e of eps) e.dropSeries();
      if (gaugeOwner.get(this.id) === this) {
        // Removed for good (no successor): drop the series rather than leave a stale value.
        gaugeOwner.delete(this.id);
        agentHealth.remove({ agent: this.id });
        agentCircuitState.remove({ agent: this.id });
      }
      if (this.replicated && countOwner.get(this.id) === this) {
        countOwner.delete(this.id);
        agentEndpointCount.remove({ agent: this.id });
      }
      log("info", "agent closed", { agent: this.id });
    })();
    return this.closePromise;
  }

  // ---- DNS (replicated agents named by dns://) -----------------------------------------------

  private async resolve(): Promise<void> {
    const dns = this.config.transport.dns!;
    this.resolveTimer = null;
    let next = dns.resolveIntervalMs;
    try {
      const { endpoints, dropped } = await resolveEndpoints(dns, this.lookup);
      if (this.closing) return;
      if (dropped > 0) {
        log("warn", "agent DNS name has more addresses than endpoints allowed; extra addresses ignored", { agent: this.id, name: dns.name, dropped });
      }
      if (endpoints.length === 0) throw new Error("no address");
      this.resolveBackoffMs = RESOLVE_RETRY_MIN_MS;
      this.setEndpoints(endpoints);
    } catch (err) {
      if (this.closing) return;
      // Keep the endpoints we have: a DNS hiccup must not take a healthy agent away.
      log(this.eps.length === 0 ? "error" : "warn", "agent DNS lookup failed; keeping the current endpoints", {
        agent: this.id,
        name: dns.name,
        endpoints: this.eps.length,
        error: err instanceof Error ? err.message : String(err),
      });
      next = Math.min(this.resolveBackoffMs, dns.resolveIntervalMs);
      this.resolveBackoffMs = Math.min(this.resolveBackoffMs * 2, dns.resolveIntervalMs);
    }
    if (!this.closing) this.resolveTimer = realClock.setTimer(() => void this.resolve(), next);
  }

  /** Replace the endpoint set (DNS answer): keep known addresses, start new ones, retire the rest. */
  private setEndpoints(addresses: string[]): void {
    const byAddress = new Map(this.eps.map((e) => [e.address, e]));
    const added: string[] = [];
    const next = addresses.map((a) => {
      const known = byAddress.get(a);
      if (known !== undefined) {
        byAddress.delete(a);
        return known;
      }
      added.push(a);
      return this.newEndpoint(a);
    });
    if (added.length === 0 && byAddress.size === 0) return;
    this.eps = next;
    agentEndpointCount.labels({ agent: this.id }).set(next.length);
    log("info", "agent endpoints changed", { agent: this.id, endpoints: addresses, added, removed: [...byAddress.keys()] });
    if (this.started) for (const e of next) if (added.includes(e.address)) e.start();
    for (const gone of byAddress.values()) {
      // Out of selection at once; calls in flight on it may finish within the grace.
      gone.stop();
      gone.dropSeries();
      void gone.transport.close(REMOVED_ENDPOINT_GRACE_MS).catch(() => {});
    }
    this.refreshHealth();
  }

  // ---- state changes ------------------------------------------------------------------------

  /** Gauges and state-change logs belong to the live agent of this id only. */
  private reporting(): boolean {
    return !this.closing && gaugeOwner.get(this.id) === this;
  }

  private onConnectivity(ep: AgentEndpoint, connected: boolean): void {
    if (this.closing) return;
    log(connected ? "info" : "warn", connected ? "agent connected" : "agent disconnected", {
      agent: this.id,
      endpoint: ep.address,
    });
    ep.health.connectivity(connected);
    // A replica that reconnected (restarted) need not wait out an open circuit (typically opened
    // by the calls that were in flight when it died): half-open, so probes decide right away.
    if (connected && this.replicated) ep.breaker.halfOpenNow();
    if (connected) for (const w of [...this.connectWaiters]) w(true);
    this.refreshHealth();
  }

  private onHealthCheck(ep: AgentEndpoint, passing: boolean, reason: string): void {
    if (this.closing) return;
    const fields: Record<string, unknown> = { agent: this.id, reason };
    if (this.replicated) fields.endpoint = ep.address;
    log(passing ? "info" : "warn", passing ? "agent health check passing" : "agent health check failing", fields);
    this.refreshHealth();
  }

  private onCircuitChange(ep: AgentEndpoint, from: CircuitState, to: CircuitState): void {
    if (!this.reporting()) return;
    const fields: Record<string, unknown> = { agent: this.id, from, to };
    if (this.replicated) fields.endpoint = ep.address;
    if (to === "open") fields.reopenInMs = ep.breaker.timeoutMs;
    log(to === "open" ? "warn" : "info", `agent circuit ${to === "half_open" ? "half-open" : to}`, fields);
    ep.m?.circuit.set(CIRCUIT_GAUGE[to]);
    const agg = this.ep !== null ? to : this.circuitState();
    if (agg !== this.lastCircuit) {
      this.lastCircuit = agg;
      this.mCircuit.set(CIRCUIT_GAUGE[agg]);
    }
    this.refreshHealth();
  }

  private refreshHealth(): void {
    if (!this.reporting()) return;
    if (this.replicated) {
      for (const e of this.eps) {
        const ok = e.eligible();
        if (ok === e.lastEligible) continue;
        const first = e.lastEligible === null;
        e.lastEligible = ok;
        e.m!.health.set(ok ? 1 : 0);
        if (first) e.m!.circuit.set(CIRCUIT_GAUGE[e.breaker.state()]);
        if (first && !ok) continue; // never usable yet: nothing to report
        log(ok ? "info" : "warn", ok ? "agent endpoint healthy" : "agent endpoint unhealthy", {
          agent: this.id,
          endpoint: e.address,
          connected: e.transport.isConnected(),
          healthCheck: e.health.passing(),
          circuit: e.breaker.state(),
        });
      }
    }
    const healthy = this.isHealthy();
    if (healthy === this.lastHealthy) return;
    const first = this.lastHealthy === null;
    this.lastHealthy = healthy;
    this.mHealth.set(healthy ? 1 : 0);
    if (first && !healthy && !this.started) return; // not started yet: nothing to report
    const ep = this.ep;
    log(
      healthy ? "info" : "warn",
      healthy ? "agent healthy" : "agent unhealthy",
      ep !== null
        ? { agent: this.id, connected: ep.transport.isConnected(), healthCheck: ep.health.passing(), circuit: ep.breaker.state() }
        : { agent: this.id, endpoints: this.eps.length, healthyEndpoints: this.eps.filter((e) => e.eligible()).length },
    );
  }
}

const eligibleEp = (e: AgentEndpoint): boolean => e.eligible();
const connectedEp = (e: AgentEndpoint): boolean => e.transport.isConnected();
const connectedNotOpen = (e: AgentEndpoint): boolean => e.transport.isConnected() && e.breaker.state() !== "open";

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
