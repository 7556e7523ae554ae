// Replicated agents at the Agent layer, against REAL in-process agents (serveUds replicas on
// several sockets, serveGrpc for the DNS form). Where a test needs a failure the SDK servers never
// produce (a connection closed under one specific call), it wraps the real transport.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { createAgent, type Agent, type AgentCallResult } from "./agent.ts";
import { agentEndpointCalls, agentEndpointCount, agentEndpointHealth, agentFailovers } from "./endpoints.ts";
import { createUdsTransport } from "./uds/client.ts";
import { TransportError, type AgentEvent, type AgentTransport } from "./types.ts";
import type { AgentConfig } from "../config/types.ts";
import { agentCircuitState, agentHealth } from "../observability/metrics.ts";
import { setLogLevel } from "../observability/log.ts";
import { serveUds } from "../../sdk/uds-server.ts";
import { serveGrpc } from "../../sdk/grpc-server.ts";
import { allow } from "../../sdk/reply.ts";
import type { AgentHandler, ReplyInit, RunningServer } from "../../sdk/types.ts";
import { requestHeadersEvent, testAgentConfig } from "./test-events.ts";

let seq = 0;
const uid = (p: string) => `${p}-${process.pid}-${++seq}`;
const sockPath = () => `/tmp/sentinel-replicas-${process.pid}-${++seq}.sock`;
const quiet = () => {};
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
beforeAll(() => setLogLevel("error"));
afterAll(() => setLogLevel("info"));

function config(id: string, transport: AgentConfig["transport"], over: Partial<AgentConfig> = {}): AgentConfig {
  return testAgentConfig(id, { transport, maxConcurrentCalls: 1000, ...over });
}

/** One replica: an SDK agent that records the correlation ids it saw. */
class Replica {
  seen: string[] = [];
  completes: string[] = [];
  delayMs = 0;
  server: RunningServer | null = null;
  constructor(readonly path: string) {}
  handler(): AgentHandler {
    return {
      info: { agentId: "replica", name: "replica", version: "1" },
      onRequestHeaders: async (e): Promise<ReplyInit> => {
        this.seen.push(e.correlationId);
        if (this.delayMs > 0) await Bun.sleep(this.delayMs);
        return allow();
      },
      onRequestComplete: (e) => {
        this.completes.push(e.correlationId);
      },
    };
  }
  async start(): Promise<this> {
    this.server = await serveUds(this.path, this.handler(), { log: quiet });
    return this;
  }
  async stop(): Promise<void> {
    await this.server?.close();
    this.server = null;
  }
}

async function replicas(n: number): Promise<Replica[]> {
  const rs = await Promise.all(Array.from({ length: n }, () => new Replica(sockPath()).start()));
  cleanups.push(() => Promise.all(rs.map((r) => r.stop())).then(() => {}));
  return rs;
}

function udsReplicated(paths: string[]): AgentConfig["transport"] {
  return { kind: "uds", address: paths[0]!, endpoints: paths, protocol: "v2" };
}

async function started(cfg: AgentConfig, opts: Parameters<typeof createAgent>[2] = {}, connectedCount?: number): Promise<Agent> {
  const a = createAgent(cfg, undefined, opts);
  cleanups.push(() => a.close(0));
  a.start();
  const want = connectedCount ?? (cfg.transport.endpoints?.length ?? 1);
  await waitFor(() => a.endpoints!().filter((e) => e.connected).length >= want, 3000, "endpoints connected");
  return a;
}

let cid = 0;
function ev(id = `c${++cid}-${Math.random().toString(36).slice(2, 8)}`, type: "request_headers" | "request_complete" = "request_headers"): AgentEvent {
  if (type === "request_complete") {
    return { type, correlationId: id, status: 200, durationMs: 1, requestBodySize: 0, responseBodySize: 0, upstreamAttempts: 1, error: null };
  }
  return requestHeadersEvent(id, { metadata: { clientPort: 5000, routeId: "r" } });
}

const kindOf = (r: AgentCallResult) => (r.ok ? "ok" : r.kind);

async function waitFor(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const t0 = performance.now();
  while (!(await cond())) {
    if (performance.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await Bun.sleep(5);
  }
}

type MetricLike = { get(): Promise<{ values: Array<{ labels: Record<string, string | number>; value: number }> }> };
async function metric(m: MetricLike, labels: Record<string, string>): Promise<number | undefined> {
  const { values } = await m.get();
  return values.find((x) => Object.entries(labels).every(([k, v]) => x.labels[k] === v))?.value;
}

/** The real UDS transport; `fail(id)` may make a call fail as the test says, without sending it. */
function wrapped(path: string, fail: (ev: AgentEvent) => TransportError | null, attempts: string[]): AgentTransport {
  const real = createUdsTransport({ endpoint: path, connectTimeoutMs: 1000, connections: 2, proxyVersion: "test", protocol: "v2", log: quiet });
  return Object.assign(Object.create(real) as AgentTransport, {
    call(event: AgentEvent, signal: AbortSignal) {
      attempts.push(path);
      const e = fail(event);
      return e ? Promise.reject(e) : real.call(event, signal);
    },
  });
}

describe("replicated agent over three UDS replicas", () => {
  test("calls spread over every replica; every event of one request goes to the same replica", async () => {
    const rs = await replicas(3);
    const id = uid("spread");
    const a = await started(config(id, udsReplicated(rs.map((r) => r.path))));
    expect(a.isHealthy()).toBe(true);
    const ids = Array.from({ length: 300 }, (_, i) => `spread-${i}`);
    const results = await Promise.all(ids.map((cid) => a.call(ev(cid))));
    expect(results.every((r) => r.ok)).toBe(true);
    for (const r of rs) expect(r.seen.length).toBeGreaterThan(60); // ~100 each
    expect(rs.reduce((n, r) => n + r.seen.length, 0)).toBe(300);
    // A second event of the same request (and its request_complete) reach the replica that saw the first.
    for (const cid of ids.slice(0, 30)) {
      const owner = rs.find((r) => r.seen.includes(cid))!;
      expect((await a.call(ev(cid))).ok).toBe(true);
      a.notify(ev(cid, "request_complete"));
      expect(owner.seen.filter((x) => x === cid).length).toBe(2);
    }
    await waitFor(() => rs.reduce((n, r) => n + r.completes.length, 0) === 30, 2000, "request_complete delivered");
    for (const r of rs) for (const c of r.completes) expect(r.seen).toContain(c);
    // Endpoint metrics
    for (const r of rs) {
      expect(await metric(agentEndpointHealth, { agent: id, endpoint: r.path })).toBe(1);
      expect(await metric(agentEndpointCalls, { agent: id, endpoint: r.path })).toBe(r.seen.length);
    }
    expect(await metric(agentEndpointCount, { agent: id })).toBe(3);
    expect(await metric(agentHealth, { agent: id })).toBe(1);
  });

  test("a replica that dies: its in-flight calls fail over at once, nothing fails, it gets no further calls; back again, it gets calls", async () => {
    const rs = await replicas(3);
    const id = uid("kill");
    const a = await started(
      config(id, udsReplicated(rs.map((r) => r.path)), {
        healthCheck: { enabled: true, intervalMs: 50, timeoutMs: 50, healthyThreshold: 2, unhealthyThreshold: 2 },
      }),
    );
    for (const r of rs) r.delayMs = 30;
    const victim = rs[1]!;
    // 120 calls in flight, spread over the replicas; kill one while its calls are in flight.
    const calls = Array.from({ length: 120 }, () => a.call(ev()));
    await waitFor(() => victim.seen.length >= 10, 2000, "calls on the victim");
    const seenAtKill = victim.seen.length;
    await victim.stop();
    const results = await Promise.all(calls);
    expect(results.map(kindOf).filter((k) => k !== "ok")).toEqual([]);
    expect(await metric(agentFailovers, { agent: id })).toBeGreaterThanOrEqual(1);
    expect(victim.seen.length).toBe(seenAtKill);
    await waitFor(() => a.endpoints!().find((e) => e.endpoint === victim.path)!.healthy === false, 1000, "victim out");
    expect(await metric(agentEndpointHealth, { agent: id, endpoint: victim.path })).toBe(0);
    expect(a.isHealthy()).toBe(true);
    expect(await metric(agentHealth, { agent: id })).toBe(1);
    // While it is down: no attempt goes to it, nothing fails.
    const attemptsBefore = await metric(agentEndpointCalls, { agent: id, endpoint: victim.path });
    for (const r of rs) r.delayMs = 0;
    const during = await Promise.all(Array.from({ length: 150 }, () => a.call(ev())));
    expect(during.every((r) => r.ok)).toBe(true);
    expect(await metric(agentEndpointCalls, { agent: id, endpoint: victim.path })).toBe(attemptsBefore);
    // Back on the same socket: reconnects, passes healthyThreshold pings, gets its share again.
    await victim.start();
    const t0 = performance.now();
    await waitFor(() => a.endpoints!().find((e) => e.endpoint === victim.path)!.healthy, 5000, "victim healthy again");
    expect(performance.now() - t0).toBeLessThan(3000); // reconnect backoff ≤ 2 s + 2 pings
    // Its circuit (opened by the calls that failed at the kill) went half-open on reconnect:
    // a few sequential calls are its probes and close it.
    for (let i = 0; i < 20 && a.endpoints!().find((e) => e.endpoint === victim.path)!.circuit !== "closed"; i++) expect((await a.call(ev())).ok).toBe(true);
    expect(a.endpoints!().find((e) => e.endpoint === victim.path)!.circuit).toBe("closed");
    const after = await Promise.all(Array.from({ length: 150 }, () => a.call(ev())));
    expect(after.every((r) => r.ok)).toBe(true);
    expect(victim.seen.length).toBeGreaterThan(seenAtKill + 20);
  }, 15_000);

  test("every replica down: connect; the agent is unhealthy", async () => {
    const rs = await replicas(2);
    const id = uid("alldown");
    const a = await started(config(id, udsReplicated(rs.map((r) => r.path))));
    await Promise.all(rs.map((r) => r.stop()));
    await waitFor(() => !a.isHealthy(), 1000, "unhealthy");
    expect(kindOf(await a.call(ev()))).toBe("connect");
    expect(await metric(agentHealth, { agent: id })).toBe(0);
  });

  test("max-concurrent-calls counts the agent's calls over all endpoints", async () => {
    const rs = await replicas(3);
    for (const r of rs) r.delayMs = 100;
    const a = await started(config(uid("limit"), udsReplicated(rs.map((r) => r.path)), { maxConcurrentCalls: 4 }));
    const first = Array.from({ length: 4 }, () => a.call(ev()));
    expect(kindOf(await a.call(ev()))).toBe("overload");
    expect(a.inFlight()).toBe(4);
    expect((await Promise.all(first)).every((r) => r.ok)).toBe(true);
  });
});

describe("replicated agent: failover rules (wrapped transports)", () => {
  async function setup(fail: (path: string, e: AgentEvent) => TransportError | null, over: Partial<AgentConfig> = {}) {
    const rs = await replicas(3);
    const attempts: string[] = [];
    const id = uid("rules");
    const a = await started(config(id, udsReplicated(rs.map((r) => r.path)), over), {
      transportFor: (path) => wrapped(path, (e) => fail(path, e), attempts),
    });
    return { rs, a, attempts, id };
  }

  test("not sent / connect: tried on every other endpoint, immediately", async () => {
    const { rs, a, attempts } = await setup((path, e) =>
      e.correlationId.startsWith("ns") && path !== "none" ? new TransportError("connect", "refused", true) : null,
    );
    const t0 = performance.now();
    expect(kindOf(await a.call(ev("ns-1")))).toBe("connect");
    expect(performance.now() - t0).toBeLessThan(50);
    expect(new Set(attempts)).toEqual(new Set(rs.map((r) => r.path)));
    expect(attempts.length).toBe(3);
  });

  test("connection closed after the event was sent: moved once only (a request that crashes agents cannot take every replica down)", async () => {
    const { a, attempts, id } = await setup((_path, e) => (e.correlationId.startsWith("poison") ? new TransportError("closed", "connection closed", false) : null));
    const before = (await metric(agentFailovers, { agent: id })) ?? 0;
    expect(kindOf(await a.call(ev("poison-1")))).toBe("closed");
    expect(attempts.length).toBe(2);
    expect(new Set(attempts).size).toBe(2);
    expect(await metric(agentFailovers, { agent: id })).toBe(before + 1);
    // A normal call is fine.
    expect(kindOf(await a.call(ev("fine-1")))).toBe("ok");
  });

  test("closed on one replica, answered by the next", async () => {
    let victim = "";
    const { a, attempts } = await setup((path, e) => {
      if (!e.correlationId.startsWith("once")) return null;
      if (victim === "") victim = path;
      return path === victim ? new TransportError("closed", "connection closed", false) : null;
    });
    expect(kindOf(await a.call(ev("once-1")))).toBe("ok");
    expect(attempts.length).toBe(2);
    expect(attempts[0]).toBe(victim);
  });

  test("timeouts and protocol errors are never retried elsewhere", async () => {
    const { a, attempts } = await setup((_p, e) =>
      e.correlationId.startsWith("proto") ? new TransportError("protocol", "bad answer") : e.correlationId.startsWith("slow") ? new TransportError("timeout", "late") : null,
    );
    expect(kindOf(await a.call(ev("proto-1")))).toBe("protocol");
    expect(attempts.length).toBe(1);
    expect(kindOf(await a.call(ev("slow-1")))).toBe("timeout");
    expect(attempts.length).toBe(2);
  });

  test("retry { attempts } applies after every endpoint failed, with backoff", async () => {
    const { a, attempts } = await setup((_p, e) => (e.correlationId.startsWith("ns") ? new TransportError("connect", "refused", true) : null), {
      retry: { attempts: 1, backoffMs: 30 },
    });
    const t0 = performance.now();
    expect(kindOf(await a.call(ev("ns-2")))).toBe("connect");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(25);
    expect(attempts.length).toBe(6);
  });

  test("breaker per endpoint: a failing replica's circuit opens, it is taken out, the others answer without failover", async () => {
    let bad = "";
    const { rs, a, attempts, id } = await setup(
      (path) => {
        if (bad === "") bad = path;
        return path === bad ? new TransportError("closed", "connection closed", false) : null;
      },
      { circuitBreaker: { failureThreshold: 2, successThreshold: 1, timeoutMs: 60_000, halfOpenMaxRequests: 1 } },
    );
    void rs;
    // Drive calls until the bad endpoint's breaker opens.
    for (let i = 0; i < 100 && a.endpoints!().find((e) => e.endpoint === bad)?.circuit !== "open"; i++) expect(kindOf(await a.call(ev()))).toBe("ok");
    expect(a.endpoints!().find((e) => e.endpoint === bad)!.circuit).toBe("open");
    expect(a.circuitState()).toBe("closed");
    expect(await metric(agentCircuitState, { agent: id })).toBe(0);
    expect(await metric(agentEndpointHealth, { agent: id, endpoint: bad })).toBe(0);
    const n = attempts.length;
    const results = await Promise.all(Array.from({ length: 60 }, () => a.call(ev())));
    expect(results.every((r) => r.ok)).toBe(true);
    expect(attempts.length).toBe(n + 60); // one attempt each: nobody tried the open endpoint
    expect(attempts.slice(n).includes(bad)).toBe(false);
  });

  test("every circuit open: circuit_open without contacting any replica", async () => {
    const { a, attempts, id } = await setup(() => new TransportError("closed", "connection closed", false), {
      circuitBreaker: { failureThreshold: 1, successThreshold: 1, timeoutMs: 60_000, halfOpenMaxRequests: 1 },
    });
    for (let i = 0; i < 3; i++) await a.call(ev());
    await waitFor(() => a.circuitState() === "open", 1000, "all open");
    const n = attempts.length;
    expect(kindOf(await a.call(ev()))).toBe("circuit_open");
    expect(attempts.length).toBe(n);
    expect(await metric(agentCircuitState, { agent: id })).toBe(1);
    expect(a.isHealthy()).toBe(false);
  });
});

describe("replicated agent behind a DNS name (gRPC)", () => {
  const grpcHandler = (seen: string[]): AgentHandler => ({
    info: { agentId: "dns-replica", name: "dns-replica", version: "1" },
    onRequestHeaders: (e) => {
      seen.push(e.correlationId);
      return allow();
    },
  });

  test("dns://localhost:PORT: every address of the name is an endpoint; calls are answered", async () => {
    const seen: string[] = [];
    const srv = await serveGrpc("127.0.0.1:0", grpcHandler(seen), { log: quiet });
    cleanups.push(() => srv.close());
    const id = uid("dns");
    const a = createAgent(
      config(id, { kind: "grpc", address: `dns://localhost:${srv.port}`, dns: { name: "localhost", port: srv.port, scheme: "http", resolveIntervalMs: 30_000 }, protocol: "v2" }),
    );
    cleanups.push(() => a.close(0));
    a.start();
    expect(await a.whenConnected(3000)).toBe(true);
    expect(a.endpoints!().map((e) => e.endpoint)).toContain(`http://127.0.0.1:${srv.port}`);
    const rs = await Promise.all(Array.from({ length: 20 }, () => a.call(ev())));
    expect(rs.every((r) => r.ok)).toBe(true);
    expect(seen.length).toBe(20);
  });

  test("re-resolution: a new address becomes an endpoint and gets calls; a vanished one is closed and its series removed; a failed lookup keeps the set", async () => {
    const seen2: string[] = [];
    const seen3: string[] = [];
    const s2 = await serveGrpc("127.0.0.2:0", grpcHandler(seen2), { log: quiet });
    cleanups.push(() => s2.close());
    const s3 = await serveGrpc(`127.0.0.3:${s2.port}`, grpcHandler(seen3), { log: quiet });
    cleanups.push(() => s3.close());
    let answer: string[] | Error = ["127.0.0.2"];
    const id = uid("dns-re");
    const a = createAgent(
      config(id, { kind: "grpc", address: `dns://agents.test:${s2.port}`, dns: { name: "agents.test", port: s2.port, scheme: "http", resolveIntervalMs: 40 }, protocol: "v2" }),
      undefined,
      { lookup: async () => (answer instanceof Error ? Promise.reject(answer) : answer) },
    );
    cleanups.push(() => a.close(0));
    a.start();
    const e2 = `http://127.0.0.2:${s2.port}`;
    const e3 = `http://127.0.0.3:${s2.port}`;
    await waitFor(() => a.endpoints!().some((e) => e.connected), 3000, "first endpoint");
    expect(a.endpoints!().map((e) => e.endpoint)).toEqual([e2]);
    answer = ["127.0.0.3", "127.0.0.2"];
    await waitFor(() => a.endpoints!().filter((e) => e.connected).length === 2, 3000, "second endpoint");
    expect(await metric(agentEndpointCount, { agent: id })).toBe(2);
    await Promise.all(Array.from({ length: 100 }, () => a.call(ev())));
    expect(seen2.length).toBeGreaterThan(20);
    expect(seen3.length).toBeGreaterThan(20);
    answer = new Error("SERVFAIL");
    await Bun.sleep(150);
    expect(a.endpoints!().length).toBe(2);
    answer = ["127.0.0.3"];
    await waitFor(() => a.endpoints!().length === 1, 3000, "endpoint removed");
    expect(a.endpoints!()[0]!.endpoint).toBe(e3);
    await waitFor(async () => (await metric(agentEndpointHealth, { agent: id, endpoint: e2 })) === undefined, 6000, "series removed");
    const n2 = seen2.length;
    const rs = await Promise.all(Array.from({ length: 30 }, () => a.call(ev())));
    expect(rs.every((r) => r.ok)).toBe(true);
    expect(seen2.length).toBe(n2);
  });

  test("before the first answer: calls fail connect, the agent is unhealthy", async () => {
    const a = createAgent(
      config(uid("dns-none"), { kind: "grpc", address: "dns://nothing.test:1", dns: { name: "nothing.test", port: 1, scheme: "http", resolveIntervalMs: 1000 }, protocol: "v2" }),
      undefined,
      { lookup: async () => [] },
    );
    cleanups.push(() => a.close(0));
    a.start();
    expect(a.isHealthy()).toBe(false);
    expect(kindOf(await a.call(ev()))).toBe("connect");
    expect(await a.whenConnected(50)).toBe(false);
  });
});
