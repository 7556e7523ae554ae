import { describe, expect, test } from "bun:test";
import { encodeEvent, fromBase64Strict, parseControl, parseReply, rfc3339, replyCorrelationId, WireParseError } from "./json.ts";
import { FrameType } from "./frame.ts";
import { requestHeadersEvent } from "../test-events.ts";

const cid = (id: string) => ({ audit: { custom: { correlation_id: id } } });

describe("parseReply tolerance (§7.4)", () => {
  test("version missing, allow in all three shapes", () => {
    for (const d of ["allow", { allow: null }, { allow: {} }]) {
      const r = parseReply({ decision: d, ...cid("a") });
      expect(r.decision).toEqual({ kind: "allow" });
      expect(r.correlationId).toBe("a");
      expect(r.requestHeaders).toEqual([]);
      expect(r.needsMore).toBe(false);
    }
  });
  test("block without status → 403, redirect without status → 302, challenge without params → {}", () => {
    expect(parseReply({ decision: { block: {} } }).decision).toEqual({ kind: "block", status: 403, body: null, headers: null });
    expect(parseReply({ decision: { redirect: { url: "/x" } } }).decision).toEqual({ kind: "redirect", url: "/x", status: 302 });
    expect(parseReply({ decision: { challenge: { challenge_type: "js" } } }).decision).toEqual({ kind: "challenge", challengeType: "js", params: {} });
  });
  test("correlation: audit.custom first, then top-level, then fallback", () => {
    expect(replyCorrelationId({ correlation_id: "top", ...cid("audit") })).toBe("audit");
    expect(replyCorrelationId({ correlation_id: "top" })).toBe("top");
    expect(replyCorrelationId({ decision: "allow" })).toBeNull();
    expect(parseReply({ decision: "allow" }, { fallbackCorrelationId: "f" }).correlationId).toBe("f");
    expect(parseReply({ decision: "allow" }).correlationId).toBe("");
  });
  test("success answers", () => {
    const r = parseReply({ success: false, error: "bad config" });
    expect(r.success).toBe(false);
    expect(r.error).toBe("bad config");
    expect(r.decision).toEqual({ kind: "allow" });
    expect(parseReply({}, { eventType: "request_complete" }).decision).toEqual({ kind: "allow" });
    expect(() => parseReply({}, { eventType: "request_headers" })).toThrow(WireParseError);
  });
  test("body mutation: base64, raw fallback, empty, null", () => {
    const b64 = parseReply({ decision: "allow", request_body_mutation: { data: "aGk=", chunk_index: 2 } });
    expect(Buffer.from(b64.requestBodyMutation!.data!).toString()).toBe("hi");
    expect(b64.requestBodyMutation!.chunkIndex).toBe(2);
    const raw = parseReply({ decision: "allow", response_body_mutation: { data: "not base64!" } });
    expect(Buffer.from(raw.responseBodyMutation!.data!).toString()).toBe("not base64!");
    expect(parseReply({ decision: "allow", request_body_mutation: { data: "" } }).requestBodyMutation!.data!.length).toBe(0);
    expect(parseReply({ decision: "allow", request_body_mutation: { data: null } }).requestBodyMutation).toEqual({ data: null, chunkIndex: 0 });
    expect(parseReply({ decision: "allow", request_body_mutation: null }).requestBodyMutation).toBeNull();
  });
  test("header names are kept as sent", () => {
    const r = parseReply({ decision: "allow", response_headers: [{ set: { name: "Retry-After", value: "5" } }] });
    expect(r.responseHeaders).toEqual([{ op: "set", name: "Retry-After", value: "5" }]);
  });
  test("structurally invalid answers throw", () => {
    const bad: unknown[] = [
      null,
      [],
      "allow",
      42,
      { decision: "maybe" },
      { decision: "block" },
      { decision: { allow: null, block: {} } },
      { decision: { deny: {} } },
      { decision: { block: { status: 99 } } },
      { decision: { block: { status: 600 } } },
      { decision: { block: { status: 403.5 } } },
      { decision: { block: { status: "403" } } },
      { decision: { redirect: { url: "/x", status: 1000 } } },
      { decision: { redirect: { status: 302 } } },
      { decision: { challenge: {} } },
      { decision: "allow", request_headers: [{ rename: { name: "a" } }] },
      { decision: "allow", request_headers: [{ set: { name: "a" } }] },
      { decision: "allow", request_headers: [{ set: { name: "a", value: 1 } }] },
      { decision: "allow", request_headers: [{ set: { name: "a", value: "1" }, remove: { name: "b" } }] },
      { decision: "allow", request_headers: {} },
      { decision: "allow", response_headers: ["x"] },
      { decision: "allow", needs_more: "yes" },
      { decision: "allow", request_body_mutation: "x" },
      {},
    ];
    for (const b of bad) expect(() => parseReply(b)).toThrow(WireParseError);
  });
});

describe("encoding details", () => {
  test("RFC 3339 timestamp in Zentinel's format", () => {
    expect(rfc3339(Date.parse("2026-07-01T09:07:07.512Z"))).toBe("2026-07-01T09:07:07.512+00:00");
    expect(rfc3339(Number.NaN)).toMatch(/\+00:00$/);
  });
  test("RFC 3339: the per-millisecond cache never returns another millisecond's text", () => {
    const t = Date.parse("2026-07-01T09:07:07.512Z");
    for (const ms of [t, t, t + 1, t, t + 1000, Number.NaN, t + 1000, Number.POSITIVE_INFINITY, 8.64e15 + 1, 0, 0]) {
      const want = Number.isFinite(ms) && !Number.isNaN(new Date(ms).getTime()) ? new Date(ms).toISOString().slice(0, -1) + "+00:00" : null;
      const got = rfc3339(ms);
      if (want !== null) expect(got).toBe(want);
      else expect(Math.abs(Date.parse(got) - Date.now())).toBeLessThan(5000); // invalid input: now
    }
  });
  test("base64 with padding; strict decoding", () => {
    const j = JSON.parse(
      encodeEvent({ type: "request_body_chunk", correlationId: "c", data: new Uint8Array([0xff, 0xfe]), isLast: true, totalSize: 2, chunkIndex: 0, bytesTransferred: 2 }),
    );
    expect(j.data).toBe("//4=");
    expect(fromBase64Strict("//4")).toBeNull();
    expect(fromBase64Strict("a b=")).toBeNull();
    expect(Array.from(fromBase64Strict("//4=")!)).toEqual([0xff, 0xfe]);
    expect(fromBase64Strict("")!.length).toBe(0);
  });
  test("request headers carry the correlation id twice", () => {
    const j = JSON.parse(
      encodeEvent(requestHeadersEvent("c-1", { metadata: { requestId: "r", timestampMs: 0 }, headers: { a: ["1", "2"] } })),
    );
    expect(j.correlation_id).toBe("c-1");
    expect(j.metadata.correlation_id).toBe("c-1");
    expect("traceparent" in j.metadata).toBe(false);
    expect(j.headers).toEqual({ a: ["1", "2"] });
  });
});

describe("control frames, both shapes (D11)", () => {
  test("health", () => {
    expect(parseControl(FrameType.HealthStatus, { state: 2 })).toMatchObject({ state: "degraded" });
    expect(parseControl(FrameType.HealthStatus, { state: { status: "draining" } })).toMatchObject({ state: "draining" });
    expect(parseControl(FrameType.HealthStatus, { state: "unhealthy" })).toMatchObject({ state: "unhealthy" });
    expect(parseControl(FrameType.HealthStatus, { state: 9 })).toMatchObject({ state: "unknown" });
  });
  test("flow control", () => {
    expect(parseControl(FrameType.FlowControl, { action: 1 })).toMatchObject({ action: "pause" });
    expect(parseControl(FrameType.FlowControl, { action: 2 })).toMatchObject({ action: "resume" });
    expect(parseControl(FrameType.FlowControl, { action: 7 })).toMatchObject({ action: "resume" });
    expect(parseControl(FrameType.FlowControl, { action: { type: "pause" } })).toMatchObject({ action: "pause" });
  });
  test("config update", () => {
    expect(parseControl(FrameType.ConfigUpdateRequest, { update_type: { type: "request_reload" }, request_id: "r1", timestamp_ms: 1 })).toMatchObject({
      kind: "config_update",
      updateType: "request_reload",
      requestId: "r1",
    });
  });
  test("non-object payload throws", () => {
    expect(() => parseControl(FrameType.HealthStatus, 1)).toThrow(WireParseError);
  });
});
