import { describe, expect, test } from "bun:test";
import type { AgentConfig } from "../config/types.ts";
import type { Agent } from "./agent.ts";
import { createAgentRegistry, deepEqual, sameAgentConfig } from "./registry.ts";
import { testAgentConfig } from "./test-events.ts";

function cfg(id: string, over: Partial<AgentConfig> = {}): AgentConfig {
  return testAgentConfig(id, {
    events: ["request_headers"],
    connectTimeoutMs: 5000,
    failureModeExplicit: false,
    healthCheck: { enabled: true, intervalMs: 10000, timeoutMs: 100, healthyThreshold: 2, unhealthyThreshold: 3 },
    connections: 4,
    config: { rules: ["a", "b"], level: 2 },
    loc: { file: "a.kdl", line: 1, col: 1 },
    ...over,
  });
}

/** A stub Agent that records lifecycle calls (the registry logic does not depend on transports). */
function stubFactory() {
  const made: Array<Agent & { closedWith: number | null; startedCount: number }> = [];
  const create = (config: AgentConfig) => {
    const a = {
      id: config.id,
      config,
      closedWith: null as number | null,
      startedCount: 0,
      call: async () => ({ ok: false as const, kind: "closed" as const, message: "stub" }),
      notify() {},
      subscribes: (e: string) => config.events.includes(e as never),
      isHealthy: () => true,
      start() {
        a.startedCount++;
      },
      async close(graceMs: number) {
        a.closedWith = graceMs;
      },
      circuitState: () => "closed" as const,
      inFlight: () => 0,
      whenConnected: async () => true,
    };
    made.push(a);
    return a;
  };
  return { create, made };
}

const map = (...cs: AgentConfig[]) => new Map(cs.map((c) => [c.id, c]));

describe("deepEqual / sameAgentConfig", () => {
  test("ignores loc, compares everything else deeply", () => {
    expect(sameAgentConfig(cfg("a"), cfg("a", { loc: { file: "b.kdl", line: 9, col: 3 } }))).toBe(true);
    expect(sameAgentConfig(cfg("a"), cfg("a", { timeoutMs: 999 }))).toBe(false);
    expect(sameAgentConfig(cfg("a"), cfg("a", { config: { rules: ["a", "c"], level: 2 } }))).toBe(false);
    expect(sameAgentConfig(cfg("a"), cfg("a", { circuitBreaker: { failureThreshold: 5, successThreshold: 2, timeoutMs: 30000, halfOpenMaxRequests: 2 } }))).toBe(false);
    expect(sameAgentConfig(cfg("a"), cfg("a", { transport: { kind: "uds", address: "/tmp/a.sock", protocol: "v2" } }))).toBe(true);
    expect(sameAgentConfig(cfg("a"), cfg("a", { events: ["request_headers", "request_body"] }))).toBe(false);
  });
  test("replicated agents: a different endpoint list or DNS setting is a different agent", () => {
    const three = (eps: string[]) => cfg("r", { transport: { kind: "grpc", address: eps[0]!, endpoints: eps, protocol: "v2" } });
    const eps = ["http://127.0.0.2:1", "http://127.0.0.3:1", "http://127.0.0.4:1"];
    expect(sameAgentConfig(three(eps), three([...eps]))).toBe(true);
    expect(sameAgentConfig(three(eps), three(eps.slice(0, 2)))).toBe(false);
    expect(sameAgentConfig(three(eps), three([eps[0]!, eps[2]!, eps[1]!]))).toBe(false);
    const dns = (ms: number) =>
      cfg("d", { transport: { kind: "grpc", address: "dns://a:1", dns: { name: "a", port: 1, scheme: "http", resolveIntervalMs: ms }, protocol: "v2" } });
    expect(sameAgentConfig(dns(30_000), dns(30_000))).toBe(true);
    expect(sameAgentConfig(dns(30_000), dns(10_000))).toBe(false);
  });

  test("edge cases", () => {
    expect(deepEqual({ a: undefined, b: 1 }, { b: 1 })).toBe(true);
    expect(deepEqual([1, 2], [2, 1])).toBe(false);
    expect(deepEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2]))).toBe(true);
    expect(deepEqual(/a/i, /a/i)).toBe(true);
    expect(deepEqual(/a/i, /a/g)).toBe(false);
    expect(deepEqual(null, {})).toBe(false);
    expect(deepEqual(Number.NaN, Number.NaN)).toBe(true);
    expect(deepEqual({ a: [1, { b: "x" }] }, { a: [1, { b: "x" }] })).toBe(true);
  });
});

describe("createAgentRegistry", () => {
  test("creates one agent per config, does not start them", () => {
    const f = stubFactory();
    const r = createAgentRegistry(map(cfg("a"), cfg("b")), undefined, { create: f.create });
    expect(r.all().map((a) => a.id)).toEqual(["a", "b"]);
    expect(r.get("a")!.config.id).toBe("a");
    expect(r.get("zz")).toBeUndefined();
    expect(f.made.every((a) => a.startedCount === 0)).toBe(true);
  });

  test("hot reload: reuse unchanged, replace changed, close removed", async () => {
    const f = stubFactory();
    const r1 = createAgentRegistry(map(cfg("same"), cfg("changed"), cfg("removed")), undefined, { create: f.create });
    const [same, changed, removed] = f.made;
    const r2 = createAgentRegistry(
      map(cfg("same", { loc: { file: "x", line: 2, col: 2 } }), cfg("changed", { timeoutMs: 50 }), cfg("added")),
      r1,
      { create: f.create, graceMs: 1234 },
    );
    expect(r2.get("same")).toBe(same!); // same object: connections and breaker state kept
    expect(r2.get("changed")).not.toBe(changed!);
    expect(r2.get("changed")!.config.timeoutMs).toBe(50);
    expect(r2.get("added")).toBeDefined();
    expect(r2.get("removed")).toBeUndefined();
    expect(changed!.closedWith).toBe(1234);
    expect(removed!.closedWith).toBe(1234);
    expect(same!.closedWith).toBeNull();
    // closing the superseded registry must not close agents now owned by r2
    await r1.close(10);
    expect(same!.closedWith).toBeNull();
    await r2.close(77);
    expect(same!.closedWith).toBe(77);
    expect(r2.get("added") as unknown as { closedWith: number }).toMatchObject({ closedWith: 77 });
  });

  test("close is idempotent", async () => {
    const f = stubFactory();
    const r = createAgentRegistry(map(cfg("a")), undefined, { create: f.create });
    await r.close(5);
    await r.close(6);
    expect(f.made[0]!.closedWith).toBe(5);
  });

  test("ready() reflects whenConnected of every agent", async () => {
    const f = stubFactory();
    const r = createAgentRegistry(map(cfg("a"), cfg("b")), undefined, {
      create: (c) => ({ ...f.create(c), whenConnected: async () => c.id === "a" }),
    });
    expect(await r.ready(10)).toBe(false);
    const r2 = createAgentRegistry(map(cfg("a")), undefined, { create: f.create });
    expect(await r2.ready(10)).toBe(true);
  });
});
