// system { worker-threads 2 }: a supervisor and two reusePort workers, through the compiled binary.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { startProxy, waitFor, type ProxyProcess } from "./helpers/proxy.ts";

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

  test("a supervisor owns the pid-file and two workers serve the same port", async () => {
    const sup = proxy.logs.find((l) => l.msg === "sentinel supervisor started")!;
    expect(sup.workers).toBe(2);
    expect(readFileSync(pidFile, "utf8").trim()).toBe(String(proxy.proc.pid));
    const s = started();
    expect(new Set(s.map((l) => l.pid)).size).toBe(2);
    expect(new Set(s.map((l) => JSON.stringify(l.listeners))).size).toBe(1);
    // The supervisor binds the metrics listener; the workers do not.
    expect(s.filter((l) => l.metrics !== null).length).toBe(0);
    expect(sup.metrics).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const rs = await Promise.all(Array.from({ length: 40 }, () => fetch(proxy.url).then((r) => r.status)));
    expect(rs.every((st) => st === 200)).toBe(true);
  });

  test("a scrape of the supervisor's metrics listener adds up every worker", async () => {
    const url = String(proxy.logs.find((l) => l.msg === "sentinel supervisor started")!.metrics);
    const total = async () => {
      const text = await (await fetch(url)).text();
      let n = 0;
      for (const m of text.matchAll(/^sentinel_requests_total\{[^}]*route="all"[^}]*\} (\d+)/gm)) n += Number(m[1]);
      return { n, text };
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
    const url = String(proxy.logs.find((l) => l.msg === "sentinel supervisor started")!.metrics);
    expect(await (await fetch(url)).text()).toMatch(/^sentinel_config_restart_pending 0$/m);
  });

  test("a worker that dies is restarted; the port keeps answering", async () => {
    const victim = Number(started()[0]!.pid);
    process.kill(victim, "SIGKILL");
    await proxy.waitForLog((l) => l.msg === "worker exited; restarting");
    await waitFor(() => started().length >= 3, 10_000, "a replacement worker");
    expect((await fetch(proxy.url)).status).toBe(200);
    // The replacement serves its metrics on its predecessor's socket path.
    const url = String(proxy.logs.find((l) => l.msg === "sentinel supervisor started")!.metrics);
    await waitFor(async () => (await (await fetch(url)).text()).includes("sentinel_metrics_workers_missing 0"), 5000, "both workers in the scrape again");
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
