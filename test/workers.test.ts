// system { worker-threads 2 }: a supervisor and two reusePort workers, through the compiled binary.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { startProxy, waitFor, type ProxyProcess } from "./helpers/proxy.ts";

/** Sum of sentinel_requests_total over the series of route "all" in a scrape. */
function requestsOfRouteAll(text: string): number {
  let n = 0;
  for (const m of text.matchAll(/^sentinel_requests_total\{[^}]*route="all"[^}]*\} (\d+)/gm)) n += Number(m[1]);
  return n;
}

describe("worker processes", () => {
  const upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response(`pid ${process.pid}`) });
  let proxy: ProxyProcess;
  let pidFile: string;

  beforeAll(async () => {
    proxy = await startProxy(
      `
system { worker-threads 2; pid-file "sentinel.pid"; graceful-shutdown-timeout-secs 5 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "127.0.0.1:${upstream.port}" } }
routes { route "all" { matches { path-prefix "/" }; upstream "u" } }
observability { metrics { enabled #true; address "127.0.0.1:0" } }
`,
    );
    pidFile = join(proxy.dir, "sentinel.pid");
    // Both workers report; they share the one port the supervisor chose for "127.0.0.1:0".
    await proxy.waitForLog((l) => l.msg === "sentinel started" && l.pid !== proxy.logs.find((x) => x.msg === "sentinel started")!.pid);
  });
  afterAll(async () => {
    await proxy?.stop("SIGKILL");
    upstream.stop(true);
  });

  const started = () => proxy.logs.filter((l) => l.msg === "sentinel started");
  const supervisorMetricsUrl = () => String(proxy.logs.find((l) => l.msg === "sentinel supervisor started")!.metrics);

  test("a supervisor owns the pid-file and two workers serve the same port", async () => {
    const sup = proxy.logs.find((l) => l.msg === "sentinel supervisor started")!;
    expect(sup.workers).toBe(2);
    expect(readFileSync(pidFile, "utf8").trim()).toBe(String(proxy.proc.pid));
    const s = started();
    expect(new Set(s.map((l) => l.pid)).size).toBe(2);
    expect(s.map((l) => l.worker).sort()).toEqual([1, 2]); // every worker line names its worker
    expect(sup.worker).toBeUndefined();
    expect(new Set(s.map((l) => JSON.stringify(l.listeners))).size).toBe(1);
    // The supervisor binds the metrics listener; the workers do not.
    expect(s.filter((l) => l.metrics !== null).length).toBe(0);
    expect(sup.metrics).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const rs = await Promise.all(Array.from({ length: 40 }, () => fetch(proxy.url).then((r) => r.status)));
    expect(rs.every((st) => st === 200)).toBe(true);
  });

  test("a scrape of the supervisor's metrics listener adds up every worker", async () => {
    const url = supervisorMetricsUrl();
    const total = async () => {
      const text = await (await fetch(url)).text();
      return { n: requestsOfRouteAll(text), text };
    };
    const before = (await total()).n;
    // New connections each, so that the kernel spreads them over both workers (reusePort hashes
    // the client port): the total is right only if every worker's count is in the scrape.
    for (let i = 0; i < 60; i++) {
      const r = await fetch(proxy.url, { headers: { connection: "close" } });
      expect(r.status).toBe(200);
      await r.text();
    }
    await waitFor(async () => (await total()).n === before + 60, 5000, "60 more requests counted");
    const { text } = await total();
    expect(text).toContain("sentinel_metrics_workers_missing 0");
    // A gauge aggregated with min: both workers are ready.
    expect(text).toMatch(/^sentinel_ready 1$/m);
  });

  test("SIGHUP reloads every worker; an unchanged file is no pending restart", async () => {
    const before = proxy.logs.filter((l) => l.msg === "config reloaded").length;
    proxy.proc.kill("SIGHUP");
    await waitFor(() => proxy.logs.filter((l) => l.msg === "config reloaded").length >= before + 2, 10_000, "two reloads");
    // The workers' own configs are adapted (pid-file, metrics listener, ports): they compare the
    // file with what the supervisor started with, not with those.
    expect(proxy.logs.filter((l) => l.msg === "config changes need a restart and were not applied")).toEqual([]);
    const url = supervisorMetricsUrl();
    expect(await (await fetch(url)).text()).toMatch(/^sentinel_config_restart_pending 0$/m);
  });

  test("a worker that dies is restarted; the port keeps answering", async () => {
    const victim = Number(started()[0]!.pid);
    process.kill(victim, "SIGKILL");
    await proxy.waitForLog((l) => l.msg === "worker exited; restarting");
    await waitFor(() => started().length >= 3, 10_000, "a replacement worker");
    expect((await fetch(proxy.url)).status).toBe(200);
    // The replacement serves its metrics on its predecessor's socket path.
    const url = supervisorMetricsUrl();
    await waitFor(async () => (await (await fetch(url)).text()).includes("sentinel_metrics_workers_missing 0"), 5000, "both workers in the scrape again");
  });

  test("aggregated counters and histograms never go down when a worker restarts (a dead worker's last scraped values are kept)", async () => {
    const url = supervisorMetricsUrl();
    const scrape = async () => {
      const text = await (await fetch(url)).text();
      const requests = requestsOfRouteAll(text);
      const durations = Number(/^sentinel_request_duration_seconds_count\{route="all"\} (\d+)/m.exec(text)?.[1] ?? 0);
      return { requests, durations, text };
    };
    await waitFor(async () => (await scrape()).text.includes("sentinel_metrics_workers_missing 0"), 5000, "both workers in the scrape");
    const before = await scrape();
    // The earlier tests' 100 requests: the previous test's kill lost none of them.
    expect(before.requests).toBeGreaterThanOrEqual(100);
    expect(before.durations).toBe(before.requests);
    // The other original worker (the previous test replaced the first): after this, every count
    // in `before` was made by a process that is gone, and each worker served some of them.
    const victim = Number(started()[1]!.pid);
    process.kill(victim, "SIGKILL");
    let lowest = { requests: Infinity, durations: Infinity };
    await waitFor(
      async () => {
        const now = await scrape();
        lowest = { requests: Math.min(lowest.requests, now.requests), durations: Math.min(lowest.durations, now.durations) };
        return started().length >= 4 && now.text.includes("sentinel_metrics_workers_missing 0");
      },
      10_000,
      "the second replacement in the scrape",
    );
    expect(lowest).toEqual({ requests: before.requests, durations: before.durations });
    // New requests add to what the dead workers left.
    for (let i = 0; i < 10; i++) await (await fetch(proxy.url, { headers: { connection: "close" } })).text();
    await waitFor(async () => (await scrape()).requests === before.requests + 10, 5000, "10 more requests counted");
  });

  test("process metrics in the aggregate: the supervisor's start time, the smallest fd limit", async () => {
    const url = supervisorMetricsUrl();
    const text = await (await fetch(url)).text();
    const start = Number(/^sentinel_process_start_time_seconds (\d+)/m.exec(text)?.[1]);
    // The supervisor started before its workers, the earliest of which is still up.
    const bootTicks = Number(readFileSync(`/proc/${proxy.proc.pid}/stat`, "utf8").split(") ")[1]!.split(" ")[19]);
    const btime = Number(/^btime (\d+)/m.exec(readFileSync("/proc/stat", "utf8"))![1]);
    expect(Math.abs(start - (btime + bootTicks / 100))).toBeLessThanOrEqual(2);
    // Every worker inherits the supervisor's limit: the aggregate is that limit, not N times it.
    const limit = Number(/^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${proxy.proc.pid}/limits`, "utf8"))![1]);
    expect(text).toMatch(new RegExp(`^sentinel_process_max_fds ${limit}$`, "m"));
  });

  test("SIGTERM drains the workers, removes the pid-file and exits 0", async () => {
    expect(await proxy.stop("SIGTERM")).toBe(0);
    expect(existsSync(pidFile)).toBe(false);
    expect(proxy.logs.some((l) => l.msg === "sentinel supervisor stopped")).toBe(true);
  });
});

describe("worker-threads 0", () => {
  test("runs one process and says so at startup (on a machine with more than one CPU)", async () => {
    const { availableParallelism } = await import("node:os");
    const proxy = await startProxy(`
system { worker-threads 0 }
listeners { listener "main" { address "127.0.0.1:0" } }
routes { route "s" { matches { path-prefix "/" }; builtin-handler "status" } }
`);
    try {
      const notice = proxy.logs.filter((l) => String(l.msg).startsWith("worker-threads 0 runs one process"));
      expect(notice.length).toBe(availableParallelism() > 1 ? 1 : 0);
      expect(proxy.logs.filter((l) => l.msg === "sentinel supervisor started")).toEqual([]);
      expect(proxy.logs.filter((l) => l.msg === "sentinel started").map((l) => l.pid)).toEqual([proxy.proc.pid]);
    } finally {
      await proxy.stop();
    }
  });
});

describe("worker processes share an agent's max-concurrent-calls", () => {
  test("two workers never put more calls in flight on an agent than its max-concurrent-calls; workers restarted after the file was edited keep the supervisor's listeners and system block", async () => {
    const { serveUds } = await import("../sdk/uds-server.ts");
    const { allow } = await import("../sdk/reply.ts");
    const { tempDir } = await import("./helpers/proxy.ts");
    const sock = join(tempDir(), "agent.sock");
    let inFlight = 0;
    let most = 0;
    let calls = 0;
    const agent = await serveUds(
      sock,
      {
        info: { agentId: "slow", name: "slow", version: "1" },
        onRequestHeaders: async () => {
          calls++;
          most = Math.max(most, ++inFlight);
          await Bun.sleep(300);
          inFlight--;
          return allow();
        },
      },
      { log: () => {} },
    );
    const upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("ok") });
    const proxy = await startProxy(`
system { worker-threads 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "127.0.0.1:${upstream.port}" } }
agents { agent "slow" { unix-socket "${sock}"; events "request_headers"; timeout-ms 3000; failure-mode "closed"; max-concurrent-calls 5 } }
filters { filter "slow" { type "agent"; agent "slow" } }
routes { route "all" { matches { path-prefix "/" }; upstream "u"; filters "slow" } }
`);
    try {
      await waitFor(() => proxy.logs.filter((l) => l.msg === "agent connected").length >= 2, 10_000, "both workers connected to the agent");
      // 20 requests at once, each on its own connection: the kernel spreads them over both workers.
      const statuses = await Promise.all(Array.from({ length: 20 }, () => fetch(proxy.url, { headers: { connection: "close" } }).then((r) => r.status)));
      expect(most).toBeLessThanOrEqual(5);
      expect(most).toBeGreaterThanOrEqual(2);
      expect(statuses.filter((s) => s === 200).length).toBe(calls);
      expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
      expect(statuses.filter((s) => s === 503).length).toBeGreaterThan(0);
      // 5 over 2 workers: 2 each, said once.
      const sharedLogs = () => proxy.logs.filter((l) => l.msg === "agent max-concurrent-calls shared among worker processes, rounded down");
      expect(sharedLogs().length).toBe(1);
      expect(sharedLogs()[0]!.per_worker).toBe(2);
      // Workers restarted after the file changed keep the supervisor's listeners and system block
      // (restart-only): same port, reusePort beside each other, the share by 2 workers.
      const { writeFileSync, readFileSync } = await import("node:fs");
      const file = join(proxy.dir, "sentinel.kdl");
      const spare = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
      const elsewhere = spare.port;
      spare.stop(true);
      writeFileSync(file, readFileSync(file, "utf8").replace("worker-threads 2", "worker-threads 1").replace('"127.0.0.1:0"', `"127.0.0.1:${elsewhere}"`));
      const workers = () => proxy.logs.filter((l) => l.msg === "sentinel started").map((l) => Number(l.pid));
      for (const pid of workers()) process.kill(pid, "SIGKILL");
      await waitFor(() => workers().length >= 4, 10_000, "both workers restarted");
      await waitFor(() => sharedLogs().length >= 2, 5_000, "the restarted first worker shares by 2 again");
      expect(sharedLogs()[1]!.per_worker).toBe(2);
      expect(proxy.logs.some((l) => l.msg === "worker keeps failing at start; stopping")).toBe(false);
      expect((await fetch(proxy.url)).status).toBe(200);
      expect(await fetch(`http://127.0.0.1:${elsewhere}/`).then((r) => r.status, () => "refused")).toBe("refused");
      // An agent a reload replaces is shared (and said) the same way.
      writeFileSync(file, readFileSync(file, "utf8").replace("timeout-ms 3000", "timeout-ms 2500"));
      proxy.proc.kill("SIGHUP");
      await waitFor(() => sharedLogs().length >= 3, 10_000, "the replaced agent's share said again");
      expect(sharedLogs()[2]!.per_worker).toBe(2);
    } finally {
      await proxy.stop();
      upstream.stop(true);
      await agent.close();
    }
  }, 30_000);
});

describe("a supervisor killed outright", () => {
  test("its workers notice, drain and exit instead of serving on unsupervised", async () => {
    const upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("ok") });
    const proxy = await startProxy(`
system { worker-threads 2; graceful-shutdown-timeout-secs 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "127.0.0.1:${upstream.port}" } }
routes { route "all" { matches { path-prefix "/" }; upstream "u" } }
`);
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    try {
      await waitFor(() => proxy.logs.filter((l) => l.msg === "sentinel started").length >= 2, 10_000, "both workers started");
      const workers = proxy.logs.filter((l) => l.msg === "sentinel started").map((l) => Number(l.pid));
      expect((await fetch(proxy.url)).status).toBe(200);
      proxy.proc.kill("SIGKILL");
      await waitFor(() => workers.every((pid) => !alive(pid)), 10_000, "both workers gone");
      expect(proxy.logs.filter((l) => l.msg === "supervisor gone; this worker drains and exits").length).toBe(2);
      expect(await fetch(proxy.url).then((r) => r.status, () => "refused")).toBe("refused");
    } finally {
      for (const pid of proxy.logs.filter((l) => l.msg === "sentinel started").map((l) => Number(l.pid))) if (alive(pid)) process.kill(pid, "SIGKILL");
      upstream.stop(true);
    }
  }, 30_000);
});

describe("a config file made invalid on disk", () => {
  test("a worker that then keeps failing at start is retried with capped backoff while the other serves, and starts once the file is valid", async () => {
    const { writeFileSync } = await import("node:fs");
    const upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("ok") });
    const proxy = await startProxy(`
system { worker-threads 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "127.0.0.1:${upstream.port}" } }
routes { route "all" { matches { path-prefix "/" }; upstream "u" } }
`);
    const started = () => proxy.logs.filter((l) => l.msg === "sentinel started");
    const retries = () => proxy.logs.filter((l) => l.msg === "worker keeps failing at start; retrying while the other workers serve");
    try {
      await waitFor(() => started().length >= 2, 10_000, "both workers started");
      const good = readFileSync(proxy.configPath, "utf8");
      writeFileSync(proxy.configPath, good + "\nroutes {\n");
      proxy.proc.kill("SIGHUP");
      await waitFor(() => proxy.logs.filter((l) => l.msg === "config reload failed; the running configuration stays in force").length >= 2, 10_000, "both workers reject the reload");
      // Killed young, like the other worker (both well under 2 s old): a worker just started
      // counts as running, so the rule below does not hinge on the other one's age.
      process.kill(Number(started()[0]!.pid), "SIGKILL");
      // Its replacements read the invalid file and exit at once, again and again (5 quick failures
      // used to stop the healthy worker too and exit 1: the port went dark).
      await waitFor(() => retries().length >= 2 || proxy.proc.exitCode !== null, 20_000, "two retries past the fifth quick failure");
      expect(proxy.proc.exitCode).toBeNull();
      expect(proxy.logs.some((l) => l.msg === "worker keeps failing at start; stopping")).toBe(false);
      expect(retries().every((l) => l.level === "error" && Number(l.restart_in_ms) <= 5000)).toBe(true);
      expect((await fetch(proxy.url)).status).toBe(200);
      // Fixed on disk: the next retry starts a worker (the backoff is capped at 5 s).
      writeFileSync(proxy.configPath, good);
      await waitFor(() => started().length >= 3, 10_000, "a replacement worker once the file is valid");
      expect((await fetch(proxy.url)).status).toBe(200);
      expect(await proxy.stop("SIGTERM")).toBe(0);
    } finally {
      await proxy.stop("SIGKILL");
      upstream.stop(true);
    }
  }, 60_000);
});

describe("a second instance on the same port", () => {
  test("is refused at startup in worker mode, as in single-process mode, instead of sharing the port through reusePort", async () => {
    const upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("first") });
    const spare = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = spare.port;
    spare.stop(true);
    const config = `
system { worker-threads 2 }
listeners { listener "main" { address "127.0.0.1:${port}" } }
upstreams { upstream "u" { target "127.0.0.1:${upstream.port}" } }
routes { route "all" { matches { path-prefix "/" }; upstream "u" } }
`;
    const first = await startProxy(config);
    let second: ProxyProcess | undefined;
    try {
      await waitFor(() => first.logs.filter((l) => l.msg === "sentinel started").length >= 2, 10_000, "both workers of the first instance");
      second = await startProxy(config, { expectFail: true });
      const code = await Promise.race([second.proc.exited, Bun.sleep(10_000).then(() => "still running")]);
      expect(code).toBe(1);
      const err = second.logs.map((l) => String(l.raw ?? l.msg)).find((m) => m.includes("failed to start"));
      expect(err).toContain(`127.0.0.1:${port}`);
      expect(second.logs.some((l) => l.msg === "sentinel started")).toBe(false);
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe("first");
    } finally {
      await second?.stop("SIGKILL");
      await first.stop();
      upstream.stop(true);
    }
  }, 30_000);

  test("a second supervisor on the same metrics address is refused at startup (no SO_REUSEPORT on the metrics listener)", async () => {
    const upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("first") });
    const spare = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const metricsPort = spare.port;
    spare.stop(true);
    const config = (proxyPort: number) => `
system { worker-threads 2 }
listeners { listener "main" { address "127.0.0.1:${proxyPort}" } }
upstreams { upstream "u" { target "127.0.0.1:${upstream.port}" } }
routes { route "all" { matches { path-prefix "/" }; upstream "u" } }
observability { metrics { address "127.0.0.1:${metricsPort}" } }
`;
    const first = await startProxy(config(0));
    let second: ProxyProcess | undefined;
    try {
      await waitFor(() => first.logs.filter((l) => l.msg === "sentinel started").length >= 2, 10_000, "both workers of the first instance");
      second = await startProxy(config(0), { expectFail: true });
      const code = await Promise.race([second.proc.exited, Bun.sleep(10_000).then(() => "still running")]);
      expect(code).toBe(1);
      const err = second.logs.map((l) => String(l.raw ?? l.msg)).find((m) => m.includes("failed to start"));
      expect(err).toContain(`metrics listener 127.0.0.1:${metricsPort}`);
      expect(second.logs.some((l) => l.msg === "sentinel started")).toBe(false);
      for (let i = 0; i < 5; i++) expect((await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).status).toBe(200);
    } finally {
      await second?.stop("SIGKILL");
      await first.stop();
      upstream.stop(true);
    }
  }, 30_000);
});
