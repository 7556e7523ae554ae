// Listeners, the metrics listener, reload (SIGHUP / auto-reload) and graceful shutdown.
import type { Server } from "bun";
import { watch, type FSWatcher } from "node:fs";
import type { ListenerConfig, SentinelConfig } from "../config/types.ts";
import { formatDiagnostic } from "../config/types.ts";
import { loadConfig } from "../config/load.ts";
import { log, setLogLevel } from "../observability/log.ts";
import { configLastReloadSuccess, configReloads, setInFlightSupplier, registry, upstreamTargetHealth } from "../observability/metrics.ts";
import { createSink } from "../observability/access-log.ts";
import { collectProcessMetrics } from "../observability/process.ts";
import { errorResponse } from "./errors.ts";
import { handleRequest, type ProxyState } from "./pipeline.ts";
import { buildRuntime, startRuntime, stopHealthChecks } from "./runtime.ts";
import { setLogSinks } from "./logging.ts";
import { openSockets, websocketHandler } from "./websocket.ts";

export interface RunningProxy {
  state: ProxyState;
  servers: Server<unknown>[];
  reload(): Promise<boolean>;
  shutdown(): Promise<void>;
}

function idleTimeoutSecs(l: ListenerConfig, config: SentinelConfig): number {
  // Bun cuts a connection (even one waiting for our upstream) after idleTimeout seconds of no
  // I/O; it must outlast every timeout we enforce ourselves. Max 255.
  const ms = Math.max(l.keepaliveTimeoutMs, l.requestTimeoutMs, config.system.idleTimeoutMs) + 5_000;
  return Math.min(255, Math.max(1, Math.ceil(ms / 1000)));
}

function configureLogs(config: SentinelConfig): void {
  const logging = config.observability.logging;
  setLogLevel(logging.level);
  const access = logging.accessLog?.enabled ? { sink: createSink("access", logging.accessLog.file), format: logging.accessLog.format } : undefined;
  const audit = logging.auditLog?.enabled ? createSink("audit", logging.auditLog.file) : undefined;
  setLogSinks({ access, audit });
}

function listen(l: ListenerConfig, config: SentinelConfig, state: ProxyState): Server<unknown> {
  const tls = l.tls ? { cert: Bun.file(l.tls.certFile), key: Bun.file(l.tls.keyFile), ca: l.tls.caFile ? Bun.file(l.tls.caFile) : undefined } : undefined;
  return Bun.serve({
    hostname: l.host,
    port: l.port,
    reusePort: config.system.workerThreads > 1,
    development: false,
    idleTimeout: idleTimeoutSecs(l, config),
    // Limits are enforced per route while streaming (413); Bun's own 128 MB cap must not apply.
    maxRequestBodySize: Number.MAX_SAFE_INTEGER,
    tls,
    fetch: (req, server) => handleRequest(req, server, l, state),
    websocket: websocketHandler as never,
    error: () => errorResponse(500, "-"),
  });
}

function listenMetrics(config: SentinelConfig): Server<unknown> | undefined {
  const m = config.observability.metrics;
  if (!m || !m.enabled) return undefined;
  try {
    return Bun.serve({
      hostname: m.host,
      port: m.port,
      development: false,
      fetch: async (req) => {
        if (new URL(req.url).pathname !== m.path) return new Response("not found\n", { status: 404 });
        return new Response(await registry.metrics(), { headers: { "content-type": registry.contentType } });
      },
      error: () => new Response("internal error\n", { status: 500 }),
    });
  } catch (err) {
    log("error", "metrics listener failed to bind", { address: m.address, error: String((err as Error)?.message ?? err) });
    return undefined;
  }
}

/** What a reload cannot change without a restart; reported, never half-applied. */
function restartOnlyChanges(old: SentinelConfig, next: SentinelConfig): string[] {
  const out: string[] = [];
  const strip = (x: unknown) => JSON.stringify(x, (k, v) => (k === "loc" ? undefined : v));
  if (strip(old.listeners) !== strip(next.listeners)) out.push("listeners");
  if (strip(old.system) !== strip(next.system)) out.push("system");
  if (strip(old.observability.metrics) !== strip(next.observability.metrics)) out.push("observability.metrics");
  return out;
}

function updateTargetHealthGauge(state: ProxyState): void {
  const now = Date.now();
  upstreamTargetHealth.reset();
  for (const p of state.current.pools.values())
    for (const t of p.targets) upstreamTargetHealth.labels(p.id, t.address).set(t.healthy && t.ejectedUntil <= now ? 1 : 0);
}

export async function startProxy(config: SentinelConfig): Promise<RunningProxy> {
  configureLogs(config);
  const rt = buildRuntime(config);
  startRuntime(rt);
  const state: ProxyState = { current: rt, draining: false, inFlight: 0 };
  const servers = config.listeners.map((l) => listen(l, config, state));
  const metricsServer = listenMetrics(config);
  configReloads.labels("success").inc(0);
  configReloads.labels("failure").inc(0);
  configLastReloadSuccess.set(Date.now() / 1000);
  setInFlightSupplier(() => state.inFlight);
  const gaugeTimer = setInterval(() => updateTargetHealthGauge(state), 1000);
  const stopProcessMetrics = collectProcessMetrics();
  log("info", "sentinel started", {
    listeners: config.listeners.map((l) => `${l.protocol}://${l.host}:${servers[config.listeners.indexOf(l)]!.port}`),
    metrics: metricsServer ? `http://${config.observability.metrics!.host}:${metricsServer.port}${config.observability.metrics!.path}` : null,
    routes: config.routes.length,
    agents: config.agents.size,
    pid: process.pid,
  });

  let reloading: Promise<boolean> | undefined;
  async function doReload(): Promise<boolean> {
    const result = loadConfig(state.current.config.file);
    if (!result.config) {
      configReloads.labels("failure").inc();
      for (const d of result.diagnostics) log(d.severity === "error" ? "error" : "warn", "config reload rejected", { diagnostic: formatDiagnostic(d) });
      log("error", "config reload failed; the running configuration stays in force", { errors: result.diagnostics.filter((d) => d.severity === "error").length });
      return false;
    }
    const old = state.current;
    const restart = restartOnlyChanges(old.config, result.config);
    const next: SentinelConfig = { ...result.config, listeners: old.config.listeners, system: old.config.system, observability: { ...result.config.observability, metrics: old.config.observability.metrics } };
    if (restart.length > 0) log("warn", "config changes need a restart and were not applied", { sections: restart });
    try {
      const nextRt = buildRuntime(next, old);
      startRuntime(nextRt);
      configureLogs(next);
      state.current = nextRt; // atomic swap: new requests use the new snapshot
      stopHealthChecks(old);
      configReloads.labels("success").inc();
      configLastReloadSuccess.set(Date.now() / 1000);
      log("info", "config reloaded", { routes: next.routes.length, agents: next.agents.size, upstreams: next.upstreams.size });
      return true;
    } catch (err) {
      configReloads.labels("failure").inc();
      log("error", "config reload failed while applying; the running configuration stays in force", { error: String((err as Error)?.message ?? err) });
      return false;
    }
  }
  const reload = () => {
    // Serialise reloads; a reload requested during one runs after it.
    const run = (reloading ?? Promise.resolve(true)).then(doReload, doReload);
    reloading = run;
    return run;
  };

  let watchers: FSWatcher[] = [];
  function watchFiles(): void {
    for (const w of watchers) w.close();
    watchers = [];
    if (!config.system.autoReload) return;
    let debounce: ReturnType<typeof setTimeout> | undefined;
    const trigger = () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        void reload().then(() => watchFiles());
      }, 200);
    };
    const dirs = new Set(state.current.config.files.map((f) => f.slice(0, f.lastIndexOf("/")) || "/"));
    for (const dir of dirs) {
      try {
        watchers.push(watch(dir, (_ev, name) => {
          if (name && state.current.config.files.some((f) => f.endsWith("/" + name))) trigger();
        }));
      } catch (err) {
        log("warn", "cannot watch config directory", { dir, error: String(err) });
      }
    }
  }
  watchFiles();

  let shuttingDown: Promise<void> | undefined;
  async function shutdown(): Promise<void> {
    if (shuttingDown) return shuttingDown;
    shuttingDown = (async () => {
      state.draining = true;
      const graceMs = config.system.gracefulShutdownTimeoutMs;
      log("info", "shutting down: draining in-flight requests", { in_flight: state.inFlight, grace_ms: graceMs });
      const deadline = Date.now() + graceMs;
      for (const w of watchers) w.close();
      // Stop accepting; Bun closes idle keep-alive connections and lets active ones finish.
      const stopped = servers.map((s) => s.stop(false));
      while (state.inFlight - openSockets.size > 0 && Date.now() < deadline) await Bun.sleep(25);
      for (const ws of openSockets) ws.close(1001, "server shutting down");
      while (state.inFlight > 0 && Date.now() < deadline) await Bun.sleep(25);
      await Promise.race([Promise.all(stopped), Bun.sleep(Math.max(0, deadline - Date.now()))]);
      if (state.inFlight > 0) log("warn", "grace period over; aborting remaining requests", { in_flight: state.inFlight });
      for (const s of servers) s.stop(true);
      metricsServer?.stop(true);
      clearInterval(gaugeTimer);
      stopProcessMetrics();
      stopHealthChecks(state.current);
      await state.current.agents.close(Math.max(0, Math.min(1000, deadline - Date.now())));
      log("info", "sentinel stopped");
    })();
    return shuttingDown;
  }

  return { state, servers, reload, shutdown };
}
