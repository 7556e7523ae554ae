// gRPC agent transport (proxy side): one multiplexed ProcessStream per agent endpoint.
// Spec: /work/shared/spec/agent-protocol.md §6 (stream rules 1–8), §7.4, D22, D23.
//
// Lifecycle of one stream:
//   open ProcessStream -> write the handshake -> read exactly one handshake answer within
//   connectTimeoutMs (no event is written before it; anything else first is a protocol error;
//   success:false closes the stream and counts as a failed connect) -> ready: events are written
//   to the stream as they come and answers are matched by AgentResponse.correlation_id.
// Stream end or error: every pending call rejects ("closed", or "protocol" for status codes that
// mean a message was refused), connectivity listeners hear `false`, and a reconnect is scheduled
// with exponential backoff (100 ms doubling, capped at 2 s, with jitter), forever until close().
//
// GOAWAY from the agent (graceful shutdown: grpc-js tryShutdown(), grpc-go GracefulStop(), tonic;
// what a Kubernetes rolling restart triggers): the stream stops taking new events (the transport
// has no ready stream until the replacement is ready, so calls fail "connect" as while
// reconnecting), a replacement connection + stream is opened at once (same handshake; through the
// backoff if the old stream was up for less than STABLE_MS), and the old stream drains: calls in
// flight on it still get their answers, each up to its own deadline (the caller's signal, i.e.
// the agent's call timeout; for calls whose signal never fires, the drain ends callTimeoutMs +
// max(DRAIN_MARGIN_MS, callTimeoutMs / 10) after the GOAWAY (every call on the stream was sent
// before it), or after DRAIN_MAX_MS without callTimeoutMs; the calls still in flight then fail
// "closed"), then it is half-closed (END_STREAM, so
// the agent's graceful shutdown can complete) and its connection closed once the agent ends the
// stream (or END_WAIT_MS after the half-close). Connectivity listeners hear `false` only if the
// replacement fails before it is ready.
//
// Hot path (call -> answer): no timer, one Map entry, one abort listener that is the pending
// object itself (handleEvent); body chunks are size-checked by an upper-bound estimate before
// encoding, other events exactly once encoded.
//
// Wire: our own HTTP/2 client (h2/connection.ts, on Bun.connect: h2c with prior knowledge, or TLS
// with ALPN h2) carrying one gRPC bidi call (h2/grpc.ts) per connection. Per-request events and
// the common allow answer go through the hand-written codec in wire.ts; everything else (handshake,
// ping, block/redirect/challenge, odd input) uses the generated protobuf-es types with toBinary /
// fromBinary, which stay the reference the codec is tested against. Each stream
// attempt gets a fresh connection, closed when the stream ends.
import { readFileSync } from "node:fs";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AgentToProxySchema,
  ProxyToAgentSchema,
  type AgentResponse,
  type AgentToProxy,
  type ProxyToAgent,
} from "../../gen/zentinel/agent/v2/agent_v2_pb.js";
import { log as defaultLog } from "../../observability/log.ts";
import {
  TransportError,
  type AgentCapabilities,
  type AgentEvent,
  type AgentReply,
  type AgentTransport,
  type TransportErrorKind,
  type TransportOptions,
} from "../types.ts";
import {
  MAX_GRPC_MESSAGE_BYTES,
  capabilitiesFromProto,
  estimateEventSize,
  eventToProto,
  handshakeToProto,
  pingToProto,
  replyFromProto,
} from "./map.ts";
import { H2Connection, type H2TlsOptions } from "./h2/connection.ts";
import { GrpcCall, GrpcStatusError, Status } from "./h2/grpc.ts";
import { decodeSimpleResponse, encodeEvent } from "./wire.ts";
import { ErrorCode, errorCodeName } from "./h2/frames.ts";

export const PROXY_ID = "sentinel";
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 2_000;
/** A stream must stay up this long before a later failure reconnects at the minimum backoff. */
const STABLE_MS = 1_000;
/** How long an expected-but-unwanted answer (notify, aborted call) is waited for. */
const QUIET_TTL_MS = 10_000;
const DROP_LOG_INTERVAL_MS = 5_000;
const PROCESS_STREAM_PATH = "/zentinel.agent.v2.AgentServiceV2/ProcessStream";
/** Largest message accepted from an agent / sent to it (§6.1 rule 6). */
const READ_MAX_BYTES = 16 * 1024 * 1024;
const WRITE_MAX_BYTES = 4 * 1024 * 1024;
/**
 * HTTP/2 keepalive: PING after this much silence, give up when it is not answered in time.
 *
 * 5 minutes, the default MinTime of grpc-go's server keepalive enforcement policy: a client that
 * pings more often gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings" after 2 strikes. Dead agents
 * are detected sooner by the proxy's application-level health pings, which travel over this
 * ProcessStream (ping() -> ProxyToAgent.ping / pong): the agent `health-check` is enabled by
 * default (src/config/load.ts: every 10 s, 100 ms timeout, failing after 3 misses, see
 * src/agents/health.ts), so a silent agent is marked failing within about 30 s, and its
 * connection is then dropped and reconnected (reconnect(), called by endpoints.ts). With
 * `health-check { enabled #false; }` only this keepalive (5 min + 5 s), call timeouts and TCP
 * errors notice a dead connection.
 */
export const KEEPALIVE_INTERVAL_MS = 5 * 60_000;
const KEEPALIVE_TIMEOUT_MS = 5_000;
/** Upper bound of the keepalive interval after doublings on "too_many_pings". */
const KEEPALIVE_MAX_MS = 24 * 60 * 60_000;
/**
 * After a GOAWAY: longest wait for the calls in flight on the old stream. Each of them normally
 * ends earlier, at its own deadline (the caller's signal carries the agent's call timeout); this
 * only bounds calls whose signal never fires, and only when the options carry no callTimeoutMs.
 */
const DRAIN_MAX_MS = 30_000;
/**
 * With callTimeoutMs: the drain ends at least this long after the latest possible deadline of a
 * call in flight (GOAWAY + callTimeoutMs), so the callers' own timeouts (the shared deadline queue fires within a few ms) settle their calls
 * first and the normal half-close runs; only calls nobody is waiting on any more are cut.
 */
const DRAIN_MARGIN_MS = 100;
/** After half-closing a drained stream: how long the agent gets to end it before we cancel it. */
const END_WAIT_MS = 2_000;

type Logger = NonNullable<TransportOptions["log"]>;

/** One in-flight call. It is its own abort listener, so a call allocates no extra closure. */
class Pending {
  constructor(
    readonly owner: GrpcAgentTransport,
    readonly stream: StreamState,
    readonly id: string,
    readonly resolve: (r: AgentReply) => void,
    readonly reject: (e: TransportError) => void,
    readonly signal: AbortSignal,
  ) {}
  handleEvent(): void {
    this.owner.abortPending(this);
  }
}

class StreamState {
  conn: H2Connection | null = null;
  call: GrpcCall | null = null;
  ready = false;
  ended = false;
  readyAt = 0;
  /** Calls sent on this stream and not yet settled. */
  inflight = 0;
  /** When the last message arrived (performance.now()); see reconnect. */
  lastRecvAt = 0;
  /** GOAWAY received: no new events; ends once its in-flight calls have settled. */
  draining = false;
  halfClosed = false;
  handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  drainTimer: ReturnType<typeof setTimeout> | undefined;
  /** Resolves when the call has ended (trailers, reset or connection loss). */
  readonly done: Promise<void>;
  resolveDone!: () => void;
  constructor() {
    this.done = new Promise<void>((r) => (this.resolveDone = r));
  }
}

interface QuietEntry {
  n: number;
  t: number;
}

interface Target {
  host: string;
  port: number;
  /** ":authority" */
  authority: string;
  secure: boolean;
}

function parseEndpoint(endpoint: string): Target {
  let e = endpoint.trim();
  if (e.startsWith("grpc://")) e = "http://" + e.slice(7);
  else if (e.startsWith("grpcs://")) e = "https://" + e.slice(8);
  else if (!/^https?:\/\//i.test(e)) e = "http://" + e;
  const u = new URL(e);
  const secure = u.protocol === "https:";
  const host = u.hostname.startsWith("[") && u.hostname.endsWith("]") ? u.hostname.slice(1, -1) : u.hostname;
  if (host === "") throw new Error(`gRPC endpoint ${JSON.stringify(endpoint)} has no host`);
  const port = u.port === "" ? (secure ? 443 : 80) : Number(u.port);
  return { host, port, authority: u.host, secure };
}

/** PEM text, or a path to a PEM file. */
function pem(value: string | undefined): string | undefined {
  if (value === undefined || value === "") return undefined;
  return value.includes("-----BEGIN") ? value : readFileSync(value, "utf8");
}

function errorKind(err: GrpcStatusError): TransportErrorKind {
  switch (err.code) {
    // The agent refused what we sent (message too large, not decodable, no such service).
    // Internal is not here: a killed connection can surface as a missing status.
    case Status.RESOURCE_EXHAUSTED:
    case Status.INVALID_ARGUMENT:
    case Status.UNIMPLEMENTED:
      return "protocol";
    default:
      return "closed";
  }
}

export class GrpcAgentTransport implements AgentTransport {
  readonly endpoint: string;
  capabilities?: AgentCapabilities;

  private readonly opts: TransportOptions;
  private readonly log: Logger;
  private target: Target | null = null;
  private tls: H2TlsOptions | undefined;
  private setupError: Error | null = null;

  private stream: StreamState | null = null;
  /** Streams of connections the agent sent GOAWAY on, finishing their in-flight calls. */
  private readonly draining = new Set<StreamState>();
  /** What connectivity listeners last heard. */
  private connectedEmitted = false;
  /** HTTP/2 keepalive interval for new connections; doubled on GOAWAY "too_many_pings". */
  private keepaliveMs: number;
  private warnedTooManyPings = false;
  private readonly pending = new Map<string, Pending>();
  /** Answers we expect and drop: notify() events and calls aborted before their answer came. */
  private readonly quiet = new Map<string, QuietEntry>();
  private quietTimer: ReturnType<typeof setInterval> | undefined;
  /** notify() events held back until the call pending for the same id settles. */
  private readonly deferred = new Map<string, AgentEvent[]>();
  private readonly pings = new Map<number, { s: StreamState; resolve: () => void; reject: (e: TransportError) => void; timer: ReturnType<typeof setTimeout> }>();
  private pingSeq = 0;

  private started = false;
  private closing = false;
  private closePromise: Promise<void> | null = null;
  private drainWaiter: (() => void) | null = null;
  private backoffMs = BACKOFF_MIN_MS;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly listeners: ((connected: boolean) => void)[] = [];
  private droppedAnswers = 0;
  private lastDropLog = -Infinity;
  private notifyFailures = 0;
  private lastNotifyFailLog = -Infinity;

  /** `internal.keepaliveIntervalMs` is for tests (default KEEPALIVE_INTERVAL_MS). */
  constructor(opts: TransportOptions, internal: { keepaliveIntervalMs?: number } = {}) {
    this.opts = opts;
    this.endpoint = opts.endpoint;
    this.log = opts.log ?? defaultLog;
    this.keepaliveMs = internal.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS;
    try {
      const target = parseEndpoint(opts.endpoint);
      if (target.secure) {
        this.tls = {
          ca: pem(opts.tls?.caCert),
          cert: pem(opts.tls?.clientCert),
          key: pem(opts.tls?.clientKey),
          rejectUnauthorized: !(opts.tls?.insecure ?? false),
        };
      }
      this.target = target;
    } catch (err) {
      this.setupError = err instanceof Error ? err : new Error(String(err));
      this.log("error", "grpc agent transport setup failed", { endpoint: this.endpoint, error: this.setupError.message });
    }
  }

  // ------------------------------------------------------------------------- public API

  start(): void {
    if (this.started || this.closing) return;
    this.started = true;
    this.openStream();
  }

  /** The HTTP/2 keepalive interval the next connection will use. */
  get keepaliveIntervalMs(): number {
    return this.keepaliveMs;
  }

  isConnected(): boolean {
    const s = this.stream;
    return s !== null && s.ready;
  }

  onConnectivity(listener: (connected: boolean) => void): void {
    this.listeners.push(listener);
  }

  /**
   * Health pings went unanswered and the ready stream has received nothing since `silentSince`:
   * with the 5-minute keepalive a silently dead agent would otherwise keep it for minutes. End
   * it like a lost connection (listeners hear `false`, calls on it fail "closed") and reconnect
   * through the normal backoff. Draining streams are left alone: their calls end at their
   * deadlines anyway.
   */
  reconnect(reason: string, silentSince: number): void {
    const s = this.stream;
    // A stream that received anything since the failing pings began (answers to calls, or the
    // handshake of a stream opened since) is slow, not dead: keep it.
    if (s === null || !s.ready || this.closing || s.lastRecvAt >= silentSince) return;
    this.endStream(s, "closed", reason);
  }

  call(event: AgentEvent, signal: AbortSignal): Promise<AgentReply> {
    const s = this.stream;
    if (s === null || !s.ready) {
      return Promise.reject(
        this.closing
          ? new TransportError("closed", `agent ${this.endpoint}: transport closed`, true)
          : new TransportError("connect", `agent ${this.endpoint}: no ready gRPC stream`, true),
      );
    }
    if (event.type === "configure") {
      return Promise.reject(
        new TransportError("protocol", "configure is not sent as an event over gRPC (the config goes in the handshake)", true),
      );
    }
    const id = event.correlationId;
    if (this.pending.has(id) || (this.quiet.size > 0 && this.quiet.has(id))) {
      return Promise.reject(new TransportError("overload", `correlation id ${id} already has an event in flight`, true));
    }
    if (signal.aborted) return Promise.reject(new TransportError("timeout", abortMessage(signal), true));
    // Body chunks are checked before encoding (an upper-bound estimate: no copy of a huge body);
    // header and completion events are small and are checked exactly, once encoded.
    const tooLarge = () =>
      Promise.reject(new TransportError("protocol", `${event.type} event exceeds the gRPC message limit (${MAX_GRPC_MESSAGE_BYTES} bytes); chunk it`, true));
    const isBody = event.type === "request_body_chunk" || event.type === "response_body_chunk";
    if (isBody && estimateEventSize(event) > MAX_GRPC_MESSAGE_BYTES) return tooLarge();
    let bytes: Uint8Array;
    try {
      bytes = encodeEvent(event) ?? toBinary(ProxyToAgentSchema, eventToProto(event));
    } catch (err) {
      return Promise.reject(new TransportError("protocol", `cannot send ${event.type}: ${String((err as Error)?.message ?? err)}`, true));
    }
    if (bytes.length > MAX_GRPC_MESSAGE_BYTES) return tooLarge();
    return new Promise<AgentReply>((resolve, reject) => {
      const p = new Pending(this, s, id, resolve, reject, signal);
      this.pending.set(id, p);
      signal.addEventListener("abort", p, { once: true });
      try {
        s.call!.send(bytes);
        s.inflight++;
      } catch (err) {
        this.pending.delete(id);
        signal.removeEventListener("abort", p);
        reject(this.sendError(err));
      }
    });
  }

  notify(event: AgentEvent): void {
    try {
      const s = this.stream;
      if (s === null || !s.ready) {
        this.log("debug", "grpc agent notify dropped: not connected", { endpoint: this.endpoint, type: event.type });
        return;
      }
      if (estimateEventSize(event) > MAX_GRPC_MESSAGE_BYTES) {
        this.log("warn", "grpc agent notify dropped: event too large", { endpoint: this.endpoint, type: event.type });
        return;
      }
      if (event.type === "configure") {
        // TS agents answer configure with an empty-id Allow; Rust agents do not answer.
        this.send(s, eventToProto(event));
        this.addQuiet(""); // only once sent: a failed send expects no answer
        return;
      }
      const id = event.correlationId;
      if (this.pending.has(id)) {
        // An answer for this id is outstanding: sending now would make the two answers
        // indistinguishable. Send once that call settles.
        const list = this.deferred.get(id);
        if (list) list.push(event);
        else this.deferred.set(id, [event]);
        return;
      }
      this.send(s, eventToProto(event));
      this.addQuiet(id);
    } catch (err) {
      // Rate-limited: under overload (send buffer full) every notify fails.
      this.notifyFailures++;
      const now = performance.now();
      if (now - this.lastNotifyFailLog >= DROP_LOG_INTERVAL_MS) {
        this.lastNotifyFailLog = now;
        this.log("warn", "grpc agent notify failed", { endpoint: this.endpoint, error: String(err), failedSinceLastLog: this.notifyFailures });
        this.notifyFailures = 0;
      }
    }
  }

  ping(timeoutMs: number): Promise<void> {
    const s = this.stream;
    if (s === null || !s.ready) {
      return Promise.reject(new TransportError("connect", `agent ${this.endpoint}: no ready gRPC stream`, true));
    }
    const seq = ++this.pingSeq;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pings.delete(seq)) reject(new TransportError("timeout", `agent ${this.endpoint}: no pong within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pings.set(seq, { s, resolve, reject, timer });
      try {
        this.send(s, pingToProto(seq));
      } catch (err) {
        clearTimeout(timer);
        this.pings.delete(seq);
        reject(this.sendError(err));
      }
    });
  }

  close(graceMs = 0): Promise<void> {
    this.closePromise ??= this.doClose(graceMs);
    return this.closePromise;
  }

  // ------------------------------------------------------------------------- internals

  /** A failed send: the send buffer is full (the agent is not reading) = overload, else closed. */
  private sendError(err: unknown): TransportError {
    const msg = `agent ${this.endpoint}: ${err instanceof Error ? err.message : String(err)}`;
    const full = err instanceof GrpcStatusError && err.code === Status.RESOURCE_EXHAUSTED;
    return new TransportError(full ? "overload" : "closed", msg, true);
  }

  /** Encode and write one message on the stream (not for calls: they reject on failure). */
  private send(s: StreamState, msg: ProxyToAgent): void {
    s.call!.send(toBinary(ProxyToAgentSchema, msg));
  }

  /** Abort listener of a pending call (the caller's timeout or client disconnect). */
  abortPending(p: Pending): void {
    if (this.pending.get(p.id) !== p) return;
    this.pending.delete(p.id);
    // The agent may still answer: drop that late answer instead of giving it to a later call
    // with the same correlation id.
    this.addQuiet(p.id);
    p.reject(new TransportError("timeout", abortMessage(p.signal)));
    this.settled(p);
    this.afterSettle(p.id);
  }

  /** A call left `pending`: a draining stream with nothing left in flight is half-closed. */
  private settled(p: Pending): void {
    const s = p.stream;
    if (--s.inflight <= 0 && s.draining) this.finishDrain(s);
  }

  private afterSettle(id: string): void {
    if (this.deferred.size > 0) {
      const list = this.deferred.get(id);
      if (list) {
        this.deferred.delete(id);
        for (const ev of list) this.notify(ev);
      }
    }
    if (this.drainWaiter !== null && this.pending.size === 0) this.drainWaiter();
  }

  private addQuiet(id: string): void {
    const q = this.quiet.get(id);
    const t = performance.now();
    if (q) {
      q.n++;
      q.t = t;
    } else {
      this.quiet.set(id, { n: 1, t });
    }
    if (this.quietTimer === undefined) {
      this.quietTimer = setInterval(() => this.sweepQuiet(), QUIET_TTL_MS / 2);
      (this.quietTimer as { unref?: () => void }).unref?.();
    }
  }

  private takeQuiet(id: string): boolean {
    const q = this.quiet.get(id);
    if (q === undefined) return false;
    if (--q.n <= 0) this.quiet.delete(id);
    return true;
  }

  private sweepQuiet(): void {
    const limit = performance.now() - QUIET_TTL_MS;
    for (const [id, q] of this.quiet) if (q.t < limit) this.quiet.delete(id);
    if (this.quiet.size === 0 && this.quietTimer !== undefined) {
      clearInterval(this.quietTimer);
      this.quietTimer = undefined;
    }
  }

  private onResponse(r: AgentResponse): void {
    let reply: AgentReply | Error;
    try {
      reply = replyFromProto(r);
    } catch (err) {
      reply = new Error(`undecodable agent answer: ${String(err)}`);
    }
    this.onReply(r.correlationId, reply);
  }

  /** An answer for correlation id `id`: settles its pending call (an Error rejects it). */
  private onReply(id: string, reply: AgentReply | Error): void {
    const p = this.pending.get(id);
    if (p === undefined) {
      if (this.quiet.size > 0 && this.takeQuiet(id)) return;
      this.dropAnswer(id);
      return;
    }
    this.pending.delete(id);
    p.signal.removeEventListener("abort", p);
    this.settled(p);
    if (reply instanceof Error) {
      p.reject(new TransportError("protocol", reply.message));
      this.afterSettle(id);
      return;
    }
    p.resolve(reply);
    if (this.deferred.size > 0 || this.drainWaiter !== null) this.afterSettle(id);
  }

  private dropAnswer(id: string): void {
    this.droppedAnswers++;
    const now = performance.now();
    if (now - this.lastDropLog >= DROP_LOG_INTERVAL_MS) {
      this.lastDropLog = now;
      this.log("warn", "grpc agent answer with unknown correlation id dropped", {
        endpoint: this.endpoint,
        correlationId: id,
        droppedSinceLastLog: this.droppedAnswers,
      });
      this.droppedAnswers = 0;
    }
  }

  private emit(connected: boolean): void {
    for (const l of this.listeners) {
      try {
        l(connected);
      } catch {
        // a listener's failure is not the transport's
      }
    }
  }

  private openStream(): void {
    if (this.closing) return;
    const target = this.target;
    if (target === null) {
      this.scheduleReconnect(false);
      return;
    }
    const s = new StreamState();
    this.stream = s;
    s.handshakeTimer = setTimeout(() => {
      this.endStream(s, "connect", `no handshake answer within ${this.opts.connectTimeoutMs} ms`);
    }, this.opts.connectTimeoutMs);
    try {
      s.conn = new H2Connection({
        host: target.host,
        port: target.port,
        tls: this.tls,
        keepaliveIntervalMs: this.keepaliveMs,
        keepaliveTimeoutMs: KEEPALIVE_TIMEOUT_MS,
        // An agent that does not acknowledge our SETTINGS within the connect timeout is treated
        // like one that does not answer the handshake: the connection fails (GOAWAY
        // SETTINGS_TIMEOUT), calls on it fail "closed", and we reconnect with backoff.
        settingsTimeoutMs: this.opts.connectTimeoutMs,
        onGoaway: (code, last, debug) => this.onGoaway(s, code, last, debug),
      });
      s.call = new GrpcCall(
        s.conn,
        { authority: target.authority, scheme: target.secure ? "https" : "http", path: PROCESS_STREAM_PATH, maxReceiveBytes: READ_MAX_BYTES, maxSendBytes: WRITE_MAX_BYTES },
        { onMessage: (bytes) => this.onMessage(s, bytes), onEnd: (err) => this.onCallEnd(s, err) },
      );
      this.send(s, handshakeToProto(PROXY_ID, this.opts.proxyVersion, this.opts.config));
    } catch (err) {
      this.endStream(s, "connect", err instanceof Error ? err.message : String(err));
    }
  }

  /** One message from the agent (a view into the received bytes, valid during this call). */
  private onMessage(s: StreamState, bytes: Uint8Array): void {
    if (s.ended) return;
    s.lastRecvAt = performance.now();
    if (s.ready) {
      // the common answer, decoded without building protobuf-es messages (wire.ts)
      const reply = decodeSimpleResponse(bytes);
      if (reply !== undefined) {
        this.onReply(reply.correlationId, reply);
        return;
      }
    }
    let msg: AgentToProxy;
    try {
      msg = fromBinary(AgentToProxySchema, bytes);
    } catch (err) {
      this.endStream(s, "protocol", `undecodable message from the agent: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    const m = msg.message;
    if (m.case === "response" && s.ready) {
      this.onResponse(m.value);
      return;
    }
    if (!s.ready) {
      if (m.case !== "handshake") {
        this.endStream(s, "protocol", `first message from the agent was ${m.case ?? "empty"}, not a handshake`);
        return;
      }
      const hs = m.value;
      if (!hs.success) {
        this.endStream(s, "connect", `agent rejected the handshake: ${hs.error ?? "(no error given)"}`);
        return;
      }
      clearTimeout(s.handshakeTimer);
      if (this.closing) {
        // close() raced the handshake: never report ready
        this.endStream(s, "closed", "transport closed");
        return;
      }
      s.ready = true;
      s.readyAt = performance.now();
      this.capabilities = capabilitiesFromProto(hs);
      this.log("info", "grpc agent connected", {
        endpoint: this.endpoint,
        agentId: this.capabilities.agentId,
        agentName: this.capabilities.name,
        agentVersion: this.capabilities.version,
        replacing: this.draining.size > 0 ? this.draining.size : undefined,
      });
      // After a GOAWAY the listeners never heard `false` (unless the replacement failed first).
      if (!this.connectedEmitted) {
        this.connectedEmitted = true;
        this.emit(true);
      }
      return;
    }
    switch (m.case) {
      case "pong": {
        const seq = Number(m.value.sequence);
        const w = this.pings.get(seq);
        if (w) {
          this.pings.delete(seq);
          clearTimeout(w.timer);
          w.resolve();
        }
        break;
      }
      case "handshake":
        this.log("warn", "grpc agent sent a second handshake answer; ignored", { endpoint: this.endpoint });
        break;
      case "log":
        this.log("debug", "grpc agent log", { endpoint: this.endpoint, message: m.value.message, level: m.value.level });
        break;
      default:
        // health, metrics, config_update, flow_control: no effect (spec §8.4)
        break;
    }
  }

  /**
   * GOAWAY on the connection of `s` (RFC 9113 §6.8). Streams above lastStreamId have already been
   * reset (ours is stream 1, so it is only refused by a GOAWAY with last-stream-id 0, and then it
   * has already ended). A GOAWAY with an error code closes the connection right after this.
   */
  private onGoaway(s: StreamState, code: number, last: number, debug: string): void {
    if (code === ErrorCode.ENHANCE_YOUR_CALM && debug === "too_many_pings") this.tooManyPings();
    this.log("info", "grpc agent sent GOAWAY", { endpoint: this.endpoint, code: errorCodeName(code), lastStreamId: last, debug });
    if (s.ended || s.draining || this.closing) return;
    if (!s.ready) {
      // Going away before the handshake was answered: a failed connect (reconnect with backoff).
      this.endStream(s, "connect", `agent is going away (GOAWAY ${errorCodeName(code)})`);
      return;
    }
    s.draining = true;
    this.draining.add(s);
    if (this.stream === s) this.stream = null;
    this.log("info", "grpc agent going away: draining its stream, opening a new one", { endpoint: this.endpoint, inFlight: s.inflight });
    // A connection that is sent away right after it came up goes through the backoff, so an
    // agent that refuses every connection this way is not hammered.
    if (performance.now() - s.readyAt >= STABLE_MS) {
      this.backoffMs = BACKOFF_MIN_MS;
      if (this.reconnectTimer === undefined) this.openStream();
    } else {
      this.scheduleReconnect(false);
    }
    if (s.inflight <= 0) this.finishDrain(s);
    else {
      const ms = this.drainBoundMs();
      s.drainTimer = setTimeout(() => this.endStream(s, "closed", `calls still in flight ${ms} ms after the agent's GOAWAY, past their deadlines`), ms);
    }
  }

  /**
   * How long, from the GOAWAY, the calls in flight on the old stream may take: every one of them
   * was sent before it and gets at most callTimeoutMs, plus a margin. Without callTimeoutMs the
   * deadlines are unknown here: DRAIN_MAX_MS.
   */
  private drainBoundMs(): number {
    const callMs = this.opts.callTimeoutMs;
    if (callMs === undefined || !(callMs > 0)) return DRAIN_MAX_MS;
    // The margin grows with the timeout so that, on a lagging event loop, the calls' own
    // deadlines (and their "timeout" outcome) still come first.
    return Math.ceil(callMs) + Math.max(DRAIN_MARGIN_MS, Math.ceil(callMs / 10));
  }

  /** grpc-go's keepalive enforcement: ping half as often from now on, as grpc-go clients do. */
  private tooManyPings(): void {
    this.keepaliveMs = Math.min(KEEPALIVE_MAX_MS, this.keepaliveMs * 2);
    const fields = { endpoint: this.endpoint, keepaliveIntervalMs: this.keepaliveMs };
    if (this.warnedTooManyPings) {
      this.log("debug", "grpc agent GOAWAY too_many_pings: keepalive interval doubled", fields);
      return;
    }
    this.warnedTooManyPings = true;
    this.log("warn", "grpc agent GOAWAY ENHANCE_YOUR_CALM too_many_pings: keepalive interval doubled (the agent's keepalive policy is stricter than ours)", fields);
  }

  /** Nothing is in flight on a draining stream any more: half-close it, let the agent end it. */
  private finishDrain(s: StreamState): void {
    if (s.ended || s.halfClosed) return;
    s.halfClosed = true;
    clearTimeout(s.drainTimer);
    try {
      s.call?.end();
      s.conn?.flush();
    } catch {
      // already closed
    }
    s.drainTimer = setTimeout(() => this.endStream(s, "closed", `the agent did not end the stream within ${END_WAIT_MS} ms of our half-close`), END_WAIT_MS);
  }

  /** The call ended: status OK (the agent ended the stream), an error status, or a lost connection. */
  private onCallEnd(s: StreamState, err: GrpcStatusError | null): void {
    s.resolveDone();
    if (s.ended) return;
    if (err === null) {
      this.endStream(s, "closed", "agent ended the stream");
      return;
    }
    this.endStream(s, s.ready ? errorKind(err) : "connect", err.message);
  }

  private endStream(s: StreamState, kind: TransportErrorKind, reason: string): void {
    if (s.ended) return;
    s.ended = true;
    clearTimeout(s.handshakeTimer);
    clearTimeout(s.drainTimer);
    s.call?.cancel();
    s.conn?.close();
    s.resolveDone();
    if (this.stream === s) this.stream = null;
    const wasReady = s.ready;
    s.ready = false;
    const draining = s.draining;
    this.draining.delete(s);

    // Only the calls and pings sent on this stream fail: after a GOAWAY another stream may be up.
    const errKind: TransportErrorKind = kind === "connect" ? "closed" : kind;
    if (s.inflight > 0) {
      s.inflight = 0;
      const list: Pending[] = [];
      for (const p of this.pending.values()) if (p.stream === s) list.push(p);
      for (const p of list) {
        this.pending.delete(p.id);
        this.deferred.delete(p.id);
        p.signal.removeEventListener("abort", p);
        p.reject(new TransportError(errKind, `agent ${this.endpoint}: ${reason}`));
      }
    }
    for (const [seq, w] of this.pings) {
      if (w.s !== s) continue;
      this.pings.delete(seq);
      clearTimeout(w.timer);
      w.reject(new TransportError(errKind, `agent ${this.endpoint}: ${reason}`));
    }
    if (this.draining.size === 0 && this.pending.size === 0) {
      this.quiet.clear();
      this.deferred.clear();
    }
    if (this.drainWaiter !== null && this.pending.size === 0) this.drainWaiter();

    if (draining) {
      // Its replacement was opened on the GOAWAY: no reconnect, no connectivity change.
      this.log("info", "grpc agent stream closed after GOAWAY", { endpoint: this.endpoint, kind, reason });
      return;
    }
    if (wasReady) {
      this.log(this.closing ? "info" : "warn", "grpc agent stream closed", { endpoint: this.endpoint, kind, reason });
    } else if (!this.closing) {
      this.log(kind === "protocol" ? "warn" : "debug", "grpc agent connect failed", { endpoint: this.endpoint, kind, reason });
    }
    if (this.connectedEmitted) {
      this.connectedEmitted = false;
      this.emit(false);
    }
    if (!this.closing) this.scheduleReconnect(wasReady && performance.now() - s.readyAt >= STABLE_MS);
  }

  private scheduleReconnect(wasStable: boolean): void {
    if (this.closing || this.reconnectTimer !== undefined) return;
    if (wasStable) this.backoffMs = BACKOFF_MIN_MS;
    const base = this.backoffMs;
    this.backoffMs = Math.min(BACKOFF_MAX_MS, this.backoffMs * 2);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.openStream();
    }, delay);
  }

  private async doClose(graceMs: number): Promise<void> {
    this.closing = true;
    if (this.reconnectTimer !== undefined) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = undefined;
    }
    const s = this.stream;
    if (s !== null && this.pending.size > 0 && graceMs > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs);
        this.drainWaiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.drainWaiter = null;
    }
    if (s !== null && !s.ended) {
      // Nothing is outstanding any more (or the grace ran out): half-close, give the agent a
      // moment to finish the stream, then cancel whatever is left.
      if (this.pending.size === 0) {
        try {
          s.call?.end();
          s.conn?.flush();
        } catch {
          // already closed
        }
        await Promise.race([s.done, new Promise((r) => setTimeout(r, 200))]);
      }
      this.endStream(s, "closed", "transport closed");
    }
    for (const d of [...this.draining]) this.endStream(d, "closed", "transport closed");
    if (this.quietTimer !== undefined) {
      clearInterval(this.quietTimer);
      this.quietTimer = undefined;
    }
  }
}

function abortMessage(signal: AbortSignal): string {
  const r: unknown = signal.reason;
  if (r instanceof Error) return r.message || r.name;
  return r === undefined ? "aborted" : String(r);
}

/** Transport for a gRPC agent at `http://host:port` or `https://host:port` (bare host:port = http). */
export function createGrpcTransport(opts: TransportOptions): AgentTransport {
  return new GrpcAgentTransport(opts);
}
