// Metrics and built-in handlers through the compiled binary: the metrics listener parses as
// Prometheus text; every metric family moves with traffic, failures, health changes and
// reloads; label sets stay bounded under 10,000 distinct paths; health / status (readiness) /
// metrics / upstreams / config (redacted) handlers.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { startProxy, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { agentTransportKdl, startAgent, type AgentProcess } from "./helpers/agents.ts";
import { scrape, series, startLoad, value, type Scrape } from "./ops-helpers.ts";

let up: Upstream;
let agent: AgentProcess;
let proxy: ProxyProcess;
const DEAD = "127.0.0.1:1";

const config = () => `
system { graceful-shutdown-timeout-secs 3 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "app" { target "${up.address}" }
  upstream "checked" {
    target "${up.address}"
    target "${DEAD}"
    health-check { type "http" { path "/health"; expected-status 200 }; interval-secs 1; timeout-secs 1; healthy-threshold 1; unhealthy-threshold 1 }
  }
  upstream "flaky" { target "${up.address}"; target "${DEAD}"; load-balancing "round_robin" }
}
agents {
  agent "guard" type="waf" { ${agentTransportKdl(agent)}; events "request_headers"; timeout-ms 2000; failure-mode "closed"; circuit-breaker { failure-threshold 1000; timeout-seconds 1 }; config { api-key "AGENT-SECRET-1" } }
}
filters { filter "guard" { type "agent"; agent "guard" } }
routes {
  route "health" { matches { path "/-/health" }; builtin-handler "health" }
  route "status" { matches { path "/-/status" }; builtin-handler "status" }
  route "metrics" { matches { path "/-/metrics" }; builtin-handler "metrics" }
  route "upstreams" { matches { path "/-/upstreams" }; builtin-handler "upstreams" }
  route "config" { matches { path "/-/config" }; builtin-handler "config" }
  route "guarded" { matches { path-prefix "/guarded" }; upstream "app"; filters "guard" }
  route "checked" { matches { path-prefix "/checked" }; upstream "checked" }
  route "flaky" { matches { path-prefix "/flaky" }; upstream "flaky"; retry-policy { max-attempts 1 } }
  route "ws" { matches { path-prefix "/ws" }; upstream "app"; websocket #true }
  route "app" {
    matches { path-prefix "/app" }
    upstream "app"
    policies { request-headers { set { "Authorization" "Bearer HEADER-SECRET-2" } } }
  }
}
observability { metrics { address "127.0.0.1:0"; path "/metrics" } }
`;

beforeAll(async () => {
  up = startUpstream("u");
  agent = await startAgent("sdk", "uds");
  proxy = await startProxy(config());
  await waitFor(async () => (await fetch(`${proxy.url}/guarded/x`)).status === 200, 10_000, "agent connected");
}, 20_000);
afterAll(async () => {
  await proxy?.stop("SIGKILL");
  await agent?.kill();
  await up?.stop();
});

const m = () => scrape(proxy.metricsUrl!);
const delta = (a: Scrape, b: Scrape, name: string, labels: Record<string, string> = {}) => (value(b, name, labels) || 0) - (value(a, name, labels) || 0);

describe("metrics listener", () => {
  test("Prometheus text with the right content type; names prefixed sentinel_ and following conventions", async () => {
    const s = await m();
    expect(s.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(s.types.size).toBeGreaterThan(20);
    for (const [name, type] of s.types) {
      expect(name.startsWith("sentinel_")).toBe(true);
      expect(s.helps.get(name)?.length).toBeGreaterThan(0);
      if (type === "counter") expect(name).toMatch(/_total$/);
      if (type === "histogram") expect(name).toMatch(/_seconds$/);
      if (/(bytes|seconds)/.test(name) && type !== "counter") expect(name).toMatch(/_(bytes|seconds)$/);
    }
    for (const name of [
      "sentinel_requests_total",
      "sentinel_request_duration_seconds",
      "sentinel_upstream_request_duration_seconds",
      "sentinel_upstream_errors_total",
      "sentinel_upstream_target_healthy",
      "sentinel_requests_in_flight",
      "sentinel_open_connections",
      "sentinel_websocket_connections",
      "sentinel_config_reloads_total",
      "sentinel_config_last_reload_success_timestamp_seconds",
      "sentinel_process_resident_memory_bytes",
      "sentinel_process_open_fds",
      "sentinel_event_loop_lag_seconds",
      "sentinel_agent_calls_total",
      "sentinel_ready",
    ])
      expect(s.types.has(name)).toBe(true);
    expect(value(s, "sentinel_process_resident_memory_bytes")).toBeGreaterThan(10_000_000);
    expect(value(s, "sentinel_process_open_fds")).toBeGreaterThan(3);
    expect(value(s, "sentinel_event_loop_lag_seconds")).toBeGreaterThanOrEqual(0);
    // Only the metrics path is served there.
    expect((await fetch(proxy.metricsUrl!.replace("/metrics", "/other"))).status).toBe(404);
  });

  test("request, upstream, agent and error metrics move with traffic", async () => {
    const a = await m();
    const get = (p: string, init?: RequestInit) => fetch(`${proxy.url}${p}`, init).then(async (r) => (await r.text(), r.status));
    for (let i = 0; i < 20; i++) expect(await get(`/app/x${i}`)).toBe(200);
    for (let i = 0; i < 5; i++) expect(await get(`/app/echo`, { method: "POST", body: "hello" })).toBe(200);
    for (let i = 0; i < 3; i++) expect(await get(`/app/status/503`)).toBe(503);
    expect(await get(`/guarded/x`, { headers: { "x-want": "block" } })).toBe(451);
    expect(await get(`/nowhere/${crypto.randomUUID()}`)).toBe(404);
    const flaky = await Promise.all(Array.from({ length: 6 }, () => get("/flaky/x")));
    expect(flaky.filter((s) => s === 502).length).toBeGreaterThan(0);
    const b = await m();
    expect(delta(a, b, "sentinel_requests_total", { route: "app", method: "GET", status_class: "2xx" })).toBe(20);
    expect(delta(a, b, "sentinel_requests_total", { route: "app", method: "POST", status_class: "2xx" })).toBe(5);
    expect(delta(a, b, "sentinel_requests_total", { route: "app", method: "GET", status_class: "5xx" })).toBe(3);
    expect(delta(a, b, "sentinel_requests_total", { route: "guarded", status_class: "4xx" })).toBe(1);
    expect(delta(a, b, "sentinel_requests_total", { route: "none", status_class: "4xx" })).toBe(1);
    expect(delta(a, b, "sentinel_request_duration_seconds_count", { route: "app" })).toBe(28);
    expect(delta(a, b, "sentinel_request_duration_seconds_sum", { route: "app" })).toBeGreaterThan(0);
    expect(delta(a, b, "sentinel_upstream_request_duration_seconds_count", { upstream: "app", target: up.address })).toBe(28); // the blocked one never left
    expect(delta(a, b, "sentinel_upstream_errors_total", { upstream: "app", target: up.address, kind: "status_5xx" })).toBe(3);
    expect(delta(a, b, "sentinel_upstream_errors_total", { upstream: "flaky", target: DEAD, kind: "connect" })).toBeGreaterThan(0);
    expect(delta(a, b, "sentinel_agent_calls_total", { agent: "guard", decision: "block" })).toBe(1);
  });

  test("in-flight requests, open connections and WebSockets are live gauges", async () => {
    const slow = Array.from({ length: 3 }, () => fetch(`${proxy.url}/app/slow?ms=1200`).then((r) => r.text()));
    const ws = new WebSocket(proxy.url.replace("http", "ws") + "/ws/chat");
    await new Promise((r, j) => ((ws.onopen = r), (ws.onerror = j)));
    await Bun.sleep(300);
    const during = await m();
    expect(value(during, "sentinel_requests_in_flight")).toBeGreaterThanOrEqual(4); // 3 slow + the WebSocket
    expect(value(during, "sentinel_websocket_connections")).toBe(1);
    expect(value(during, "sentinel_open_connections", { listener: "main" })).toBeGreaterThanOrEqual(4);
    const closed = new Promise((r) => (ws.onclose = r));
    ws.close();
    await closed;
    await Promise.all(slow);
    await waitFor(async () => value(await m(), "sentinel_requests_in_flight") === 0, 3000, "in-flight back to 0");
    expect(value(await m(), "sentinel_websocket_connections")).toBe(0);
  });

  test("upstream target health follows active health checks", async () => {
    await waitFor(async () => value(await m(), "sentinel_upstream_target_healthy", { upstream: "checked", target: DEAD }) === 0, 5000, "dead target unhealthy");
    expect(value(await m(), "sentinel_upstream_target_healthy", { upstream: "checked", target: up.address })).toBe(1);
    up.healthy = false;
    try {
      await waitFor(async () => value(await m(), "sentinel_upstream_target_healthy", { upstream: "checked", target: up.address }) === 0, 5000, "target unhealthy");
      const report = (await (await fetch(`${proxy.url}/-/upstreams`)).json()) as Record<string, { targets: Array<{ address: string; healthy: boolean }> }>;
      expect(report.checked!.targets.find((t) => t.address === up.address)!.healthy).toBe(false);
    } finally {
      up.healthy = true;
    }
    await waitFor(async () => value(await m(), "sentinel_upstream_target_healthy", { upstream: "checked", target: up.address }) === 1, 5000, "target healthy again");
  });

  test("reload counters and the last-success timestamp move with reloads", async () => {
    const a = await m();
    await Bun.sleep(20);
    proxy.proc.kill("SIGHUP");
    await waitFor(async () => delta(a, await m(), "sentinel_config_reloads_total", { result: "success" }) === 1, 10_000, "reload success counted");
    const b = await m();
    expect(value(b, "sentinel_config_last_reload_success_timestamp_seconds")).toBeGreaterThan(value(a, "sentinel_config_last_reload_success_timestamp_seconds"));
    writeFileSync(proxy.configPath, config().replace('upstream "app" {', 'upstream "app" { bogus-key 1;'));
    proxy.proc.kill("SIGHUP");
    await waitFor(async () => delta(b, await m(), "sentinel_config_reloads_total", { result: "failure" }) === 1, 10_000, "reload failure counted");
    expect(value(await m(), "sentinel_config_last_reload_success_timestamp_seconds")).toBe(value(b, "sentinel_config_last_reload_success_timestamp_seconds"));
    writeFileSync(proxy.configPath, config());
  });

  test("label sets stay bounded under 10,000 distinct request paths (and odd methods)", async () => {
    const before = await m();
    const methods = ["GET", "POST", "PURGE", "DELETE", "PATCH"];
    const load = startLoad(
      32,
      (i) => ({
        url: i % 2 ? `${proxy.url}/app/item-${i}-${Math.random().toString(36).slice(2)}` : `${proxy.url}/zz-${i}/${Math.random().toString(36).slice(2)}`,
        init: { method: methods[i % methods.length], body: methods[i % methods.length] === "GET" ? undefined : "x" },
      }),
      (r) => (r.status === 200 || r.status === 404 ? undefined : `status ${r.status}`),
    );
    await waitFor(() => load.stats().ok + load.stats().failed >= 10_000, 60_000, "10,000 requests");
    const st = await load.stop();
    expect(st.failed).toBe(0);
    const after = await m();
    // Routes × methods × status classes, bounded by the config, not by traffic.
    const requests = series(after, "sentinel_requests_total");
    expect(requests.length).toBeLessThanOrEqual(10 * 10 * 6);
    expect(new Set(requests.map((x) => x.labels.method))).toEqual(new Set(["GET", "POST", "OTHER", "DELETE", "PATCH"]));
    expect(requests.every((x) => !/item-|zz-/.test(JSON.stringify(x.labels)))).toBe(true);
    expect(after.samples.length - before.samples.length).toBeLessThan(50);
    expect(after.text).not.toMatch(/item-\d|zz-\d/);
    expect(delta(before, after, "sentinel_requests_total", { route: "none" })).toBeGreaterThanOrEqual(5000);
    expect(delta(before, after, "sentinel_requests_total", { route: "app", method: "OTHER" })).toBeGreaterThan(0);
    console.log(`10k distinct paths: ${after.samples.length} samples (${requests.length} request series), ${st.rps.toFixed(0)} req/s`);
  }, 90_000);
});

/** LISTEN sockets on 127.0.0.1:`port`, from /proc/net/tcp (state 0A), whoever holds them. */
function listening(port: number): number {
  const hex = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  return readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .filter((l) => {
      const f = l.trim().split(/\s+/);
      return f[1] === hex && f[3] === "0A";
    }).length;
}

describe("metrics address in use", () => {
  const small = (metrics: string, listener = "127.0.0.1:0") => `system { graceful-shutdown-timeout-secs 1 }
listeners { listener "main" { address "${listener}" } }
upstreams { upstream "app" { target "${up.address}" } }
routes { route "all" { priority "low"; upstream "app" } }
observability { metrics { address "${metrics}" } }
`;
  const failedToStart = (p: ProxyProcess) => p.logs.map((l) => String(l.raw ?? "")).find((l) => l.startsWith("sentinel: failed to start: "));

  test("a second instance cannot bind it (no SO_REUSEPORT): it exits 1 naming the metrics listener; the first keeps every scrape", async () => {
    const first = await startProxy(small("127.0.0.1:0"));
    const second: ProxyProcess[] = [];
    try {
      const port = Number(new URL(first.metricsUrl!).port);
      second.push(await startProxy(small(`127.0.0.1:${port}`), { expectFail: true }));
      await waitFor(() => second[0]!.proc.exitCode !== null, 10_000, "the second instance to exit");
      expect(second[0]!.proc.exitCode).toBe(1);
      expect(failedToStart(second[0]!)).toMatch(new RegExp(`^sentinel: failed to start: metrics listener 127\\.0\\.0\\.1:${port}: .*in use`));
      expect(listening(port)).toBe(1);
      for (let i = 0; i < 10; i++) expect((await scrape(first.metricsUrl!)).samples.length).toBeGreaterThan(0);

      // A proxy listener clash says which listener, the same way.
      const proxyPort = Number(new URL(first.url).port);
      second.push(await startProxy(small("127.0.0.1:0", `127.0.0.1:${proxyPort}`), { expectFail: true }));
      await waitFor(() => second[1]!.proc.exitCode !== null, 10_000, "the third instance to exit");
      expect(second[1]!.proc.exitCode).toBe(1);
      expect(failedToStart(second[1]!)).toMatch(new RegExp(`^sentinel: failed to start: listener "main" 127\\.0\\.0\\.1:${proxyPort}: `));

      // A reload never rebinds the metrics listener (a restart-only change): an address in use
      // there is reported as pending a restart, and the running listener stays.
      writeFileSync(first.configPath, small(up.address));
      first.proc.kill("SIGHUP");
      const r = await first.waitForLog((l) => l.msg === "config reloaded");
      expect(r.restart_required).toEqual(["observability.metrics"]);
      expect(value(await scrape(first.metricsUrl!), "sentinel_config_restart_pending")).toBe(1);
      expect(first.proc.exitCode).toBeNull();
    } finally {
      await Promise.all([first.stop("SIGKILL"), ...second.map((p) => p.stop("SIGKILL"))]);
    }
  }, 30_000);
});

describe("built-in handlers", () => {
  test("health, metrics, upstreams, config (redacted)", async () => {
    const h = await fetch(`${proxy.url}/-/health`);
    expect(h.status).toBe(200);
    expect(await h.json()).toEqual({ status: "ok" });

    const mm = await fetch(`${proxy.url}/-/metrics`);
    expect(mm.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(await mm.text()).toContain("sentinel_requests_total");

    const u = (await (await fetch(`${proxy.url}/-/upstreams`)).json()) as Record<string, { load_balancing: string; targets: Array<Record<string, unknown>> }>;
    expect(Object.keys(u).sort()).toEqual(["app", "checked", "flaky"]);
    expect(u.flaky!.targets.map((t) => t.address)).toEqual([up.address, DEAD]);
    expect(u.app!.targets[0]).toMatchObject({ address: up.address, healthy: true, ejected: false });

    const c = await fetch(`${proxy.url}/-/config`);
    expect(c.headers.get("content-type")).toBe("application/json");
    const text = await c.text();
    const cfg = JSON.parse(text);
    expect(cfg.routes.map((r: { id: string }) => r.id)).toContain("app");
    expect(text).not.toContain("AGENT-SECRET-1");
    expect(text).not.toContain("HEADER-SECRET-2");
    expect(text).toContain("[redacted]");
  });

  test("status: 200 when ready; 503 when a fail-closed agent that every route needs is down", async () => {
    expect((await fetch(`${proxy.url}/-/status`)).status).toBe(200);
    // "guard" protects one route only: losing it does not make the proxy unready.
    await agent.kill();
    await waitFor(async () => (await fetch(`${proxy.url}/guarded/x`)).status === 503, 5000, "agent down");
    expect((await fetch(`${proxy.url}/-/status`)).status).toBe(200);
    await agent.restart();
    await waitFor(async () => (await fetch(`${proxy.url}/guarded/x`)).status === 200, 10_000, "agent back");

    // A proxy whose every route needs "guard" (fail-closed) is unready without it.
    const only = await startProxy(`
system { graceful-shutdown-timeout-secs 3 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "app" { target "${up.address}" } }
agents { agent "guard" type="waf" { ${agentTransportKdl(agent)}; timeout-ms 2000; failure-mode "closed"; circuit-breaker { failure-threshold 1000; timeout-seconds 1 }; health-check { interval-ms 200; healthy-threshold 1 } } }
filters { filter "guard" { type "agent"; agent "guard" } }
routes {
  route "status" { matches { path "/-/status" }; builtin-handler "status" }
  route "a" { matches { path-prefix "/a" }; upstream "app"; filters "guard" }
  route "b" { priority "low"; upstream "app"; filters "guard" }
}
observability { metrics { address "127.0.0.1:0" } }
`);
    try {
      await waitFor(async () => (await fetch(`${only.url}/-/status`)).status === 200, 10_000, "ready");
      expect(value(await scrape(only.metricsUrl!), "sentinel_ready")).toBe(1);
      await agent.kill();
      const r = await waitFor(async () => {
        const res = await fetch(`${only.url}/-/status`);
        return res.status === 503 ? res : undefined;
      }, 5000, "not ready");
      expect(await r.json()).toEqual({ status: "not_ready", reason: "agent guard unavailable" });
      expect(value(await scrape(only.metricsUrl!), "sentinel_ready")).toBe(0);
      await agent.restart();
      await waitFor(async () => (await fetch(`${only.url}/-/status`)).status === 200, 10_000, "ready again");

      // Draining: readiness turns 0 at SIGTERM (the listeners stop accepting at the same time,
      // so it is read on the metrics listener, which stays up until the end).
      const slow = fetch(`${only.url}/a/slow?ms=1500`).then((x) => x.status);
      await Bun.sleep(200);
      only.proc.kill("SIGTERM");
      await only.waitForLog((l) => l.msg === "shutting down: draining in-flight requests");
      expect(value(await scrape(only.metricsUrl!), "sentinel_ready")).toBe(0);
      expect(await slow).toBe(200);
      expect(await only.proc.exited).toBe(0);
    } finally {
      await only.stop("SIGKILL");
    }
  }, 40_000);
});
