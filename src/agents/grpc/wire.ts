// Hand-written protobuf codec for the gRPC hot path: the per-request events the proxy sends and
// the AgentResponse it gets back. Field numbers: proto/zentinel/agent/v2/agent_v2.proto (§6.3).
//
// The generated protobuf-es code (src/gen/) stays the reference. This module only avoids building
// the intermediate message objects and protobuf-es's reflection for the messages sent on every
// request; test/agents/grpc-wire.test.ts checks it byte for byte against
// toBinary(eventToProto(...)) and, for decoding, against replyFromProto(fromBinary(...)).
//
// - encodeEvent writes fields in declaration order, skips proto3 defaults, writes `optional`
//   fields whenever they are set, and encodes strings as UTF-8 with U+FFFD for lone surrogates
//   (TextEncoder), exactly as protobuf-es's toBinary does.
// - decodeSimpleResponse handles the common shape of an answer: AgentToProxy.response with an
//   allow decision, header operations, needs_more and an audit without `custom`. For anything
//   else (another message, block/redirect/challenge, non-ASCII text, unknown or repeated message
//   fields, odd wire types, malformed input) it returns undefined and the caller decodes with the
//   generated code, which also produces the error message for bad input.
//
// The agent side (the SDK's direct ProcessStream, sdk/grpc-direct.ts) has the mirror pair:
// decodeSimpleEvent for request_headers events and encodeAllowReply for allow answers, with the
// same rule: anything outside the simple shape goes to the generated code.
import type { AgentEvent, AgentReply, AuditMetadata, Decision, HeaderMap, HeaderOp, RequestMetadata } from "../types.ts";
import { ALLOW_DECISION, addHeader, f32ToNumber } from "./map.ts";

// ------------------------------------------------------------------------------------ encoding

const SCRATCH_BYTES = 16 * 1024;
let buf = new Uint8Array(SCRATCH_BYTES);
let pos = 0;
const textEncoder = new TextEncoder();

function ensure(n: number): void {
  if (pos + n <= buf.length) return;
  let size = buf.length * 2;
  while (size < pos + n) size *= 2;
  const next = new Uint8Array(size);
  next.set(buf.subarray(0, pos));
  buf = next;
}

function varint32(v: number): void {
  while (v > 0x7f) {
    buf[pos++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  buf[pos++] = v;
}

/** Unsigned varint of a non-negative integer up to 2^64 (numbers past 2^53 go through BigInt). */
function varint64(v: number): void {
  if (v <= 0xffffffff) {
    varint32(v >>> 0);
    return;
  }
  if (v <= Number.MAX_SAFE_INTEGER) {
    while (v > 0x7f) {
      buf[pos++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    buf[pos++] = v;
    return;
  }
  let b = BigInt.asUintN(64, BigInt(v));
  while (b > 0x7fn) {
    buf[pos++] = Number(b & 0x7fn) | 0x80;
    b >>= 7n;
  }
  buf[pos++] = Number(b);
}

/** number -> the uint64 map.ts's u64() would send: negative, NaN and infinite values are 0. */
function u64(n: number): number {
  return n > 0 && n <= Number.MAX_SAFE_INTEGER ? Math.trunc(n) : n > Number.MAX_SAFE_INTEGER && Number.isFinite(n) ? n : 0;
}

function tag(field: number, wireType: number): void {
  buf[pos++] = (field << 3) | wireType; // every field number here is < 16
}

/** A length-delimited string field: ASCII is copied char by char, anything else via TextEncoder. */
function stringField(field: number, s: string): void {
  const n = s.length;
  ensure(n * 3 + 11);
  tag(field, 2);
  const start = pos;
  varint32(n);
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c > 0x7f) {
      pos = start;
      const bytes = textEncoder.encode(s);
      varint32(bytes.length);
      buf.set(bytes, pos);
      pos += bytes.length;
      return;
    }
    buf[pos++] = c;
  }
}

/** proto3 implicit presence: the empty string is not written. */
function implicitString(field: number, s: string): void {
  if (s.length > 0) stringField(field, s);
}

function varintField(field: number, v: number): void {
  ensure(11);
  tag(field, 0);
  varint64(v);
}

function implicitVarint(field: number, v: number): void {
  if (v !== 0) varintField(field, v);
}

/** Starts a length-delimited sub-message; returns where its content begins. */
function beginMessage(field: number): number {
  ensure(2);
  tag(field, 2);
  pos++; // one byte reserved for the length; moved along if the content turns out longer
  return pos;
}

function endMessage(start: number): void {
  const len = pos - start;
  if (len < 0x80) {
    buf[start - 1] = len;
    return;
  }
  let extra = 1; // length bytes beyond the reserved one (len < 2^28: the 4 MiB limit applies first)
  while (extra < 3 && len >>> (7 * (extra + 1)) > 0) extra++;
  ensure(extra);
  buf.copyWithin(start + extra, start, pos);
  pos = start - 1;
  varint32(len);
  pos = start + extra + len;
}

function headersField(field: number, headers: HeaderMap): void {
  for (const name in headers) {
    const values = headers[name]!;
    for (let i = 0; i < values.length; i++) {
      const at = beginMessage(field);
      implicitString(1, name);
      implicitString(2, values[i]!);
      endMessage(at);
    }
  }
}

function metadataMessage(m: RequestMetadata, correlationId: string): void {
  const at = beginMessage(1);
  implicitString(1, correlationId);
  implicitString(2, m.requestId);
  implicitString(3, m.clientIp);
  implicitVarint(4, m.clientPort >>> 0);
  if (m.serverName != null) stringField(5, m.serverName);
  implicitString(6, m.protocol);
  if (m.tlsVersion != null) stringField(7, m.tlsVersion);
  if (m.routeId != null) stringField(8, m.routeId);
  if (m.upstreamId != null) stringField(9, m.upstreamId);
  implicitVarint(10, u64(m.timestampMs));
  if (m.traceparent !== undefined) stringField(11, m.traceparent);
  endMessage(at);
}

function bytesField(field: number, data: Uint8Array): void {
  if (data.byteLength === 0) return;
  ensure(data.byteLength + 11);
  tag(field, 2);
  varint32(data.byteLength);
  buf.set(data, pos);
  pos += data.byteLength;
}

function writeEvent(event: AgentEvent, nowMs: number): boolean {
  switch (event.type) {
    case "request_headers": {
      const at = beginMessage(2);
      metadataMessage(event.metadata, event.correlationId);
      implicitString(2, event.method);
      implicitString(3, event.uri);
      implicitString(4, event.metadata.protocol || "HTTP/1.1");
      headersField(5, event.headers);
      endMessage(at);
      return true;
    }
    case "request_body_chunk":
    case "response_body_chunk": {
      const at = beginMessage(event.type === "request_body_chunk" ? 3 : 5);
      implicitString(1, event.correlationId);
      implicitVarint(2, event.chunkIndex >>> 0);
      bytesField(3, event.data);
      if (event.isLast) varintField(4, 1);
      if (event.totalSize !== null) varintField(5, u64(event.totalSize));
      implicitVarint(6, u64(event.bytesTransferred));
      implicitVarint(8, u64(nowMs));
      endMessage(at);
      return true;
    }
    case "response_headers": {
      const at = beginMessage(4);
      implicitString(1, event.correlationId);
      implicitVarint(2, event.status >>> 0);
      headersField(3, event.headers);
      endMessage(at);
      return true;
    }
    case "request_complete": {
      const at = beginMessage(8);
      implicitString(1, event.correlationId);
      implicitVarint(2, event.status >>> 0);
      implicitVarint(3, u64(event.durationMs));
      implicitVarint(4, u64(event.requestBodySize));
      implicitVarint(5, u64(event.responseBodySize));
      if (event.error != null) stringField(8, event.error);
      endMessage(at);
      return true;
    }
    default:
      return false;
  }
}

/**
 * One event -> encoded ProxyToAgent, the same bytes as toBinary(ProxyToAgentSchema,
 * eventToProto(event, nowMs)). Returns null for `configure`, which the hot path never sends.
 */
export function encodeEvent(event: AgentEvent, nowMs: number = Date.now()): Uint8Array | null {
  pos = 0;
  return writeEvent(event, nowMs) ? takeOutput() : null;
}

/** A copy of what was written; the scratch buffer shrinks back so no body-sized one is kept. */
function takeOutput(): Uint8Array {
  const out = buf.slice(0, pos);
  if (buf.length > SCRATCH_BYTES * 4) buf = new Uint8Array(SCRATCH_BYTES);
  return out;
}

// ------------------------------------------------------------------------------------ decoding

/** Thrown inside the decoder when the input leaves the simple shape; never escapes. */
const NOT_SIMPLE = Symbol("not simple");

let d: Uint8Array = buf;
let at = 0;

function readVarint32(): number {
  let result = 0;
  for (let shift = 0; shift < 35; shift += 7) {
    if (at >= d.length) throw NOT_SIMPLE;
    const b = d[at++]!;
    if (shift === 28 && b > 0x0f) throw NOT_SIMPLE;
    result |= (b & 0x7f) << shift;
    if (b < 0x80) return result >>> 0;
  }
  throw NOT_SIMPLE;
}

/** A varint that only matters as zero / non-zero (bool) or not at all (skipped uint64). */
function readVarintNonZero(): boolean {
  let nonZero = false;
  for (let i = 0; i < 10; i++) {
    if (at >= d.length) throw NOT_SIMPLE;
    const b = d[at++]!;
    if ((i === 9 ? b & 1 : b & 0x7f) !== 0) nonZero = true; // bits past 64 are dropped
    if (b < 0x80) return nonZero;
  }
  throw NOT_SIMPLE;
}

/** Reads a length prefix and returns the end of the field; the field must fit in `end`. */
function readLength(end: number): number {
  const len = readVarint32();
  const stop = at + len;
  if (stop > end) throw NOT_SIMPLE;
  return stop;
}

/** Bun's native Latin-1 slice (works on any Uint8Array); for ASCII it is the text itself. */
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice?: (this: Uint8Array, start: number, end: number) => string }).latin1Slice;

/** An ASCII string field (anything else goes to the reference decoder, which validates UTF-8). */
function readAscii(end: number): string {
  const stop = readLength(end);
  for (let i = at; i < stop; i++) if (d[i]! > 0x7f) throw NOT_SIMPLE;
  let s = "";
  if (stop - at > 8 && latin1Slice !== undefined) s = latin1Slice.call(d, at, stop);
  else for (let i = at; i < stop; i++) s += String.fromCharCode(d[i]!);
  at = stop;
  return s;
}

function expectWireType(t: number, wireType: number): void {
  if ((t & 7) !== wireType) throw NOT_SIMPLE;
}

/** Header { name = 1; value = 2; } */
function readHeader(end: number): { name: string; value: string } {
  const stop = readLength(end);
  let name = "";
  let value = "";
  while (at < stop) {
    const t = readVarint32();
    expectWireType(t, 2);
    if (t >>> 3 === 1) name = readAscii(stop);
    else if (t >>> 3 === 2) value = readAscii(stop);
    else throw NOT_SIMPLE;
  }
  if (at !== stop) throw NOT_SIMPLE;
  return { name, value };
}

/** HeaderOp { oneof operation { Header set = 1; Header add = 2; string remove = 3; } }, one field. */
function readHeaderOp(end: number, out: HeaderOp[]): void {
  const stop = readLength(end);
  if (at === stop) return; // empty oneof: nothing to apply
  const t = readVarint32();
  expectWireType(t, 2);
  const field = t >>> 3;
  if (field === 3) {
    out.push({ op: "remove", name: readAscii(stop) });
  } else if (field === 1 || field === 2) {
    const h = readHeader(stop);
    out.push({ op: field === 1 ? "set" : "add", name: h.name, value: h.value });
  } else {
    throw NOT_SIMPLE;
  }
  if (at !== stop) throw NOT_SIMPLE; // a second field in the oneof: let the reference merge it
}

interface SimpleAudit {
  tags: string[];
  ruleIds: string[];
  confidence: number | null;
  reasonCodes: string[];
}

/** AuditMetadata without `custom` (map entries go to the reference decoder). */
function readAudit(end: number): SimpleAudit {
  const stop = readLength(end);
  const a: SimpleAudit = { tags: [], ruleIds: [], confidence: null, reasonCodes: [] };
  while (at < stop) {
    const t = readVarint32();
    switch (t) {
      case (1 << 3) | 2:
        a.tags.push(readAscii(stop));
        break;
      case (2 << 3) | 2:
        a.ruleIds.push(readAscii(stop));
        break;
      case (3 << 3) | 5: {
        if (at + 4 > stop) throw NOT_SIMPLE;
        const view = new DataView(d.buffer, d.byteOffset + at, 4);
        a.confidence = f32ToNumber(view.getFloat32(0, true));
        at += 4;
        break;
      }
      case (4 << 3) | 2:
        a.reasonCodes.push(readAscii(stop));
        break;
      default:
        throw NOT_SIMPLE;
    }
  }
  return a;
}

function readResponse(end: number): AgentReply {
  let correlationId = "";
  const decision: Decision = ALLOW_DECISION;
  const requestHeaders: HeaderOp[] = [];
  const responseHeaders: HeaderOp[] = [];
  let audit: SimpleAudit | null = null;
  let needsMore = false;
  while (at < end) {
    const t = readVarint32();
    switch (t) {
      case (1 << 3) | 2:
        correlationId = readAscii(end);
        break;
      case (2 << 3) | 2: // AllowDecision {}: content (unknown fields) goes to the reference
        if (readLength(end) !== at) throw NOT_SIMPLE;
        break;
      case (10 << 3) | 2:
        readHeaderOp(end, requestHeaders);
        break;
      case (11 << 3) | 2:
        readHeaderOp(end, responseHeaders);
        break;
      case (12 << 3) | 2:
        if (audit !== null) throw NOT_SIMPLE; // a repeated message field merges: reference
        audit = readAudit(end);
        break;
      case (13 << 3) | 0: // processing_time_ms: not used
        readVarintNonZero();
        break;
      case (14 << 3) | 0:
        needsMore = readVarintNonZero();
        break;
      default:
        throw NOT_SIMPLE; // block / redirect / challenge, unknown fields, odd wire types
    }
  }
  return {
    correlationId,
    decision,
    requestHeaders,
    responseHeaders,
    routingMetadata: {},
    audit:
      audit === null
        ? { tags: [], ruleIds: [], confidence: null, reasonCodes: [], custom: {} }
        : { tags: audit.tags, ruleIds: audit.ruleIds, confidence: audit.confidence, reasonCodes: audit.reasonCodes, custom: {} },
    needsMore,
    requestBodyMutation: null,
    responseBodyMutation: null,
  };
}

/**
 * An encoded AgentToProxy -> the model reply, when it is a `response` of the simple shape
 * described at the top of this file; undefined otherwise (decode it with the generated code).
 * The result equals replyFromProto(fromBinary(AgentToProxySchema, bytes).message.value).
 */
export function decodeSimpleResponse(bytes: Uint8Array): AgentReply | undefined {
  return decodeSimple(bytes, readResponse);
}

/**
 * Run `read` on the content of `bytes`' field 2 (AgentToProxy.response, ProxyToAgent.
 * request_headers) when that field is all there is; undefined when it is not, or when `read`
 * leaves the simple shape.
 */
function decodeSimple<T>(bytes: Uint8Array, read: (end: number) => T | undefined): T | undefined {
  d = bytes;
  at = 0;
  try {
    if (readVarint32() !== ((2 << 3) | 2)) return undefined;
    const end = readLength(bytes.length);
    if (end !== bytes.length) return undefined; // other top-level fields follow
    return read(end);
  } catch (err) {
    if (err === NOT_SIMPLE) return undefined;
    throw err;
  } finally {
    d = buf; // do not keep the caller's bytes alive
  }
}

// ------------------------------------------------------------------------------------ agent side

/** A varint of at most 7 bytes (< 2^49, exact as a number); longer ones go to the reference. */
function readVarintNumber(): number {
  let result = 0;
  let mul = 1;
  for (let i = 0; i < 7; i++) {
    if (at >= d.length) throw NOT_SIMPLE;
    const b = d[at++]!;
    result += (b & 0x7f) * mul;
    if (b < 0x80) return result;
    mul *= 128;
  }
  throw NOT_SIMPLE;
}

/** RequestMetadata, read into a model metadata object (absent optional fields are null). */
function readMetadata(end: number): RequestMetadata {
  const stop = readLength(end);
  const m: RequestMetadata = {
    correlationId: "",
    requestId: "",
    clientIp: "",
    clientPort: 0,
    serverName: null,
    protocol: "",
    tlsVersion: null,
    routeId: null,
    upstreamId: null,
    timestampMs: 0,
  };
  while (at < stop) {
    const t = readVarint32();
    switch (t) {
      case (1 << 3) | 2:
        m.correlationId = readAscii(stop);
        break;
      case (2 << 3) | 2:
        m.requestId = readAscii(stop);
        break;
      case (3 << 3) | 2:
        m.clientIp = readAscii(stop);
        break;
      case (4 << 3) | 0:
        m.clientPort = readVarint32();
        break;
      case (5 << 3) | 2:
        m.serverName = readAscii(stop);
        break;
      case (6 << 3) | 2:
        m.protocol = readAscii(stop);
        break;
      case (7 << 3) | 2:
        m.tlsVersion = readAscii(stop);
        break;
      case (8 << 3) | 2:
        m.routeId = readAscii(stop);
        break;
      case (9 << 3) | 2:
        m.upstreamId = readAscii(stop);
        break;
      case (10 << 3) | 0:
        m.timestampMs = readVarintNumber();
        break;
      case (11 << 3) | 2:
        m.traceparent = readAscii(stop);
        break;
      default:
        throw NOT_SIMPLE;
    }
  }
  if (at !== stop) throw NOT_SIMPLE;
  return m;
}

/**
 * An encoded ProxyToAgent -> the model event, when it is a request_headers event of the simple
 * shape (ASCII text, known fields, metadata once); undefined otherwise. The result equals
 * eventFromProto(fromBinary(ProxyToAgentSchema, bytes)).
 */
export function decodeSimpleEvent(bytes: Uint8Array): AgentEvent | undefined {
  return decodeSimple(bytes, readRequestHeaders);
}

/** RequestHeadersEvent, read into a model event. */
function readRequestHeaders(end: number): AgentEvent | undefined {
  let metadata: RequestMetadata | null = null;
  let method = "";
  let uri = "";
  let httpVersion = "";
  const headers: HeaderMap = Object.create(null); // header names are client text ("constructor")
  while (at < end) {
    const t = readVarint32();
    switch (t) {
      case (1 << 3) | 2:
        if (metadata !== null) throw NOT_SIMPLE; // a repeated message field merges: reference
        metadata = readMetadata(end);
        break;
      case (2 << 3) | 2:
        method = readAscii(end);
        break;
      case (3 << 3) | 2:
        uri = readAscii(end);
        break;
      case (4 << 3) | 2:
        httpVersion = readAscii(end);
        break;
      case (5 << 3) | 2: {
        const h = readHeader(end);
        addHeader(headers, h.name, h.value);
        break;
      }
      default:
        throw NOT_SIMPLE;
    }
  }
  if (metadata === null) return undefined; // eventFromProto's defaults for a missing metadata: reference
  metadata.protocol ||= httpVersion || "HTTP/1.1";
  return { type: "request_headers", correlationId: metadata.correlationId, metadata, method, uri, headers };
}

const isString = (v: unknown): v is string => typeof v === "string";
const stringsOrNone = (v: unknown) => v === undefined || (Array.isArray(v) && v.every(isString));

/**
 * An allow answer whose every field has the type the model says (handlers are often plain JS),
 * an audit without `custom` entries, and a confidence that fits a float32; the generated code
 * encodes (or refuses) anything else.
 */
function simpleAllow(reply: AgentReply): boolean {
  if (reply.decision?.kind !== "allow" || !isString(reply.correlationId) || typeof reply.needsMore !== "boolean") return false;
  for (const ops of [reply.requestHeaders, reply.responseHeaders]) {
    if (ops === undefined) continue;
    if (!Array.isArray(ops)) return false;
    for (const o of ops) {
      if (o.op === "remove") {
        if (!isString(o.name)) return false;
      } else if ((o.op !== "set" && o.op !== "add") || !isString(o.name) || !isString(o.value)) return false;
    }
  }
  const a = reply.audit;
  if (a === undefined) return true;
  if (!stringsOrNone(a.tags) || !stringsOrNone(a.ruleIds) || !stringsOrNone(a.reasonCodes)) return false;
  const c = a.confidence;
  if (c != null && (typeof c !== "number" || (Number.isFinite(c) && !Number.isFinite(Math.fround(c))))) return false;
  if (a.custom) for (const _ in a.custom) return false;
  return true;
}

function headerOpsField(field: number, ops: readonly HeaderOp[]): void {
  for (let i = 0; i < ops.length; i++) {
    const o = ops[i]!;
    const at = beginMessage(field);
    if (o.op === "remove") {
      stringField(3, o.name); // a oneof member is written even when empty
    } else {
      const h = beginMessage(o.op === "set" ? 1 : 2);
      implicitString(1, o.name);
      implicitString(2, o.value);
      endMessage(h);
    }
    endMessage(at);
  }
}

function repeatedStrings(field: number, values: readonly string[]): void {
  for (let i = 0; i < values.length; i++) stringField(field, values[i]!);
}

const f32 = new DataView(new ArrayBuffer(4));

function auditMessage(a: AuditMetadata | undefined): void {
  const at = beginMessage(12);
  if (a) {
    repeatedStrings(1, a.tags ?? []);
    repeatedStrings(2, a.ruleIds ?? []);
    if (a.confidence != null) {
      ensure(5);
      tag(3, 5);
      f32.setFloat32(0, a.confidence, true);
      for (let i = 0; i < 4; i++) buf[pos++] = f32.getUint8(i);
    }
    repeatedStrings(4, a.reasonCodes ?? []);
  }
  endMessage(at);
}

/**
 * An allow answer -> encoded AgentToProxy, the same bytes as toBinary(AgentToProxySchema,
 * responseEnvelope(replyToProto(reply, processingTimeMs))). Returns null for other decisions and
 * for an audit with `custom` entries, which the generated code encodes.
 */
export function encodeAllowReply(reply: AgentReply, processingTimeMs?: number): Uint8Array | null {
  if (!simpleAllow(reply)) return null;
  const a = reply.audit;
  pos = 0;
  const at = beginMessage(2);
  implicitString(1, reply.correlationId);
  ensure(2);
  tag(2, 2);
  buf[pos++] = 0; // AllowDecision {}
  headerOpsField(10, reply.requestHeaders ?? []);
  headerOpsField(11, reply.responseHeaders ?? []);
  auditMessage(a);
  if (processingTimeMs !== undefined) varintField(13, u64(processingTimeMs));
  if (reply.needsMore) varintField(14, 1);
  endMessage(at);
  return takeOutput();
}
