// The example agents, run as real processes, driven through the UDS client.
import { afterEach, describe, expect, test } from "bun:test";
import { createUdsTransport } from "../../src/agents/uds/client.ts";
import { createGrpcTransport } from "../../src/agents/grpc/client.ts";
import type { AgentEvent, AgentTransport, TransportOptions } from "../../src/agents/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { waitFor as poll } from "../helpers/proxy.ts";
import { never } from "../helpers/agents.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
let seq = 0;
const quiet = () => {};
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function spawnExample(name: string, args: string[], env: Record<string, string> = {}): Promise<string[]> {
  const proc = Bun.spawn([process.execPath, `${ROOT}examples/agents/${name}.ts`, ...args], {
    stdout: "pipe",
    stderr: "ignore",
    env: { ...process.env, ...env, SENTINEL_LOG_LEVEL: "error" },
  });
  cleanups.push(async () => {
    proc.kill();
    await proc.exited; // lets the agent remove its socket file
  });
  const want = args.filter((a) => a === "--socket" || a === "--grpc").length || 1;
  const reader = proc.stdout.getReader();
  let out = "";
  while ((out.match(/READY /g) ?? []).length < want) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${name} exited before READY: ${out}`);
    out += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return [...out.matchAll(/READY (\S+)/g)].map((m) => m[1]!);
}

function transport(path: string, over: Partial<TransportOptions> = {}): AgentTransport {
  const t = createUdsTransport({ endpoint: path, connectTimeoutMs: 1000, connections: 1, proxyVersion: "t", protocol: "v2", log: quiet, ...over });
  cleanups.push(() => t.close(0));
  t.start();
  return t;
}

const waitFor = (cond: () => boolean, ms = 3000) => poll(cond, ms, "condition", 5);

function reqHeaders(id: string, headers: Record<string, string[]>): AgentEvent {
  return requestHeadersEvent(id, { uri: "/admin", headers });
}
describe("auth-agent", () => {
  test("keys from AUTH_KEYS: api key, bearer token, denial", async () => {
    const path = `/tmp/sentinel-uds-ex-${process.pid}-${++seq}.sock`;
    await spawnExample("auth-agent", ["--socket", path], { AUTH_KEYS: "ada:s3cret,bob:t0ken" });
    const t = transport(path);
    await waitFor(() => t.isConnected());

    const k = await t.call(reqHeaders("1", { "x-api-key": ["s3cret"], "x-auth-user": ["mallory"] }), never());
    expect(k.decision).toEqual({ kind: "allow" });
    expect(k.requestHeaders).toEqual([
      { op: "set", name: "x-auth-user", value: "ada" },
      { op: "remove", name: "x-api-key" },
    ]);

    const b = await t.call(reqHeaders("2", { authorization: ["Bearer t0ken"] }), never());
    expect(b.decision.kind).toBe("allow");
    expect(b.requestHeaders[0]).toEqual({ op: "set", name: "x-auth-user", value: "bob" });

    const denied: Array<Record<string, string[]>> = [{}, { "x-api-key": ["nope"] }, { authorization: ["Bearer nope"] }, { authorization: ["Basic czNjcmV0"] }, { "x-api-key": ["s3cre"] }];
    for (const h of denied) {
      const d = await t.call(reqHeaders(`d-${JSON.stringify(h)}`, h), never());
      expect(d.decision).toMatchObject({ kind: "block", status: 401, headers: { "www-authenticate": "Bearer" } });
      if (d.decision.kind === "block") expect(JSON.parse(d.decision.body!).error).toBe("unauthorized");
      expect(d.requestHeaders).toEqual([]);
    }
  });

  test("keys from the handshake config replace the environment; a bad config is rejected", async () => {
    const path = `/tmp/sentinel-uds-ex-${process.pid}-${++seq}.sock`;
    await spawnExample("auth-agent", ["--socket", path], { AUTH_KEYS: "ada:s3cret" });
    const t = transport(path, { config: { keys: { "cfg-token": "carol" } } });
    await waitFor(() => t.isConnected());
    const r = await t.call(reqHeaders("c", { authorization: ["bearer cfg-token"] }), never());
    expect(r.requestHeaders[0]).toEqual({ op: "set", name: "x-auth-user", value: "carol" });
    const bad = transport(path, { config: { keys: 42 } });
    await Bun.sleep(300);
    expect(bad.isConnected()).toBe(false);
  });

  test("--grpc serves the same handler over gRPC", async () => {
    const [addr] = await spawnExample("auth-agent", ["--grpc", "127.0.0.1:0"], { AUTH_KEYS: "ada:s3cret" });
    const t = createGrpcTransport({ endpoint: addr!, connectTimeoutMs: 2000, connections: 1, proxyVersion: "t", log: quiet });
    cleanups.push(() => t.close(0));
    t.start();
    await waitFor(() => t.isConnected(), 5000);
    const ok = await t.call(reqHeaders("g1", { "x-api-key": ["s3cret"] }), AbortSignal.timeout(3000));
    expect(ok.requestHeaders[0]).toEqual({ op: "set", name: "x-auth-user", value: "ada" });
    const no = await t.call(reqHeaders("g2", {}), AbortSignal.timeout(3000));
    expect(no.decision).toMatchObject({ kind: "block", status: 401 });
  });
});

describe("echo-agent", () => {
  test("marks request and response headers", async () => {
    const path = `/tmp/sentinel-uds-ex-${process.pid}-${++seq}.sock`;
    await spawnExample("echo-agent", ["--socket", path]);
    const t = transport(path);
    await waitFor(() => t.isConnected());
    const r = await t.call(reqHeaders("e1", {}), never());
    expect(r.requestHeaders).toEqual([{ op: "set", name: "x-echo-agent", value: "1" }]);
    expect(r.responseHeaders).toEqual([{ op: "set", name: "x-echo-agent-seen", value: "1" }]);
    const s = await t.call({ type: "response_headers", correlationId: "e1", status: 200, headers: {} }, never());
    expect(s.responseHeaders).toEqual([{ op: "set", name: "x-echo-agent-seen", value: "1" }]);
  });

  test("--grpc and --socket together start both listeners", async () => {
    const path = `/tmp/sentinel-uds-ex-${process.pid}-${++seq}.sock`;
    const ready = await spawnExample("echo-agent", ["--socket", path, "--grpc", "127.0.0.1:0"]);
    expect(ready[0]).toBe(path);
    expect(ready[1]).toMatch(/^127\.0\.0\.1:\d+$/);
  });
});
