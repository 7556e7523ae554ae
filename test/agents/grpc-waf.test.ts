// The example WAF agent (examples/agents/waf-agent.ts): rules, configuration, and end to end over
// gRPC (serveGrpc + our client) and over UDS (serveUds + the UDS client), plus its CLI.
import { afterEach, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createWafAgent, deepDecode, parseConfig, RULES } from "../../examples/agents/waf-agent.ts";
import { serveGrpc } from "../../sdk/grpc-server.ts";
import { createGrpcTransport } from "../../src/agents/grpc/client.ts";
import type { AgentEvent, AgentReply, AgentTransport } from "../../src/agents/types.ts";
import type { ReplyInit } from "../../sdk/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { connected } from "../helpers/agents.ts";

const root = join(import.meta.dir, "..", "..");
const cleanup: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

type Headers = Extract<AgentEvent, { type: "request_headers" }>;
type Chunk = Extract<AgentEvent, { type: "request_body_chunk" | "response_body_chunk" }>;

let n = 0;
function req(uri: string, headers: Record<string, string[]> = {}): Headers {
  return requestHeadersEvent(`w${++n}`, { metadata: { requestId: "rid", clientIp: "198.51.100.4", clientPort: 5555, serverName: "shop.example", routeId: "shop" }, uri, headers });
}

function chunk(id: string, text: string, index: number, isLast: boolean): Chunk {
  return { type: "request_body_chunk", correlationId: id, data: new TextEncoder().encode(text), isLast, totalSize: null, chunkIndex: index, bytesTransferred: 0 };
}

async function headersVerdict(agent: ReturnType<typeof createWafAgent>, e: Headers): Promise<ReplyInit> {
  return (await agent.onRequestHeaders!(e)) ?? {};
}

function ruleOf(r: ReplyInit | AgentReply): string | undefined {
  return r.audit?.ruleIds?.[0];
}

describe("WAF rules", () => {
  const agent = createWafAgent();
  const blocked: Array<[string, string, Record<string, string[]>?]> = [
    ["/login?user=admin' or 1=1--", "WAF-SQLI-1"],
    ["/login?user=admin%27%20OR%20%27a%27%3D%27a", "WAF-SQLI-1"],
    ["/items?id=1+UNION+SELECT+password+FROM+users", "WAF-SQLI-2"],
    ["/items?id=1;%20drop%20table%20users", "WAF-SQLI-3"],
    ["/items?id=1%20and%20sleep(5)", "WAF-SQLI-4"],
    ["/search?q=<script>alert(1)</script>", "WAF-XSS-1"],
    ["/search?q=%253Cscript%253Ealert(1)", "WAF-XSS-1"],
    ["/go?next=javascript:alert(1)", "WAF-XSS-2"],
    ["/img?src=x%20onerror%3Dalert(1)", "WAF-XSS-3"],
    ["/static/../../etc/passwd", "WAF-LFI-1"],
    ["/static/..%2f..%2fetc/passwd", "WAF-LFI-1"],
    ["/static/%2e%2e/%2e%2e/etc/passwd", "WAF-LFI-1"],
    ["/download?file=../../secret", "WAF-LFI-1"],
    ["/", "WAF-SQLI-2", { "x-forwarded-for": ["1 union select 1"] }],
    ["/", "WAF-XSS-1", { referer: ["https://evil.example/?<script>"] }],
    ["/", "WAF-SQLI-1", { cookie: ["session=abc' or '1'='1"] }],
  ];
  for (const [uri, rule, headers] of blocked) {
    test(`blocks ${uri} ${headers ? JSON.stringify(headers) : ""} with ${rule}`, async () => {
      const r = await headersVerdict(agent, req(uri, headers));
      expect(r.decision).toMatchObject({ kind: "block", status: 403 });
      expect(ruleOf(r)).toBe(rule);
      const body = JSON.parse((r.decision as { body: string }).body);
      expect(body.rule_id).toBe(rule);
      expect((r.decision as { headers: Record<string, string> }).headers["content-type"]).toBe("application/json");
      expect(r.audit?.tags).toContain("waf");
    });
  }

  const clean = [
    "/",
    "/api/users?page=2&sort=name",
    "/blog/o'reilly-and-friends",
    "/search?q=union+station+hotels",
    "/search?q=select+the+best+download",
    "/files/report..final.pdf",
    "/a/b/./c?x=1.2.3",
    "/search?q=%E2%9C%93+unicode",
    "/search?q=100%25+cotton", // literal percent sign
  ];
  for (const uri of clean) {
    test(`allows ${uri}`, async () => {
      const r = await headersVerdict(agent, req(uri, { "user-agent": ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"], accept: ["*/*;q=0.8"] }));
      expect(r.decision ?? { kind: "allow" }).toEqual({ kind: "allow" });
    });
  }

  test("allow-listed headers are not inspected", async () => {
    const r = await headersVerdict(agent, req("/", { authorization: ["Bearer ' or 1=1"], accept: ["<script>"] }));
    expect(r.decision ?? { kind: "allow" }).toEqual({ kind: "allow" });
  });

  test("every rule has a unique id and its own description", () => {
    expect(new Set(RULES.map((r) => r.id)).size).toBe(RULES.length);
    expect(deepDecode("%252e%252e%252f")).toBe("../");
    expect(deepDecode("a+b", true)).toBe("a b");
    expect(deepDecode("%zz%41")).toBe("%zzA");
  });
});

describe("WAF body inspection", () => {
  test("request body chunks: needs_more until the last one; a payload split across chunks is caught", async () => {
    const agent = createWafAgent();
    const a = await agent.onRequestBodyChunk!(chunk("b1", "name=bob&comment=hello <scr", 0, false) as never);
    expect(a).toEqual({ needsMore: true });
    const b = await agent.onRequestBodyChunk!(chunk("b1", "ipt>alert(1)</script>", 1, true) as never);
    expect(b.decision).toMatchObject({ kind: "block", status: 403 });
    expect(ruleOf(b)).toBe("WAF-XSS-1");
    expect(b.audit?.custom).toMatchObject({ location: "body" });
    const ok = await agent.onRequestBodyChunk!(chunk("b2", '{"comment":"all fine here"}', 0, true) as never);
    expect(ok).toEqual({});
    const form = await agent.onRequestBodyChunk!(chunk("b3", "q=1%27+or+1%3D1", 0, true) as never);
    expect(ruleOf(form)).toBe("WAF-SQLI-1");
  });

  test("inspect-body false and max-body-bytes", async () => {
    const off = createWafAgent({ "inspect-body": false });
    expect(await off.onRequestBodyChunk!(chunk("x", "<script>", 0, true) as never)).toEqual({});
    const capped = createWafAgent({ "max-body-bytes": 10 });
    expect(await capped.onRequestBodyChunk!(chunk("y", "0123456789<script>", 0, true) as never)).toEqual({});
  });
});

describe("WAF configuration", () => {
  test("paranoia level enables broader rules; disabled-rules removes them", async () => {
    const pl1 = createWafAgent();
    const pl2 = createWafAgent({ "paranoia-level": 2 });
    const probe = req("/x?a=<iframe src=//evil>");
    expect((await headersVerdict(pl1, probe)).decision ?? { kind: "allow" }).toEqual({ kind: "allow" });
    expect(ruleOf(await headersVerdict(pl2, probe))).toBe("WAF-XSS-4");
    const noXss1 = createWafAgent({ "disabled-rules": ["WAF-XSS-1"] });
    expect((await headersVerdict(noXss1, req("/x?a=<script>"))).decision ?? { kind: "allow" }).toEqual({ kind: "allow" });
  });

  test("invalid configuration is rejected", () => {
    expect(() => parseConfig({ "paranoia-level": 7 })).toThrow(/paranoia-level/);
    expect(() => parseConfig({ paranoia_level: 2 })).toThrow(/unknown config key/);
    expect(() => parseConfig({ "disabled-rules": ["NOPE-1"] })).toThrow(/unknown rule/);
    expect(() => parseConfig([1])).toThrow(/object/);
    expect(parseConfig({ "header-allowlist": ["X-Api-Key"] }).headerAllowlist).toEqual(["x-api-key"]);
  });
});

function transportTo(endpoint: string, config?: unknown): AgentTransport {
  const t = createGrpcTransport({ endpoint, connectTimeoutMs: 2000, connections: 1, proxyVersion: "test", config, log: () => {} });
  cleanup.push(() => t.close());
  return t;
}

const ready = (t: AgentTransport) => connected(t, 5000, "connected", 5);

describe("WAF agent over the wire", () => {
  test("gRPC: config in the handshake, block with audit, allow, body", async () => {
    const srv = await serveGrpc("127.0.0.1:0", createWafAgent(), { log: () => {} });
    cleanup.push(() => srv.close());
    const t = transportTo(`http://127.0.0.1:${srv.port}`, { "paranoia-level": 2 });
    await ready(t);
    expect(t.capabilities).toMatchObject({ agentId: "sentinel-waf", supportedEvents: [1, 2, 5, 8] });
    const sig = new AbortController().signal;
    const blocked = await t.call(req("/search?q=<svg/onload=alert(1)>"), sig);
    expect(blocked.decision).toMatchObject({ kind: "block", status: 403, headers: { "content-type": "application/json" } });
    expect(blocked.audit.ruleIds[0]).toMatch(/^WAF-XSS-/);
    expect(blocked.audit.custom).toMatchObject({ location: "query", paranoia_level: "2" });
    expect((await t.call(req("/fine"), sig)).decision).toEqual({ kind: "allow" });
    const body = await t.call(chunk("gb", "x=1;DROP TABLE users", 0, true), sig);
    expect(body.audit.ruleIds).toEqual(["WAF-SQLI-3"]);
  });

  test("gRPC: a bad config is refused in the handshake", async () => {
    const srv = await serveGrpc("127.0.0.1:0", createWafAgent(), { log: () => {} });
    cleanup.push(() => srv.close());
    const t = transportTo(`http://127.0.0.1:${srv.port}`, { "paranoia-level": "high" });
    t.start();
    await Bun.sleep(300);
    expect(t.isConnected()).toBe(false);
  });

  test("CLI: --grpc and --socket serve the same agent", async () => {
    const sock = join(tmpdir(), `waf-${process.pid}-${Math.random().toString(36).slice(2)}.sock`);
    const proc = Bun.spawn([process.execPath, join(root, "examples/agents/waf-agent.ts"), "--grpc", "127.0.0.1:0", "--socket", sock], {
      cwd: root,
      stdout: "pipe",
      stderr: "pipe",
    });
    cleanup.push(async () => {
      proc.kill();
      await proc.exited;
      rmSync(sock, { force: true });
    });
    const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
    let out = "";
    while (!(out.includes("gRPC on") && out.includes("UDS on"))) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`waf-agent exited: ${out}`);
      out += new TextDecoder().decode(value);
    }
    reader.releaseLock();
    const port = Number(/gRPC on 127\.0\.0\.1:(\d+)/.exec(out)![1]);
    const g = transportTo(`http://127.0.0.1:${port}`);
    await ready(g);
    const sig = new AbortController().signal;
    expect((await g.call(req("/etc/../../passwd"), sig)).audit.ruleIds).toEqual(["WAF-LFI-1"]);

    const { createUdsTransport } = await import("../../src/agents/uds/client.ts");
    const u = createUdsTransport({ endpoint: sock, connectTimeoutMs: 2000, connections: 1, proxyVersion: "test", protocol: "v2", log: () => {} });
    cleanup.push(() => u.close());
    await ready(u);
    const viaUds = await u.call(req("/q?id=1%20union%20select%201"), sig);
    expect(viaUds.decision).toMatchObject({ kind: "block", status: 403 });
    expect(viaUds.audit.ruleIds).toEqual(["WAF-SQLI-2"]);
    expect((await u.call(req("/ok"), sig)).decision).toEqual({ kind: "allow" });
  });
});
