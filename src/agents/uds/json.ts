// Internal agent model (../types.ts) ↔ Agent Protocol JSON (spec §3, §4, §2.5, §2.7, §2.8, §5, §7).
//
// Encoding is strict and emits the superset of §7.3 so that both Rust (v2) and SDK (v1) parsers
// are happy. Decoding of agent answers is tolerant as listed in §7.4; anything structurally
// invalid throws WireParseError, which callers treat as a protocol error.
import type {
  AgentCapabilities,
  AgentEvent,
  AgentReply,
  AuditMetadata,
  BodyMutation,
  Decision,
  HeaderMap,
  HeaderOp,
  RequestMetadata,
} from "../types.ts";
import { FrameType } from "./frame.ts";

export class WireParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WireParseError";
  }
}

// ---------------------------------------------------------------------------------------------
// Extra event kinds that exist on the wire but not (yet) in the proxy model.

export interface WebSocketFrameEvent {
  type: "websocket_frame";
  correlationId: string;
  opcode: string;
  data: Uint8Array;
  clientToServer: boolean;
  frameIndex: number;
  fin: boolean;
  routeId: string | null;
  clientIp: string;
}

export interface GuardrailInspectEvent {
  type: "guardrail_inspect";
  correlationId: string;
  inspectionType: string;
  content: string;
  model?: string;
  categories: string[];
  routeId?: string;
  metadata: Record<string, string>;
}

export type WireEvent = AgentEvent | WebSocketFrameEvent | GuardrailInspectEvent;
export type WireEventType = WireEvent["type"];

const TYPE_BYTE: Record<WireEventType, number> = {
  request_headers: FrameType.RequestHeaders,
  request_body_chunk: FrameType.RequestBodyChunk,
  response_headers: FrameType.ResponseHeaders,
  response_body_chunk: FrameType.ResponseBodyChunk,
  request_complete: FrameType.RequestComplete,
  websocket_frame: FrameType.WebSocketFrame,
  guardrail_inspect: FrameType.GuardrailInspect,
  configure: FrameType.Configure,
};

const TYPE_NAME: Record<number, WireEventType> = {};
for (const [k, v] of Object.entries(TYPE_BYTE)) TYPE_NAME[v] = k as WireEventType;

/** v2 type byte for an event kind. */
export function eventTypeByte(type: WireEventType): number {
  return TYPE_BYTE[type];
}

/** Event kind for a v2 type byte (0x10–0x17), or undefined. */
export function eventTypeName(typeByte: number): WireEventType | undefined {
  return TYPE_NAME[typeByte];
}

// ---------------------------------------------------------------------------------------------
// Small helpers

export function toBase64(data: Uint8Array): string {
  if (data.length === 0) return "";
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("base64");
}

const B64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

/** Standard base64 with padding, or null if `s` is not exactly that. */
export function fromBase64Strict(s: string): Uint8Array | null {
  if (s.length % 4 !== 0 || !B64_RE.test(s)) return null;
  const b = Buffer.from(s, "base64");
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

const utf8 = new TextEncoder();

/** RFC 3339 as Zentinel writes it: `2026-07-01T09:07:07.512+00:00`. */
export function rfc3339(ms: number): string {
  // Every event of the same millisecond carries the same time (tens per ms under load): format once.
  if (ms === lastStampMs) return lastStamp;
  const d = new Date(Number.isFinite(ms) ? ms : Date.now());
  const valid = !Number.isNaN(d.getTime());
  const s = (valid ? d.toISOString() : new Date().toISOString()).slice(0, -1) + "+00:00";
  if (valid) {
    lastStampMs = ms;
    lastStamp = s;
  }
  return s;
}
let lastStampMs = Number.NaN;
let lastStamp = "";

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function fail(msg: string): never {
  throw new WireParseError(msg);
}

function reqStr(o: Record<string, unknown>, k: string, ctx: string): string {
  const v = o[k];
  if (typeof v !== "string") fail(`${ctx}: "${k}" must be a string`);
  return v;
}

function optStr(o: Record<string, unknown>, k: string, ctx: string): string | null {
  const v = o[k];
  if (v === undefined || v === null) return null;
  if (typeof v !== "string") fail(`${ctx}: "${k}" must be a string or null`);
  return v;
}

function reqNum(o: Record<string, unknown>, k: string, ctx: string): number {
  const v = o[k];
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) fail(`${ctx}: "${k}" must be a non-negative number`);
  return v;
}

function defNum(o: Record<string, unknown>, k: string, ctx: string, def: number): number {
  const v = o[k];
  if (v === undefined || v === null) return def;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) fail(`${ctx}: "${k}" must be a non-negative number`);
  return v;
}

function reqBool(o: Record<string, unknown>, k: string, ctx: string): boolean {
  const v = o[k];
  if (typeof v !== "boolean") fail(`${ctx}: "${k}" must be a boolean`);
  return v;
}

function reqBase64(o: Record<string, unknown>, k: string, ctx: string): Uint8Array {
  const s = reqStr(o, k, ctx);
  const b = fromBase64Strict(s);
  if (b === null) fail(`${ctx}: "${k}" is not padded standard base64`);
  return b;
}

function headerMap(v: unknown, ctx: string): HeaderMap {
  if (!isObj(v)) fail(`${ctx}: "headers" must be an object`);
  for (const k in v) {
    const vals = v[k];
    if (!Array.isArray(vals) || !vals.every((x) => typeof x === "string")) fail(`${ctx}: header "${k}" must be an array of strings`);
  }
  return v as HeaderMap;
}

function stringMap(v: unknown, ctx: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) fail(`${ctx} must be an object`);
  const out: Record<string, string> = {};
  for (const k in v) {
    const x = v[k];
    if (typeof x === "string") out[k] = x;
    else if (typeof x === "number" || typeof x === "boolean") out[k] = String(x);
    else fail(`${ctx}: "${k}" must be a string`);
  }
  return out;
}

function strArray(v: unknown): string[] {
  if (!Array.isArray(v)) return [];
  const out: string[] = [];
  for (const x of v) if (typeof x === "string") out.push(x);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Events: model → wire

export interface EncodeOptions {
  /** Emit the §7.3 superset fields (default true). false gives the exact Rust shapes. */
  superset?: boolean;
  /** `agent_id` in configure (superset field; the SDKs' v1 configure shape). */
  agentId?: string;
}

function metadataToWire(m: RequestMetadata, correlationId: string): Record<string, unknown> {
  const o: Record<string, unknown> = {
    correlation_id: correlationId,
    request_id: m.requestId,
    client_ip: m.clientIp,
    client_port: m.clientPort,
    server_name: m.serverName,
    protocol: m.protocol,
    tls_version: m.tlsVersion,
    tls_cipher: null,
    route_id: m.routeId,
    upstream_id: m.upstreamId,
    timestamp: rfc3339(m.timestampMs),
  };
  if (m.traceparent !== undefined) o.traceparent = m.traceparent;
  return o;
}

/** The event as the JSON object of §3, with the top-level `correlation_id` of §2.6. */
export function eventToWire(e: WireEvent, opts: EncodeOptions = {}): Record<string, unknown> {
  const superset = opts.superset !== false;
  switch (e.type) {
    case "request_headers":
      return {
        correlation_id: e.correlationId,
        metadata: metadataToWire(e.metadata, e.correlationId),
        method: e.method,
        uri: e.uri,
        headers: e.headers,
      };
    case "request_body_chunk":
      return {
        correlation_id: e.correlationId,
        data: toBase64(e.data),
        is_last: e.isLast,
        total_size: e.totalSize,
        chunk_index: e.chunkIndex,
        bytes_received: e.bytesTransferred,
      };
    case "response_body_chunk": {
      const o: Record<string, unknown> = {
        correlation_id: e.correlationId,
        data: toBase64(e.data),
        is_last: e.isLast,
        total_size: e.totalSize,
        chunk_index: e.chunkIndex,
        bytes_sent: e.bytesTransferred,
      };
      if (superset) o.bytes_received = e.bytesTransferred;
      return o;
    }
    case "response_headers":
      return { correlation_id: e.correlationId, status: e.status, headers: e.headers };
    case "request_complete": {
      const o: Record<string, unknown> = {
        correlation_id: e.correlationId,
        status: e.status,
        duration_ms: e.durationMs,
        request_body_size: e.requestBodySize,
        response_body_size: e.responseBodySize,
        upstream_attempts: e.upstreamAttempts,
        error: e.error,
      };
      if (superset) {
        o.request_size = e.requestBodySize;
        o.response_size = e.responseBodySize;
      }
      return o;
    }
    case "configure": {
      const o: Record<string, unknown> = {
        correlation_id: e.correlationId,
        config: e.config === undefined ? null : e.config,
        config_version: e.configVersion,
      };
      if (superset) o.agent_id = opts.agentId ?? "";
      return o;
    }
    case "websocket_frame": {
      const o: Record<string, unknown> = {
        correlation_id: e.correlationId,
        opcode: e.opcode,
        data: toBase64(e.data),
        client_to_server: e.clientToServer,
        frame_index: e.frameIndex,
        fin: e.fin,
        route_id: e.routeId,
        client_ip: e.clientIp,
      };
      if (superset) o.direction = e.clientToServer ? "client_to_server" : "server_to_client";
      return o;
    }
    case "guardrail_inspect": {
      const o: Record<string, unknown> = {
        correlation_id: e.correlationId,
        inspection_type: e.inspectionType,
        content: e.content,
      };
      if (e.model !== undefined) o.model = e.model;
      o.categories = e.categories;
      if (e.routeId !== undefined) o.route_id = e.routeId;
      o.metadata = e.metadata;
      return o;
    }
  }
}

/** JSON text of a v2 event payload (one stringify per event). */
export function encodeEvent(e: WireEvent, opts?: EncodeOptions): string {
  return JSON.stringify(eventToWire(e, opts));
}

/** v1 envelope (§5): `{"version":1,"event_type":…,"payload":…}`. */
export function eventToV1Envelope(e: WireEvent, opts?: EncodeOptions): Record<string, unknown> {
  return { version: 1, event_type: e.type, payload: eventToWire(e, opts) };
}

export function encodeV1Event(e: WireEvent, opts?: EncodeOptions): string {
  return JSON.stringify(eventToV1Envelope(e, opts));
}

// ---------------------------------------------------------------------------------------------
// Events: wire → model (agent side)

function parseTimestamp(v: unknown, ctx: string): number {
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (typeof v === "string") {
    if (/^\d+$/.test(v)) return Number(v); // gRPC-converted agents see epoch ms as a string
    const t = Date.parse(v);
    if (!Number.isNaN(t)) return t;
  }
  fail(`${ctx}: "timestamp" must be an RFC 3339 string`);
}

/** Decode an event payload of the given kind (v2 payload or v1 envelope `payload`). */
export function wireToEvent(type: WireEventType | string, v: unknown): WireEvent {
  const ctx = String(type);
  if (!isObj(v)) fail(`${ctx}: payload must be an object`);
  const top = typeof v.correlation_id === "string" ? v.correlation_id : null;
  switch (type) {
    case "request_headers": {
      const m = v.metadata;
      if (!isObj(m)) fail(`${ctx}: "metadata" must be an object`);
      const mctx = `${ctx}.metadata`;
      const correlationId = typeof m.correlation_id === "string" ? m.correlation_id : top ?? fail(`${mctx}: "correlation_id" missing`);
      const metadata: RequestMetadata = {
        correlationId,
        requestId: reqStr(m, "request_id", mctx),
        clientIp: reqStr(m, "client_ip", mctx),
        clientPort: reqNum(m, "client_port", mctx),
        serverName: optStr(m, "server_name", mctx),
        protocol: reqStr(m, "protocol", mctx),
        tlsVersion: optStr(m, "tls_version", mctx),
        routeId: optStr(m, "route_id", mctx),
        upstreamId: optStr(m, "upstream_id", mctx),
        timestampMs: parseTimestamp(m.timestamp, mctx),
      };
      const tp = optStr(m, "traceparent", mctx);
      if (tp !== null) metadata.traceparent = tp;
      return {
        type: "request_headers",
        correlationId,
        metadata,
        method: reqStr(v, "method", ctx),
        uri: reqStr(v, "uri", ctx),
        headers: headerMap(v.headers, ctx),
      };
    }
    case "request_body_chunk":
    case "response_body_chunk": {
      const counter = type === "request_body_chunk" ? "bytes_received" : "bytes_sent";
      const other = type === "request_body_chunk" ? "bytes_sent" : "bytes_received";
      const ts = v.total_size;
      if (ts !== undefined && ts !== null && (typeof ts !== "number" || ts < 0)) fail(`${ctx}: "total_size" must be a number or null`);
      return {
        type,
        correlationId: reqStr(v, "correlation_id", ctx),
        data: reqBase64(v, "data", ctx),
        isLast: reqBool(v, "is_last", ctx),
        totalSize: (ts as number | null | undefined) ?? null,
        chunkIndex: defNum(v, "chunk_index", ctx, 0),
        bytesTransferred: defNum(v, counter, ctx, defNum(v, other, ctx, 0)),
      };
    }
    case "response_headers":
      return {
        type: "response_headers",
        correlationId: reqStr(v, "correlation_id", ctx),
        status: reqNum(v, "status", ctx),
        headers: headerMap(v.headers, ctx),
      };
    case "request_complete": {
      const reqSize = v.request_body_size ?? v.request_size;
      const respSize = v.response_body_size ?? v.response_size;
      const o = { ...v, request_body_size: reqSize, response_body_size: respSize };
      return {
        type: "request_complete",
        correlationId: reqStr(v, "correlation_id", ctx),
        status: reqNum(v, "status", ctx),
        durationMs: reqNum(v, "duration_ms", ctx),
        requestBodySize: reqNum(o, "request_body_size", ctx),
        responseBodySize: reqNum(o, "response_body_size", ctx),
        upstreamAttempts: defNum(v, "upstream_attempts", ctx, 1),
        error: optStr(v, "error", ctx),
      };
    }
    case "configure":
      return {
        type: "configure",
        correlationId: top ?? "",
        config: v.config === undefined ? null : v.config,
        configVersion: optStr(v, "config_version", ctx),
      };
    case "websocket_frame": {
      let c2s: boolean;
      if (typeof v.client_to_server === "boolean") c2s = v.client_to_server;
      else if (v.direction === "client_to_server" || v.direction === "server_to_client") c2s = v.direction === "client_to_server";
      else fail(`${ctx}: "client_to_server" must be a boolean`);
      const op = v.opcode;
      if (typeof op !== "string" && typeof op !== "number") fail(`${ctx}: "opcode" must be a string`);
      return {
        type: "websocket_frame",
        correlationId: reqStr(v, "correlation_id", ctx),
        opcode: String(op),
        data: reqBase64(v, "data", ctx),
        clientToServer: c2s,
        frameIndex: defNum(v, "frame_index", ctx, 0),
        fin: typeof v.fin === "boolean" ? v.fin : true,
        routeId: optStr(v, "route_id", ctx),
        clientIp: typeof v.client_ip === "string" ? v.client_ip : "",
      };
    }
    case "guardrail_inspect": {
      const e: GuardrailInspectEvent = {
        type: "guardrail_inspect",
        correlationId: reqStr(v, "correlation_id", ctx),
        inspectionType: reqStr(v, "inspection_type", ctx),
        content: reqStr(v, "content", ctx),
        categories: strArray(v.categories),
        metadata: stringMap(v.metadata, `${ctx}.metadata`),
      };
      const model = optStr(v, "model", ctx);
      if (model !== null) e.model = model;
      const route = optStr(v, "route_id", ctx);
      if (route !== null) e.routeId = route;
      return e;
    }
    default:
      fail(`unknown event type "${ctx}"`);
  }
}

/** Decode a v1 envelope `{version, event_type, payload}`. */
export function v1EnvelopeToEvent(v: unknown): WireEvent {
  if (!isObj(v)) fail("v1 envelope must be an object");
  const t = reqStr(v, "event_type", "v1 envelope");
  return wireToEvent(t, v.payload);
}

// ---------------------------------------------------------------------------------------------
// Replies: wire → model (proxy side, tolerant per §7.4)

/** The correlation id an answer names: `audit.custom.correlation_id`, else top-level `correlation_id`. */
export function replyCorrelationId(v: unknown): string | null {
  if (!isObj(v)) return null;
  const audit = v.audit;
  if (isObj(audit)) {
    const custom = audit.custom;
    if (isObj(custom)) {
      const id = custom.correlation_id;
      if (typeof id === "string") return id;
      if (typeof id === "number") return String(id);
    }
  }
  const top = v.correlation_id;
  if (typeof top === "string" && top !== "") return top;
  return null;
}

function validStatus(s: unknown, def: number, ctx: string): number {
  if (s === undefined || s === null) return def;
  if (typeof s !== "number" || !Number.isInteger(s) || s < 100 || s > 599) fail(`${ctx}: status must be an integer 100-599`);
  return s;
}

function parseDecision(d: unknown): Decision {
  if (d === "allow") return { kind: "allow" };
  if (!isObj(d)) fail(`decision of unknown shape: ${JSON.stringify(d)?.slice(0, 80)}`);
  const keys = Object.keys(d);
  if (keys.length !== 1) fail(`decision must have exactly one variant, got ${keys.length}`);
  const k = keys[0]!;
  const v = d[k];
  switch (k) {
    case "allow":
      if (v === null || v === undefined || isObj(v)) return { kind: "allow" };
      fail("decision.allow must be null or an object");
    case "block": {
      if (v !== null && v !== undefined && !isObj(v)) fail("decision.block must be an object");
      const b = (v ?? {}) as Record<string, unknown>;
      const body = b.body;
      if (body !== undefined && body !== null && typeof body !== "string") fail("decision.block.body must be a string or null");
      const headers = b.headers === undefined || b.headers === null ? null : stringMap(b.headers, "decision.block.headers");
      return { kind: "block", status: validStatus(b.status, 403, "decision.block"), body: (body as string | null | undefined) ?? null, headers };
    }
    case "redirect": {
      if (!isObj(v)) fail("decision.redirect must be an object");
      return { kind: "redirect", url: reqStr(v, "url", "decision.redirect"), status: validStatus(v.status, 302, "decision.redirect") };
    }
    case "challenge": {
      if (!isObj(v)) fail("decision.challenge must be an object");
      return {
        kind: "challenge",
        challengeType: reqStr(v, "challenge_type", "decision.challenge"),
        params: stringMap(v.params, "decision.challenge.params"),
      };
    }
    default:
      fail(`unknown decision "${k}"`);
  }
}

function parseHeaderOps(v: unknown, ctx: string): HeaderOp[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) fail(`${ctx} must be an array`);
  const out: HeaderOp[] = new Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const item = v[i];
    if (!isObj(item)) fail(`${ctx}[${i}] must be an object`);
    const keys = Object.keys(item);
    if (keys.length !== 1) fail(`${ctx}[${i}] must have exactly one operation`);
    const op = keys[0]!;
    const body = item[op];
    if (!isObj(body)) fail(`${ctx}[${i}].${op} must be an object`);
    const name = body.name;
    if (typeof name !== "string") fail(`${ctx}[${i}].${op}.name must be a string`);
    if (op === "set" || op === "add") {
      const value = body.value;
      if (typeof value !== "string") fail(`${ctx}[${i}].${op}.value must be a string`);
      out[i] = { op, name, value };
    } else if (op === "remove") {
      out[i] = { op: "remove", name };
    } else fail(`${ctx}[${i}]: unknown header operation "${op}"`);
  }
  return out;
}

function parseAudit(v: unknown): AuditMetadata {
  if (!isObj(v)) return { tags: [], ruleIds: [], confidence: null, reasonCodes: [], custom: {} };
  const c = v.confidence;
  return {
    tags: strArray(v.tags),
    ruleIds: strArray(v.rule_ids),
    confidence: typeof c === "number" && Number.isFinite(c) ? c : null,
    reasonCodes: strArray(v.reason_codes),
    custom: isObj(v.custom) ? v.custom : {},
  };
}

function parseMutation(v: unknown, ctx: string): BodyMutation | null {
  if (v === undefined || v === null) return null;
  if (!isObj(v)) fail(`${ctx} must be an object or null`);
  const d = v.data;
  const idx = v.chunk_index;
  const chunkIndex = typeof idx === "number" && Number.isInteger(idx) && idx >= 0 ? idx : 0;
  if (d === undefined || d === null) return { data: null, chunkIndex };
  if (typeof d !== "string") fail(`${ctx}.data must be a string or null`);
  if (d === "") return { data: new Uint8Array(0), chunkIndex };
  // D12: base64 as the SDKs write it, raw UTF-8 bytes as a fallback.
  return { data: fromBase64Strict(d) ?? utf8.encode(d), chunkIndex };
}

function routingMetadata(v: unknown): Record<string, string> {
  if (!isObj(v)) return {};
  const out: Record<string, string> = {};
  for (const k in v) {
    const x = v[k];
    if (typeof x === "string") out[k] = x;
    else if (x !== null && x !== undefined) out[k] = JSON.stringify(x);
  }
  return out;
}

export interface ParseReplyOptions {
  /** The kind of event this answers (enables `decision`-less answers for configure/request_complete). */
  eventType?: WireEventType;
  /** Correlation id to use when the answer names none (v1 FIFO). */
  fallbackCorrelationId?: string;
}

/** Parse an AgentResponse (or a v1 `{"success":…}` / bare guardrail answer). Throws WireParseError. */
export function parseReply(v: unknown, opts: ParseReplyOptions = {}): AgentReply {
  if (!isObj(v)) fail("answer must be a JSON object");
  const correlationId = replyCorrelationId(v) ?? opts.fallbackCorrelationId ?? "";
  let decision: Decision;
  let routing = routingMetadata(v.routing_metadata);
  if (v.decision !== undefined && v.decision !== null) {
    decision = parseDecision(v.decision);
  } else if (typeof v.success === "boolean") {
    decision = { kind: "allow" };
  } else if (typeof v.detected === "boolean") {
    // Bare GuardrailResponse (SDK v1 answer to guardrail_inspect).
    decision = { kind: "allow" };
    routing = { ...routing, guardrail_response: JSON.stringify(v) };
  } else if (opts.eventType === "configure" || opts.eventType === "request_complete") {
    decision = { kind: "allow" };
  } else fail("answer has no decision");
  const nm = v.needs_more;
  if (nm !== undefined && nm !== null && typeof nm !== "boolean") fail("needs_more must be a boolean");
  const reply: AgentReply = {
    correlationId,
    decision,
    requestHeaders: parseHeaderOps(v.request_headers, "request_headers"),
    responseHeaders: parseHeaderOps(v.response_headers, "response_headers"),
    routingMetadata: routing,
    audit: parseAudit(v.audit),
    needsMore: nm === true,
    requestBodyMutation: parseMutation(v.request_body_mutation, "request_body_mutation"),
    responseBodyMutation: parseMutation(v.response_body_mutation, "response_body_mutation"),
  };
  if (typeof v.success === "boolean") {
    reply.success = v.success;
    reply.error = typeof v.error === "string" ? v.error : null;
  }
  return reply;
}

// ---------------------------------------------------------------------------------------------
// Replies: model → wire (agent side)

function decisionToWire(d: Decision): unknown {
  switch (d.kind) {
    case "allow":
      return "allow";
    case "block":
      return { block: { status: d.status, body: d.body ?? null, headers: d.headers ?? null } };
    case "redirect":
      return { redirect: { url: d.url, status: d.status } };
    case "challenge":
      return { challenge: { challenge_type: d.challengeType, params: d.params ?? {} } };
  }
}

function opsToWire(ops: HeaderOp[]): unknown[] {
  return ops.map((o) => (o.op === "remove" ? { remove: { name: o.name } } : { [o.op]: { name: o.name, value: o.value } }));
}

function mutationToWire(m: BodyMutation | null): unknown {
  if (m === null) return null;
  return { data: m.data === null ? null : toBase64(m.data), chunk_index: m.chunkIndex };
}

/** A full AgentResponse as a Rust agent writes it; always carries `audit.custom.correlation_id`. */
export function replyToWire(r: AgentReply): Record<string, unknown> {
  const a = r.audit;
  return {
    version: 2,
    decision: decisionToWire(r.decision),
    request_headers: opsToWire(r.requestHeaders),
    response_headers: opsToWire(r.responseHeaders),
    routing_metadata: r.routingMetadata,
    audit: {
      tags: a.tags,
      rule_ids: a.ruleIds,
      confidence: a.confidence,
      reason_codes: a.reasonCodes,
      custom: { ...a.custom, correlation_id: r.correlationId },
    },
    needs_more: r.needsMore,
    request_body_mutation: mutationToWire(r.requestBodyMutation),
    response_body_mutation: mutationToWire(r.responseBodyMutation),
    websocket_decision: null,
  };
}

// ---------------------------------------------------------------------------------------------
// Handshake (§2.5)

export interface HandshakeRequest {
  supportedVersions: number[];
  proxyId: string;
  proxyVersion: string;
  config: unknown;
  supportedEncodings: string[];
}

export function handshakeRequestToWire(h: { proxyId: string; proxyVersion: string; config: unknown }): Record<string, unknown> {
  return {
    supported_versions: [2],
    proxy_id: h.proxyId,
    proxy_version: h.proxyVersion,
    config: h.config === undefined ? null : h.config,
    supported_encodings: ["json"],
  };
}

export function parseHandshakeRequest(v: unknown): HandshakeRequest {
  const ctx = "handshake request";
  if (!isObj(v)) fail(`${ctx} must be an object`);
  const sv = v.supported_versions;
  if (!Array.isArray(sv) || !sv.every((x) => typeof x === "number")) fail(`${ctx}: "supported_versions" must be an array of numbers`);
  return {
    supportedVersions: sv as number[],
    proxyId: reqStr(v, "proxy_id", ctx),
    proxyVersion: reqStr(v, "proxy_version", ctx),
    config: v.config === undefined ? null : v.config,
    supportedEncodings: strArray(v.supported_encodings),
  };
}

export interface HandshakeResult {
  success: boolean;
  error: string | null;
  encoding: string;
  protocolVersion: number;
  capabilities: AgentCapabilities;
}

/** Tolerant: only `success` is required (§1 rule 2); capabilities fields default to empty. */
export function parseHandshakeResponse(v: unknown): HandshakeResult {
  const ctx = "handshake response";
  if (!isObj(v)) fail(`${ctx} must be an object`);
  const success = reqBool(v, "success", ctx);
  const caps = isObj(v.capabilities) ? v.capabilities : {};
  const pv = typeof v.protocol_version === "number" ? v.protocol_version : 0;
  const events = Array.isArray(caps.supported_events) ? caps.supported_events.filter((x): x is number => typeof x === "number") : [];
  return {
    success,
    error: typeof v.error === "string" ? v.error : null,
    encoding: typeof v.encoding === "string" ? v.encoding : "json",
    protocolVersion: pv,
    capabilities: {
      agentId: typeof caps.agent_id === "string" ? caps.agent_id : "",
      name: typeof caps.name === "string" ? caps.name : "",
      version: typeof caps.version === "string" ? caps.version : "",
      // D9: configure may be announced as 0 (Zentinel's UDS decoding) or 8 (proto numbering).
      supportedEvents: events.map((n) => (n === 0 ? 8 : n)),
      protocolVersion: typeof caps.protocol_version === "number" ? caps.protocol_version : pv,
    },
  };
}

export interface AgentFeatures {
  streaming_body: boolean;
  websocket: boolean;
  guardrails: boolean;
  config_push: boolean;
  metrics_export: boolean;
  concurrent_requests: number;
  cancellation: boolean;
  flow_control: boolean;
  health_reporting: boolean;
}

export interface AgentLimits {
  max_body_size: number;
  max_concurrency: number;
  preferred_chunk_size: number;
}

/** HandshakeResponse with every key the Rust client requires (§2.5). */
export function handshakeResponseToWire(h: {
  success: boolean;
  error?: string | null;
  agentId: string;
  name: string;
  version: string;
  supportedEvents: number[];
  features?: Partial<AgentFeatures>;
  limits?: Partial<AgentLimits>;
}): Record<string, unknown> {
  return {
    protocol_version: h.success ? 2 : 0,
    capabilities: {
      agent_id: h.agentId,
      name: h.name,
      version: h.version,
      supported_events: h.supportedEvents,
      features: {
        streaming_body: false,
        websocket: false,
        guardrails: false,
        config_push: false,
        metrics_export: false,
        concurrent_requests: 0,
        cancellation: false,
        flow_control: false,
        health_reporting: false,
        ...h.features,
      },
      limits: { max_body_size: 10_485_760, max_concurrency: 100, preferred_chunk_size: 65_536, ...h.limits },
    },
    success: h.success,
    error: h.error ?? null,
    encoding: "json",
  };
}

// ---------------------------------------------------------------------------------------------
// Control messages (§2.7, §2.8)

export function pingToWire(sequence: number, timestampMs: number): Record<string, unknown> {
  return { sequence, timestamp_ms: timestampMs };
}

/** Cancel with the UDS reason numbering (0 client disconnect, 1 timeout, … 5 manual; D10). */
export function cancelToWire(correlationId: string, reason: number, timestampMs: number): Record<string, unknown> {
  return { correlation_id: correlationId, reason, timestamp_ms: timestampMs };
}

export type HealthState = "healthy" | "degraded" | "draining" | "unhealthy" | "unknown";
export type FlowAction = "pause" | "resume" | "update_capacity";

export type ControlMessage =
  | { kind: "health"; agentId: string | null; state: HealthState; message: string | null }
  | {
      kind: "metrics";
      agentId: string;
      timestampMs: number;
      intervalMs: number;
      counters: unknown[];
      gauges: unknown[];
      histograms: unknown[];
    }
  | { kind: "config_update"; requestId: string | null; updateType: string; update: Record<string, unknown> }
  | { kind: "flow_control"; action: FlowAction; correlationId: string | null };

const HEALTH_BY_NUM: Record<number, HealthState> = { 1: "healthy", 2: "degraded", 3: "draining", 4: "unhealthy" };

function healthState(s: unknown): HealthState {
  if (typeof s === "number") return HEALTH_BY_NUM[s] ?? "unknown";
  const name = typeof s === "string" ? s : isObj(s) && typeof s.status === "string" ? s.status : null;
  if (name === "healthy" || name === "degraded" || name === "draining" || name === "unhealthy") return name;
  return "unknown";
}

function flowAction(a: unknown): FlowAction {
  if (typeof a === "number") return a === 1 ? "pause" : a === 3 ? "update_capacity" : "resume";
  const name = typeof a === "string" ? a : isObj(a) && typeof a.type === "string" ? a.type : null;
  if (name === "pause" || name === "update_capacity") return name;
  return "resume";
}

/** Parse an agent→proxy control frame (0x30–0x33), accepting both shapes of D11. */
export function parseControl(typeByte: number, v: unknown): ControlMessage {
  if (!isObj(v)) fail(`control frame 0x${typeByte.toString(16)} must be an object`);
  switch (typeByte) {
    case FrameType.HealthStatus:
      return {
        kind: "health",
        agentId: typeof v.agent_id === "string" ? v.agent_id : null,
        state: healthState(v.state),
        message: typeof v.message === "string" ? v.message : null,
      };
    case FrameType.MetricsReport:
      return {
        kind: "metrics",
        agentId: typeof v.agent_id === "string" ? v.agent_id : "",
        timestampMs: typeof v.timestamp_ms === "number" ? v.timestamp_ms : 0,
        intervalMs: typeof v.interval_ms === "number" ? v.interval_ms : 0,
        counters: Array.isArray(v.counters) ? v.counters : [],
        gauges: Array.isArray(v.gauges) ? v.gauges : [],
        histograms: Array.isArray(v.histograms) ? v.histograms : [],
      };
    case FrameType.ConfigUpdateRequest: {
      const u = isObj(v.update_type) ? v.update_type : {};
      return {
        kind: "config_update",
        requestId: typeof v.request_id === "string" ? v.request_id : null,
        updateType: typeof u.type === "string" ? u.type : "unknown",
        update: u,
      };
    }
    case FrameType.FlowControl:
      return {
        kind: "flow_control",
        action: flowAction(v.action),
        correlationId: typeof v.correlation_id === "string" ? v.correlation_id : null,
      };
    default:
      fail(`not a control frame type: 0x${typeByte.toString(16)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Payload decoding

const utf8d = new TextDecoder("utf-8", { fatal: false });

/** JSON.parse of a frame payload; throws WireParseError on invalid JSON. */
export function parsePayload(payload: Uint8Array): unknown {
  try {
    return JSON.parse(utf8d.decode(payload));
  } catch (e) {
    throw new WireParseError(`invalid JSON payload: ${(e as Error).message}`);
  }
}
