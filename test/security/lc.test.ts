// Reliability & security catalog §6 — lifecycle (LC-01 … LC-10): shutdown, reload, agents that
// come and go, upstream health, boot validation. Each case that stops or reloads the proxy has
// its own proxy process; the recording upstream and the auth agent are shared.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, renameSync, rmSync, unlinkSync, utimesSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { runBinary } from "../helpers/proxy.ts";
import { startRawUpstream, type RawUpstream } from "./raw-upstream.ts";
import {
  catalogConfig,
  exchange,
  metric,
  req,
  scrape,
  startHostileAgent,
  startProxy,
  tempDir,
  waitFor,
  type CatalogOptions,
  type HostileAgent,
  type ProxyProcess,
} from "./harness.ts";

setDefaultTimeout(40_000);

let up: RawUpstream;
let agent: HostileAgent;
const procs: ProxyProcess[] = [];
const GOOD = { authorization: "Bearer good" };

/** LC-08 watches reconnect attempts for 5 s; that window runs while the other cases do. */
const lc08 = { dir: "", path: "", attempts: [] as number[], startedAt: 0, counter: undefined as ReturnType<typeof Bun.listen> | undefined, proxy: undefined as ProxyProcess | undefined };

beforeAll(async () => {
  up = await startRawUpstream();
  agent = await startHostileAgent("uds");
  lc08.dir = tempDir("sentinel-sec-lc08-");
  lc08.path = join(lc08.dir, "flaky.sock");
  // A listener that accepts and closes at once: every reconnect attempt is counted.
  lc08.counter = Bun.listen({
    unix: lc08.path,
    socket: {
      open(s) {
        lc08.attempts.push(Date.now());
        s.end();
      },
      data() {},
    },
  });
  lc08.proxy = await startProxy(catalogConfig({ upstream: up.address, auth: `unix-socket "${lc08.path}"`, waf: `unix-socket "${join(lc08.dir, "no-waf.sock")}"` }));
  procs.push(lc08.proxy);
  lc08.startedAt = Date.now();
});

afterAll(async () => {
  for (const p of procs) await p.stop("SIGKILL");
  await agent?.kill();
  await up?.stop();
});

async function proxyWith(o: Partial<CatalogOptions> = {}, start: { dir?: string; expectFail?: boolean } = {}): Promise<ProxyProcess> {
  const p = await startProxy(catalogConfig({ upstream: up.address, auth: agent.kdl(), ...o }), start);
  procs.push(p);
  if (!start.expectFail) await waitFor(async () => (await fetch(`${p.url}/admin/warm`, { headers: GOOD })).status === 200, 10_000, "agent ready");
  return p;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

const STATUS_ROUTE = `route "status" { priority "high"; matches { path "/status" }; builtin-handler "status" }`;

describe("LC: shutdown", () => {
  test("LC-01 graceful shutdown: in-flight requests and a stream finish, idle connections close, new ones are refused, exit 0", async () => {
    const p = await proxyWith({ extraRoutes: STATUS_ROUTE });
    expect((await fetch(`${p.url}/status`)).status).toBe(200);
    const slow = Array.from({ length: 50 }, (_, i) => fetch(`${p.url}/public/r/slow:2000/s${i}`).then(async (r) => `${r.status} ${await r.text()}`));
    const stream = fetch(`${p.url}/public/r/drip:10:150/stream`).then(async (r) => `${r.status} ${(await r.text()).split("\n").filter(Boolean).length}`);
    const idle = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const s = net.connect({ host: "127.0.0.1", port: Number(new URL(p.url).port) });
        s.on("error", () => {});
        await new Promise((r) => s.once("connect", r));
        s.write(req("GET", "/public/idle"));
        await new Promise((r) => s.once("data", r));
        return s;
      }),
    );
    const idleClosed = idle.map((s) => new Promise<number>((r) => s.once("close", () => r(Date.now()))));
    await Bun.sleep(300);
    const t0 = Date.now();
    p.proc.kill("SIGTERM");
    await p.waitForLog((l) => l.msg === "shutting down: draining in-flight requests");
    let refused = false;
    try {
      await fetch(`${p.url}/public/new`, { headers: { connection: "close" } });
    } catch {
      refused = true;
    }
    expect(refused).toBe(true);
    for (const closedAt of await Promise.all(idleClosed)) expect(closedAt - t0).toBeLessThan(1500);
    for (const [i, r] of (await Promise.all(slow)).entries()) expect(r).toBe(`200 ok GET /public/r/slow:2000/s${i}`);
    expect(await stream).toBe("200 10");
    expect(await p.proc.exited).toBe(0);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  test("LC-02 shutdown deadline: requests longer than the grace are cut, exit follows; pending fail-closed requests are never forwarded", async () => {
    const p = await proxyWith({ system: "graceful-shutdown-timeout-secs 2" });
    const mark = up.mark();
    const long = Array.from({ length: 5 }, (_, i) => fetch(`${p.url}/public/r/hang/long${i}`).then((r) => r.status, () => 0));
    const pending = Array.from({ length: 5 }, (_, i) => fetch(`${p.url}/admin/pending${i}`, { headers: { ...GOOD, "x-chaos": "hang" } }).then((r) => r.status, () => 0));
    await Bun.sleep(100);
    const t0 = Date.now();
    p.proc.kill("SIGTERM");
    await p.proc.exited;
    expect(Date.now() - t0).toBeLessThan(4000);
    for (const s of await Promise.all(long)) expect(s === 0 || s >= 500).toBe(true);
    for (const s of await Promise.all(pending)) expect(s === 0 || s >= 500).toBe(true);
    expect(up.since(mark).filter((r) => r.target.startsWith("/admin/pending"))).toEqual([]);
  });
});

describe("LC: reload", () => {
  const versioned = (v: string, extra: Partial<CatalogOptions> = {}) =>
    catalogConfig({
      upstream: up.address,
      auth: agent.kdl(),
      ...extra,
      extraRoutes: `route "versioned" { matches { path-prefix "/v" }; upstream "u"; policies { response-headers { set { "X-Config" "${v}" } } } }`,
    });

  test("LC-03 hot reload under load: zero failed requests, every answer from v1 or v2, each change visible within 1 s", async () => {
    const dir = tempDir("sentinel-sec-lc03-");
    const p = await startProxy(versioned("v1"), { dir });
    procs.push(p);
    const before = await metric(p, "sentinel_config_reloads_total", 'result="success"');
    let stop = false;
    const seen: Array<{ t: number; v: string | null; status: number }> = [];
    const failures: string[] = [];
    const workers = Array.from({ length: 20 }, async () => {
      while (!stop) {
        try {
          const r = await fetch(`${p.url}/v/x`);
          await r.arrayBuffer();
          seen.push({ t: Date.now(), v: r.headers.get("x-config"), status: r.status });
        } catch (e) {
          failures.push(String(e));
        }
      }
    });
    const reloads: Array<{ t: number; v: string }> = [];
    for (let i = 0; i < 8; i++) {
      await Bun.sleep(400);
      const v = i % 2 === 0 ? "v2" : "v1";
      writeFileSync(p.configPath, versioned(v));
      reloads.push({ t: Date.now(), v });
      p.proc.kill("SIGHUP");
    }
    await Bun.sleep(400);
    stop = true;
    await Promise.all(workers);
    expect(failures).toEqual([]);
    expect(seen.filter((s) => s.status !== 200)).toEqual([]);
    expect(seen.every((s) => s.v === "v1" || s.v === "v2")).toBe(true);
    for (const r of reloads) {
      const firstNew = seen.find((s) => s.t >= r.t && s.v === r.v);
      expect(firstNew).toBeDefined();
      expect(firstNew!.t - r.t).toBeLessThan(1000);
    }
    expect(await metric(p, "sentinel_config_reloads_total", 'result="success"')).toBe(before + 8);
  });

  test("LC-04 a bad config on reload: the old one keeps serving, the error names the line, the failure is counted; a good one applies after", async () => {
    const dir = tempDir("sentinel-sec-lc04-");
    const p = await startProxy(versioned("v1"), { dir });
    procs.push(p);
    const good = versioned("v1");
    const bad: Array<[string, string | null]> = [
      ["syntax error", good.replace("routes {", "routes { {")],
      ["unknown upstream", good.replace('upstream "u"; policies { response-headers', 'upstream "nope"; policies { response-headers')],
      ["duplicate route", good.replace('route "versioned"', 'route "public" { matches { path-prefix "/dup" }; upstream "u" }\n  route "versioned"')],
      ["negative timeout", good.replace("request-secs 5", "request-secs -5")],
      ["truncated", good.slice(0, Math.floor(good.length / 2))],
      ["empty", ""],
      ["unreadable (a directory)", null],
    ];
    let failures = await metric(p, "sentinel_config_reloads_total", 'result="failure"');
    for (const [name, text] of bad) {
      if (text === null) {
        unlinkSync(p.configPath);
        mkdirSync(p.configPath);
      } else writeFileSync(p.configPath, text);
      const logMark = p.logs.length;
      p.proc.kill("SIGHUP");
      await waitFor(async () => (await metric(p, "sentinel_config_reloads_total", 'result="failure"')) === failures + 1, 5000, `reload failure counted (${name})`);
      failures++;
      const r = await fetch(`${p.url}/v/x`);
      expect({ name, status: r.status, v: r.headers.get("x-config") }).toEqual({ name, status: 200, v: "v1" });
      if (text) expect(p.logs.slice(logMark).some((l) => /sentinel\.kdl:\d+:\d+/.test(JSON.stringify(l)))).toBe(true);
      if (text === null) rmSync(p.configPath, { recursive: true });
    }
    writeFileSync(p.configPath, versioned("v2"));
    p.proc.kill("SIGHUP");
    await waitFor(async () => (await fetch(`${p.url}/v/x`)).headers.get("x-config") === "v2", 5000, "valid reload applied");
  });

  test("LC-05 reload atomicity: in-flight requests finish on their snapshot; the removed agent's connections are closed", async () => {
    const up2 = await startRawUpstream();
    try {
      const dir = tempDir("sentinel-sec-lc05-");
      const v1 = catalogConfig({ upstream: up.address, auth: agent.kdl() });
      // v2: /admin has no agent any more and goes to another upstream; no agent is configured at all.
      const v2 = `
system { graceful-shutdown-timeout-secs 10 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up2.address}" } }
routes { route "admin" { matches { path-prefix "/admin" }; upstream "u" } }
observability { metrics { enabled #true; address "127.0.0.1:0"; path "/metrics" } }
`;
      const p = await startProxy(v1, { dir });
      procs.push(p);
      await waitFor(async () => (await fetch(`${p.url}/admin/warm`, { headers: GOOD })).status === 200, 10_000, "agent ready");
      const mark = up.mark();
      const inflight = Array.from({ length: 10 }, (_, i) =>
        fetch(`${p.url}/admin/old${i}`, { headers: { ...GOOD, "x-chaos": "delay:150" } }).then(async (r) => ({ status: r.status, body: await r.text() })),
      );
      await Bun.sleep(50);
      writeFileSync(p.configPath, v2);
      p.proc.kill("SIGHUP");
      await waitFor(async () => (await fetch(`${p.url}/admin/new`)).status === 200, 5000, "v2 active");
      const done = await Promise.all(inflight);
      for (const [i, r] of done.entries()) {
        expect(r.status).toBe(200);
        expect(r.body).toBe(`ADMIN HANDLER GET /admin/old${i}`);
      }
      // The old requests were decided by the agent and served by the old upstream only.
      const old = up.since(mark).filter((r) => r.target.startsWith("/admin/old"));
      expect(old.length).toBe(10);
      for (const r of old) expect(up.header(r, "x-auth-user")).toEqual(["alice"]);
      expect(up2.records.filter((r) => r.target.startsWith("/admin/old"))).toEqual([]);
      // New requests: no agent, the new upstream.
      expect(up2.records.some((r) => r.target === "/admin/new")).toBe(true);
      // The retired agent's connections are closed once the old requests are done.
      await waitFor(async () => {
        const s = await agent.stats();
        return s.connections <= procs.filter((x) => x !== p && x.proc.exitCode === null).length * 8;
      }, 10_000, "retired agent connections closed");
    } finally {
      await up2.stop();
    }
  });

  test("LC-06 file-watch reload: an editor-style rename applies; a burst of writes is one reload of the final content", async () => {
    const dir = tempDir("sentinel-sec-lc06-");
    const p = await startProxy(versioned("v1", { system: "auto-reload #true" }), { dir });
    procs.push(p);
    const count = () => metric(p, "sentinel_config_reloads_total", 'result="success"');
    let n = await count();
    // write-temp + rename
    writeFileSync(join(dir, ".sentinel.kdl.tmp"), versioned("v2", { system: "auto-reload #true" }));
    renameSync(join(dir, ".sentinel.kdl.tmp"), p.configPath);
    await waitFor(async () => (await fetch(`${p.url}/v/x`)).headers.get("x-config") === "v2", 5000, "rename applied");
    await waitFor(async () => (await count()) === n + 1, 3000, "one reload");
    n = await count();
    // 10 writes within 100 ms → one reload, final content
    for (let i = 0; i < 10; i++) {
      writeFileSync(p.configPath, versioned(`burst${i}`, { system: "auto-reload #true" }));
      await Bun.sleep(10);
    }
    await waitFor(async () => (await fetch(`${p.url}/v/x`)).headers.get("x-config") === "burst9", 5000, "final content applied");
    await Bun.sleep(600);
    expect(await count()).toBe(n + 1);
  });

  test("LC-06 file-watch reload: touching the file without changing it does not reload", async () => {
    const dir = tempDir("sentinel-sec-lc06b-");
    const p = await startProxy(versioned("v1", { system: "auto-reload #true" }), { dir });
    procs.push(p);
    const n = await metric(p, "sentinel_config_reloads_total", 'result="success"');
    const now = new Date();
    utimesSync(p.configPath, now, now);
    writeFileSync(p.configPath, versioned("v1", { system: "auto-reload #true" }));
    await Bun.sleep(800);
    expect(await metric(p, "sentinel_config_reloads_total", 'result="success"')).toBe(n);
  });
});

describe("LC: agents and upstreams coming and going", () => {
  test("LC-07 start with the agent missing (no socket; stale socket): starts, /admin 503, /open served, the agent is used once it appears", async () => {
    for (const variant of ["absent", "stale"]) {
      const dir = tempDir("sentinel-sec-lc07-");
      const path = join(dir, "late.sock");
      if (variant === "stale") {
        const l = Bun.listen({ unix: path, socket: { data() {} } });
        l.stop(true);
        if (!existsSync(path)) writeFileSync(path, ""); // a leftover file nobody listens on
      }
      const p = await startProxy(catalogConfig({ upstream: up.address, auth: `unix-socket "${path}"` }));
      procs.push(p);
      expect((await fetch(`${p.url}/admin/x`, { headers: GOOD })).status).toBe(503);
      expect((await fetch(`${p.url}/open/x`)).status).toBe(200);
      expect((await fetch(`${p.url}/public/x`)).status).toBe(200);
      if (existsSync(path)) unlinkSync(path);
      const late = await startHostileAgent("uds", { dir, name: "late" });
      try {
        const t0 = Date.now();
        await waitFor(async () => (await fetch(`${p.url}/admin/x`, { headers: GOOD })).status === 200, 5000, "agent used once it appears");
        expect(Date.now() - t0).toBeLessThan(2000 + 2000 + 1000); // backoff cap + breaker open time + 1 s
      } finally {
        await late.kill();
        await p.stop("SIGKILL");
      }
    }
  });

  test("LC-08 agent restart: reconnect attempts back off (no busy loop), recovery within the cap after the agent returns", async () => {
    const p = lc08.proxy!;
    await Bun.sleep(Math.max(0, lc08.startedAt + 5000 - Date.now()));
    lc08.counter!.stop(true);
    if (existsSync(lc08.path)) unlinkSync(lc08.path);
    const attempts = lc08.attempts.filter((t) => t <= lc08.startedAt + 5000);
    // 4 pooled connections, each backing off 100 ms doubling to 2 s (with jitter): at most ~8
    // attempts each in 5 s (measured: 31 in all), and at most one per connection per 2 s at the end.
    expect(attempts.length).toBeGreaterThan(4);
    expect(attempts.length).toBeLessThanOrEqual(40);
    const lastTwoSeconds = attempts.filter((t) => t >= attempts[0]! + 3000).length;
    expect(lastTwoSeconds).toBeLessThanOrEqual(10);
    const real = await startHostileAgent("uds", { dir: lc08.dir, name: "flaky" });
    try {
      const t0 = Date.now();
      await waitFor(async () => (await fetch(`${p.url}/admin/x`, { headers: GOOD })).status === 200, 6000, "recovered");
      expect(Date.now() - t0).toBeLessThan(2000 + 2000 + 1000);
    } finally {
      await real.kill();
      await p.stop("SIGKILL");
    }
  });

  test("LC-09 upstream health: a dead target is ejected, a restored one re-added, all down → 503 fast", async () => {
    const u1 = await startRawUpstream();
    let u2 = await startRawUpstream();
    const u2port = u2.port;
    try {
      const p = await startProxy(`
system { graceful-shutdown-timeout-secs 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "pair" {
    target "${u1.address}"
    target "${u2.address}"
    load-balancing "round_robin"
    health-check { type "http" { path "/health"; expected-status 200 }; interval-secs 1; timeout-secs 1; healthy-threshold 1; unhealthy-threshold 1 }
  }
}
routes { route "all" { matches { path-prefix "/" }; upstream "pair"; retry-policy { max-attempts 2 } } }
`);
      procs.push(p);
      const spread = async (n: number) => {
        const m1 = u1.mark();
        const m2 = u2.mark();
        const statuses: number[] = [];
        for (let i = 0; i < n; i++) statuses.push((await fetch(`${p.url}/x${i}`)).status);
        return { statuses, u1: u1.since(m1).filter((r) => r.target !== "/health").length, u2: u2.since(m2).filter((r) => r.target !== "/health").length };
      };
      const both = await spread(10);
      expect(both.u1).toBeGreaterThan(0);
      expect(both.u2).toBeGreaterThan(0);
      await u2.stop();
      // within interval × threshold (+ one interval) every request is answered by u1
      await Bun.sleep(2200);
      const one = await spread(10);
      expect(one.statuses).toEqual(Array(10).fill(200));
      u2 = await startRawUpstream({ port: u2port });
      await waitFor(async () => (await spread(6)).u2 > 0, 5000, "restored target re-added");
      await u1.stop();
      await u2.stop();
      await Bun.sleep(2200);
      const t0 = performance.now();
      const r = await fetch(`${p.url}/down`);
      expect([502, 503]).toContain(r.status);
      expect(performance.now() - t0).toBeLessThan(500);
    } finally {
      await u1.stop();
      await u2.stop();
    }
  });
});

describe("LC: boot", () => {
  test("LC-10 boot validation, restart after SIGKILL, metrics continuity across reloads", async () => {
    const port = await freePort();
    const dir = tempDir("sentinel-sec-lc10-");
    const good = catalogConfig({ upstream: up.address, auth: agent.kdl() }).replace('address "127.0.0.1:0"; ', `address "127.0.0.1:${port}"; `);
    // invalid config: non-zero exit, FILE:LINE:COL, nothing bound
    const bad = await startProxy(good.replace("routes {", "routes { route"), { dir, expectFail: true });
    const code = await bad.proc.exited;
    expect(code).not.toBe(0);
    expect(bad.logs.some((l) => /sentinel\.kdl:\d+:\d+/.test(JSON.stringify(l)))).toBe(true);
    expect(await fetch(`http://127.0.0.1:${port}/public/x`).then(() => "bound", () => "refused")).toBe("refused");
    // validate
    writeFileSync(join(dir, "good.kdl"), good);
    writeFileSync(join(dir, "bad.kdl"), good.replace("routes {", "routes { route"));
    expect(runBinary(["validate", "-c", join(dir, "good.kdl")], dir).code).toBe(0);
    const v = runBinary(["validate", "-c", join(dir, "bad.kdl")], dir);
    expect(v.code).toBe(1);
    expect(v.stderr + v.stdout).toMatch(/bad\.kdl:\d+:\d+/);
    // start, SIGKILL, start again at once on the same port
    const first = await startProxy(good, { dir: tempDir("sentinel-sec-lc10a-") });
    procs.push(first);
    expect((await fetch(`http://127.0.0.1:${port}/public/x`)).status).toBe(200);
    first.proc.kill("SIGKILL");
    await first.proc.exited;
    const second = await startProxy(good, { dir: tempDir("sentinel-sec-lc10b-") });
    procs.push(second);
    expect((await fetch(`http://127.0.0.1:${port}/public/x`)).status).toBe(200);
    // counters never go back on reload; /metrics answers during reloads
    for (let i = 0; i < 20; i++) await fetch(`http://127.0.0.1:${port}/public/c${i}`);
    const before = await metric(second, "sentinel_requests_total", 'route="public"');
    for (let i = 0; i < 5; i++) {
      second.proc.kill("SIGHUP");
      const m = await fetch(second.metricsUrl!);
      expect(m.status).toBe(200);
      await m.text();
      await Bun.sleep(100);
    }
    expect(await metric(second, "sentinel_requests_total", 'route="public"')).toBeGreaterThanOrEqual(before);
    expect(await scrape(second)).toContain("sentinel_config_reloads_total");
  });
});

