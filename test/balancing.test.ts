// Load-balancing policies and active health checks, through the compiled binary.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startProxy, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { get, rawRequest } from "./helpers/raw.ts";

let a: Upstream, b: Upstream, c: Upstream, slow: Upstream, fast: Upstream;
let proxy: ProxyProcess;

beforeAll(async () => {
  a = startUpstream("a");
  b = startUpstream("b");
  c = startUpstream("c");
  slow = startUpstream("slow", { delayMs: 150 });
  fast = startUpstream("fast");
  const targets = `target "${a.address}" weight=1; target "${b.address}" weight=2; target "${c.address}" weight=3`;
  proxy = await startProxy(`
system { }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "rr" { targets { target "${a.address}"; target "${b.address}"; target "${c.address}" }; load-balancing "round_robin" }
  upstream "weighted" { ${targets}; load-balancing "weighted" }
  upstream "random" { ${targets}; load-balancing "random" }
  upstream "least" { target "${slow.address}"; target "${fast.address}"; load-balancing "least-connections" }
  upstream "iphash" { ${targets}; load-balancing "ip_hash" }
  upstream "chash" { ${targets}; load-balancing "consistent-hash" }
  upstream "checked" {
    target "${a.address}"
    target "${b.address}"
    health-check { type "http" { path "/health"; expected-status 200 }; interval-secs 1; timeout-secs 1; healthy-threshold 1; unhealthy-threshold 1 }
  }
}
routes {
  route "rr" { matches { path-prefix "/rr" }; upstream "rr" }
  route "weighted" { matches { path-prefix "/weighted" }; upstream "weighted" }
  route "random" { matches { path-prefix "/random" }; upstream "random" }
  route "least" { matches { path-prefix "/least" }; upstream "least" }
  route "iphash" { matches { path-prefix "/iphash" }; upstream "iphash" }
  route "chash" { matches { path-prefix "/chash" }; upstream "chash" }
  route "checked" { matches { path-prefix "/checked" }; upstream "checked" }
}
`);
});

afterAll(async () => {
  await proxy?.stop("SIGKILL");
  for (const u of [a, b, c, slow, fast]) await u?.stop();
});

async function spread(path: string, n: number, concurrency = 16): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        const i = next++;
        const res = await fetch(`${proxy.url}${path}/${i}`);
        const who = res.headers.get("x-upstream") ?? "none";
        await res.arrayBuffer();
        counts[who] = (counts[who] ?? 0) + 1;
      }
    }),
  );
  return counts;
}

function expectShares(counts: Record<string, number>, weights: Record<string, number>, n: number, tolerance = 0.1): void {
  const total = Object.values(weights).reduce((x, y) => x + y, 0);
  for (const [name, w] of Object.entries(weights)) {
    const expected = (n * w) / total;
    expect(Math.abs((counts[name] ?? 0) - expected) / expected).toBeLessThanOrEqual(tolerance);
  }
}

describe("load balancing", () => {
  test("round_robin spreads evenly", async () => {
    const counts = await spread("/rr", 999);
    expectShares(counts, { a: 1, b: 1, c: 1 }, 999, 0.02);
  });

  test("weighted follows weights 1:2:3 within 10% over 1,000 requests", async () => {
    const counts = await spread("/weighted", 1200);
    expectShares(counts, { a: 1, b: 2, c: 3 }, 1200, 0.02);
  });

  test("random follows weights within 10%", async () => {
    const counts = await spread("/random", 4000, 32);
    expectShares(counts, { a: 1, b: 2, c: 3 }, 4000, 0.1);
  });

  test("least_connections sends most requests to the target that frees up first", async () => {
    const counts = await spread("/least", 200, 8);
    expect(counts.fast ?? 0).toBeGreaterThan(3 * (counts.slow ?? 0));
  });

  test("ip_hash pins a client address to one target and spreads addresses", async () => {
    const byClient = new Map<string, Set<string>>();
    for (let i = 1; i <= 24; i++) {
      const local = `127.0.0.${i}`;
      for (let k = 0; k < 3; k++) {
        const r = await rawRequest(proxy.url, get(`/iphash/x${k}`), { localAddress: local });
        expect(r.status).toBe(200);
        const who = /x-upstream: (\w+)/i.exec(r.text)![1]!;
        if (!byClient.has(local)) byClient.set(local, new Set());
        byClient.get(local)!.add(who);
      }
    }
    for (const set of byClient.values()) expect(set.size).toBe(1);
    const used = new Set([...byClient.values()].flatMap((s) => [...s]));
    expect(used.size).toBeGreaterThan(1);
  });

  test("consistent_hash pins a path to one target and spreads paths", async () => {
    const seen = new Map<string, string>();
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 30; i++) {
        const res = await fetch(`${proxy.url}/chash/key${i}`);
        const who = res.headers.get("x-upstream")!;
        if (round === 0) seen.set(`key${i}`, who);
        else expect(who).toBe(seen.get(`key${i}`)!);
      }
    }
    expect(new Set(seen.values()).size).toBeGreaterThan(1);
  });
});

describe("active health checks", () => {
  test("an unhealthy target is taken out and brought back", async () => {
    const hit = async () => (await fetch(`${proxy.url}/checked/x`)).headers.get("x-upstream");
    // both in rotation
    const initial = new Set<string | null>();
    for (let i = 0; i < 10; i++) initial.add(await hit());
    expect(initial).toEqual(new Set(["a", "b"]));

    a.healthy = false;
    await waitFor(async () => {
      for (let i = 0; i < 6; i++) if ((await hit()) === "a") return false;
      return true;
    }, 6000, "target a to leave rotation");
    for (let i = 0; i < 20; i++) expect(await hit()).toBe("b");

    a.healthy = true;
    await waitFor(async () => {
      for (let i = 0; i < 6; i++) if ((await hit()) === "a") return true;
      return false;
    }, 6000, "target a to come back");
  }, 20_000);
});
