// The hand-written hot-path codec (src/agents/grpc/wire.ts) against the generated protobuf-es
// code: encodeEvent must produce exactly the bytes of toBinary(eventToProto(...)), and
// decodeSimpleResponse must either decline (undefined) or equal replyFromProto(fromBinary(...)).
// Inputs are generated from a fixed seed, plus hand-picked edge cases and corrupted messages.
import { describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AgentResponseSchema,
  AgentToProxySchema,
  HeaderOpSchema,
  HeaderSchema,
  ProxyToAgentSchema,
} from "../../src/gen/zentinel/agent/v2/agent_v2_pb.ts";
import { eventFromProto, eventToProto, replyFromProto, replyToProto, responseEnvelope } from "../../src/agents/grpc/map.ts";
import { decodeSimpleEvent, decodeSimpleResponse, encodeAllowReply, encodeEvent } from "../../src/agents/grpc/wire.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { allowReply, type AgentEvent, type AgentReply, type HeaderMap, type HeaderOp } from "../../src/agents/types.ts";

const NOW = 1_700_000_000_123;

/** mulberry32: a small deterministic PRNG so a failure can be replayed. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const rnd = prng(20261127);
const int = (n: number) => Math.floor(rnd() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;

const TEXT = ["", "a", "x-trace", "/api/v1/items?q=1&r=2", "é", "日本語", "emoji 🎉", "\ud800 lone", "tab\tin", "a".repeat(200)];
function text(): string {
  return rnd() < 0.7 ? rnd().toString(36).slice(2, 2 + int(20)) : pick(TEXT);
}
function optText(): string | null {
  return rnd() < 0.4 ? null : text();
}
const NUMBERS = [0, 1, 127, 128, 16_383, 16_384, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 7, Number.MAX_SAFE_INTEGER, -5, Number.NaN, 12.7];
function num(): number {
  return rnd() < 0.5 ? int(100_000) : pick(NUMBERS);
}
function headers(): HeaderMap {
  const out: HeaderMap = {};
  const n = int(8);
  for (let i = 0; i < n; i++) {
    const values: string[] = [];
    const k = 1 + int(3);
    for (let j = 0; j < k; j++) values.push(text());
    out[rnd() < 0.1 ? "" : `h-${i}-${text()}`] = values;
  }
  return out;
}
function bytes(): Uint8Array {
  const size = pick([0, 1, 100, 127, 128, 300, 16_383, 16_384, 70_000, 200_000]);
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i += 97) b[i] = i & 0xff;
  return b;
}

function randomEvent(): AgentEvent {
  const correlationId = text();
  switch (int(5)) {
    case 0:
    case 1: {
      const metadata = {
        correlationId: text(),
        requestId: text(),
        clientIp: pick(["127.0.0.1", "2001:db8::1", ""]),
        clientPort: pick([0, 1, 54_321, 65_535]),
        serverName: optText(),
        protocol: pick(["HTTP/1.1", "HTTP/2", ""]),
        tlsVersion: optText(),
        routeId: optText(),
        upstreamId: optText(),
        timestampMs: pick([NOW, 0, -1, 2 ** 40]),
        ...(rnd() < 0.5 ? { traceparent: text() } : {}),
      };
      return { type: "request_headers", correlationId, metadata, method: pick(["GET", "POST", ""]), uri: text(), headers: headers() };
    }
    case 2:
      return {
        type: rnd() < 0.5 ? "request_body_chunk" : "response_body_chunk",
        correlationId,
        data: bytes(),
        isLast: rnd() < 0.5,
        totalSize: rnd() < 0.3 ? null : num(),
        chunkIndex: num(),
        bytesTransferred: num(),
      };
    case 3:
      return { type: "response_headers", correlationId, status: pick([0, 200, 404, 599]), headers: headers() };
    default:
      return {
        type: "request_complete",
        correlationId,
        status: pick([0, 200, 502]),
        durationMs: num(),
        requestBodySize: num(),
        responseBodySize: num(),
        upstreamAttempts: 1,
        error: optText(),
      };
  }
}

function reference(ev: AgentEvent): Uint8Array {
  return toBinary(ProxyToAgentSchema, eventToProto(ev, NOW));
}

describe("grpc wire: encodeEvent = toBinary(eventToProto(...))", () => {
  test("2,000 generated events encode to the same bytes", () => {
    for (let i = 0; i < 2_000; i++) {
      const ev = randomEvent();
      const ours = encodeEvent(ev, NOW);
      if (ours === null || !Bun.deepEquals(ours, reference(ev))) {
        throw new Error(`event ${i} differs: ${JSON.stringify(ev, (_k, v) => (v instanceof Uint8Array ? `<${v.length} bytes>` : v))}`);
      }
    }
  });

  test("a message that needs a 3-byte length and a body past the scratch buffer", () => {
    const ev: AgentEvent = {
      type: "request_headers",
      correlationId: "c",
      metadata: { correlationId: "c", requestId: "r", clientIp: "1.2.3.4", clientPort: 1, serverName: null, protocol: "HTTP/1.1", tlsVersion: null, routeId: null, upstreamId: null, timestampMs: NOW },
      method: "GET",
      uri: "/",
      headers: { big: ["v".repeat(40_000)], also: ["é".repeat(30_000)] },
    };
    expect(encodeEvent(ev, NOW)).toEqual(reference(ev));
    const body: AgentEvent = { type: "request_body_chunk", correlationId: "c", data: new Uint8Array(3_000_000).fill(7), isLast: true, totalSize: 3_000_000, chunkIndex: 0, bytesTransferred: 3_000_000 };
    expect(encodeEvent(body, NOW)).toEqual(reference(body));
    // the scratch buffer shrinks back and the next small event is still right
    const small: AgentEvent = { type: "response_headers", correlationId: "c", status: 200, headers: { a: ["b"] } };
    expect(encodeEvent(small, NOW)).toEqual(reference(small));
  });

  test("configure is left to the generated code", () => {
    expect(encodeEvent({ type: "configure", correlationId: "", config: {}, configVersion: null }, NOW)).toBeNull();
  });

  test("the result is a copy: a later encode does not change it", () => {
    const a = encodeEvent({ type: "response_headers", correlationId: "first", status: 200, headers: {} }, NOW)!;
    const copy = a.slice();
    encodeEvent({ type: "response_headers", correlationId: "second", status: 500, headers: {} }, NOW);
    expect(a).toEqual(copy);
  });
});

function randomOps(): HeaderOp[] {
  const out: HeaderOp[] = [];
  const n = int(4);
  for (let i = 0; i < n; i++) {
    const op = pick(["set", "add", "remove"] as const);
    out.push(op === "remove" ? { op, name: text() } : { op, name: text(), value: text() });
  }
  return out;
}

function randomReply(): AgentReply {
  const kind = rnd() < 0.7 ? "allow" : pick(["block", "redirect", "challenge"] as const);
  const decision =
    kind === "allow"
      ? ({ kind } as const)
      : kind === "block"
        ? ({ kind, status: 403, body: "no", headers: { a: "b" } } as const)
        : kind === "redirect"
          ? ({ kind, url: "https://x/", status: 302 } as const)
          : ({ kind, challengeType: "captcha", params: { k: "v" } } as const);
  return {
    correlationId: text(),
    decision,
    requestHeaders: randomOps(),
    responseHeaders: randomOps(),
    routingMetadata: {},
    audit: {
      tags: rnd() < 0.5 ? [] : [text(), text()],
      ruleIds: rnd() < 0.7 ? [] : [text()],
      confidence: rnd() < 0.5 ? null : pick([0, 0.9, 0.25, 1]),
      reasonCodes: rnd() < 0.7 ? [] : [text()],
      custom: rnd() < 0.8 ? {} : { k: text() },
    },
    needsMore: rnd() < 0.3,
    requestBodyMutation: null,
    responseBodyMutation: null,
  };
}

/** Every string of a reply, concatenated (JSON.stringify would escape lone surrogates). */
function replyText(r: AgentReply): string {
  const ops = [...r.requestHeaders, ...r.responseHeaders].map((o) => o.name + (o.op === "remove" ? "" : o.value));
  return [r.correlationId, ...ops, ...r.audit.tags, ...r.audit.ruleIds, ...r.audit.reasonCodes].join("");
}

/** The reference decoding, or the error it throws. */
function referenceReply(bytes: Uint8Array): AgentReply | undefined | Error {
  try {
    const m = fromBinary(AgentToProxySchema, bytes).message;
    return m.case === "response" ? replyFromProto(m.value) : undefined;
  } catch (err) {
    return err as Error;
  }
}

/** decodeSimpleResponse declines or agrees with the reference; returns whether it decoded. */
function agrees(bytes: Uint8Array): boolean {
  const ours = decodeSimpleResponse(bytes);
  if (ours === undefined) return false;
  const ref = referenceReply(bytes);
  if (ref instanceof Error || ref === undefined) throw new Error(`decoded what the reference rejects: ${Buffer.from(bytes).toString("hex")}`);
  expect(ours).toEqual(ref);
  return true;
}

describe("grpc wire: decodeSimpleResponse = replyFromProto(fromBinary(...)) or declines", () => {
  test("3,000 generated answers: simple ones are decoded, all agree", () => {
    let decoded = 0;
    let simple = 0;
    for (let i = 0; i < 3_000; i++) {
      const r = randomReply();
      const bytes = toBinary(AgentToProxySchema, responseEnvelope(replyToProto(r, int(50))));
      const isSimple =
        r.decision.kind === "allow" &&
        Object.keys(r.audit.custom).length === 0 &&
        !/[^\x00-\x7f]/.test(replyText(r));
      if (agrees(bytes)) decoded++;
      else expect(isSimple).toBe(false);
      if (isSimple) simple++;
    }
    expect(decoded).toBe(simple);
    expect(simple).toBeGreaterThan(300);
  });

  test("the example agent's answer (allow + one header set) takes the fast path", () => {
    const r: AgentReply = { ...allowReply("0123456789abcdef"), requestHeaders: [{ op: "set", name: "x-echo", value: "1" }] };
    expect(decodeSimpleResponse(toBinary(AgentToProxySchema, responseEnvelope(replyToProto(r, 3))))).toEqual(r);
  });

  test("shapes it leaves to the generated code", () => {
    const response = (fields: object) => toBinary(AgentToProxySchema, create(AgentToProxySchema, { message: { case: "response", value: create(AgentResponseSchema, fields) } }));
    // an empty HeaderOp (no oneof field) is skipped by both
    expect(agrees(response({ correlationId: "x", requestHeaders: [create(HeaderOpSchema, {})] }))).toBe(true);
    // a handshake, a pong, an empty message
    expect(decodeSimpleResponse(toBinary(AgentToProxySchema, create(AgentToProxySchema, { message: { case: "pong", value: {} } })))).toBeUndefined();
    expect(decodeSimpleResponse(new Uint8Array(0))).toBeUndefined();
    // the same message field twice (protobuf merges them): audit
    const twoAudits = new Uint8Array([0x12, 0x0a, 0x62, 0x03, 0x0a, 0x01, 0x61, 0x62, 0x03, 0x0a, 0x01, 0x62]);
    expect(decodeSimpleResponse(twoAudits)).toBeUndefined();
    expect(referenceReply(twoAudits)).toMatchObject({ audit: { tags: ["a", "b"] } });
    // a HeaderOp with set then remove (oneof: the last wins)
    const set = toBinary(HeaderOpSchema, create(HeaderOpSchema, { operation: { case: "set", value: create(HeaderSchema, { name: "a", value: "b" }) } }));
    const op = new Uint8Array([...set, 0x1a, 0x01, 0x63]);
    const msg = new Uint8Array([0x12, op.length + 2, 0x52, op.length, ...op]);
    expect(decodeSimpleResponse(msg)).toBeUndefined();
    expect(referenceReply(msg)).toMatchObject({ requestHeaders: [{ op: "remove", name: "c" }] });
    // a response followed by another top-level field
    expect(decodeSimpleResponse(new Uint8Array([0x12, 0x00, 0x3a, 0x00]))).toBeUndefined();
  });

  test("truncated and corrupted answers: never a wrong reply, never a throw", () => {
    let declined = 0;
    for (let i = 0; i < 3_000; i++) {
      const r = randomReply();
      r.decision = { kind: "allow" };
      r.audit.custom = {};
      const good = toBinary(AgentToProxySchema, responseEnvelope(replyToProto(r, 1)));
      const bad = good.slice(0, rnd() < 0.5 ? int(good.length) : good.length);
      const flips = 1 + int(3);
      for (let f = 0; f < flips && bad.length > 0; f++) bad[int(bad.length)] = int(256);
      if (!agrees(bad)) declined++;
    }
    expect(declined).toBeGreaterThan(0);
  });
});

describe("grpc wire, agent side: decodeSimpleEvent = eventFromProto(fromBinary(...)) or declines", () => {
  test("generated request_headers events: ASCII ones are decoded, all agree", () => {
    let decoded = 0;
    for (let i = 0; i < 3_000; i++) {
      let ev = randomEvent();
      while (ev.type !== "request_headers") ev = randomEvent();
      const bytes = reference(ev);
      const ours = decodeSimpleEvent(bytes);
      if (ours === undefined) continue;
      decoded++;
      expect(ours).toEqual(eventFromProto(fromBinary(ProxyToAgentSchema, bytes))!);
    }
    expect(decoded).toBeGreaterThan(300);
  });

  test("the proxy's usual event takes the fast path; header names are lower-cased and may be any token", () => {
    const ev = requestHeadersEvent("c1", { uri: "/x?y=1", headers: Object.fromEntries([["Host", ["a"]], ["constructor", ["1"]], ["__proto__", ["2"]], ["x-a", ["1", "2"]]]) });
    const bytes = reference(ev);
    const ours = decodeSimpleEvent(bytes)!;
    expect(ours).toEqual(eventFromProto(fromBinary(ProxyToAgentSchema, bytes))!);
    expect(ours.type === "request_headers" && ours.headers["constructor"]).toEqual(["1"] as never);
    expect(ours.type === "request_headers" && Object.keys(ours.headers)).toEqual(["host", "constructor", "__proto__", "x-a"]);
  });

  test("other events, odd shapes and corrupted bytes are declined or agree; never a throw", () => {
    for (let i = 0; i < 3_000; i++) {
      const ev = randomEvent();
      const good = reference(ev);
      const bad = good.slice(0, rnd() < 0.5 ? int(good.length) : good.length);
      const flips = int(3);
      for (let f = 0; f < flips && bad.length > 0; f++) bad[int(bad.length)] = int(256);
      const ours = decodeSimpleEvent(bad);
      if (ours === undefined) continue;
      expect(ev.type).toBe("request_headers");
      expect(ours).toEqual(eventFromProto(fromBinary(ProxyToAgentSchema, bad))!);
    }
  });
});

describe("grpc wire, agent side: encodeAllowReply = toBinary(responseEnvelope(replyToProto(...))) or declines", () => {
  const ref = (r: AgentReply, ms?: number) => toBinary(AgentToProxySchema, responseEnvelope(replyToProto(r, ms)));

  test("generated answers: allow without custom audit is encoded byte for byte, the rest declined", () => {
    let encoded = 0;
    for (let i = 0; i < 3_000; i++) {
      const r = randomReply();
      const ms = rnd() < 0.2 ? undefined : pick([0, 0.4, 3.7, 120, 2 ** 33]);
      const ours = encodeAllowReply(r, ms);
      const simple = r.decision.kind === "allow" && Object.keys(r.audit.custom).length === 0;
      if (ours === null) {
        expect(simple).toBe(false);
        continue;
      }
      expect(simple).toBe(true);
      encoded++;
      if (!Bun.deepEquals(ours, ref(r, ms))) throw new Error(`answer ${i} differs: ${JSON.stringify(r)}`);
    }
    expect(encoded).toBeGreaterThan(1_000);
  });

  test("values plain-JS handlers may return with the wrong type are left to the generated code", () => {
    const base = allowReply("c");
    const odd: AgentReply[] = [
      { ...base, requestHeaders: [{ op: "set", name: "a", value: 1 as unknown as string }] },
      { ...base, requestHeaders: [{ op: "rename", name: "a" } as unknown as HeaderOp] },
      { ...base, audit: { ...base.audit, confidence: 1e40 } },
      { ...base, audit: { ...base.audit, tags: ["a", 2 as unknown as string] } },
      { ...base, needsMore: "yes" as unknown as boolean },
    ];
    for (const r of odd) expect(encodeAllowReply(r, 1)).toBeNull();
    // a confidence of NaN or Infinity is a valid float32 on both paths
    const inf = { ...base, audit: { ...base.audit, confidence: Number.POSITIVE_INFINITY } };
    expect(encodeAllowReply(inf, 1)).toEqual(ref(inf, 1));
  });
});
