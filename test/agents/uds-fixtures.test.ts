// Every fixture in /work/shared/spec/fixtures (and v1-legacy/) decodes with our JSON layer, and
// our encoders reproduce the proxy→agent fixtures as JSON values (key order irrelevant).
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  eventToV1Envelope,
  eventToWire,
  eventTypeByte,
  handshakeRequestToWire,
  handshakeResponseToWire,
  parseControl,
  parseHandshakeRequest,
  parseHandshakeResponse,
  parseReply,
  pingToWire,
  cancelToWire,
  replyToWire,
  v1EnvelopeToEvent,
  wireToEvent,
  type WireEventType,
} from "../../src/agents/uds/json.ts";
import { FrameType } from "../../src/agents/uds/frame.ts";

const DIR = process.env.SENTINEL_FIXTURES ?? "/work/shared/spec/fixtures";
const load = (name: string): any => JSON.parse(readFileSync(join(DIR, name), "utf8"));

const EVENT_FIXTURES: Record<string, { type: WireEventType; byte: number; superset: Record<string, unknown> }> = {
  "request-headers.json": { type: "request_headers", byte: 0x10, superset: {} },
  "request-body-chunk.json": { type: "request_body_chunk", byte: 0x11, superset: {} },
  "response-headers.json": { type: "response_headers", byte: 0x12, superset: {} },
  "response-body-chunk.json": { type: "response_body_chunk", byte: 0x13, superset: { bytes_received: 22 } },
  "request-complete.json": { type: "request_complete", byte: 0x14, superset: { request_size: 14, response_size: 22 } },
  "websocket-frame.json": { type: "websocket_frame", byte: 0x15, superset: { direction: "client_to_server" } },
  "guardrail-inspect.json": { type: "guardrail_inspect", byte: 0x16, superset: {} },
  "configure.json": { type: "configure", byte: 0x17, superset: { agent_id: "waf-agent" } },
};

const RESPONSE_FIXTURES = [
  "response-allow.json",
  "response-allow-minimal.json",
  "response-allow-with-header-ops.json",
  "response-block.json",
  "response-block-no-body.json",
  "response-redirect.json",
  "response-challenge.json",
  "response-needs-more-with-body-mutation.json",
  "response-websocket-close.json",
  "response-guardrail.json",
];

const CONTROL_FIXTURES: Record<string, number> = {
  "health-status.json": FrameType.HealthStatus,
  "metrics-report.json": FrameType.MetricsReport,
  "flow-control-pause.json": FrameType.FlowControl,
};

const OTHER = ["handshake-request.json", "handshake-response.json", "handshake-response-rejected.json", "cancel.json", "ping.json", "pong.json"];

test("the fixture list is complete (no fixture silently skipped)", () => {
  const files = readdirSync(DIR).filter((f) => f.endsWith(".json")).sort();
  const known = [...Object.keys(EVENT_FIXTURES), ...RESPONSE_FIXTURES, ...Object.keys(CONTROL_FIXTURES), ...OTHER].sort();
  expect(files).toEqual(known);
});

describe("event fixtures (proxy → agent)", () => {
  for (const [file, info] of Object.entries(EVENT_FIXTURES)) {
    test(`${file} decodes and re-encodes exactly`, () => {
      const fx = load(file);
      const ev = wireToEvent(info.type, fx);
      expect(ev.type).toBe(info.type);
      expect(ev.correlationId).toBe(fx.correlation_id);
      expect(eventTypeByte(ev.type)).toBe(info.byte);
      // exact Rust shape
      expect(eventToWire(ev, { superset: false })).toEqual(fx);
      // the superset of §7.3: the fixture plus only the documented extra keys
      expect(eventToWire(ev, { agentId: "waf-agent" })).toEqual({ ...fx, ...info.superset });
    });
  }

  test("request-headers: metadata and body values", () => {
    const ev = wireToEvent("request_headers", load("request-headers.json"));
    if (ev.type !== "request_headers") throw new Error();
    expect(ev.metadata.timestampMs).toBe(Date.parse("2026-07-01T09:07:07.512Z"));
    expect(ev.headers.accept).toEqual(["application/json", "text/plain"]);
    const body = wireToEvent("request_body_chunk", load("request-body-chunk.json"));
    if (body.type !== "request_body_chunk") throw new Error();
    expect(Buffer.from(body.data).toString()).toBe('{"name":"ada"}');
  });
});

describe("response fixtures (agent → proxy)", () => {
  for (const file of RESPONSE_FIXTURES) {
    test(`${file} parses`, () => {
      const fx = load(file);
      const r = parseReply(fx);
      expect(r.correlationId).toBe(fx.audit.custom.correlation_id);
    });
  }

  test("values", () => {
    const ops = parseReply(load("response-allow-with-header-ops.json"));
    expect(ops.decision).toEqual({ kind: "allow" });
    expect(ops.requestHeaders).toEqual([
      { op: "set", name: "x-user-id", value: "u-1042" },
      { op: "add", name: "x-auth-scope", value: "read" },
      { op: "add", name: "x-auth-scope", value: "write" },
      { op: "remove", name: "authorization" },
    ]);
    expect(ops.responseHeaders).toEqual([
      { op: "set", name: "x-frame-options", value: "DENY" },
      { op: "remove", name: "server" },
    ]);
    expect(ops.routingMetadata).toEqual({ tenant: "acme" });
    expect(ops.audit.tags).toEqual(["auth", "jwt-valid"]);

    const block = parseReply(load("response-block.json"));
    expect(block.decision).toEqual({
      kind: "block",
      status: 403,
      body: "Request blocked: SQL injection detected",
      headers: { "content-type": "text/plain", "x-blocked-by": "waf-agent" },
    });
    expect(block.audit.confidence).toBeCloseTo(0.97);
    expect(block.audit.ruleIds).toEqual(["942100"]);
    expect(parseReply(load("response-block-no-body.json")).decision).toEqual({ kind: "block", status: 429, body: null, headers: null });
    expect(parseReply(load("response-redirect.json")).decision).toEqual({
      kind: "redirect",
      url: "https://login.example.com/?next=%2Fapi%2Fusers",
      status: 302,
    });
    expect(parseReply(load("response-challenge.json")).decision).toEqual({
      kind: "challenge",
      challengeType: "captcha",
      params: { provider: "turnstile", site_key: "0x4AAAAAAA-example" },
    });
    const nm = parseReply(load("response-needs-more-with-body-mutation.json"));
    expect(nm.needsMore).toBe(true);
    expect(Buffer.from(nm.requestBodyMutation!.data!).toString()).toBe('{"name":"[redacted]"}');
    expect(nm.requestBodyMutation!.chunkIndex).toBe(0);
    const g = parseReply(load("response-guardrail.json"));
    expect(JSON.parse(g.routingMetadata.guardrail_response!).detected).toBe(true);
  });

  test("agent-side encoder reproduces the full Rust-shaped answers", () => {
    for (const file of RESPONSE_FIXTURES) {
      if (file === "response-allow-minimal.json" || file === "response-websocket-close.json") continue;
      const fx = load(file);
      expect(replyToWire(parseReply(fx))).toEqual(fx);
    }
  });
});

describe("handshake, control and ping fixtures", () => {
  test("handshake request", () => {
    const fx = load("handshake-request.json");
    expect(handshakeRequestToWire({ proxyId: "bun-proxy", proxyVersion: "0.1.0", config: null })).toEqual(fx);
    expect(parseHandshakeRequest(fx)).toEqual({
      supportedVersions: [2],
      proxyId: "bun-proxy",
      proxyVersion: "0.1.0",
      config: null,
      supportedEncodings: ["json"],
    });
  });

  test("handshake responses", () => {
    const ok = parseHandshakeResponse(load("handshake-response.json"));
    expect(ok.success).toBe(true);
    expect(ok.encoding).toBe("json");
    expect(ok.capabilities).toEqual({ agentId: "waf-agent", name: "Example WAF", version: "1.4.0", supportedEvents: [1, 2], protocolVersion: 2 });
    const rej = parseHandshakeResponse(load("handshake-response-rejected.json"));
    expect(rej.success).toBe(false);
    expect(rej.error).toBe("unsupported proxy version");
  });

  test("agent-side handshake encoder reproduces the fixture", () => {
    expect(
      handshakeResponseToWire({
        success: true,
        agentId: "waf-agent",
        name: "Example WAF",
        version: "1.4.0",
        supportedEvents: [1, 2],
        features: { streaming_body: true },
      }),
    ).toEqual(load("handshake-response.json"));
  });

  test("cancel, ping, pong", () => {
    expect(cancelToWire("req-7f3a9c", 1, 1782896828512)).toEqual(load("cancel.json"));
    expect(pingToWire(0, 1782896827512)).toEqual(load("ping.json"));
    expect(load("pong.json")).toEqual(load("ping.json"));
  });

  test("control frames", () => {
    expect(parseControl(FrameType.HealthStatus, load("health-status.json"))).toEqual({
      kind: "health",
      agentId: "waf-agent",
      state: "healthy",
      message: null,
    });
    const m = parseControl(FrameType.MetricsReport, load("metrics-report.json"));
    expect(m.kind).toBe("metrics");
    if (m.kind === "metrics") {
      expect(m.counters.length).toBe(1);
      expect(m.histograms.length).toBe(1);
    }
    expect(parseControl(FrameType.FlowControl, load("flow-control-pause.json"))).toEqual({
      kind: "flow_control",
      action: "pause",
      correlationId: null,
    });
  });
});

describe("v1-legacy fixtures", () => {
  // Extra keys our v1 encoder may add (§7.3 "always set both correlation ids", configure superset).
  function expectSuperset(actual: any, fx: any, extra: string[]) {
    for (const k of Object.keys(fx)) expect(actual[k]).toEqual(fx[k]);
    for (const k of Object.keys(actual)) if (!(k in fx)) expect(extra).toContain(k);
  }

  test("the v1 fixture list is complete", () => {
    expect(readdirSync(join(DIR, "v1-legacy")).sort()).toEqual([
      "configure-envelope.json",
      "request-body-chunk-envelope.json",
      "request-headers-envelope.json",
      "response-allow-ts-sdk.json",
      "response-block-python-sdk.json",
      "response-challenge-ts-sdk-no-params.json",
      "response-configure-sdk.json",
      "response-guardrail-sdk.json",
    ]);
  });

  test("envelopes decode and re-encode", () => {
    for (const file of ["request-headers-envelope.json", "request-body-chunk-envelope.json", "configure-envelope.json"]) {
      const fx = load(`v1-legacy/${file}`);
      const ev = v1EnvelopeToEvent(fx);
      expect(ev.type).toBe(fx.event_type);
      const env = eventToV1Envelope(ev, { agentId: "waf-agent" }) as any;
      expect(env.version).toBe(1);
      expect(env.event_type).toBe(fx.event_type);
      expectSuperset(env.payload, fx.payload, ["correlation_id", "config_version"]);
    }
  });

  test("SDK answers", () => {
    const ts = parseReply(load("v1-legacy/response-allow-ts-sdk.json"), { fallbackCorrelationId: "c1" });
    expect(ts.correlationId).toBe("c1");
    expect(ts.requestHeaders).toEqual([{ op: "set", name: "X-Agent", value: "ts-agent" }]);
    expect(ts.audit.tags).toEqual(["allowed"]);
    const py = parseReply(load("v1-legacy/response-block-python-sdk.json"), { fallbackCorrelationId: "c2" });
    expect(py.decision).toEqual({ kind: "block", status: 403, body: "Blocked", headers: null });
    const ch = parseReply(load("v1-legacy/response-challenge-ts-sdk-no-params.json"), { fallbackCorrelationId: "c3" });
    expect(ch.decision).toEqual({ kind: "challenge", challengeType: "captcha", params: {} });
    const cfg = parseReply(load("v1-legacy/response-configure-sdk.json"), { fallbackCorrelationId: "c4", eventType: "configure" });
    expect(cfg.decision).toEqual({ kind: "allow" });
    expect(cfg.success).toBe(true);
    const gr = parseReply(load("v1-legacy/response-guardrail-sdk.json"), { fallbackCorrelationId: "c5" });
    expect(gr.decision).toEqual({ kind: "allow" });
    expect(JSON.parse(gr.routingMetadata.guardrail_response!).detected).toBe(true);
  });
});
