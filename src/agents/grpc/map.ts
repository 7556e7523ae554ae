// Internal agent model (src/agents/types.ts) <-> zentinel.agent.v2 protobuf messages.
// Spec: /work/shared/spec/agent-protocol.md §6.3 (fields) and §6.4 (mapping rules).
//
// Both directions live here: the proxy side (eventToProto / replyFromProto, used by client.ts)
// and the agent side (eventFromProto / replyToProto, used by sdk/grpc-server.ts and tests).
// Messages are built as complete object literals typed by the generated code (no reflection on
// the hot path); the generated types make the compiler check that every field is present.
import type {
  AgentCapabilities as PbCapabilities,
  AgentResponse,
  AgentToProxy,
  AuditMetadata as PbAudit,
  BlockDecision,
  Header,
  HeaderOp as PbHeaderOp,
  HandshakeResponse,
  ProxyToAgent,
  RequestMetadata as PbMetadata,
} from "../../gen/zentinel/agent/v2/agent_v2_pb.js";
import type {
  AgentCapabilities,
  AgentEvent,
  AgentReply,
  AuditMetadata,
  Decision,
  HeaderMap,
  HeaderOp,
  RequestMetadata,
} from "../types.ts";

/**
 * Largest ProxyToAgent message we send: 4 MiB (tonic / grpc-js default receive limit, counted on
 * the whole encoded message) minus 64 KiB of headroom (§6.1 rule 6, D6).
 */
export const MAX_GRPC_MESSAGE_BYTES = 4 * 1024 * 1024 - 64 * 1024;

/** EventType numbers (§6.2). */
export const EventTypeNumber = {
  request_headers: 1,
  request_body_chunk: 2,
  response_headers: 3,
  response_body_chunk: 4,
  request_complete: 5,
  websocket_frame: 6,
  guardrail_inspect: 7,
  configure: 8,
} as const;

const EMPTY_BYTES = new Uint8Array(0);

// ------------------------------------------------------------------------------------ headers

/** Header map -> repeated Header, one entry per value, in order. */
export function headersToProto(headers: HeaderMap): Header[] {
  const out: Header[] = [];
  for (const name in headers) {
    const values = headers[name]!;
    for (let i = 0; i < values.length; i++) {
      out.push({ $typeName: "zentinel.agent.v2.Header", name, value: values[i]! });
    }
  }
  return out;
}

/** repeated Header -> header map; names are lower-cased, repeated names collect every value. */
export function headersFromProto(headers: readonly Header[]): HeaderMap {
  const out: HeaderMap = Object.create(null); // names are client text: "constructor" is a header
  for (let i = 0; i < headers.length; i++) addHeader(out, headers[i]!.name, headers[i]!.value);
  return out;
}

/** One received header into a map without prototype: the name lower-cased, values in order. */
export function addHeader(map: HeaderMap, name: string, value: string): void {
  const key = name.toLowerCase();
  const list = map[key];
  if (list === undefined) map[key] = [value];
  else list.push(value);
}

function singleHeadersToProto(headers: Record<string, string> | null | undefined): Header[] {
  if (!headers) return [];
  const out: Header[] = [];
  for (const name in headers) out.push({ $typeName: "zentinel.agent.v2.Header", name, value: headers[name]! });
  return out;
}

function singleHeadersFromProto(headers: readonly Header[]): Record<string, string> | null {
  if (headers.length === 0) return null;
  const out: Record<string, string> = {};
  for (const h of headers) out[h.name] = h.value; // last value wins, like the Rust HashMap
  return out;
}

// ------------------------------------------------------------------------------------ proxy -> agent

function metadataToProto(m: RequestMetadata): PbMetadata {
  return {
    $typeName: "zentinel.agent.v2.RequestMetadata",
    correlationId: m.correlationId,
    requestId: m.requestId,
    clientIp: m.clientIp,
    clientPort: m.clientPort,
    serverName: m.serverName ?? undefined,
    protocol: m.protocol,
    tlsVersion: m.tlsVersion ?? undefined,
    routeId: m.routeId ?? undefined,
    upstreamId: m.upstreamId ?? undefined,
    timestampMs: u64(m.timestampMs),
    traceparent: m.traceparent,
  };
}

/** number -> uint64; negative, NaN and infinite values become 0. */
function u64(n: number): bigint {
  return n > 0 && n <= Number.MAX_SAFE_INTEGER ? BigInt(Math.trunc(n)) : n > Number.MAX_SAFE_INTEGER && Number.isFinite(n) ? BigInt(n) : 0n;
}

/**
 * One model event -> ProxyToAgent. `nowMs` stamps timestamp_ms on body chunks and configure.
 * For request_headers the correlation id travels in metadata.correlation_id (§6.1 rule 2); the
 * event's top-level correlationId wins if the two differ.
 */
export function eventToProto(event: AgentEvent, nowMs: number = Date.now()): ProxyToAgent {
  switch (event.type) {
    case "request_headers": {
      const metadata = metadataToProto(event.metadata);
      metadata.correlationId = event.correlationId;
      return {
        $typeName: "zentinel.agent.v2.ProxyToAgent",
        message: {
          case: "requestHeaders",
          value: {
            $typeName: "zentinel.agent.v2.RequestHeadersEvent",
            metadata,
            method: event.method,
            uri: event.uri,
            httpVersion: event.metadata.protocol || "HTTP/1.1",
            headers: headersToProto(event.headers),
          },
        },
      };
    }
    case "request_body_chunk":
    case "response_body_chunk":
      return {
        $typeName: "zentinel.agent.v2.ProxyToAgent",
        message: {
          case: event.type === "request_body_chunk" ? "requestBodyChunk" : "responseBodyChunk",
          value: {
            $typeName: "zentinel.agent.v2.BodyChunkEvent",
            correlationId: event.correlationId,
            chunkIndex: event.chunkIndex >>> 0,
            data: event.data,
            isLast: event.isLast,
            totalSize: event.totalSize === null ? undefined : u64(event.totalSize),
            bytesTransferred: u64(event.bytesTransferred),
            proxyBufferAvailable: 0n,
            timestampMs: u64(nowMs),
          },
        },
      };
    case "response_headers":
      return {
        $typeName: "zentinel.agent.v2.ProxyToAgent",
        message: {
          case: "responseHeaders",
          value: {
            $typeName: "zentinel.agent.v2.ResponseHeadersEvent",
            correlationId: event.correlationId,
            statusCode: event.status >>> 0,
            headers: headersToProto(event.headers),
          },
        },
      };
    case "request_complete":
      return {
        $typeName: "zentinel.agent.v2.ProxyToAgent",
        message: {
          case: "requestComplete",
          value: {
            $typeName: "zentinel.agent.v2.RequestCompleteEvent",
            correlationId: event.correlationId,
            statusCode: event.status >>> 0,
            durationMs: u64(event.durationMs),
            bytesReceived: u64(event.requestBodySize),
            bytesSent: u64(event.responseBodySize),
            upstream: undefined,
            fromCache: false,
            error: event.error ?? undefined,
          },
        },
      };
    case "configure":
      return {
        $typeName: "zentinel.agent.v2.ProxyToAgent",
        message: {
          case: "configure",
          value: {
            $typeName: "zentinel.agent.v2.ConfigureEvent",
            configJson: configJson(event.config),
            configVersion: event.configVersion ?? undefined,
            isInitial: false,
            timestampMs: u64(nowMs),
          },
        },
      };
  }
}

/** JSON text for config_json: the agent's `config {}` or "{}" when there is none. */
export function configJson(config: unknown): string {
  if (config === undefined || config === null) return "{}";
  try {
    return JSON.stringify(config) ?? "{}";
  } catch {
    return "{}";
  }
}

/** The first message on every ProcessStream (§6.1 rule 1). */
export function handshakeToProto(proxyId: string, proxyVersion: string, config: unknown): ProxyToAgent {
  return {
    $typeName: "zentinel.agent.v2.ProxyToAgent",
    message: {
      case: "handshake",
      value: {
        $typeName: "zentinel.agent.v2.HandshakeRequest",
        supportedVersions: [2, 1],
        proxyId,
        proxyVersion,
        configJson: configJson(config),
      },
    },
  };
}

export function pingToProto(sequence: number, nowMs: number = Date.now()): ProxyToAgent {
  return {
    $typeName: "zentinel.agent.v2.ProxyToAgent",
    message: { case: "ping", value: { $typeName: "zentinel.agent.v2.Ping", sequence: u64(sequence), timestampMs: u64(nowMs) } },
  };
}

/**
 * Upper bound of the encoded ProxyToAgent size, computed without encoding. Every string and byte
 * field costs its length plus a generous fixed overhead for tags, lengths and numbers, so the
 * real message is never larger than this estimate. (UTF-16 length * 3 bounds the UTF-8 size.)
 */
export function estimateEventSize(event: AgentEvent): number {
  switch (event.type) {
    case "request_body_chunk":
    case "response_body_chunk":
      return event.data.byteLength + event.correlationId.length * 3 + 96;
    case "request_headers": {
      const m = event.metadata;
      let n =
        256 +
        3 *
          (event.correlationId.length +
            m.requestId.length +
            m.clientIp.length +
            (m.serverName?.length ?? 0) +
            m.protocol.length +
            (m.tlsVersion?.length ?? 0) +
            (m.routeId?.length ?? 0) +
            (m.upstreamId?.length ?? 0) +
            (m.traceparent?.length ?? 0) +
            event.method.length +
            event.uri.length);
      n += headersSize(event.headers);
      return n;
    }
    case "response_headers":
      return 64 + event.correlationId.length * 3 + headersSize(event.headers);
    case "request_complete":
      return 128 + 3 * (event.correlationId.length + (event.error?.length ?? 0));
    case "configure":
      return 64 + 3 * configJson(event.config).length + 3 * (event.configVersion?.length ?? 0);
  }
}

function headersSize(headers: HeaderMap): number {
  let n = 0;
  for (const name in headers) {
    const values = headers[name]!;
    for (let i = 0; i < values.length; i++) n += 16 + 3 * (name.length + values[i]!.length);
  }
  return n;
}

// ------------------------------------------------------------------------------------ agent -> proxy

/** D23: a Rust agent JSON-encodes every audit.custom value, so "\"abc\"" means "abc". */
export function unquoteCustom(value: string): string {
  const n = value.length;
  if (n >= 2 && value.charCodeAt(0) === 34 && value.charCodeAt(n - 1) === 34) {
    try {
      const v: unknown = JSON.parse(value);
      if (typeof v === "string") return v;
    } catch {
      // not JSON: keep as is
    }
  }
  return value;
}

/** f32 -> the shortest decimal that round-trips through f32 (0.9f arrives as 0.899999976…). */
export function f32ToNumber(x: number): number {
  if (!Number.isFinite(x)) return x;
  for (let p = 1; p <= 9; p++) {
    const d = Number(x.toPrecision(p));
    if (Math.fround(d) === x) return d;
  }
  return x;
}

function auditFromProto(a: PbAudit | undefined): AuditMetadata {
  if (a === undefined) return { tags: [], ruleIds: [], confidence: null, reasonCodes: [], custom: {} };
  const custom: Record<string, unknown> = {};
  for (const k in a.custom) custom[k] = unquoteCustom(a.custom[k]!);
  return {
    tags: a.tags,
    ruleIds: a.ruleIds,
    confidence: a.confidence === undefined ? null : f32ToNumber(a.confidence),
    reasonCodes: a.reasonCodes,
    custom,
  };
}

function headerOpsFromProto(ops: readonly PbHeaderOp[]): HeaderOp[] {
  const out: HeaderOp[] = [];
  for (let i = 0; i < ops.length; i++) {
    const o = ops[i]!.operation;
    switch (o.case) {
      case "set":
        out.push({ op: "set", name: o.value.name, value: o.value.value });
        break;
      case "add":
        out.push({ op: "add", name: o.value.name, value: o.value.value });
        break;
      case "remove":
        out.push({ op: "remove", name: o.value });
        break;
      default:
        break; // empty oneof: nothing to apply
    }
  }
  return out;
}

/** The allow decision every answer without block/redirect/challenge shares (never mutated). */
export const ALLOW_DECISION: Decision = Object.freeze({ kind: "allow" }) as Decision;

/** A decision's status: 0 (unset) means `def`; anything else must be 100–599, as over UDS. */
function decisionStatus(status: number, def: number, what: string): number {
  if (status === 0) return def;
  if (!Number.isInteger(status) || status < 100 || status > 599) throw new Error(`${what}: status must be an integer 100-599, got ${status}`);
  return status;
}

function decisionFromProto(d: AgentResponse["decision"]): Decision {
  switch (d.case) {
    case "block":
      return {
        kind: "block",
        status: decisionStatus(d.value.status, 403, "decision.block"),
        body: d.value.body ?? null,
        headers: singleHeadersFromProto(d.value.headers),
      };
    case "redirect":
      return { kind: "redirect", url: d.value.url, status: decisionStatus(d.value.status, 302, "decision.redirect") };
    case "challenge":
      return { kind: "challenge", challengeType: d.value.challengeType, params: { ...d.value.params } };
    default:
      return ALLOW_DECISION; // "allow" or no field set (§6.4)
  }
}

/** AgentResponse -> model reply. Fields gRPC cannot carry are empty/null (§6.4). */
export function replyFromProto(r: AgentResponse): AgentReply {
  return {
    correlationId: r.correlationId,
    decision: decisionFromProto(r.decision),
    requestHeaders: headerOpsFromProto(r.requestHeaders),
    responseHeaders: headerOpsFromProto(r.responseHeaders),
    routingMetadata: {},
    audit: auditFromProto(r.audit),
    needsMore: r.needsMore,
    requestBodyMutation: null,
    responseBodyMutation: null,
  };
}

/** What the agent said about itself; 0 / empty mean "unknown" (a TS agent loses fields, §6.1). */
export function capabilitiesFromProto(h: HandshakeResponse): AgentCapabilities {
  const c = h.capabilities;
  return {
    agentId: c?.agentId ?? "",
    name: c?.name ?? "",
    version: c?.version ?? "",
    supportedEvents: c ? [...c.supportedEvents] : [],
    protocolVersion: h.protocolVersion || c?.protocolVersion || 0,
  };
}

// ------------------------------------------------------------------------------------ agent side

/**
 * ProxyToAgent -> model event (agent side). Returns null for messages that are not events the
 * model knows (handshake, ping, cancel, websocket_frame, guardrail).
 */
export function eventFromProto(msg: ProxyToAgent): AgentEvent | null {
  const m = msg.message;
  switch (m.case) {
    case "requestHeaders": {
      const e = m.value;
      const md = e.metadata;
      const correlationId = md?.correlationId ?? "";
      const metadata: RequestMetadata = {
        correlationId,
        requestId: md?.requestId ?? "",
        clientIp: md?.clientIp ?? "",
        clientPort: md?.clientPort ?? 0,
        serverName: md?.serverName ?? null,
        protocol: md?.protocol || e.httpVersion || "HTTP/1.1",
        tlsVersion: md?.tlsVersion ?? null,
        routeId: md?.routeId ?? null,
        upstreamId: md?.upstreamId ?? null,
        timestampMs: md ? Number(md.timestampMs) : 0,
      };
      if (md?.traceparent !== undefined) metadata.traceparent = md.traceparent;
      return { type: "request_headers", correlationId, metadata, method: e.method, uri: e.uri, headers: headersFromProto(e.headers) };
    }
    case "requestBodyChunk":
    case "responseBodyChunk": {
      const e = m.value;
      return {
        type: m.case === "requestBodyChunk" ? "request_body_chunk" : "response_body_chunk",
        correlationId: e.correlationId,
        data: e.data ?? EMPTY_BYTES,
        isLast: e.isLast,
        totalSize: e.totalSize === undefined ? null : Number(e.totalSize),
        chunkIndex: e.chunkIndex,
        bytesTransferred: Number(e.bytesTransferred),
      };
    }
    case "responseHeaders":
      return {
        type: "response_headers",
        correlationId: m.value.correlationId,
        status: m.value.statusCode,
        headers: headersFromProto(m.value.headers),
      };
    case "requestComplete": {
      const e = m.value;
      return {
        type: "request_complete",
        correlationId: e.correlationId,
        status: e.statusCode,
        durationMs: Number(e.durationMs),
        requestBodySize: Number(e.bytesReceived),
        responseBodySize: Number(e.bytesSent),
        upstreamAttempts: 1, // not carried over gRPC (§6.4)
        error: e.error ?? null,
      };
    }
    case "configure": {
      let config: unknown = null;
      try {
        config = m.value.configJson ? JSON.parse(m.value.configJson) : null;
      } catch {
        config = null;
      }
      return { type: "configure", correlationId: "", config, configVersion: m.value.configVersion ?? null };
    }
    default:
      return null;
  }
}

/** Correlation id of any ProxyToAgent event message ("" when it has none). */
export function correlationIdOf(msg: ProxyToAgent): string {
  const m = msg.message;
  switch (m.case) {
    case "requestHeaders":
      return m.value.metadata?.correlationId ?? "";
    case "requestBodyChunk":
    case "responseBodyChunk":
    case "responseHeaders":
    case "requestComplete":
    case "websocketFrame":
    case "guardrail":
    case "cancel":
      return m.value.correlationId;
    default:
      return "";
  }
}

function headerOpsToProto(ops: readonly HeaderOp[] | undefined): PbHeaderOp[] {
  if (!ops || ops.length === 0) return [];
  const out: PbHeaderOp[] = [];
  for (const o of ops) {
    if (o.op === "remove") {
      out.push({ $typeName: "zentinel.agent.v2.HeaderOp", operation: { case: "remove", value: o.name } });
    } else {
      out.push({
        $typeName: "zentinel.agent.v2.HeaderOp",
        operation: { case: o.op, value: { $typeName: "zentinel.agent.v2.Header", name: o.name, value: o.value } },
      });
    }
  }
  return out;
}

function decisionToProto(d: Decision): AgentResponse["decision"] {
  switch (d.kind) {
    case "block": {
      const value: BlockDecision = {
        $typeName: "zentinel.agent.v2.BlockDecision",
        status: d.status >>> 0,
        body: d.body ?? undefined,
        headers: singleHeadersToProto(d.headers),
      };
      return { case: "block", value };
    }
    case "redirect":
      return { case: "redirect", value: { $typeName: "zentinel.agent.v2.RedirectDecision", url: d.url, status: d.status >>> 0 } };
    case "challenge":
      return {
        case: "challenge",
        value: { $typeName: "zentinel.agent.v2.ChallengeDecision", challengeType: d.challengeType, params: { ...(d.params ?? {}) } },
      };
    default:
      return { case: "allow", value: { $typeName: "zentinel.agent.v2.AllowDecision" } };
  }
}

function customToProto(custom: Record<string, unknown> | undefined): { [key: string]: string } {
  const out: { [key: string]: string } = {};
  if (!custom) return out;
  for (const k in custom) {
    const v = custom[k];
    if (v === undefined) continue;
    out[k] = typeof v === "string" ? v : (JSON.stringify(v) ?? String(v));
  }
  return out;
}

/**
 * Model reply -> AgentResponse (agent side). Strings in audit.custom pass through unquoted (as a
 * TS agent does); other values are sent as JSON text. Routing metadata and body mutations cannot
 * be carried over gRPC and are dropped (§6.4).
 */
export function replyToProto(reply: AgentReply, processingTimeMs?: number): AgentResponse {
  const a = reply.audit;
  return {
    $typeName: "zentinel.agent.v2.AgentResponse",
    correlationId: reply.correlationId,
    decision: decisionToProto(reply.decision),
    requestHeaders: headerOpsToProto(reply.requestHeaders),
    responseHeaders: headerOpsToProto(reply.responseHeaders),
    audit: {
      $typeName: "zentinel.agent.v2.AuditMetadata",
      tags: a?.tags ?? [],
      ruleIds: a?.ruleIds ?? [],
      confidence: a?.confidence ?? undefined,
      reasonCodes: a?.reasonCodes ?? [],
      custom: customToProto(a?.custom),
    },
    processingTimeMs: processingTimeMs === undefined ? undefined : u64(processingTimeMs),
    needsMore: reply.needsMore,
  };
}

export function responseEnvelope(response: AgentResponse): AgentToProxy {
  return { $typeName: "zentinel.agent.v2.AgentToProxy", message: { case: "response", value: response } };
}

/** HandshakeResponse for an agent (agent side). */
export function handshakeResponseToProto(
  info: { agentId: string; name: string; version: string },
  supportedEvents: readonly number[],
  success: boolean,
  error?: string,
): AgentToProxy {
  const capabilities: PbCapabilities = {
    $typeName: "zentinel.agent.v2.AgentCapabilities",
    protocolVersion: 2,
    agentId: info.agentId,
    name: info.name,
    version: info.version,
    supportedEvents: [...supportedEvents],
    features: {
      $typeName: "zentinel.agent.v2.AgentFeatures",
      streamingBody: supportedEvents.includes(2) || supportedEvents.includes(4),
      websocket: false,
      guardrails: false,
      configPush: false,
      metricsExport: false,
      concurrentRequests: 100,
      cancellation: false,
      flowControl: false,
      healthReporting: false,
    },
    limits: {
      $typeName: "zentinel.agent.v2.AgentLimits",
      maxBodySize: 10_485_760n,
      maxConcurrency: 100,
      preferredChunkSize: 65_536n,
      maxMemory: undefined,
      maxProcessingTimeMs: undefined,
    },
    healthConfig: {
      $typeName: "zentinel.agent.v2.HealthConfig",
      reportIntervalMs: 10_000,
      includeLoadMetrics: false,
      includeResourceMetrics: false,
    },
  };
  return {
    $typeName: "zentinel.agent.v2.AgentToProxy",
    message: {
      case: "handshake",
      value: {
        $typeName: "zentinel.agent.v2.HandshakeResponse",
        protocolVersion: success ? 2 : 0,
        capabilities,
        success,
        error,
      },
    },
  };
}
