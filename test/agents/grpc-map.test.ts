// Mapping between the internal agent model and zentinel.agent.v2 protobuf (spec §6.4), checked
// through a real binary encode/decode so the hand-built message literals are proven valid.
import { describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AgentResponseSchema,
  AgentToProxySchema,
  ProxyToAgentSchema,
  type AgentResponse,
} from "../../src/gen/zentinel/agent/v2/agent_v2_pb.ts";
import {
  MAX_GRPC_MESSAGE_BYTES,
  capabilitiesFromProto,
  correlationIdOf,
  estimateEventSize,
  eventFromProto,
  eventToProto,
  handshakeResponseToProto,
  handshakeToProto,
  headersFromProto,
  headersToProto,
  replyFromProto,
  replyToProto,
  unquoteCustom,
} from "../../src/agents/grpc/map.ts";
import { allowReply, type AgentEvent, type AgentReply } from "../../src/agents/types.ts";

function wire(ev: AgentEvent) {
  const bytes = toBinary(ProxyToAgentSchema, eventToProto(ev, 1_700_000_000_123));
  return { bytes, msg: fromBinary(ProxyToAgentSchema, bytes) };
}

function replyWire(r: AgentResponse): AgentReply {
  return replyFromProto(fromBinary(AgentResponseSchema, toBinary(AgentResponseSchema, r)));
}

const metadata = {
  correlationId: "req-1",
  requestId: "0b6c2f9e-1111-4222-8333-944455556666",
  clientIp: "203.0.113.7",
  clientPort: 51234,
  serverName: "example.com",
  protocol: "HTTP/1.1",
  tlsVersion: null,
  routeId: "api",
  upstreamId: null,
  timestampMs: 1_700_000_000_000,
  traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
};

describe("grpc map: events proxy -> agent -> model", () => {
  test("request_headers round trip (one Header per value, metadata, timestamp_ms)", () => {
    const ev: AgentEvent = {
      type: "request_headers",
      correlationId: "req-1",
      metadata,
      method: "POST",
      uri: "/api/users?page=2",
      headers: { accept: ["a", "b"], "x-one": ["1"], empty: [] },
    };
    const { msg } = wire(ev);
    expect(msg.message.case).toBe("requestHeaders");
    if (msg.message.case !== "requestHeaders") throw new Error();
    expect(msg.message.value.headers.map((h) => [h.name, h.value])).toEqual([
      ["accept", "a"],
      ["accept", "b"],
      ["x-one", "1"],
    ]);
    expect(msg.message.value.metadata?.timestampMs).toBe(1_700_000_000_000n);
    expect(msg.message.value.metadata?.serverName).toBe("example.com");
    expect(msg.message.value.metadata?.tlsVersion).toBeUndefined();
    expect(msg.message.value.httpVersion).toBe("HTTP/1.1");
    expect(correlationIdOf(msg)).toBe("req-1");
    const back = eventFromProto(msg);
    expect(back).toEqual({ ...ev, headers: { accept: ["a", "b"], "x-one": ["1"] } });
  });

  test("request_headers: the top-level correlation id is what goes into metadata", () => {
    const ev: AgentEvent = { type: "request_headers", correlationId: "top", metadata, method: "GET", uri: "/", headers: {} };
    const { msg } = wire(ev);
    expect(correlationIdOf(msg)).toBe("top");
  });

  test("body chunks: raw bytes, bytes_transferred, optional total_size, timestamp_ms", () => {
    const data = new Uint8Array([0, 1, 2, 255, 254]);
    for (const type of ["request_body_chunk", "response_body_chunk"] as const) {
      const ev: AgentEvent = { type, correlationId: "c", data, isLast: true, totalSize: 5, chunkIndex: 3, bytesTransferred: 5 };
      const { msg } = wire(ev);
      const v = msg.message.value as { data: Uint8Array; bytesTransferred: bigint; timestampMs: bigint; totalSize?: bigint };
      expect([...v.data]).toEqual([...data]);
      expect(v.bytesTransferred).toBe(5n);
      expect(v.timestampMs).toBe(1_700_000_000_123n);
      expect(v.totalSize).toBe(5n);
      const back = eventFromProto(msg)!;
      expect(back.type).toBe(type);
      expect({ ...back, data: [...(back as { data: Uint8Array }).data] }).toEqual({ ...ev, data: [...data] });
    }
    const streaming: AgentEvent = {
      type: "request_body_chunk",
      correlationId: "c",
      data: new Uint8Array(),
      isLast: false,
      totalSize: null,
      chunkIndex: 0,
      bytesTransferred: 0,
    };
    const back = eventFromProto(wire(streaming).msg)!;
    expect(back).toMatchObject({ totalSize: null, isLast: false, chunkIndex: 0 });
  });

  test("response_headers status -> status_code", () => {
    const ev: AgentEvent = { type: "response_headers", correlationId: "r", status: 404, headers: { "set-cookie": ["a=1", "b=2"] } };
    const { msg } = wire(ev);
    if (msg.message.case !== "responseHeaders") throw new Error();
    expect(msg.message.value.statusCode).toBe(404);
    expect(eventFromProto(msg)).toEqual(ev);
  });

  test("request_complete: body sizes -> bytes_received / bytes_sent, attempts lost (1)", () => {
    const ev: AgentEvent = {
      type: "request_complete",
      correlationId: "r",
      status: 200,
      durationMs: 12,
      requestBodySize: 100,
      responseBodySize: 2000,
      upstreamAttempts: 3,
      error: null,
    };
    const { msg } = wire(ev);
    if (msg.message.case !== "requestComplete") throw new Error();
    expect(msg.message.value.bytesReceived).toBe(100n);
    expect(msg.message.value.bytesSent).toBe(2000n);
    expect(eventFromProto(msg)).toEqual({ ...ev, upstreamAttempts: 1 });
  });

  test("configure carries config_json", () => {
    const ev: AgentEvent = { type: "configure", correlationId: "", config: { a: [1, 2] }, configVersion: "v1" };
    const { msg } = wire(ev);
    if (msg.message.case !== "configure") throw new Error();
    expect(msg.message.value.configJson).toBe('{"a":[1,2]}');
    expect(eventFromProto(msg)).toEqual(ev);
  });

  test("handshake request: versions [2,1], config_json defaults to {}", () => {
    const hs = fromBinary(ProxyToAgentSchema, toBinary(ProxyToAgentSchema, handshakeToProto("sentinel", "0.1.0", undefined)));
    if (hs.message.case !== "handshake") throw new Error();
    expect(hs.message.value.supportedVersions).toEqual([2, 1]);
    expect(hs.message.value.proxyId).toBe("sentinel");
    expect(hs.message.value.configJson).toBe("{}");
    const withCfg = handshakeToProto("sentinel", "0.1.0", { "paranoia-level": 2 });
    expect((withCfg.message.value as { configJson: string }).configJson).toBe('{"paranoia-level":2}');
  });

  test("size estimate is an upper bound of the encoded size", () => {
    const evs: AgentEvent[] = [
      { type: "request_headers", correlationId: "req-1", metadata, method: "GET", uri: "/ä€😀?x=1", headers: { a: ["é".repeat(100)], b: ["1", "2"] } },
      { type: "request_body_chunk", correlationId: "x", data: new Uint8Array(70_000), isLast: true, totalSize: 70_000, chunkIndex: 0, bytesTransferred: 70_000 },
      { type: "response_headers", correlationId: "x", status: 200, headers: { "content-type": ["text/html"] } },
      { type: "request_complete", correlationId: "x", status: 200, durationMs: 1, requestBodySize: 1, responseBodySize: 1, upstreamAttempts: 1, error: "boom" },
    ];
    for (const ev of evs) expect(estimateEventSize(ev)).toBeGreaterThanOrEqual(wire(ev).bytes.byteLength);
    expect(MAX_GRPC_MESSAGE_BYTES).toBe(4 * 1024 * 1024 - 64 * 1024);
  });

  test("headers helpers", () => {
    const list = headersToProto({ a: ["1", "2"], b: ["3"] });
    expect(list.length).toBe(3);
    expect(headersFromProto([...list, { $typeName: "zentinel.agent.v2.Header", name: "A", value: "4" }])).toEqual({ a: ["1", "2", "4"], b: ["3"] });
  });
});

describe("grpc map: answers agent -> proxy", () => {
  test("decision oneof unset = allow", () => {
    const r = replyWire(create(AgentResponseSchema, { correlationId: "x" }));
    expect(r.decision).toEqual({ kind: "allow" });
    expect(r.correlationId).toBe("x");
    expect(r.audit).toEqual({ tags: [], ruleIds: [], confidence: null, reasonCodes: [], custom: {} });
    expect(r.requestBodyMutation).toBeNull();
    expect(r.routingMetadata).toEqual({});
  });

  test("block status 0 -> 403, headers list <-> map, empty list -> null", () => {
    const r = replyWire(
      create(AgentResponseSchema, {
        correlationId: "x",
        decision: { case: "block", value: { status: 0, body: "no", headers: [{ name: "x-why", value: "waf" }] } },
      }),
    );
    expect(r.decision).toEqual({ kind: "block", status: 403, body: "no", headers: { "x-why": "waf" } });
    const r2 = replyWire(create(AgentResponseSchema, { decision: { case: "block", value: { status: 429 } } }));
    expect(r2.decision).toEqual({ kind: "block", status: 429, body: null, headers: null });
  });

  test("redirect status 0 -> 302; challenge params", () => {
    const r = replyWire(create(AgentResponseSchema, { decision: { case: "redirect", value: { url: "https://login" } } }));
    expect(r.decision).toEqual({ kind: "redirect", url: "https://login", status: 302 });
    const c = replyWire(create(AgentResponseSchema, { decision: { case: "challenge", value: { challengeType: "captcha", params: { k: "v" } } } }));
    expect(c.decision).toEqual({ kind: "challenge", challengeType: "captcha", params: { k: "v" } });
  });

  test("header ops and needs_more", () => {
    const r = replyWire(
      create(AgentResponseSchema, {
        requestHeaders: [
          { operation: { case: "set", value: { name: "x-a", value: "1" } } },
          { operation: { case: "add", value: { name: "x-a", value: "2" } } },
          { operation: { case: "remove", value: "x-b" } },
          { operation: { case: undefined } },
        ],
        responseHeaders: [{ operation: { case: "set", value: { name: "X-Agent", value: "waf" } } }],
        needsMore: true,
      }),
    );
    expect(r.requestHeaders).toEqual([
      { op: "set", name: "x-a", value: "1" },
      { op: "add", name: "x-a", value: "2" },
      { op: "remove", name: "x-b" },
    ]);
    expect(r.responseHeaders).toEqual([{ op: "set", name: "X-Agent", value: "waf" }]);
    expect(r.needsMore).toBe(true);
  });

  test("audit: D23 unquoting of custom values, f32 confidence", () => {
    const r = replyWire(
      create(AgentResponseSchema, {
        audit: {
          tags: ["sqli"],
          ruleIds: ["942100"],
          confidence: 0.9,
          reasonCodes: ["R1"],
          custom: { rust: '"abc"', ts: "abc", num: "5", obj: '{"a":1}', weird: '"unterminated', esc: '"a\\"b"' },
        },
      }),
    );
    expect(r.audit).toEqual({
      tags: ["sqli"],
      ruleIds: ["942100"],
      confidence: 0.9,
      reasonCodes: ["R1"],
      custom: { rust: "abc", ts: "abc", num: "5", obj: '{"a":1}', weird: '"unterminated', esc: 'a"b' },
    });
    expect(unquoteCustom('""')).toBe("");
    expect(unquoteCustom('"')).toBe('"');
  });

  test("model reply -> proto -> model round trip", () => {
    const reply: AgentReply = {
      ...allowReply("c-9"),
      decision: { kind: "block", status: 401, body: "auth", headers: { "www-authenticate": "Bearer" } },
      requestHeaders: [{ op: "set", name: "x-user", value: "u" }],
      responseHeaders: [{ op: "remove", name: "server" }],
      audit: { tags: ["t"], ruleIds: ["r"], confidence: 0.25, reasonCodes: [], custom: { s: "v", n: 5, o: { a: 1 } } },
      needsMore: false,
    };
    const back = replyWire(replyToProto(reply, 3));
    expect(back).toEqual({ ...reply, audit: { ...reply.audit, custom: { s: "v", n: "5", o: '{"a":1}' } } });
    for (const decision of [
      { kind: "allow" },
      { kind: "redirect", url: "/x", status: 307 },
      { kind: "challenge", challengeType: "js", params: {} },
    ] as const) {
      expect(replyWire(replyToProto({ ...allowReply("a"), decision })).decision).toEqual(decision);
    }
  });

  test("handshake response -> capabilities", () => {
    const msg = fromBinary(
      AgentToProxySchema,
      toBinary(AgentToProxySchema, handshakeResponseToProto({ agentId: "waf", name: "WAF", version: "1.2" }, [1, 2], true)),
    );
    if (msg.message.case !== "handshake") throw new Error();
    expect(msg.message.value.success).toBe(true);
    expect(capabilitiesFromProto(msg.message.value)).toEqual({
      agentId: "waf",
      name: "WAF",
      version: "1.2",
      supportedEvents: [1, 2],
      protocolVersion: 2,
    });
    const fail = handshakeResponseToProto({ agentId: "a", name: "a", version: "0" }, [], false, "bad config");
    if (fail.message.case !== "handshake") throw new Error();
    expect(fail.message.value.error).toBe("bad config");
    expect(fail.message.value.protocolVersion).toBe(0);
  });
});
