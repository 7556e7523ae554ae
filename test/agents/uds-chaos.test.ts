// The UDS client against test/helpers/chaos-uds-agent.ts (a separate process speaking raw v2):
// misbehaving agents fail only the affected calls, never resolve the wrong request, never crash
// the proxy, and the client recovers once the agent behaves again.
import { afterEach, describe, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { createUdsTransport } from "../../src/agents/uds/client.ts";
import { TransportError, type AgentEvent, type AgentTransport, type TransportOptions } from "../../src/agents/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { waitFor as poll } from "../helpers/proxy.ts";
import { readJsonLines } from "../helpers/jsonl.ts";
import { never } from "../helpers/agents.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const AGENT = `${ROOT}test/helpers/chaos-uds-agent.ts`;
let seq = 0;
const quiet = () => {};
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Agent {
  path: string;
  log: string;
  proc: ReturnType<typeof Bun.spawn>;
  setMode(mode: string): Promise<void>;
  events(): Array<{ type: string; id: string; event: any }>;
}

async function startAgent(mode: string): Promise<Agent> {
  const n = ++seq;
  const path = `/tmp/sentinel-uds-chaos-${process.pid}-${n}.sock`;
  const log = `/tmp/sentinel-uds-chaos-${process.pid}-${n}.log`;
  rmSync(log, { force: true });
  writeFileSync(log, "");
  const proc = Bun.spawn([process.execPath, AGENT, "--socket", path, "--mode", mode, "--log", log], { stdout: "pipe", stderr: "ignore" });
  cleanups.push(() => {
    proc.kill();
    rmSync(log, { force: true });
    rmSync(`${log}.mode`, { force: true });
    rmSync(path, { force: true });
  });
  const reader = proc.stdout.getReader();
  let out = "";
  while (!out.includes("ready")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("chaos agent exited before ready");
    out += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return {
    path,
    log,
    proc,
    async setMode(m: string) {
      writeFileSync(`${log}.mode`, m);
      proc.kill("SIGUSR1");
      await Bun.sleep(30);
    },
    events() {
      return readJsonLines(log);
    },
  };
}

function transport(path: string, over: Partial<TransportOptions> = {}): AgentTransport {
  const t = createUdsTransport({ endpoint: path, connectTimeoutMs: 1000, connections: 1, proxyVersion: "0.1.0-test", protocol: "v2", log: quiet, ...over });
  cleanups.push(() => t.close(0));
  t.start();
  return t;
}

const waitFor = (cond: () => boolean, ms = 3000, what = "condition") => poll(cond, ms, what, 5);

function reqHeaders(id: string, headers: Record<string, string[]> = {}): AgentEvent {
  return requestHeadersEvent(id, { metadata: { requestId: `r-${id}`, clientPort: 40000 }, uri: "/admin/x", headers });
}

const settle = <T>(p: Promise<T>) => p.then((v) => ({ ok: true as const, v }), (e: TransportError) => ({ ok: false as const, e }));

describe("broken answers fail the calls on that connection, then the client recovers", () => {
  for (const [mode, kind] of [
    ["malformed", "protocol"],
    ["oversize", "protocol"],
    ["zero-len", "protocol"],
    ["unknown-type", "protocol"],
    ["bad-decision", "protocol"],
    ["truncate", "closed"],
  ] as const) {
    test(mode, async () => {
      const agent = await startAgent(mode);
      const t = transport(agent.path);
      await waitFor(() => t.isConnected());
      const t0 = Date.now();
      const r = await settle(t.call(reqHeaders(`${mode}-1`), AbortSignal.timeout(2000)));
      expect(r.ok).toBe(false);
      if (!r.ok) {
        expect(r.e).toBeInstanceOf(TransportError);
        expect(r.e.kind).toBe(kind);
        expect(r.e.notSent).toBe(false);
      }
      expect(Date.now() - t0).toBeLessThan(1000); // failed at once, not by timeout
      await agent.setMode("allow");
      await waitFor(() => t.isConnected(), 3000, "reconnect");
      const ok = await t.call(reqHeaders(`${mode}-2`), AbortSignal.timeout(2000));
      expect(ok.correlationId).toBe(`${mode}-2`);
      expect(ok.decision.kind).toBe("allow");
    });
  }

  test("other connections are not affected by one broken answer", async () => {
    const agent = await startAgent("delay:100");
    const t = transport(agent.path, { connections: 4 });
    await waitFor(() => t.isConnected());
    await Bun.sleep(100);
    const slow = Array.from({ length: 8 }, (_, i) => settle(t.call(reqHeaders(`slow-${i}`), AbortSignal.timeout(2000))));
    await Bun.sleep(20);
    await agent.setMode("malformed");
    const bad = await settle(t.call(reqHeaders("bad"), AbortSignal.timeout(2000)));
    await agent.setMode("allow");
    expect(bad.ok).toBe(false);
    const results = await Promise.all(slow);
    // calls multiplexed on the broken connection fail with "protocol"; the others get their answers
    const ok = results.filter((r) => r.ok);
    for (const r of results) if (!r.ok) expect(r.e.kind).toBe("protocol");
    expect(ok.length).toBeGreaterThanOrEqual(4);
    results.forEach((r, i) => r.ok && expect(r.v.correlationId).toBe(`slow-${i}`));
  });
});

describe("correlation", () => {
  test("wrong-id: an answer naming another id never resolves a request", async () => {
    const agent = await startAgent("wrong-id");
    const t = transport(agent.path);
    await waitFor(() => t.isConnected());
    const [a, b] = await Promise.all([settle(t.call(reqHeaders("r1"), AbortSignal.timeout(200))), settle(t.call(reqHeaders("r2"), AbortSignal.timeout(200)))]);
    expect(a.ok).toBe(false);
    expect(b.ok).toBe(false);
    if (!a.ok) expect(a.e.kind).toBe("timeout");
    expect(t.isConnected()).toBe(true); // unknown ids are dropped, not a protocol error
    await agent.setMode("allow");
    expect((await t.call(reqHeaders("r3"), never())).correlationId).toBe("r3");
  });

  test("unknown-id and dup-id answers are dropped; every call gets its own answer", async () => {
    for (const mode of ["unknown-id", "dup-id", "out-of-order"]) {
      const agent = await startAgent(mode);
      const t = transport(agent.path);
      await waitFor(() => t.isConnected());
      const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => t.call(reqHeaders(`${mode}-${i}`), AbortSignal.timeout(2000))));
      rs.forEach((r, i) => expect(r.correlationId).toBe(`${mode}-${i}`));
      expect(t.isConnected()).toBe(true);
    }
  });

  test("header-block: 300 concurrent mixed requests, no cross-talk", async () => {
    const agent = await startAgent("header-block:x-decision");
    const t = transport(agent.path, { connections: 4 });
    await waitFor(() => t.isConnected());
    await Bun.sleep(100);
    const N = 300;
    const decisions = Array.from({ length: N }, () => (Math.random() < 0.5 ? "block" : "allow"));
    const rs = await Promise.all(
      decisions.map((d, i) => t.call(reqHeaders(`hb-${i}`, { "x-decision": [d], "x-request-tag": [`tag-${i}`] }), AbortSignal.timeout(5000))),
    );
    rs.forEach((r, i) => {
      expect(r.correlationId).toBe(`hb-${i}`);
      expect(r.responseHeaders).toEqual([{ op: "set", name: "x-request-tag", value: `tag-${i}` }]);
      if (decisions[i] === "block") expect(r.decision).toEqual({ kind: "block", status: 403, body: `blocked tag-${i}`, headers: { "x-request-tag": `tag-${i}` } });
      else expect(r.decision.kind).toBe("allow");
    });
    const seen = agent.events();
    expect(seen.length).toBe(N);
    expect(new Set(seen.map((e) => e.id)).size).toBe(N);
    expect(seen[0]!.event.metadata.correlation_id).toBe(seen[0]!.event.correlation_id);
  });
});

describe("agent liveness", () => {
  test("crash-after-read: in-flight calls fail at once with closed; reconnect when it is back", async () => {
    const agent = await startAgent("crash-after-read");
    const t = transport(agent.path, { connections: 2 });
    const events: boolean[] = [];
    t.onConnectivity((c) => events.push(c));
    await waitFor(() => t.isConnected());
    const t0 = Date.now();
    const r = await settle(t.call(reqHeaders("c1"), AbortSignal.timeout(3000)));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.e.kind).toBe("closed");
    expect(Date.now() - t0).toBeLessThan(1000);
    await waitFor(() => !t.isConnected(), 2000, "disconnect");
    expect(events.at(-1)).toBe(false);
    // agent back on the same path
    const again = await startAgentAt(agent.path);
    await waitFor(() => t.isConnected(), 4000, "reconnect");
    expect((await t.call(reqHeaders("c2"), never())).correlationId).toBe("c2");
    again.kill();
  });

  test("hang: calls time out through the caller's signal, ping still answers", async () => {
    const agent = await startAgent("hang");
    const t = transport(agent.path);
    await waitFor(() => t.isConnected());
    const t0 = Date.now();
    const r = await settle(t.call(reqHeaders("h1"), AbortSignal.timeout(150)));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.e.kind).toBe("timeout");
    expect(Date.now() - t0).toBeLessThan(600);
    await t.ping(500);
    expect(agent.events().length).toBe(1);
  });

  test("nopong: ping times out, calls still work", async () => {
    const agent = await startAgent("nopong");
    const t = transport(agent.path);
    await waitFor(() => t.isConnected());
    await expect(t.ping(100)).rejects.toMatchObject({ kind: "timeout" });
    expect((await t.call(reqHeaders("n1"), never())).decision.kind).toBe("allow");
  });

  test("flood: unsolicited answers and noise do not disturb real calls", async () => {
    const agent = await startAgent("flood");
    const t = transport(agent.path, { connections: 2 });
    await waitFor(() => t.isConnected());
    await Bun.sleep(200); // let the flood run
    const rs = await Promise.all(Array.from({ length: 200 }, (_, i) => t.call(reqHeaders(`f-${i}`), AbortSignal.timeout(5000))));
    rs.forEach((r, i) => expect(r.correlationId).toBe(`f-${i}`));
    await t.ping(1000);
    expect(t.isConnected()).toBe(true);
  });

  test("handshake-fail and no-handshake never become connected; handshake-delay does", async () => {
    const fail = await startAgent("handshake-fail");
    const tf = transport(fail.path);
    const silent = await startAgent("no-handshake");
    const ts = transport(silent.path, { connectTimeoutMs: 200 });
    const slow = await startAgent("handshake-delay:300");
    const tl = transport(slow.path);
    await Bun.sleep(600);
    expect(tf.isConnected()).toBe(false);
    expect(ts.isConnected()).toBe(false);
    await waitFor(() => tl.isConnected(), 2000);
    const e = await settle(tf.call(reqHeaders("x"), never()));
    expect(!e.ok && e.e.kind).toBe("connect");
  });
});

describe("decisions", () => {
  test("block:<status>, delay, mutate", async () => {
    const agent = await startAgent("block:429");
    const t = transport(agent.path);
    await waitFor(() => t.isConnected());
    expect((await t.call(reqHeaders("b"), never())).decision).toMatchObject({ kind: "block", status: 429 });
    await agent.setMode("delay:80");
    const t0 = Date.now();
    await t.call(reqHeaders("d"), never());
    expect(Date.now() - t0).toBeGreaterThanOrEqual(70);
    await agent.setMode('mutate:[{"set":{"name":"X-User","value":"ada"}},{"remove":{"name":"x-api-key"}}]');
    const m = await t.call(reqHeaders("m"), never());
    expect(m.requestHeaders).toEqual([
      { op: "set", name: "X-User", value: "ada" },
      { op: "remove", name: "x-api-key" },
    ]);
    await agent.setMode('mutate:{"request_headers":[{"add":{"name":"a","value":"1"}}],"response_headers":[{"set":{"name":"b","value":"2"}}]}');
    const m2 = await t.call(reqHeaders("m2"), never());
    expect(m2.requestHeaders).toEqual([{ op: "add", name: "a", value: "1" }]);
    expect(m2.responseHeaders).toEqual([{ op: "set", name: "b", value: "2" }]);
  });
});

async function startAgentAt(path: string): Promise<{ kill(): void }> {
  const proc = Bun.spawn([process.execPath, AGENT, "--socket", path, "--mode", "allow"], { stdout: "pipe", stderr: "ignore" });
  cleanups.push(() => void proc.kill());
  const reader = proc.stdout.getReader();
  let out = "";
  while (!out.includes("ready")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("agent exited");
    out += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return { kill: () => proc.kill() };
}
