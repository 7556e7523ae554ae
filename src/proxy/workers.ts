// Multi-process mode: `system { worker-threads N }` with N ≥ 2.
//
// The process started by the user becomes a supervisor: it spawns N workers (the same
// executable with the same arguments, plus SENTINEL_WORKER=i) and serves nothing itself. Each
// worker runs the whole proxy and binds the listeners with reusePort, so the kernel spreads new
// connections over the workers. The supervisor
//   - forwards SIGTERM/SIGINT (graceful drain) and SIGHUP (reload: every worker re-reads the
//     file) to every worker, and exits once they have all exited (0, or 1 if one failed);
//   - restarts a worker that exits unexpectedly (backoff 100 ms doubling to 5 s). A worker that
//     cannot stay up 2 s five times in a row (e.g. the file on disk was made invalid: a restarted
//     worker reads it) is retried at the capped backoff for as long as another worker runs: a
//     bad file must not take down a serving proxy. Only when no other runs does it give up
//     (stopping the others, exit 1), e.g. when every worker fails at startup;
//   - checks before spawning that each fixed-port listener's address is free (bound once
//     without reusePort): reusePort would otherwise let a second instance share the port;
//   - owns the pid-file; listeners configured with port 0 get one free port chosen up front,
//     shared by all workers.
// Metrics: the supervisor binds the configured metrics listener and answers a scrape with the
// aggregate of every worker's registry (src/observability/aggregate.ts), fetched from a Unix
// socket each worker serves in a private directory (0700) the supervisor creates. The counters
// and histograms last scraped from a worker that exited stay in the aggregate, so that they
// never go down when a worker restarts.
// Per worker, not shared: circuit breakers, health state, balancing state and the agent
// connections (every worker connects to every agent). An agent's max-concurrent-calls is shared:
// each worker admits its part (shareWorkerLimits).
//
// `worker-threads 0` ("one per CPU" in Zentinel, with shared state) and 1 keep the single-process
// proxy: our workers are processes whose state is not shared, which every Zentinel sample config
// written with `worker-threads 0` did not ask for (docs/operations.md, "Worker processes").
import { mkdtempSync, rmSync, writeFileSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import type { SentinelConfig } from "../config/types.ts";
import { log } from "../observability/log.ts";
import { aggregateMetrics, retainCounters, startTimeMetric, type MetricJSON } from "../observability/aggregate.ts";
import { shareAgentConcurrency } from "../agents/agent.ts";
import { perProcessConnections, shareUpstreamConnections } from "../upstreams/pool.ts";

const ENV_WORKER = "SENTINEL_WORKER";
const ENV_PORTS = "SENTINEL_WORKER_PORTS";
const ENV_METRICS_DIR = "SENTINEL_WORKER_METRICS_DIR";
/**
 * The restart-only part of the supervisor's config (listeners, system) as JSON: a worker restarted
 * after the file was edited must still run what the supervisor started with (as nginx's master
 * hands its own config to a new worker), not listen elsewhere or with other process settings.
 */
const ENV_FIXED = "SENTINEL_WORKER_FIXED_CONFIG";

/** The Unix socket on which worker `index` serves its registry as JSON to the supervisor. */
function metricsSocketPath(dir: string, index: number): string {
  return join(dir, `w${index}.sock`);
}

/** In a worker whose supervisor aggregates metrics: the socket to serve them on, else null. */
export function workerMetricsSocket(): string | null {
  const dir = process.env[ENV_METRICS_DIR];
  return dir && workerIndex() > 0 ? metricsSocketPath(dir, workerIndex()) : null;
}

export type Role = "single" | "supervisor" | "worker";

/** Worker processes the config asks for (1 = no supervisor). */
export function workerCount(config: SentinelConfig): number {
  const n = config.system.workerThreads;
  return n >= 2 ? Math.floor(n) : 1;
}

/** What this process is for this config. */
export function workerRole(config: SentinelConfig): Role {
  if (process.env[ENV_WORKER]) return "worker";
  return workerCount(config) > 1 ? "supervisor" : "single";
}

/** This worker's number (1-based), or 0 outside multi-process mode. */
export function workerIndex(): number {
  return Number(process.env[ENV_WORKER] ?? 0) || 0;
}

/**
 * In a worker: adapt the config before the proxy starts. Listeners and `system` (restart-only)
 * are the supervisor's, whatever the file says now (ENV_FIXED); the pid-file is the supervisor's,
 * the metrics listener is the supervisor's (each worker serves its registry on a Unix socket
 * instead), and port-0 listeners use the port the supervisor chose.
 */
/** The supervisor's restart-only settings, as a worker's reload compares against (null outside a worker). */
export function restartBaseline(): RestartOnly | null {
  const fixed = process.env[ENV_FIXED];
  if (!fixed) return null;
  const f = JSON.parse(fixed) as FixedConfig;
  return { listeners: f.listeners, system: f.system, observability: { metrics: f.metrics } };
}

/** What only a restart changes: listeners, the system block, the metrics listener. */
export type RestartOnly = Pick<SentinelConfig, "listeners" | "system"> & { observability: Pick<SentinelConfig["observability"], "metrics"> };
type FixedConfig = Pick<SentinelConfig, "listeners" | "system"> & { metrics: SentinelConfig["observability"]["metrics"] };

export function adaptWorkerConfig(config: SentinelConfig): void {
  const fixed = process.env[ENV_FIXED];
  if (fixed) {
    const f = JSON.parse(fixed) as FixedConfig;
    config.listeners = f.listeners;
    config.system = f.system;
  }
  config.system.pidFile = undefined;
  // The supervisor serves the metrics listener (aggregated); workers serve theirs on a socket.
  config.observability.metrics = undefined;
  const ports = (process.env[ENV_PORTS] ?? "").split(",").filter(Boolean);
  for (const entry of ports) {
    const [i, port] = entry.split("=").map(Number);
    const l = config.listeners[i!];
    if (l && l.port === 0 && port! > 0) {
      l.port = port!;
      l.address = l.address.replace(/:0$/, `:${port}`);
    }
  }
}

/**
 * In a worker: limits that hold per agent, not per process, are shared among the workers.
 * max-concurrent-calls: each worker admits floor(limit / N) calls (at least 1); the first worker
 * says how each agent's limit is split when it is not exact (agent.ts).
 */
export function shareWorkerLimits(config: SentinelConfig): void {
  const n = workerCount(config); // the supervisor's N (adaptWorkerConfig)
  shareAgentConcurrency(n, workerIndex() === 1);
  // connection-pool max-connections is per target too: floor(N / workers) each, at least 1.
  shareUpstreamConnections(n);
  if (workerIndex() !== 1) return;
  for (const up of config.upstreams.values()) {
    const max = up.pool.maxConnections;
    if (max <= 0 || max % n === 0) continue;
    const fields = { upstream: up.id, max_connections: max, workers: n, per_worker: perProcessConnections(max) };
    if (max < n) log("warn", "upstream max-connections is below the number of worker processes: each worker holds 1 per target", fields);
    else log("info", "upstream max-connections shared among worker processes, rounded down", fields);
  }
}

/** How often a worker checks that its supervisor is still its parent. */
const SUPERVISOR_CHECK_MS = 1_000;

/**
 * In a worker: call `onGone` once if the supervisor dies without stopping it (SIGKILL, a crash):
 * the worker is then re-parented, and it must not keep serving on its own, unsupervised, with
 * the port still bound.
 */
export function watchSupervisor(onGone: () => void): void {
  const supervisor = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === supervisor) return;
    clearInterval(timer);
    log("warn", "supervisor gone; this worker drains and exits", { supervisor_pid: supervisor, worker: workerIndex() });
    onGone();
  }, SUPERVISOR_CHECK_MS);
  (timer as { unref?: () => void }).unref?.();
}

/** The command that starts this same program again (compiled binary or `bun file.ts`). */
function selfCommand(): string[] {
  const a1 = process.argv[1] ?? "";
  // A compiled executable reports its embedded entry as argv[1] (/$bunfs/root/…).
  const args = a1.startsWith("/$bunfs/") || a1.startsWith("B:/~BUN/") ? process.argv.slice(2) : process.argv.slice(1);
  return [process.execPath, ...args];
}

/** Pick a port for every listener configured with port 0 (bound and released at once). */
function choosePorts(config: SentinelConfig): string {
  const out: string[] = [];
  config.listeners.forEach((l, i) => {
    if (l.port !== 0) return;
    const probe = Bun.listen({ hostname: l.host, port: 0, socket: { data() {} } });
    out.push(`${i}=${probe.port}`);
    probe.stop(true);
  });
  return out.join(",");
}

/**
 * Before spawning: every listener with a fixed port must be free. The workers bind with
 * reusePort, which would let them share the port with another Sentinel's workers (traffic split
 * between two proxies); one bind without it fails as single-process mode does. Exits 1 if taken.
 */
function checkAddressesFree(config: SentinelConfig): void {
  for (const l of config.listeners) {
    if (l.port === 0) continue; // choosePorts picks a free one
    try {
      Bun.listen({ hostname: l.host, port: l.port, socket: { data() {} } }).stop(true);
    } catch (err) {
      const reason = String((err as Error)?.message ?? err);
      process.stderr.write(`sentinel: failed to start: listener "${l.id}" cannot bind ${l.address} (${reason}). Is port ${l.port} in use?\n`);
      process.exit(1);
    }
  }
}

/** A worker that exits before it has been up this long failed at start. */
const STARTED_MS = 2_000;
/** Quick failures in a row after which a worker "keeps failing at start". */
const QUICK_FAILURES = 5;
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 5_000;

interface Slot {
  index: number;
  proc: Subprocess | null;
  startedAt: number;
  quickFailures: number;
  backoffMs: number;
}

/** Run as the supervisor of `workerCount(config)` workers. Never returns control (exits itself). */
export function superviseWorkers(config: SentinelConfig): void {
  const n = workerCount(config);
  const cmd = selfCommand();
  checkAddressesFree(config);
  const ports = choosePorts(config);
  const fixedConfig = JSON.stringify({ listeners: config.listeners, system: config.system, metrics: config.observability.metrics });
  const pidFile = config.system.pidFile;
  let stopping = false;
  let failed = false;
  const slots: Slot[] = Array.from({ length: n }, (_, i) => ({ index: i + 1, proc: null, startedAt: 0, quickFailures: 0, backoffMs: BACKOFF_FIRST_MS }));
  const metrics = serveAggregatedMetrics(config, slots); // exits 1 if its address is taken
  if (pidFile) writeFileSync(pidFile, `${process.pid}\n`);

  const finish = () => {
    if (slots.some((s) => s.proc !== null)) return;
    metrics?.close();
    if (pidFile) {
      try {
        unlinkSync(pidFile);
      } catch {
        /* already gone */
      }
    }
    log("info", "sentinel supervisor stopped", { workers: n });
    process.exit(failed ? 1 : 0);
  };

  const signalAll = (sig: NodeJS.Signals) => {
    for (const s of slots) {
      try {
        s.proc?.kill(sig);
      } catch {
        /* exited */
      }
    }
  };

  const stop = (sig: NodeJS.Signals) => {
    if (!stopping) log("info", "signal received; stopping workers", { signal: sig, workers: n });
    stopping = true;
    signalAll(sig);
    finish();
  };

  /**
   * Whether a worker other than `s` is running. One that was just restarted counts too: it is
   * most likely healthy, and if it is not, it fails within its first attempts and the next
   * quick failure of either one finds no other running (they fail far shorter than they wait).
   */
  const othersRunning = (s: Slot) => slots.some((o) => o !== s && o.proc !== null);

  const spawn = (s: Slot) => {
    s.startedAt = performance.now();
    const proc = Bun.spawn(cmd, {
      env: { ...process.env, [ENV_WORKER]: String(s.index), [ENV_FIXED]: fixedConfig, [ENV_PORTS]: ports, ...(metrics ? { [ENV_METRICS_DIR]: metrics.dir } : {}) },
      stdin: "ignore",
      stdout: "inherit",
      stderr: "inherit",
    });
    s.proc = proc;
    void proc.exited.then((code) => {
      s.proc = null;
      metrics?.retire(proc);
      if (stopping) {
        if (code !== 0) failed = true;
        return finish();
      }
      const upMs = performance.now() - s.startedAt;
      s.quickFailures = upMs < STARTED_MS ? s.quickFailures + 1 : 0;
      if (upMs >= STARTED_MS) s.backoffMs = BACKOFF_FIRST_MS;
      const fields = { worker: s.index, exit_code: code, signal: proc.signalCode, restart_in_ms: s.backoffMs };
      if (s.quickFailures < QUICK_FAILURES) log("warn", "worker exited; restarting", fields);
      else if (othersRunning(s))
        // Typically the file on disk was made invalid after the last good reload: the others
        // still serve the config they have, so keep them, and keep trying this one.
        log("error", "worker keeps failing at start; retrying while the other workers serve", { ...fields, quick_failures: s.quickFailures });
      else {
        log("error", "worker keeps failing at start; stopping", { worker: s.index, exit_code: code });
        failed = true;
        return stop("SIGTERM");
      }
      setTimeout(() => {
        if (!stopping) spawn(s);
      }, s.backoffMs);
      s.backoffMs = Math.min(s.backoffMs * 2, BACKOFF_MAX_MS);
    });
  };

  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGHUP", () => {
    log("info", "signal received; reloading every worker", { signal: "SIGHUP", workers: n });
    signalAll("SIGHUP");
  });
  for (const s of slots) spawn(s);
  log("info", "sentinel supervisor started", { workers: n, pids: slots.map((s) => s.proc?.pid), pid: process.pid, metrics: metrics?.url || null });
}

/** Per-worker scrape limit: a worker that does not answer in time is left out of that scrape. */
const WORKER_SCRAPE_TIMEOUT_MS = 2_000;

/** What the supervisor last scraped from one worker process, and from which scrape. */
interface Seen {
  seq: number;
  metrics: MetricJSON[];
}

/**
 * The configured metrics listener, in the supervisor: every scrape fetches each running worker's
 * registry (JSON over its Unix socket) and answers with the aggregate. A worker that is
 * restarting or does not answer within 2 s is left out (and counted in
 * sentinel_metrics_workers_missing), so a scrape never hangs on one worker.
 * When a worker exits (`retire`), the counters and histograms of the last registry scraped from
 * it are kept and added to every later scrape: a worker's counts cannot be read once it is dead,
 * and without them the aggregate would go down, which Prometheus reads as a counter reset. What
 * the worker counted after that last scrape is lost, but never what a scrape already reported.
 */
function serveAggregatedMetrics(config: SentinelConfig, slots: Slot[]): { dir: string; url: string; retire(proc: Subprocess): void; close(): void } | null {
  const m = config.observability.metrics;
  if (!m || !m.enabled) return null;
  const dir = mkdtempSync(join(tmpdir(), "sentinel-metrics-"));
  const startTime = startTimeMetric(Math.round(Date.now() / 1000 - process.uptime()));
  const seen = new Map<Subprocess, Seen>();
  let retired: MetricJSON[] = [];
  let scrapes = 0;
  const scrape = async (s: Slot): Promise<{ proc: Subprocess; metrics: MetricJSON[] } | null> => {
    const proc = s.proc;
    if (proc === null) return null;
    const seq = ++scrapes;
    try {
      const r = await fetch("http://worker/metrics.json", { unix: metricsSocketPath(dir, s.index), signal: AbortSignal.timeout(WORKER_SCRAPE_TIMEOUT_MS) } as RequestInit);
      if (!r.ok) return null;
      const metrics = (await r.json()) as MetricJSON[];
      // Exited meanwhile: its counters are in `retired` already, from the scrape before.
      if (s.proc !== proc) return null;
      // Concurrent scrapes may answer out of order: keep the latest one asked.
      if ((seen.get(proc)?.seq ?? 0) < seq) seen.set(proc, { seq, metrics });
      return { proc, metrics };
    } catch {
      return null;
    }
  };
  let server: ReturnType<typeof Bun.serve> | null = null;
  try {
    server = Bun.serve({
      hostname: m.host,
      port: m.port,
      // With `development: false` Bun sets SO_REUSEPORT unless told not to: a second instance
      // would bind the same address beside this one and take half of the scrapes.
      reusePort: false,
      development: false,
      fetch: async (req) => {
        if (new URL(req.url).pathname !== m.path) return new Response("not found\n", { status: 404 });
        const parts = await Promise.all(slots.map(scrape));
        // Checked again once every answer is in: a worker that exited while another was
        // scraped is counted through `retired` only, not twice.
        const present = parts.filter((p) => p !== null && slots.some((s) => s.proc === p.proc)).map((p) => p!.metrics);
        const registry = aggregateMetrics([...present, retired, startTime]);
        const missing = `# HELP sentinel_metrics_workers_missing Worker processes left out of this scrape (restarting or not answering).\n# TYPE sentinel_metrics_workers_missing gauge\nsentinel_metrics_workers_missing ${slots.length - present.length}\n`;
        return new Response((await registry.metrics()) + "\n" + missing, { headers: { "content-type": registry.contentType, "cache-control": "no-store" } });
      },
      error: () => new Response("internal error\n", { status: 500 }),
    });
  } catch (err) {
    // As in single-process mode (server.ts): an address in use stops start-up, before any worker.
    process.stderr.write(`sentinel: failed to start: metrics listener ${m.address}: ${(err as Error)?.message ?? err}\n`);
    rmSync(dir, { recursive: true, force: true });
    process.exit(1);
  }
  return {
    dir,
    url: server ? `http://${m.host}:${server.port}${m.path}` : "",
    retire(proc) {
      const last = seen.get(proc);
      seen.delete(proc);
      if (last) retired = retainCounters(retired, last.metrics);
    },
    close() {
      server?.stop(true);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
