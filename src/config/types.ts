// Typed, validated configuration. Produced once by `loadConfig` (src/config/load.ts) from KDL;
// everything downstream reads only these objects, never KDL nodes.
// Durations are normalised to milliseconds, sizes to bytes.

/** Where a config node came from, for FILE:LINE:COL messages. */
export interface SourceLoc {
  file: string;
  line: number; // 1-based
  col: number; // 1-based
}

export type FailureMode = "open" | "closed";

export interface SystemConfig {
  workerThreads: number; // 0 = CPU count
  maxConnections: number;
  gracefulShutdownTimeoutMs: number; // graceful-shutdown-timeout-secs
  traceIdFormat: "tinyflake" | "uuid";
  autoReload: boolean;
  routeCacheSize: number;
  pidFile?: string;
  /** Server-side timeouts (our extension, documented in config.md-compatible names). */
  headerTimeoutMs: number; // slow-headers cut (Bun enforces ~12 s itself)
  idleTimeoutMs: number; // idle keep-alive connections / body idle
}

export interface TlsServerConfig {
  certFile: string;
  keyFile: string;
  /** With clientAuth: the CA bundle that client certificates must chain to. */
  caFile?: string;
  /** `client-auth #true`: request a client certificate and refuse the handshake without a valid one. */
  clientAuth?: boolean;
}

export interface ListenerConfig {
  id: string;
  address: string; // "IP:PORT"
  host: string;
  port: number;
  protocol: "http" | "https";
  requestTimeoutMs: number; // request-timeout-secs (default 60)
  keepaliveTimeoutMs: number; // keepalive-timeout-secs (default 75)
  defaultRoute?: string;
  /** Extension: peers whose X-Forwarded-For names the client (addresses / CIDRs as written). */
  trustedProxies?: string[];
  tls?: TlsServerConfig;
  loc: SourceLoc;
}

export type MatchCondition =
  | { kind: "path"; value: string }
  | { kind: "path-prefix"; value: string }
  | { kind: "path-regex"; value: string; regex: RegExp }
  | { kind: "host"; value: string }
  | { kind: "header"; name: string; value?: string }
  | { kind: "method"; values: string[] } // upper-case; OR
  | { kind: "query-param"; name: string; value?: string };

export type HeaderOpConfig =
  | { op: "rename"; from: string; to: string }
  | { op: "set"; name: string; value: string }
  | { op: "add"; name: string; value: string }
  | { op: "remove"; name: string };

export interface RetryPolicyConfig {
  maxAttempts: number; // total attempts, >= 1
  timeoutMs?: number; // overall budget for all attempts
  backoffBaseMs: number; // default 100
  backoffMaxMs: number; // default 2000
  retryableStatusCodes: number[]; // retried only for idempotent methods
}

export interface RouteConfig {
  id: string;
  priority: number;
  matches: MatchCondition[];
  upstream?: string;
  filters: string[]; // filter ids, in order
  requestHeaderOps: HeaderOpConfig[];
  responseHeaderOps: HeaderOpConfig[];
  timeoutMs?: number; // policies.timeout-secs
  maxBodySize?: number; // policies.max-body-size (bytes)
  failureMode?: FailureMode; // policies.failure-mode
  retryPolicy: RetryPolicyConfig; // default maxAttempts 1
  websocket: boolean;
  builtinHandler?: "status" | "health" | "metrics" | "not-found" | "config" | "upstreams";
  loc: SourceLoc;
}

export type LbPolicy =
  | "round_robin"
  | "weighted"
  | "least_connections"
  | "random"
  | "ip_hash"
  | "consistent_hash";

export interface TargetConfig {
  address: string; // "host:port"
  host: string;
  port: number;
  weight: number;
}

export interface UpstreamHealthCheckConfig {
  type: "http" | "tcp";
  path: string; // http only, default "/health"
  expectedStatus: number; // default 200
  host?: string;
  intervalMs: number; // interval-secs, default 10 s
  timeoutMs: number; // timeout-secs, default 5 s
  healthyThreshold: number; // default 2
  unhealthyThreshold: number; // default 3
}

export interface UpstreamConfig {
  id: string;
  targets: TargetConfig[];
  loadBalancing: LbPolicy;
  healthCheck?: UpstreamHealthCheckConfig;
  /** Passive ejection: consecutive failures before a target is marked down (0 = off). */
  passiveFailureThreshold: number;
  passiveEjectMs: number;
  connectTimeoutMs: number; // timeouts.connect / connect-secs (default 10 s)
  requestTimeoutMs: number; // timeouts.request / request-secs (default 60 s)
  readTimeoutMs: number; // timeouts.read / read-secs: body idle (default 30 s)
  writeTimeoutMs: number; // default 30 s
  /** maxConnections: per target, 0 = no limit (the default; Zentinel documents 100 but does not enforce it). */
  pool: { maxConnections: number; maxIdle: number; idleTimeoutMs: number; maxLifetimeMs: number };
  tls?: { sni?: string; caCert?: string; clientCert?: string; clientKey?: string; insecureSkipVerify: boolean };
  loc: SourceLoc;
}

export type AgentEventName =
  | "request_headers"
  | "request_body"
  | "response_headers"
  | "response_body"
  | "request_complete"
  | "websocket_frame"
  | "guardrail";

export type BodyMode = { kind: "buffer" } | { kind: "stream" } | { kind: "hybrid"; thresholdBytes: number };

export interface AgentTransportConfig {
  kind: "uds" | "grpc";
  /**
   * UDS: socket path. gRPC: "http://host:port" or "https://host:port". For a replicated agent,
   * the first endpoint (static list) or the "dns://name:port" form as written.
   */
  address: string;
  /**
   * Replicated agent with a static list: every endpoint (normalised like `address`), in config
   * order, at least 2, at most MAX_AGENT_ENDPOINTS; `endpoints[0] === address`. Absent for a
   * single-endpoint agent.
   */
  endpoints?: string[];
  /**
   * Replicated agent behind a DNS name (gRPC only, `grpc "dns://name:port"`): every address the
   * name resolves to is an endpoint (`scheme://ip:port`), re-resolved every `resolveIntervalMs`.
   */
  dns?: { name: string; port: number; scheme: "http" | "https"; resolveIntervalMs: number };
  tls?: { caCert?: string; clientCert?: string; clientKey?: string; insecure: boolean };
  /** UDS framing: v2 (binary type byte + handshake), v1 (legacy SDK runners), auto-detect. */
  protocol: "v2" | "v1" | "auto";
}

/** Most endpoints one agent may have (static list or DNS answer); bounds metric label cardinality. */
export const MAX_AGENT_ENDPOINTS = 64;

export interface AgentConfig {
  id: string;
  type: string; // "auth" | "waf" | "rate-limit" | custom
  transport: AgentTransportConfig;
  events: AgentEventName[];
  timeoutMs: number; // default 1000
  connectTimeoutMs: number; // default 5000
  failureMode: FailureMode; // resolved default: closed for auth/waf, open otherwise
  failureModeExplicit: boolean;
  retry: { attempts: number; backoffMs: number }; // default 0 / 10
  healthCheck: {
    enabled: boolean;
    intervalMs: number; // default 10000
    timeoutMs: number; // default 100
    healthyThreshold: number; // default 2
    unhealthyThreshold: number; // default 3
  };
  circuitBreaker: {
    failureThreshold: number; // 5
    successThreshold: number; // 2
    timeoutMs: number; // timeout-seconds, 30 s
    halfOpenMaxRequests: number; // 1
  };
  maxRequestBodyBytes: number; // 1 MiB
  maxResponseBodyBytes: number; // 1 MiB
  requestBodyMode: BodyMode;
  responseBodyMode: BodyMode;
  chunkTimeoutMs: number; // 5000
  maxConcurrentCalls: number; // 100
  connections: number; // UDS pool size, default 4
  config?: unknown; // free-form JSON from `config {}`
  loc: SourceLoc;
}

export type FilterConfig =
  | { id: string; type: "agent"; agent: string; failureMode?: FailureMode; loc: SourceLoc }
  | {
      id: string;
      type: "headers";
      phase: "request" | "response" | "both";
      ops: HeaderOpConfig[];
      loc: SourceLoc;
    }
  | {
      id: string;
      type: "timeout";
      requestTimeoutMs?: number;
      upstreamTimeoutMs?: number;
      connectTimeoutMs?: number;
      loc: SourceLoc;
    };

export interface LimitsConfig {
  maxHeaderSize: number; // 8192 (total head bytes)
  maxHeaderCount: number; // 100
  maxBodySize: number; // 10 MiB
  maxUriLength: number; // 8192 (our extension: 414 above it)
}

export interface ObservabilityConfig {
  metrics?: { enabled: boolean; address: string; host: string; port: number; path: string };
  logging: {
    level: "debug" | "info" | "warn" | "error";
    /** bufferSize: bytes buffered before a write (buffer-size); absent = 64 KiB. Lines also go out 100 ms after the first. */
    accessLog?: { enabled: boolean; file?: string; format: "json" | "combined"; bufferSize?: number };
    errorLog?: { enabled: boolean; file?: string; level: "debug" | "info" | "warn" | "error"; bufferSize?: number };
    /** wafEvents (log-waf-events, default off): also audit allow answers that report rule ids (detection-only WAF agents). */
    auditLog?: { enabled: boolean; file?: string; bufferSize?: number; wafEvents?: boolean };
  };
}

export interface SentinelConfig {
  /** Absolute path of the main config file. */
  file: string;
  /** Every file read (main + includes), for auto-reload watching. */
  files: string[];
  schemaVersion: string;
  system: SystemConfig;
  listeners: ListenerConfig[];
  routes: RouteConfig[];
  upstreams: Map<string, UpstreamConfig>;
  filters: Map<string, FilterConfig>;
  agents: Map<string, AgentConfig>;
  limits: LimitsConfig;
  observability: ObservabilityConfig;
}

export interface ConfigDiagnostic {
  severity: "error" | "warning";
  loc: SourceLoc;
  message: string;
}

export interface LoadResult {
  config?: SentinelConfig; // present only when there are no errors
  /** Best-effort understanding of the file(s) even when there are errors (for tools and tests). */
  partial?: SentinelConfig;
  diagnostics: ConfigDiagnostic[];
}

export function formatDiagnostic(d: ConfigDiagnostic): string {
  const prefix = d.severity === "warning" ? "warning: " : "";
  return `${d.loc.file}:${d.loc.line}:${d.loc.col}: ${prefix}${d.message}`;
}
