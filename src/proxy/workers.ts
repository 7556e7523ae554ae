// Multi-process mode: `system { worker-threads N }` with N ≥ 2.
//
// The process started by the user becomes a supervisor: it spawns N workers (the same
// executable with the same arguments, plus SENTINEL_WORKER=i) and serves nothing itself. Each
// worker runs the whole proxy and binds the listeners with reusePort, so the kernel spreads new
// connections over the workers. The supervisor
//   - forwards SIGTERM/SIGINT (graceful drain) and SIGHUP (reload: every worker re-reads the
//     file) to every worker, and exits once they have all exited (0, or 1 if one failed);
//   - restarts a worker that exits unexpectedly (backoff 100 ms doubling to 5 s), and gives up
//     (stopping the others, exit 1) when a worker cannot stay up 2 s five times in a row;
//   - owns the pid-file; listeners configured with port 0 get one free port chosen up front,
//     shared by all workers.
// Metrics: the supervisor binds the configured metrics listener and answers a scrape with the
// aggregate of every worker's registry (src/observability/aggregate.ts), fetched from a Unix
// socket each worker serves in a private directory (0700) the supervisor creates.
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
import { aggregateMetrics } from "../observability/aggregate.ts";
import { shareAgentConcurrency } from "../agents/agent.ts";

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
  shareAgentConcurrency(workerCount(config), workerIndex() === 1); // the supervisor's N (adaptWorkerConfig)
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
  const ports = choosePorts(config);
  const fixedConfig = JSON.stringify({ listeners: config.listeners, system: config.system, metrics: config.observability.metrics });
  const pidFile = config.system.pidFile;
  if (pidFile) writeFileSync(pidFile, `${process.pid}\n`);
  let stopping = false;
  let failed = false;
  const slots: Slot[] = Array.from({ length: n }, (_, i) => ({ index: i + 1, proc: null, startedAt: 0, quickFailures: 0, backoffMs: 100 }));
  const metrics = serveAggregatedMetrics(config, slots);

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
      if (stopping) {
        if (code !== 0) failed = true;
        return finish();
      }
      const upMs = performance.now() - s.startedAt;
      s.quickFailures = upMs < 2000 ? s.quickFailures + 1 : 0;
      if (upMs >= 2000) s.backoffMs = 100;
      if (s.quickFailures >= 5) {
        log("error", "worker keeps failing at start; stopping", { worker: s.index, exit_code: code });
        failed = true;
        return stop("SIGTERM");
      }
      log("warn", "worker exited; restarting", { worker: s.index, exit_code: code, signal: proc.signalCode, restart_in_ms: s.backoffMs });
      setTimeout(() => {
        if (!stopping) spawn(s);
      }, s.backoffMs);
      s.backoffMs = Math.min(s.backoffMs * 2, 5000);
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

/**
 * The configured metrics listener, in the supervisor: every scrape fetches each running worker's
 * registry (JSON over its Unix socket) and answers with the aggregate. A worker that is
 * restarting or does not answer within 2 s is left out (and counted in
 * sentinel_metrics_workers_missing), so a scrape never hangs on one worker.
 */
function serveAggregatedMetrics(config: SentinelConfig, slots: Slot[]): { dir: string; url: string; close(): void } | null {
  const m = config.observability.metrics;
  if (!m || !m.enabled) return null;
  const dir = mkdtempSync(join(tmpdir(), "sentinel-metrics-"));
  const scrape = async (s: Slot): Promise<unknown[] | null> => {
    if (s.proc === null) return null;
    try {
      const r = await fetch("http://worker/metrics.json", { unix: metricsSocketPath(dir, s.index), signal: AbortSignal.timeout(WORKER_SCRAPE_TIMEOUT_MS) } as RequestInit);
      return r.ok ? ((await r.json()) as unknown[]) : null;
    } catch {
      return null;
    }
  };
  let server: ReturnType<typeof Bun.serve> | null = null;
  try {
    server = Bun.serve({
      hostname: m.host,
      port: m.port,
      development: false,
      fetch: async (req) => {
        if (new URL(req.url).pathname !== m.path) return new Response("not found\n", { status: 404 });
        const parts = await Promise.all(slots.map(scrape));
        const present = parts.filter((p): p is unknown[] => p !== null);
        const registry = aggregateMetrics(present as never);
        const missing = `# HELP sentinel_metrics_workers_missing Worker processes left out of this scrape (restarting or not answering).\n# TYPE sentinel_metrics_workers_missing gauge\nsentinel_metrics_workers_missing ${slots.length - present.length}\n`;
        return new Response((await registry.metrics()) + "\n" + missing, { headers: { "content-type": registry.contentType, "cache-control": "no-store" } });
      },
      error: () => new Response("internal error\n", { status: 500 }),
    });
  } catch (err) {
    log("error", "metrics listener failed to bind", { address: m.address, error: String((err as Error)?.message ?? err) });
  }
  return {
    dir,
    url: server ? `http://${m.host}:${server.port}${m.path}` : "",
    close() {
      server?.stop(true);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
