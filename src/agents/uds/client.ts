// Proxy side of the UDS agent transport (spec §2, §5, §7).
//
// A pool of `opts.connections` Unix-socket connections to one agent. Each connection:
//   v2: handshake (0x01 → 0x02) then multiplexed events, answers routed by correlation id;
//   v1: legacy SDK framing, no handshake, one outstanding request per connection (FIFO).
// `protocol: "auto"` probes with the v2 handshake and falls back to v1 (§7.2), remembered per
// transport; a v1 connection is only used once it answered its opening event (configure, or a
// side-effect-free request_complete probe), and a peer that answers neither framing is logged as
// undetectable. In v1 mode every event of a request goes to the socket that carried its headers.
// Connections reconnect forever with capped exponential backoff.
//
// Hot path: one JSON.stringify per event, one JSON.parse per answer, no per-call timers (the
// caller's AbortSignal ends the wait), writes batched per tick through a drain-aware queue.
import { log as defaultLog } from "../../observability/log.ts";
import {
  TransportError,
  type AgentCapabilities,
  type AgentEvent,
  type AgentEventType,
  type AgentReply,
  type AgentTransport,
  type HeaderOp,
  type TransportOptions,
} from "../types.ts";
import { encodeFrameString, encodeV1FrameString, FrameDecoder, FrameError, FrameType } from "./frame.ts";
import {
  encodeEvent,
  encodeV1Event,
  eventTypeByte,
  handshakeRequestToWire,
  parseControl,
  parseHandshakeResponse,
  parsePayload,
  parseReply,
  pingToWire,
  replyCorrelationId,
  WireParseError,
  type EncodeOptions,
} from "./json.ts";
import { WriteQueue } from "./writer.ts";

/** Reject new calls on a connection whose unsent bytes exceed this. */
export const MAX_QUEUED_BYTES = 8 * 1024 * 1024;
/** v1: raw body bytes per chunk frame (keeps frames ≤ 64 KiB, §5). */
export const V1_MAX_CHUNK = 32 * 1024;
const BACKOFF_START_MS = 100;
const BACKOFF_MAX_MS = 2000;
const DETECT_TIMEOUT_MAX_MS = 2000;
/** Notify ids remembered per connection so their answers are dropped quietly. */
const MAX_NOTIFY_IDS = 4096;
/** Correlation → connection affinity entries kept in v1 mode. */
const MAX_AFFINITY = 65536;
/**
 * auto: after this many v1 connections in a row fail to answer their opening event (while no
 * connection is proven), the framing counts as undetected and the v2 probe starts over.
 */
const V1_REPROBE_AFTER = 3;
/** The "framing could not be detected" error is logged at most this often per agent. */
const UNDETECTED_LOG_INTERVAL_MS = 60_000;
/** pick(): the connection that carried this request's headers is gone (v1 per-connection state). */
const LOST = Symbol("lost");

type Mode = "v2" | "v1";
type ConnState = "idle" | "connecting" | "handshaking" | "ready" | "closed";
type Log = NonNullable<TransportOptions["log"]>;
type BunSocket = import("bun").Socket<Conn>;

interface Pending {
  id: string;
  type: AgentEventType;
  resolve: ((r: AgentReply) => void) | null;
  reject: ((e: TransportError) => void) | null;
  signal: AbortSignal | null;
  onAbort: (() => void) | null;
  conn: Conn;
  // v1 only
  frame: Uint8Array | null;
  sent: boolean;
  /** The caller is gone (aborted) or never waited (notify/internal): drop the answer. */
  abandoned: boolean;
  /** v1: the configure / framing-probe event that opens the connection (ready on its answer). */
  opening: boolean;
}

interface PingWait {
  resolve: () => void;
  reject: (e: TransportError) => void;
  timer: ReturnType<typeof setTimeout>;
}

class Conn {
  socket: BunSocket | null = null;
  state: ConnState = "idle";
  mode: Mode = "v2";
  /** auto mode: this connection is the framing probe. */
  probing = false;
  /** When bytes last arrived (performance.now()); see reconnect. */
  lastRecvAt = 0;
  decoder = new FrameDecoder();
  writer: WriteQueue | null = null;
  /** v2 pending calls by correlation id. */
  readonly pending = new Map<string, Pending>();
  /** v2 ids of notify() events whose answers are dropped quietly. */
  readonly notifies = new Map<string, true>();
  /** v1 FIFO; the head is in flight once `sent`. */
  readonly fifo: Pending[] = [];
  fifoBytes = 0;
  readonly pings = new Map<number, PingWait>();
  timer: ReturnType<typeof setTimeout> | null = null;
  backoff = BACKOFF_START_MS;
  framesReceived = 0;
  framesSent = 0;
  /** Incremented per socket: v1 affinity is to one socket, not to the slot. */
  gen = 0;
  /** v1: a valid v1 answer arrived on this socket (the framing is right). */
  proven = false;
  readonly onFrame: (type: number, payload: Uint8Array) => void;

  constructor(
    readonly index: number,
    owner: UdsTransport,
  ) {
    this.onFrame = (type, payload) => owner.handleFrame(this, type, payload);
  }

  get load(): number {
    return this.mode === "v2" ? this.pending.size : this.fifo.length;
  }

  get queuedBytes(): number {
    return (this.writer?.queued ?? 0) + this.fifoBytes;
  }
}

function socketPath(endpoint: string): string {
  if (endpoint.startsWith("unix://")) return endpoint.slice(7);
  if (endpoint.startsWith("unix:")) return endpoint.slice(5);
  return endpoint;
}

function abortError(signal: AbortSignal | null, notSent: boolean): TransportError {
  const r = signal?.reason as { name?: string; message?: string } | undefined;
  const why = r?.name === "TimeoutError" ? "timed out" : `aborted${r?.message ? `: ${r.message}` : ""}`;
  return new TransportError("timeout", `agent call ${why}`, notSent);
}

class UdsTransport implements AgentTransport {
  readonly endpoint: string;
  capabilities?: AgentCapabilities;
  private readonly path: string;
  private readonly opts: TransportOptions;
  private readonly log: Log;
  private readonly conns: Conn[] = [];
  private readonly listeners: Array<(c: boolean) => void> = [];
  private readonly encOpts: EncodeOptions;
  private readonly handshakeFrame: Uint8Array;
  private readonly handlers: import("bun").SocketHandler<Conn>;
  private started = false;
  private closing = false;
  private readyCount = 0;
  /** auto: the framing found for this agent (null = not known yet). */
  private detected: Mode | null;
  /** auto: v1 connections that failed before answering anything, in a row. */
  private v1Unproven = 0;
  /** auto: what the last v2 probe saw (for the "could not be detected" log line). */
  private v2ProbeResult = "";
  /** auto: the framing last logged at info (repeated detections log at debug). */
  private loggedFraming: Mode | null = null;
  private undetectedLoggedAt = 0;
  private detectCycles = 0;
  private pingSeq = 0;
  private readonly affinity = new Map<string, { conn: Conn; gen: number }>();
  private readonly v1ChunkNext = new Map<string, number>();
  private dropCount = 0;
  private dropLoggedAt = 0;
  private drainWaiter: (() => void) | null = null;

  constructor(opts: TransportOptions) {
    this.opts = opts;
    this.endpoint = opts.endpoint;
    this.path = socketPath(opts.endpoint);
    this.log = opts.log ?? defaultLog;
    const protocol = opts.protocol ?? "auto";
    this.detected = protocol === "auto" ? null : protocol;
    this.encOpts = { agentId: opts.agentId ?? "" };
    this.handshakeFrame = encodeFrameString(
      FrameType.HandshakeRequest,
      JSON.stringify(handshakeRequestToWire({ proxyId: "sentinel", proxyVersion: opts.proxyVersion, config: opts.config ?? null })),
    );
    const n = Math.max(1, Math.floor(opts.connections || 1));
    for (let i = 0; i < n; i++) this.conns.push(new Conn(i, this));
    this.handlers = {
      open: (s) => this.onOpen(s),
      data: (s, chunk) => this.onData(s, chunk),
      drain: (s) => {
        if (s.data.socket === s) s.data.writer?.flush();
      },
      close: (s, err) => this.onClosed(s, err ? `connection closed: ${err.message}` : "agent closed the connection"),
      end: (s) => this.onClosed(s, "agent closed the connection"),
      error: (s, err) => this.onClosed(s, `socket error: ${err.message}`),
      connectError: (s, err) => this.onConnectError(s.data, err),
    };
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  start(): void {
    if (this.started || this.closing) return;
    this.started = true;
    for (const c of this.conns) this.connect(c);
  }

  isConnected(): boolean {
    return this.readyCount > 0;
  }

  onConnectivity(listener: (connected: boolean) => void): void {
    this.listeners.push(listener);
  }

  /**
   * The health check failed although connections look up (the agent stopped answering pings):
   * drop every ready connection that received nothing since `silentSince`, failing its calls
   * "closed", and reconnect it with the backoff. A connection still carrying answers is kept.
   */
  reconnect(reason: string, silentSince: number): void {
    if (this.closing) return;
    let dropped = 0;
    for (const c of this.conns) {
      if (c.state !== "ready" || c.lastRecvAt >= silentSince) continue;
      dropped++;
      this.dropConn(c, new TransportError("closed", reason));
    }
    if (dropped > 0) this.log("warn", "agent connections dropped", { endpoint: this.endpoint, connections: dropped, reason });
  }

  /** The framing in use ("v2"/"v1"), or null while auto-detection has not decided. */
  get framing(): Mode | null {
    return this.detected;
  }

  private connect(conn: Conn): void {
    if (this.closing) return;
    conn.timer = null;
    conn.state = "connecting";
    conn.mode = this.detected ?? "v2";
    conn.probing = this.detected === null;
    conn.framesReceived = 0;
    conn.framesSent = 0;
    // A Unix connect normally completes or fails at once; guard against a full accept backlog.
    conn.timer = setTimeout(() => {
      conn.timer = null;
      if (conn.state === "connecting") this.onConnectError(conn, new Error("connect timeout"));
    }, this.opts.connectTimeoutMs);
    Bun.connect<Conn>({ unix: this.path, data: conn, socket: this.handlers }).catch((err: Error) => {
      // connectError normally handled it already; this catches synchronous setup failures.
      if (conn.state === "connecting") this.onConnectError(conn, err);
    });
  }

  private onConnectError(conn: Conn, err: Error): void {
    if (conn.state !== "connecting") return;
    conn.state = "idle";
    this.clearTimer(conn);
    this.log("debug", "agent connect failed", { endpoint: this.endpoint, conn: conn.index, error: err.message });
    this.scheduleReconnect(conn);
  }

  private scheduleReconnect(conn: Conn, delayMs?: number): void {
    if (this.closing || conn.timer !== null) return;
    let d = delayMs;
    if (d === undefined) {
      d = Math.round(conn.backoff * (0.8 + Math.random() * 0.4));
      conn.backoff = Math.min(conn.backoff * 2, BACKOFF_MAX_MS);
    }
    conn.timer = setTimeout(() => this.connect(conn), d);
  }

  private onOpen(s: BunSocket): void {
    const conn = s.data;
    if (this.closing || conn.state !== "connecting") {
      s.terminate();
      return;
    }
    if (this.detected !== null) {
      // Detection finished while this connection was being set up.
      conn.mode = this.detected;
      conn.probing = false;
    }
    this.clearTimer(conn);
    conn.socket = s;
    conn.gen++;
    conn.proven = false;
    conn.writer = new WriteQueue(s, () => {
      if (conn.socket === s) this.dropConn(conn, new TransportError("closed", "write to agent failed"));
    });
    conn.decoder = new FrameDecoder({ framing: conn.mode });
    conn.state = "handshaking";
    if (conn.mode === "v2") {
      conn.writer.write(this.handshakeFrame);
      const t = conn.probing ? Math.min(DETECT_TIMEOUT_MAX_MS, this.opts.connectTimeoutMs) : this.opts.connectTimeoutMs;
      conn.timer = setTimeout(() => this.onHandshakeTimeout(conn, s), t);
    } else if (this.opts.config !== undefined && this.opts.config !== null) {
      // v1: deliver the config as the first event on every connection (SDK handlers are per connection).
      this.enqueueV1(conn, { type: "configure", correlationId: `sentinel-configure-${conn.index}`, config: this.opts.config, configVersion: null }, null, true, true);
      conn.timer = setTimeout(() => this.onHandshakeTimeout(conn, s), this.opts.connectTimeoutMs);
    } else if (this.auto) {
      // auto, v1 guessed: prove the framing before any request data goes to this peer. A
      // request_complete for an id the agent never saw has no side effect in the SDK handlers
      // (nothing cached, no hook called) and is answered {"success":true}.
      const probe: AgentEvent = {
        type: "request_complete",
        correlationId: `sentinel-framing-probe-${conn.index}-${conn.gen}`,
        status: 0,
        durationMs: 0,
        requestBodySize: 0,
        responseBodySize: 0,
        upstreamAttempts: 0,
        error: null,
      };
      this.enqueueV1(conn, probe, null, true, true);
      conn.timer = setTimeout(() => this.onHandshakeTimeout(conn, s), Math.min(DETECT_TIMEOUT_MAX_MS, this.opts.connectTimeoutMs));
    } else {
      this.markReady(conn, false);
    }
  }

  /** protocol "auto" (the default). */
  private get auto(): boolean {
    return this.opts.protocol === undefined || this.opts.protocol === "auto";
  }

  private onHandshakeTimeout(conn: Conn, s: BunSocket): void {
    conn.timer = null;
    if (conn.socket !== s || conn.state !== "handshaking") return;
    if (conn.probing && this.detected === null) {
      this.setDetected("v1", "no handshake answer");
      this.dropConn(conn, new TransportError("connect", "framing probe", true), 0);
      return;
    }
    const unproven = conn.mode === "v1" && this.auto;
    this.log(unproven ? "debug" : "warn", unproven ? "agent did not answer the v1 opening event" : "agent handshake timed out", { endpoint: this.endpoint, conn: conn.index });
    this.dropConn(conn, new TransportError("connect", unproven ? "no answer to the v1 opening event" : "handshake timeout", true));
  }

  /**
   * auto: "v2" is proven by a handshake answer. "v1" is first a guess (the v2 probe got EOF,
   * silence or bytes that are not a v2 frame) and is proven when a v1 connection answers its
   * opening event; only proven connections are ready.
   */
  private setDetected(mode: Mode, why: string, proven = mode === "v2"): void {
    if (mode === "v1" && !proven) this.v2ProbeResult = why;
    if (proven && this.loggedFraming !== mode) {
      this.loggedFraming = mode;
      this.log("info", `agent framing detected: ${mode}`, { endpoint: this.endpoint, reason: why });
    } else if (this.detected !== mode) {
      this.log("debug", mode === "v1" && !proven ? "agent framing: no v2 handshake answer, trying v1" : `agent framing detected: ${mode}`, { endpoint: this.endpoint, reason: why });
    }
    if (this.detected === mode) return;
    this.detected = mode;
    // Other connections still probing with the wrong framing start over right away.
    queueMicrotask(() => {
      for (const c of this.conns) {
        if (c.state === "handshaking" && c.mode !== mode) this.dropConn(c, new TransportError("connect", "framing probe", true), 0);
        else if (c.mode === mode) c.probing = false;
      }
    });
  }

  private clearTimer(conn: Conn): void {
    if (conn.timer !== null) {
      clearTimeout(conn.timer);
      conn.timer = null;
    }
  }

  /** `proven`: the peer answered in our framing; only then does the reconnect backoff start over. */
  private markReady(conn: Conn, proven = true): void {
    this.clearTimer(conn);
    conn.state = "ready";
    conn.lastRecvAt = performance.now();
    if (proven) conn.backoff = BACKOFF_START_MS;
    if (++this.readyCount === 1) this.emit(true);
  }

  /**
   * auto: a v1 connection failed before any valid v1 answer. After V1_REPROBE_AFTER in a row
   * (and none proven meanwhile) the framing could not be detected: log it (rate limited), and
   * start over with the v2 probe. Nothing was ever ready, so calls failed by the failure mode.
   */
  private v1OpenFailed(why: string): void {
    if (this.conns.some((c) => c.state === "ready" && c.mode === "v1" && c.proven)) return;
    if (++this.v1Unproven < V1_REPROBE_AFTER) return;
    this.v1Unproven = 0;
    this.detected = null;
    this.loggedFraming = null;
    this.detectCycles++;
    const now = Date.now();
    const fields = { endpoint: this.endpoint, v2_probe: this.v2ProbeResult || "n/a", v1_probe: why, attempts: this.detectCycles };
    if (now - this.undetectedLoggedAt >= UNDETECTED_LOG_INTERVAL_MS) {
      this.undetectedLoggedAt = now;
      this.log(
        "error",
        "agent framing could not be detected: no v2 handshake answer and no valid v1 answer; calls fail by the failure mode until it answers, probing again",
        fields,
      );
    } else {
      this.log("debug", "agent framing still not detected, probing again", fields);
    }
  }

  private emit(connected: boolean): void {
    for (const l of this.listeners) {
      try {
        l(connected);
      } catch (e) {
        this.log("error", "connectivity listener threw", { error: String(e) });
      }
    }
  }

  /** Tear a connection down, fail its pending work, and reconnect (after `delayMs` or backoff). */
  private dropConn(conn: Conn, err: TransportError, delayMs?: number): void {
    this.failConn(conn, err);
    this.scheduleReconnect(conn, delayMs);
  }

  private failConn(conn: Conn, err: TransportError): void {
    const s = conn.socket;
    const wasReady = conn.state === "ready";
    if (s !== null && !this.closing && conn.mode === "v1" && !conn.proven && this.auto && this.detected !== "v2") this.v1OpenFailed(err.message);
    conn.socket = null;
    conn.state = this.closing ? "closed" : "idle";
    this.clearTimer(conn);
    if (conn.writer) conn.writer.kill();
    conn.writer = null;
    if (s) s.terminate();
    if (wasReady && --this.readyCount === 0) this.emit(false);

    if (conn.pending.size > 0) {
      const list = [...conn.pending.values()];
      conn.pending.clear();
      for (const p of list) this.settle(p, null, err);
    }
    conn.notifies.clear();
    if (conn.fifo.length > 0) {
      const list = conn.fifo.splice(0);
      conn.fifoBytes = 0;
      for (const p of list) {
        this.settle(p, null, p.sent ? err : new TransportError(err.kind === "protocol" ? "closed" : err.kind, err.message, true));
      }
    }
    for (const w of conn.pings.values()) {
      clearTimeout(w.timer);
      w.reject(new TransportError("closed", err.message));
    }
    conn.pings.clear();
    this.checkDrained();
  }

  private settle(p: Pending, reply: AgentReply | null, err: TransportError | null): void {
    if (p.signal && p.onAbort) p.signal.removeEventListener("abort", p.onAbort);
    p.signal = null;
    p.onAbort = null;
    const resolve = p.resolve;
    const reject = p.reject;
    p.resolve = p.reject = null;
    if (reply && resolve) resolve(reply);
    else if (err && reject) reject(err);
  }

  // ---- socket events ------------------------------------------------------------------------

  private onData(s: BunSocket, chunk: Uint8Array): void {
    const conn = s.data;
    if (conn.socket !== s) return;
    conn.lastRecvAt = performance.now();
    try {
      conn.decoder.push(chunk, conn.onFrame);
    } catch (e) {
      if (conn.socket !== s) return; // already torn down inside a frame handler
      if (conn.probing && this.detected === null && conn.framesReceived === 0) {
        // A v1 answer (`{` where the type byte would be) or garbage before any v2 frame.
        this.setDetected("v1", `first bytes are not a v2 frame (${(e as Error).message})`);
        this.dropConn(conn, new TransportError("connect", "framing probe", true), 0);
        return;
      }
      const msg = e instanceof FrameError || e instanceof WireParseError ? e.message : `frame handling failed: ${String(e)}`;
      this.protocolError(conn, msg);
    }
  }

  private onClosed(s: BunSocket, why: string): void {
    const conn = s.data;
    if (conn.socket !== s) return;
    if (conn.state === "handshaking" && conn.probing && this.detected === null) {
      // §7.2: EOF/reset in answer to the handshake means a v1 runner (the Python SDK closes).
      this.setDetected("v1", "connection closed in answer to the handshake");
      this.dropConn(conn, new TransportError("connect", "framing probe", true), 0);
      return;
    }
    const level = conn.state === "ready" ? "warn" : "debug";
    this.log(level, "agent connection lost", { endpoint: this.endpoint, conn: conn.index, reason: why });
    this.dropConn(conn, new TransportError(conn.state === "ready" ? "closed" : "connect", why, conn.state !== "ready"));
  }

  private protocolError(conn: Conn, msg: string): void {
    const unproven = conn.mode === "v1" && !conn.proven && this.auto; // reported by v1OpenFailed
    this.log(unproven ? "debug" : "warn", "agent protocol error, dropping connection", { endpoint: this.endpoint, conn: conn.index, error: msg });
    this.dropConn(conn, new TransportError("protocol", msg));
  }

  /** @internal called by Conn.onFrame for every decoded frame. */
  handleFrame(conn: Conn, type: number, payload: Uint8Array): void {
    if (conn.state === "closed" || conn.socket === null) return;
    conn.framesReceived++;
    if (conn.mode === "v1") return this.handleV1Frame(conn, payload);

    if (conn.state === "handshaking") {
      if (type !== FrameType.HandshakeResponse) {
        if (conn.probing && this.detected === null) {
          this.setDetected("v1", `first frame type 0x${type.toString(16)}`);
          this.dropConn(conn, new TransportError("connect", "framing probe", true), 0);
          return;
        }
        return this.protocolError(conn, `expected handshake response, got type 0x${type.toString(16)}`);
      }
      if (conn.probing) this.setDetected("v2", "handshake answered");
      let hs;
      try {
        hs = parseHandshakeResponse(parsePayload(payload));
      } catch (e) {
        return this.protocolError(conn, `bad handshake response: ${(e as Error).message}`);
      }
      if (!hs.success) {
        this.log("error", "agent refused the handshake", { endpoint: this.endpoint, conn: conn.index, error: hs.error });
        return this.dropConn(conn, new TransportError("connect", `handshake refused: ${hs.error ?? "no reason"}`, true));
      }
      if (hs.encoding !== "json") return this.protocolError(conn, `agent chose unsupported encoding "${hs.encoding}"`);
      this.capabilities = hs.capabilities;
      this.markReady(conn);
      return;
    }

    switch (type) {
      case FrameType.AgentResponse:
        return this.handleAnswer(conn, payload);
      case FrameType.Pong:
        return this.handlePong(conn, payload);
      case FrameType.HealthStatus:
      case FrameType.MetricsReport:
      case FrameType.ConfigUpdateRequest:
      case FrameType.FlowControl: {
        try {
          const msg = parseControl(type, parsePayload(payload));
          this.log("debug", "agent control message", { endpoint: this.endpoint, kind: msg.kind });
        } catch (e) {
          this.log("debug", "agent control message ignored", { endpoint: this.endpoint, error: (e as Error).message });
        }
        return;
      }
      default:
        // A known type that only the proxy sends (or a second handshake answer): ignore it, like
        // the Rust peers do with known-but-unhandled types.
        this.log("debug", "unexpected frame type from agent ignored", { endpoint: this.endpoint, type });
    }
  }

  private handleAnswer(conn: Conn, payload: Uint8Array): void {
    let obj: unknown;
    try {
      obj = parsePayload(payload);
    } catch (e) {
      return this.protocolError(conn, (e as Error).message);
    }
    const id = replyCorrelationId(obj);
    const p = id === null ? undefined : conn.pending.get(id);
    if (p === undefined) {
      if (id !== null && conn.notifies.delete(id)) return;
      this.dropAnswer(id === null ? "answer without correlation id" : "answer for unknown correlation id", id);
      return;
    }
    let reply: AgentReply;
    try {
      reply = parseReply(obj, { eventType: p.type });
    } catch (e) {
      return this.protocolError(conn, `invalid answer: ${(e as Error).message}`);
    }
    conn.pending.delete(p.id);
    this.settle(p, reply, null);
    if (this.closing) this.checkDrained();
  }

  private dropAnswer(why: string, id: string | null): void {
    this.dropCount++;
    const now = Date.now();
    if (now - this.dropLoggedAt >= 1000) {
      this.log("warn", `agent ${why}; dropped`, { endpoint: this.endpoint, correlation_id: id, dropped_since_last_log: this.dropCount });
      this.dropLoggedAt = now;
      this.dropCount = 0;
    }
  }

  private handlePong(conn: Conn, payload: Uint8Array): void {
    let seq: number | null = null;
    try {
      const v = parsePayload(payload) as { sequence?: unknown };
      if (typeof v?.sequence === "number") seq = v.sequence;
    } catch {
      /* tolerate: match the oldest ping */
    }
    if (seq === null) {
      const first = conn.pings.keys().next();
      if (first.done) return;
      seq = first.value;
    }
    const w = conn.pings.get(seq);
    if (!w) return;
    conn.pings.delete(seq);
    clearTimeout(w.timer);
    w.resolve();
  }

  // ---- v2 calls -----------------------------------------------------------------------------

  call(event: AgentEvent, signal: AbortSignal): Promise<AgentReply> {
    if (this.closing) return Promise.reject(new TransportError("closed", "transport closed", true));
    if (signal.aborted) return Promise.reject(abortError(signal, true));
    const conn = this.pick(event.correlationId, true, event.type !== "request_headers");
    if (conn === LOST) {
      // v1: SDK agents keep a request's state on the connection that carried its headers; on any
      // other connection their hooks would not run and they would answer Allow (spec §5, §7.3).
      return Promise.reject(
        new TransportError("closed", `the agent connection that carried the headers of ${event.correlationId} is gone (v1 state is per connection)`, true),
      );
    }
    if (conn === null) {
      return Promise.reject(
        this.readyCount === 0
          ? new TransportError("connect", `agent ${this.endpoint} not connected`, true)
          : new TransportError("overload", `correlation id ${event.correlationId} already in flight on every connection`, true),
      );
    }
    if (conn.mode === "v1") return this.callV1(conn, event, signal);

    let frame: Uint8Array;
    try {
      frame = encodeFrameString(eventTypeByte(event.type), encodeEvent(event, this.encOpts));
    } catch (e) {
      return Promise.reject(new TransportError("protocol", `cannot encode event: ${(e as Error).message}`, true));
    }
    if (conn.queuedBytes + frame.length > MAX_QUEUED_BYTES) {
      return Promise.reject(new TransportError("overload", "agent write queue full", true));
    }
    const { promise, resolve, reject } = Promise.withResolvers<AgentReply>();
    const p: Pending = {
      id: event.correlationId,
      type: event.type,
      resolve,
      reject,
      signal,
      onAbort: null,
      conn,
      frame: null,
      sent: true,
      abandoned: false,
      opening: false,
    };
    p.onAbort = () => {
      if (conn.pending.get(p.id) === p) conn.pending.delete(p.id);
      this.settle(p, null, abortError(signal, false));
      if (this.closing) this.checkDrained();
    };
    signal.addEventListener("abort", p.onAbort, { once: true });
    conn.pending.set(p.id, p);
    conn.framesSent++;
    conn.writer!.write(frame);
    return promise;
  }

  /**
   * Least-loaded ready connection; for v2, one without `id` in flight. v1 honours affinity: the
   * socket that carried the request's headers, or LOST when that socket is gone.
   */
  private pick(id: string, forCall: boolean, useAffinity = true): Conn | null | typeof LOST {
    if (useAffinity && (this.detected === "v1" || this.opts.protocol === "v1")) {
      const a = this.affinity.get(id);
      if (a !== undefined) return a.conn.state === "ready" && a.conn.mode === "v1" && a.conn.gen === a.gen ? a.conn : LOST;
    }
    let best: Conn | null = null;
    let bestLoad = Infinity;
    for (const c of this.conns) {
      if (c.state !== "ready") continue;
      if (c.mode === "v2" && (c.pending.has(id) || (forCall && c.notifies.has(id)))) continue;
      const l = c.load;
      if (l < bestLoad) {
        best = c;
        bestLoad = l;
      }
    }
    return best;
  }

  notify(event: AgentEvent): void {
    try {
      if (this.closing) return;
      const conn = this.pick(event.correlationId, false);
      if (event.type === "request_complete") this.affinity.delete(event.correlationId);
      if (conn === null || conn === LOST) return;
      if (conn.mode === "v1") {
        if (conn.queuedBytes < MAX_QUEUED_BYTES) this.enqueueV1(conn, event, null, true);
        return;
      }
      const frame = encodeFrameString(eventTypeByte(event.type), encodeEvent(event, this.encOpts));
      if (conn.queuedBytes + frame.length > MAX_QUEUED_BYTES) return;
      conn.notifies.set(event.correlationId, true);
      if (conn.notifies.size > MAX_NOTIFY_IDS) conn.notifies.delete(conn.notifies.keys().next().value!);
      conn.framesSent++;
      conn.writer!.write(frame);
    } catch (e) {
      this.log("debug", "agent notify failed", { endpoint: this.endpoint, error: String(e) });
    }
  }

  ping(timeoutMs: number): Promise<void> {
    let conn: Conn | null = null;
    let anyV1 = false;
    for (const c of this.conns) {
      if (c.state !== "ready") continue;
      if (c.mode === "v1") anyV1 = true;
      else if (conn === null || c.pending.size < conn.pending.size) conn = c;
    }
    if (conn === null) {
      // v1 has no ping; an established connection is all we can tell.
      if (anyV1) return Promise.resolve();
      return Promise.reject(new TransportError("connect", `agent ${this.endpoint} not connected`, true));
    }
    const seq = ++this.pingSeq;
    const c = conn;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        c.pings.delete(seq);
        reject(new TransportError("timeout", `no pong within ${timeoutMs} ms`));
      }, timeoutMs);
      c.pings.set(seq, { resolve, reject, timer });
      c.writer!.write(encodeFrameString(FrameType.Ping, JSON.stringify(pingToWire(seq, Date.now()))));
    });
  }

  // ---- v1 calls -----------------------------------------------------------------------------

  private callV1(conn: Conn, event: AgentEvent, signal: AbortSignal): Promise<AgentReply> {
    if (event.type === "request_headers") {
      this.affinity.delete(event.correlationId); // re-inserted last: eviction drops the oldest
      this.affinity.set(event.correlationId, { conn, gen: conn.gen });
      if (this.affinity.size > MAX_AFFINITY) this.affinity.delete(this.affinity.keys().next().value!);
    } else if (event.type === "request_complete") {
      this.affinity.delete(event.correlationId);
    }
    if (event.type === "request_body_chunk" || event.type === "response_body_chunk") return this.callV1Body(conn, event, signal);
    if (conn.queuedBytes > MAX_QUEUED_BYTES) return Promise.reject(new TransportError("overload", "agent queue full", true));
    return this.enqueueV1(conn, event, signal, false)!;
  }

  /** Split a body chunk into ≤ 32 KiB pieces (one frame each), send them in order, merge the answers. */
  private async callV1Body(
    conn: Conn,
    event: Extract<AgentEvent, { type: "request_body_chunk" | "response_body_chunk" }>,
    signal: AbortSignal,
  ): Promise<AgentReply> {
    const key = `${event.type}:${event.correlationId}`;
    let idx = event.chunkIndex === 0 ? 0 : (this.v1ChunkNext.get(key) ?? event.chunkIndex);
    const data = event.data;
    const n = Math.max(1, Math.ceil(data.length / V1_MAX_CHUNK));
    if (event.isLast) this.v1ChunkNext.delete(key);
    else {
      this.v1ChunkNext.set(key, idx + n);
      if (this.v1ChunkNext.size > MAX_AFFINITY) this.v1ChunkNext.delete(this.v1ChunkNext.keys().next().value!);
    }
    if (conn.queuedBytes > MAX_QUEUED_BYTES) throw new TransportError("overload", "agent queue full", true);
    if (n === 1) return this.enqueueV1(conn, idx === event.chunkIndex ? event : { ...event, chunkIndex: idx }, signal, false)!;

    const reqOps: HeaderOp[] = [];
    const respOps: HeaderOp[] = [];
    const pieces: Uint8Array[] = [];
    const replaced: Array<Uint8Array | null> = [];
    let mutated = false;
    let last: AgentReply | null = null;
    const tags: string[] = [];
    const ruleIds: string[] = [];
    const reasonCodes: string[] = [];
    for (let i = 0; i < n; i++) {
      const start = i * V1_MAX_CHUNK;
      const end = Math.min(data.length, start + V1_MAX_CHUNK);
      const piece = data.subarray(start, end);
      pieces.push(piece);
      const sub = {
        ...event,
        data: piece,
        isLast: event.isLast && i === n - 1,
        chunkIndex: idx++,
        bytesTransferred: event.bytesTransferred - (data.length - end),
      };
      const r = await this.enqueueV1(conn, sub, signal, false)!;
      reqOps.push(...r.requestHeaders);
      respOps.push(...r.responseHeaders);
      tags.push(...r.audit.tags);
      ruleIds.push(...r.audit.ruleIds);
      reasonCodes.push(...r.audit.reasonCodes);
      const m = event.type === "request_body_chunk" ? r.requestBodyMutation : r.responseBodyMutation;
      replaced.push(m?.data ?? null);
      if (m && m.data !== null) mutated = true;
      last = r;
      if (r.decision.kind !== "allow") break;
    }
    const out: AgentReply = { ...last!, correlationId: event.correlationId, requestHeaders: reqOps, responseHeaders: respOps };
    out.audit = { ...last!.audit, tags, ruleIds, reasonCodes };
    if (mutated) {
      const parts = pieces.map((p, i) => replaced[i] ?? p);
      const total = parts.reduce((s, p) => s + p.length, 0);
      const joined = new Uint8Array(total);
      let off = 0;
      for (const p of parts) {
        joined.set(p, off);
        off += p.length;
      }
      const m = { data: joined, chunkIndex: event.chunkIndex };
      if (event.type === "request_body_chunk") out.requestBodyMutation = m;
      else out.responseBodyMutation = m;
    }
    return out;
  }

  /** Queue one v1 request. `internal` requests (notify, configure) resolve nothing. */
  private enqueueV1(conn: Conn, event: AgentEvent, signal: AbortSignal | null, internal: boolean, opening = false): Promise<AgentReply> | undefined {
    let frame: Uint8Array;
    try {
      frame = encodeV1FrameString(encodeV1Event(event, this.encOpts));
    } catch (e) {
      if (internal) return undefined;
      return Promise.reject(new TransportError("protocol", `cannot encode event: ${(e as Error).message}`, true));
    }
    if (signal?.aborted) return Promise.reject(abortError(signal, true));
    const p: Pending = {
      id: event.correlationId,
      type: event.type,
      resolve: null,
      reject: null,
      signal,
      onAbort: null,
      conn,
      frame,
      sent: false,
      abandoned: internal,
      opening,
    };
    let promise: Promise<AgentReply> | undefined;
    if (!internal) {
      const w = Promise.withResolvers<AgentReply>();
      p.resolve = w.resolve;
      p.reject = w.reject;
      promise = w.promise;
    }
    if (signal) {
      p.onAbort = () => {
        if (!p.sent) {
          const i = conn.fifo.indexOf(p);
          if (i >= 0) {
            conn.fifo.splice(i, 1);
            conn.fifoBytes -= p.frame!.length;
          }
        }
        // A sent request keeps its FIFO slot: its answer must still be consumed, then dropped.
        p.abandoned = true;
        this.settle(p, null, abortError(signal, !p.sent));
        if (this.closing) this.checkDrained();
      };
      signal.addEventListener("abort", p.onAbort, { once: true });
    }
    conn.fifo.push(p);
    conn.fifoBytes += frame.length;
    if (conn.fifo.length === 1) this.v1SendHead(conn);
    return promise;
  }

  private v1SendHead(conn: Conn): void {
    const p = conn.fifo[0];
    if (p === undefined || p.sent || conn.writer === null) return;
    p.sent = true;
    conn.fifoBytes -= p.frame!.length;
    conn.framesSent++;
    // One write call per frame (§5): the socket is idle here, a ≤ 64 KiB frame goes out whole.
    conn.writer.writeNow(p.frame!);
    p.frame = null;
  }

  private handleV1Frame(conn: Conn, payload: Uint8Array): void {
    const p = conn.fifo[0];
    if (p === undefined || !p.sent) return this.protocolError(conn, "v1 answer without an outstanding request");
    let obj: unknown;
    try {
      obj = parsePayload(payload);
    } catch (e) {
      return this.protocolError(conn, (e as Error).message);
    }
    const named = replyCorrelationId(obj);
    if (named !== null && named !== p.id) return this.protocolError(conn, `v1 answer names correlation id ${named}, expected ${p.id}`);
    let reply: AgentReply;
    try {
      reply = parseReply(obj, { eventType: p.type, fallbackCorrelationId: p.id });
    } catch (e) {
      return this.protocolError(conn, `invalid answer: ${(e as Error).message}`);
    }
    conn.fifo.shift();
    if (!conn.proven) {
      conn.proven = true;
      this.v1Unproven = 0;
      if (this.auto) this.setDetected("v1", "a v1 event was answered", true);
      if (conn.state === "ready") conn.backoff = BACKOFF_START_MS; // protocol "v1": ready before proof
    }
    if (p.opening) {
      // The configure (or, in auto mode, the framing probe) sent on open.
      if (p.type === "configure" && (reply.success === false || reply.decision.kind !== "allow")) {
        this.log("error", "agent rejected its configuration", { endpoint: this.endpoint, conn: conn.index, error: reply.error ?? null });
        return this.dropConn(conn, new TransportError("connect", `configuration rejected: ${reply.error ?? "no reason"}`, true));
      }
      this.markReady(conn);
    } else if (!p.abandoned) {
      this.settle(p, reply, null);
    }
    this.v1SendHead(conn);
    if (this.closing) this.checkDrained();
  }

  // ---- close --------------------------------------------------------------------------------

  private outstanding(): number {
    let n = 0;
    for (const c of this.conns) {
      n += c.pending.size;
      for (const p of c.fifo) if (!p.abandoned) n++;
    }
    return n;
  }

  private checkDrained(): void {
    if (this.drainWaiter && this.outstanding() === 0) {
      const w = this.drainWaiter;
      this.drainWaiter = null;
      w();
    }
  }

  async close(graceMs = 0): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const c of this.conns) {
      this.clearTimer(c);
      if (c.state !== "ready") this.failConn(c, new TransportError("closed", "transport closed", true));
    }
    if (graceMs > 0 && this.outstanding() > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.drainWaiter = null;
          resolve();
        }, graceMs);
        this.drainWaiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    for (const c of this.conns) this.failConn(c, new TransportError("closed", "transport closed"));
    this.affinity.clear();
    this.v1ChunkNext.clear();
  }
}

/** An AgentTransport that also tells which framing it uses ("v2"/"v1", null while detecting). */
export type UdsAgentTransport = AgentTransport & { readonly framing: "v2" | "v1" | null };

/** A UDS transport to one agent (see the file header). Never throws; call start() to connect. */
export function createUdsTransport(opts: TransportOptions): UdsAgentTransport {
  return new UdsTransport(opts);
}
