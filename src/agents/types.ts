// Transport-neutral model of the Agent Protocol v2 (../shared/spec/agent-protocol.md §3–§4).
// The proxy pipeline, both transports (uds/, grpc/) and the SDK (sdk/) all speak these types;
// each transport maps them to its own wire form (JSON frames or protobuf).

/** Header map as the protocol carries it: lower-case name → every value, in order. */
export type HeaderMap = Record<string, string[]>;

export interface RequestMetadata {
  correlationId: string;
  requestId: string;
  clientIp: string;
  clientPort: number;
  serverName: string | null;
  protocol: string; // "HTTP/1.1"
  tlsVersion: string | null;
  routeId: string | null;
  upstreamId: string | null;
  timestampMs: number;
  traceparent?: string;
}

export type AgentEvent =
  | { type: "request_headers"; correlationId: string; metadata: RequestMetadata; method: string; uri: string; headers: HeaderMap }
  | {
      type: "request_body_chunk" | "response_body_chunk";
      correlationId: string;
      data: Uint8Array;
      isLast: boolean;
      totalSize: number | null;
      chunkIndex: number;
      bytesTransferred: number;
    }
  | { type: "response_headers"; correlationId: string; status: number; headers: HeaderMap }
  | {
      type: "request_complete";
      correlationId: string;
      status: number;
      durationMs: number;
      requestBodySize: number;
      responseBodySize: number;
      upstreamAttempts: number;
      error: string | null;
    }
  | { type: "configure"; correlationId: string; config: unknown; configVersion: string | null };

export type AgentEventType = AgentEvent["type"];

export type HeaderOp =
  | { op: "set"; name: string; value: string }
  | { op: "add"; name: string; value: string }
  | { op: "remove"; name: string };

export type Decision =
  | { kind: "allow" }
  | { kind: "block"; status: number; body?: string | null; headers?: Record<string, string> | null }
  | { kind: "redirect"; url: string; status: number }
  | { kind: "challenge"; challengeType: string; params: Record<string, string> };

export interface AuditMetadata {
  tags: string[];
  ruleIds: string[];
  confidence: number | null;
  reasonCodes: string[];
  custom: Record<string, unknown>;
}

export interface BodyMutation {
  /** null = keep the chunk, empty = drop it, otherwise the replacement bytes (already decoded). */
  data: Uint8Array | null;
  chunkIndex: number;
}

export interface AgentReply {
  correlationId: string;
  decision: Decision;
  requestHeaders: HeaderOp[];
  responseHeaders: HeaderOp[];
  routingMetadata: Record<string, string>;
  audit: AuditMetadata;
  needsMore: boolean;
  requestBodyMutation: BodyMutation | null;
  responseBodyMutation: BodyMutation | null;
  /** v1 configure/request_complete answers: {"success":false,"error":…}. */
  success?: boolean;
  error?: string | null;
}

export function allowReply(correlationId: string): AgentReply {
  return {
    correlationId,
    decision: { kind: "allow" },
    requestHeaders: [],
    responseHeaders: [],
    routingMetadata: {},
    audit: { tags: [], ruleIds: [], confidence: null, reasonCodes: [], custom: {} },
    needsMore: false,
    requestBodyMutation: null,
    responseBodyMutation: null,
  };
}

/** What the agent said about itself in the handshake (fields a TS agent may leave empty). */
export interface AgentCapabilities {
  agentId: string;
  name: string;
  version: string;
  supportedEvents: number[];
  protocolVersion: number;
}

/** Why a transport call failed; the Agent layer maps these to failure modes and metrics. */
export type TransportErrorKind = "connect" | "timeout" | "protocol" | "closed" | "overload";

export class TransportError extends Error {
  constructor(
    readonly kind: TransportErrorKind,
    message: string,
    /** true when the event provably never reached the agent (safe to retry elsewhere). */
    readonly notSent = false,
  ) {
    super(message);
    this.name = "TransportError";
  }
}

/**
 * The low-level connection to one agent endpoint. Implemented by uds/ and grpc/.
 * A transport connects in the background and reconnects forever with capped exponential
 * backoff (~100 ms doubling to a few seconds); it never throws synchronously.
 */
export interface AgentTransport {
  readonly endpoint: string;
  /** Begin connecting (idempotent). */
  start(): void;
  /** At least one usable (handshaken) connection/stream right now. */
  isConnected(): boolean;
  /**
   * Send one event and wait for its answer. Rejects with TransportError. `signal` aborts the wait
   * (the caller's timeout or client disconnect): the pending entry is removed and a late answer
   * is dropped. At most one outstanding call per correlation id per connection.
   */
  call(event: AgentEvent, signal: AbortSignal): Promise<AgentReply>;
  /** Fire and forget (request_complete). Any answer is dropped quietly. Never throws. */
  notify(event: AgentEvent): void;
  /** Protocol-level liveness probe (UDS Ping/Pong; gRPC ping message). */
  ping(timeoutMs: number): Promise<void>;
  /** Called with true/false when connectivity changes. */
  onConnectivity(listener: (connected: boolean) => void): void;
  /**
   * The health check failed although the transport still looks up: drop every connection that
   * has received nothing since `silentSince` (performance.now() time; a peer that stopped
   * answering while TCP stays open) and reconnect it with the usual backoff. Calls in flight on
   * a dropped connection fail "closed". (UDS and gRPC both implement it.)
   */
  reconnect?(reason: string, silentSince: number): void;
  /** Close everything; pending calls reject with kind "closed". Waits for pending answers up to graceMs. */
  close(graceMs?: number): Promise<void>;
  readonly capabilities?: AgentCapabilities;
}

export interface TransportOptions {
  endpoint: string;
  /** The agent's id from the config (the v1 configure event's `agent_id`, §5/D16). */
  agentId?: string;
  connectTimeoutMs: number;
  /**
   * Longest deadline the Agent layer gives one call (its timeout-ms, or chunk-timeout-ms when
   * larger). gRPC: after a GOAWAY, the old connection is closed at the latest this long after
   * the GOAWAY (plus a margin), even if a caller's signal never fires.
   */
  callTimeoutMs?: number;
  /** Number of UDS connections (ignored by gRPC, which multiplexes one stream per channel). */
  connections: number;
  /** Agent `config {}` as JSON, delivered in the handshake (and a configure event where supported). */
  config?: unknown;
  proxyVersion: string;
  protocol?: "v2" | "v1" | "auto";
  tls?: { caCert?: string; clientCert?: string; clientKey?: string; insecure: boolean };
  log?: (level: "debug" | "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;
}
