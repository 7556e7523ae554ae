// Listeners, the metrics listener, reload (SIGHUP / auto-reload) and graceful shutdown.
//
// Reload: the config is read and fully validated; log files are opened; a new Runtime is built
// (unchanged pools and agents are the same objects, so they keep connections and health);
// agents that are new are started and awaited (bounded) so that the first request that needs
// them does not find them still connecting; then `state.current` is swapped. A request keeps
// the Runtime it started with. Agents the new config replaced or removed are closed only once
// every superseded Runtime has no request in flight (bounded by graceful-shutdown-timeout),
// then gracefully (their own in-flight calls may finish). Anything that fails before the swap
// leaves the running config untouched.
import type { Server } from "bun";
import { lstatSync, readlinkSync, watch, writeFileSync, unlinkSync, type FSWatcher } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import type { ListenerConfig, SentinelConfig, TlsServerConfig } from "../config/types.ts";
import { formatDiagnostic } from "../config/types.ts";
import { loadConfig } from "../config/load.ts";
import { log, setErrorLogSink, setLogLevel } from "../observability/log.ts";
import { configLastReloadSuccess, configReloads, configRestartPending, registry, setLiveSources } from "../observability/metrics.ts";
import { createSink, type LineSink } from "../observability/access-log.ts";
import { collectProcessMetrics } from "../observability/process.ts";
import { countConnections } from "../observability/connections.ts";
import { observeSlotRefused, observeUpstreamAttempt, syncUpstreamSeries } from "../observability/upstream-metrics.ts";
import { setAttemptObserver, setSlotRefusedObserver } from "../upstreams/forward.ts";
import { sameAgentConfig, DEFAULT_RELOAD_GRACE_MS, type AgentRegistry } from "../agents/registry.ts";
import type { Agent } from "../agents/agent.ts";
import { errorResponse } from "./errors.ts";
import { handleRequest, type ProxyState } from "./pipeline.ts";
import { buildRuntime, startRuntime, stopHealthChecks, type Runtime } from "./runtime.ts";
import { getLogSinks, setLogSinks, syncRouteSeries } from "./logging.ts";
import { readiness } from "./builtin.ts";
import { restartBaseline, workerMetricsSocket, type RestartOnly } from "./workers.ts";
import { openSockets, websocketHandler } from "./websocket.ts";

export interface RunningProxy {
  state: ProxyState;
  servers: Server<unknown>[];
  /** Re-read and apply the config file; false (and the old config stays) when it is invalid. */
  reload(trigger?: string): Promise<boolean>;
  shutdown(): Promise<void>;
}

/** How long a reload waits for newly added agents to connect before swapping anyway. */
const NEW_AGENT_CONNECT_WAIT_MS = 5_000;
/** Debounce of file-change events (editors write in several steps). */
const AUTO_RELOAD_DEBOUNCE_MS = 250;

function idleTimeoutSecs(l: ListenerConfig, config: SentinelConfig): number {
  // Bun cuts a connection (even one waiting for our upstream) after idleTimeout seconds of no
  // I/O; it must outlast every timeout we enforce ourselves. Max 255.
  const ms = Math.max(l.keepaliveTimeoutMs, l.requestTimeoutMs, config.system.idleTimeoutMs) + 5_000;
  return Math.min(255, Math.max(1, Math.ceil(ms / 1000)));
}

// ---- logs ------------------------------------------------------------------------------------

interface OpenLogs {
  access?: { sink: LineSink; format: "json" | "combined" };
  audit?: LineSink;
  error?: { sink: LineSink; level: SentinelConfig["observability"]["logging"]["level"] };
}

const sinkError = (name: string) => (err: unknown) => log("error", "log write failed; lines dropped", { log: name, error: String((err as Error)?.message ?? err) });

/** Open every configured log file now (throws, with the others closed, when one cannot be opened). */
function openLogs(config: SentinelConfig): OpenLogs {
  const logging = config.observability.logging;
  const opened: LineSink[] = [];
  const open = (name: string, file: string | undefined, flushBytes: number | undefined) => {
    const s = createSink(name, file, { onError: sinkError(name), flushBytes });
    opened.push(s);
    return s;
  };
  try {
    const out: OpenLogs = {};
    if (logging.accessLog?.enabled) out.access = { sink: open("access", logging.accessLog.file, logging.accessLog.bufferSize), format: logging.accessLog.format };
    if (logging.auditLog?.enabled) out.audit = open("audit", logging.auditLog.file, logging.auditLog.bufferSize);
    if (logging.errorLog?.enabled && logging.errorLog.file) out.error = { sink: open("error", logging.errorLog.file, logging.errorLog.bufferSize), level: logging.errorLog.level };
    return out;
  } catch (err) {
    for (const s of opened) void s.close();
    throw new Error(`cannot open log file: ${(err as Error)?.message ?? err}`);
  }
}

let currentErrorLog: LineSink | undefined;

/** Switch to `next` log sinks and the configured level; returns the previous sinks' close. */
function applyLogs(config: SentinelConfig, next: OpenLogs): () => Promise<void> {
  const prev = getLogSinks();
  const prevError = currentErrorLog;
  setLogLevel(config.observability.logging.level);
  setLogSinks({ access: next.access, audit: next.audit, auditWafEvents: config.observability.logging.auditLog?.wafEvents === true });
  currentErrorLog = next.error?.sink;
  setErrorLogSink(next.error?.sink, next.error?.level);
  return async () => {
    await Promise.all([prev.access?.sink.close(), prev.audit?.close(), prevError?.close()]);
  };
}

async function closeLogs(): Promise<void> {
  const s = getLogSinks();
  await Promise.all([s.access?.sink.close(), s.audit?.close(), currentErrorLog?.close()]);
}

// ---- listeners -------------------------------------------------------------------------------

/** Bind with `bind`; a failure names what failed to bind (Bun's "Is port N in use?" does not). */
function bindOrThrow<T>(what: string, bind: () => T): T {
  try {
    return bind();
  } catch (err) {
    throw new Error(`${what}: ${(err as Error)?.message ?? err}`);
  }
}

/** Bun's TLS options for a listener; with client-auth, a handshake without a certificate from `ca` fails. */
function listenerTls(t: TlsServerConfig) {
  const base = { cert: Bun.file(t.certFile), key: Bun.file(t.keyFile) };
  if (!t.clientAuth || t.caFile === undefined) return base;
  return { ...base, ca: Bun.file(t.caFile), requestCert: true, rejectUnauthorized: true };
}

function listen(l: ListenerConfig, config: SentinelConfig, state: ProxyState): Server<unknown> {
  const tls = l.tls ? listenerTls(l.tls) : undefined;
  return bindOrThrow(`listener "${l.id}" ${l.address}`, () =>
    Bun.serve({
      hostname: l.host,
      port: l.port,
      // Only worker processes of one instance share a port (Bun's default would be to share).
      reusePort: config.system.workerThreads > 1,
      development: false,
      idleTimeout: idleTimeoutSecs(l, config),
      // Limits are enforced per route while streaming (413); Bun's own 128 MB cap must not apply.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      tls,
      fetch: (req, server) => handleRequest(req, server, l, state),
      websocket: websocketHandler as never,
      error: () => errorResponse(500, "-"),
    }),
  );
}

function listenMetrics(config: SentinelConfig): Server<unknown> | undefined {
  const socket = workerMetricsSocket();
  if (socket !== null) {
    // A worker process: its supervisor serves the metrics listener and aggregates (workers.ts).
    // A worker restarted after a crash finds its predecessor's socket file: replace it.
    try {
      unlinkSync(socket);
    } catch {
      /* none */
    }
    try {
      return Bun.serve({
        unix: socket,
        development: false,
        fetch: async () => new Response(JSON.stringify(await registry.getMetricsAsJSON()), { headers: { "content-type": "application/json" } }),
        error: () => new Response("internal error\n", { status: 500 }),
      });
    } catch (err) {
      log("error", "worker metrics socket failed to bind", { socket, error: String((err as Error)?.message ?? err) });
      return undefined;
    }
  }
  const m = config.observability.metrics;
  if (!m || !m.enabled) return undefined;
  // Like a proxy listener, an address in use stops start-up (exit 1): a proxy without the metrics
  // it was configured with would look healthy and be unobservable.
  return bindOrThrow(`metrics listener ${m.address}`, () =>
    Bun.serve({
      hostname: m.host,
      port: m.port,
      // With `development: false` Bun sets SO_REUSEPORT unless told not to: a second instance
      // would then bind the same address beside this one and take half of the scrapes.
      reusePort: false,
      development: false,
      fetch: async (req) => {
        if (new URL(req.url).pathname !== m.path) return new Response("not found\n", { status: 404 });
        return new Response(await registry.metrics(), { headers: { "content-type": registry.contentType, "cache-control": "no-store" } });
      },
      error: () => new Response("internal error\n", { status: 500 }),
    }),
  );
}

// ---- reload helpers --------------------------------------------------------------------------

const strip = (x: unknown) => JSON.stringify(x, (k, v) => (k === "loc" ? undefined : v instanceof Map ? [...v] : v instanceof RegExp ? v.source : v));

/** What a reload cannot change without a restart; reported, never half-applied. */
function restartOnlyChanges(old: RestartOnly, next: RestartOnly): string[] {
  const out: string[] = [];
  if (strip(old.listeners) !== strip(next.listeners)) out.push("listeners");
  if (strip(old.system) !== strip(next.system)) out.push("system");
  if (strip(old.observability.metrics) !== strip(next.observability.metrics)) out.push("observability.metrics");
  return out;
}

/** added / removed / changed ids between two id → config maps (for the reload log line). */
function diffIds<T>(old: Map<string, T>, next: Map<string, T>): { added: string[]; removed: string[]; changed: string[] } {
  const added: string[] = [];
  const removed: string[] = [];
  const changed: string[] = [];
  for (const [id, v] of next) {
    const o = old.get(id);
    if (o === undefined) added.push(id);
    else if (strip(o) !== strip(v)) changed.push(id);
  }
  for (const id of old.keys()) if (!next.has(id)) removed.push(id);
  return { added, removed, changed };
}

/**
 * The previous registry as createAgentRegistry sees it, except that agents it will retire
 * (removed, or changed and so replaced) have their close() deferred into `retired`, to be
 * called once the superseded runtimes drained.
 */
function deferringRegistry(prev: AgentRegistry, next: SentinelConfig, retired: Agent[]): AgentRegistry {
  const wrap = (a: Agent): Agent => {
    const nc = next.agents.get(a.id);
    if (nc !== undefined && sameAgentConfig(a.config, nc)) return a; // reused as is
    return new Proxy(a, {
      get(target, prop) {
        if (prop === "close")
          return (_graceMs: number) => {
            if (!retired.includes(target)) retired.push(target);
            return Promise.resolve();
          };
        const v = Reflect.get(target, prop, target);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
  };
  return {
    get: (id) => {
      const a = prev.get(id);
      return a && wrap(a);
    },
    all: () => prev.all().map(wrap),
    close: (g) => prev.close(g),
    ready: (t) => prev.ready(t),
  };
}

/** Symbolic links followed while resolving one path at most (the kernel's ELOOP limit). */
const MAX_SYMLINK_HOPS = 40;

/**
 * `file` (absolute), every symbolic link met while resolving it, and the file it resolves to. A
 * Kubernetes ConfigMap volume mounts `main.kdl -> ..data/main.kdl` with `..data -> <version>`,
 * and an update renames a new `..data` link over the old one: only the directory holding
 * `..data` sees that event. Where the path does not resolve (yet), it ends at the missing name.
 */
function resolutionChain(file: string): string[] {
  const out = [resolve(file)];
  let dir = "/"; // resolved so far: no links in it
  let rest = out[0]!.split("/").filter(Boolean);
  for (let hops = 0; rest.length > 0; ) {
    const name = rest.shift()!;
    if (name === ".") continue;
    if (name === "..") {
      dir = dirname(dir);
      continue;
    }
    const path = join(dir, name);
    let target: string;
    try {
      if (!lstatSync(path).isSymbolicLink()) {
        dir = path;
        continue;
      }
      target = readlinkSync(path);
    } catch {
      out.push(path); // missing: its appearance is an event in its directory
      return [...new Set(out)];
    }
    out.push(path);
    if (++hops > MAX_SYMLINK_HOPS) return [...new Set(out)];
    if (isAbsolute(target)) dir = "/";
    rest = [...target.split("/").filter(Boolean), ...rest];
  }
  out.push(dir);
  return [...new Set(out)];
}

/**
 * What auto-reload watches for these config files: directory → the names in it whose change is a
 * config change, and whether any new .kdl there is one too (a file an include glob may match:
 * the directories of the files as named and as resolved, not those of intermediate links, which
 * may be busy ones such as /etc).
 */
function watchPlan(files: string[]): Map<string, { names: Set<string>; anyKdl: boolean }> {
  const plan = new Map<string, { names: Set<string>; anyKdl: boolean }>();
  const entry = (dir: string) => plan.get(dir) ?? plan.set(dir, { names: new Set(), anyKdl: false }).get(dir)!;
  for (const f of files) {
    const chain = resolutionChain(f);
    for (const p of chain) entry(dirname(p)).names.add(basename(p));
    entry(dirname(chain[0]!)).anyKdl = true;
    entry(dirname(chain.at(-1)!)).anyKdl = true;
  }
  return plan;
}

function writePidFile(path: string | undefined): void {
  if (!path) return;
  writeFileSync(path, `${process.pid}\n`);
}

function removePidFile(path: string | undefined): void {
  if (!path) return;
  try {
    unlinkSync(path);
  } catch {
    /* already gone */
  }
}

// ---- the proxy -------------------------------------------------------------------------------

export async function startProxy(config: SentinelConfig): Promise<RunningProxy> {
  const firstLogs = openLogs(config);
  void applyLogs(config, firstLogs);
  const rt = buildRuntime(config);
  startRuntime(rt);
  const state: ProxyState = { current: rt, draining: false, inFlight: 0 };
  const servers = config.listeners.map((l) => listen(l, config, state));
  const metricsServer = listenMetrics(config);
  writePidFile(config.system.pidFile);

  setAttemptObserver(observeUpstreamAttempt);
  setSlotRefusedObserver(observeSlotRefused);
  syncUpstreamSeries(rt.pools.values());
  syncRouteSeries(config.routes.map((r) => r.id));
  configReloads.labels("success").inc(0);
  configReloads.labels("failure").inc(0);
  configLastReloadSuccess.set(Date.now() / 1000);
  configRestartPending.set(0);
  const listenerPorts = config.listeners.map((l, i) => ({
    id: l.id,
    port: servers[i]!.port!,
    pending: () => servers[i]!.pendingRequests + servers[i]!.pendingWebSockets,
  }));
  setLiveSources({
    inFlight: () => state.inFlight,
    websockets: () => openSockets.size,
    connections: () => countConnections(listenerPorts),
    ready: () => readiness(state).ready,
    *targets() {
      const now = Date.now();
      for (const p of state.current.pools.values())
        for (const t of p.targets) yield { upstream: p.id, target: t.address, healthy: t.healthy && t.ejectedUntil <= now };
    },
  });
  const stopProcessMetrics = collectProcessMetrics();
  log("info", "sentinel started", {
    listeners: config.listeners.map((l, i) => `${l.protocol}://${l.host}:${servers[i]!.port}`),
    metrics: metricsServer && config.observability.metrics ? `http://${config.observability.metrics.host}:${metricsServer.port}${config.observability.metrics.path}` : null,
    routes: config.routes.length,
    agents: config.agents.size,
    upstreams: config.upstreams.size,
    auto_reload: config.system.autoReload,
    pid: process.pid,
  });

  // Runtimes replaced by a reload that may still have requests in flight.
  let superseded: Runtime[] = [];
  // Agents retired by reloads whose close waits for those requests.
  const retiring = new Set<Agent>();
  let shuttingDown: Promise<void> | undefined;

  function retireAfterDrain(agents: Agent[], olds: Runtime[]): void {
    if (agents.length === 0) return;
    for (const a of agents) retiring.add(a);
    const deadline = Date.now() + config.system.gracefulShutdownTimeoutMs;
    const tick = () => {
      const drained = olds.every((r) => r.inFlight <= 0);
      if (!drained && Date.now() < deadline && !state.draining) {
        setTimeout(tick, 50);
        return;
      }
      if (!drained) log("warn", "closing retired agents while superseded requests are still in flight", { agents: agents.map((a) => a.id) });
      for (const a of agents) {
        if (!retiring.delete(a)) continue; // shutdown took it
        log("debug", "retired agent closing", { agent: a.id });
        void a.close(DEFAULT_RELOAD_GRACE_MS);
      }
    };
    setTimeout(tick, 0);
  }

  let reloading: Promise<boolean> | undefined;
  async function doReload(trigger: string): Promise<boolean> {
    if (state.draining) return false;
    const t0 = performance.now();
    const fail = (msg: string, fields: Record<string, unknown>) => {
      configReloads.labels("failure").inc();
      log("error", msg, { trigger, ...fields });
      return false;
    };
    const result = loadConfig(state.current.config.file);
    if (!result.config) {
      const errors = result.diagnostics.filter((d) => d.severity === "error").map(formatDiagnostic);
      for (const d of result.diagnostics) log(d.severity === "error" ? "error" : "warn", "config reload rejected", { diagnostic: formatDiagnostic(d) });
      return fail("config reload failed; the running configuration stays in force", { errors });
    }
    for (const d of result.diagnostics) log("warn", "config warning", { diagnostic: formatDiagnostic(d) });
    const old = state.current;
    // A worker compares with what its supervisor started with (its own config is adapted).
    const restart = restartOnlyChanges(restartBaseline() ?? old.config, result.config);
    const next: SentinelConfig = {
      ...result.config,
      listeners: old.config.listeners,
      system: old.config.system,
      observability: { ...result.config.observability, metrics: old.config.observability.metrics },
    };
    if (trigger === "file change" && restart.length === 0 && strip(next) === strip(old.config)) {
      // A touch, or a save of the same content: nothing to apply (SIGHUP still reloads, and
      // reopens the log files, whatever the content).
      log("debug", "config files changed on disk but the configuration is the same; not reloaded", { trigger });
      return true;
    }

    let logs: OpenLogs;
    try {
      logs = openLogs(next);
    } catch (err) {
      return fail("config reload failed; the running configuration stays in force", { error: String((err as Error)?.message ?? err) });
    }
    const retired: Agent[] = [];
    let nextRt: Runtime;
    try {
      nextRt = buildRuntime(next, { ...old, agents: deferringRegistry(old.agents, next, retired) });
    } catch (err) {
      for (const s of [logs.access?.sink, logs.audit, logs.error?.sink]) void s?.close();
      return fail("config reload failed while applying; the running configuration stays in force", { error: String((err as Error)?.message ?? err) });
    }
    startRuntime(nextRt);
    // New agents: let them connect before the swap, so that no request meets them connecting.
    const oldAgents = new Set(old.agents.all());
    const fresh = nextRt.agents.all().filter((a) => !oldAgents.has(a));
    if (fresh.length > 0) {
      const ok = await Promise.all(fresh.map((a) => a.whenConnected(NEW_AGENT_CONNECT_WAIT_MS)));
      const late = fresh.filter((_, i) => !ok[i]).map((a) => a.id);
      if (late.length > 0) log("warn", "new agents not connected yet; applying the config anyway", { agents: late, waited_ms: NEW_AGENT_CONNECT_WAIT_MS });
    }
    if (state.draining) {
      // Shutdown began meanwhile: throw the new runtime away.
      stopHealthChecks(nextRt);
      for (const a of fresh) void a.close(0);
      for (const s of [logs.access?.sink, logs.audit, logs.error?.sink]) void s?.close();
      return false;
    }

    // ---- commit: atomic swap ----
    state.current = nextRt;
    const closePrevLogs = applyLogs(next, logs);
    stopHealthChecks(old);
    superseded = superseded.filter((r) => r.inFlight > 0);
    superseded.push(old);
    retireAfterDrain(retired, [...superseded]);
    void closePrevLogs();
    syncUpstreamSeries(nextRt.pools.values());
    syncRouteSeries(next.routes.map((r) => r.id));
    configReloads.labels("success").inc();
    configLastReloadSuccess.set(Date.now() / 1000);
    configRestartPending.set(restart.length > 0 ? 1 : 0);
    if (restart.length > 0) log("warn", "config changes need a restart and were not applied", { sections: restart });
    const routes = diffIds(new Map(old.config.routes.map((r) => [r.id, r])), new Map(next.routes.map((r) => [r.id, r])));
    const agents = diffIds(old.config.agents, next.agents);
    const upstreams = diffIds(old.config.upstreams, next.upstreams);
    const filters = diffIds(old.config.filters, next.filters);
    log("info", "config reloaded", {
      trigger,
      routes: next.routes.length,
      agents: next.agents.size,
      upstreams: next.upstreams.size,
      changes: { routes, agents, upstreams, filters },
      restart_required: restart,
      duration_ms: Math.round(performance.now() - t0),
    });
    return true;
  }
  const reload = (trigger = "api") => {
    // Serialise reloads; a reload requested during one runs after it. Afterwards the watched
    // files follow the (possibly changed) include list, whatever triggered the reload.
    const once = async () => {
      try {
        return await doReload(trigger);
      } finally {
        armWatchers();
      }
    };
    const run = (reloading ?? Promise.resolve(true)).then(once, once);
    reloading = run;
    return run;
  };

  // ---- auto-reload: watch the directories of every config file (main + includes) ----
  // …and of every symbolic link on the way to it, and of the file it resolves to (see
  // watchPlan); re-planned after each reload, so a swapped link is followed.
  let watchers: FSWatcher[] = [];
  let debounce: ReturnType<typeof setTimeout> | undefined;
  function armWatchers(): void {
    for (const w of watchers) w.close();
    watchers = [];
    if (!config.system.autoReload || state.draining) return;
    const trigger = (name: string) => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        debounce = undefined;
        log("debug", "config file changed", { file: name });
        void reload("file change");
      }, AUTO_RELOAD_DEBOUNCE_MS);
    };
    for (const [dir, { names, anyKdl }] of watchPlan(state.current.config.files)) {
      try {
        const w = watch(dir, (_ev, name) => {
          if (!name) return trigger(dir);
          // Known config files and links, and any .kdl (a new file matched by an include glob).
          if (names.has(String(name)) || (anyKdl && String(name).endsWith(".kdl"))) trigger(join(dir, String(name)));
        });
        w.on("error", (err) => log("warn", "config watcher failed", { dir, error: String(err) }));
        watchers.push(w);
      } catch (err) {
        log("warn", "cannot watch config directory", { dir, error: String(err) });
      }
    }
  }
  armWatchers();

  async function shutdown(): Promise<void> {
    if (shuttingDown) return shuttingDown;
    shuttingDown = (async () => {
      state.draining = true; // readiness (builtin "status") answers 503 from now on
      const graceMs = config.system.gracefulShutdownTimeoutMs;
      log("info", "shutting down: draining in-flight requests", { in_flight: state.inFlight, websockets: openSockets.size, grace_ms: graceMs });
      const deadline = Date.now() + graceMs;
      clearTimeout(debounce);
      for (const w of watchers) w.close();
      // Stop accepting; Bun closes idle keep-alive connections and lets active ones finish.
      const stopped = servers.map((s) => s.stop(false));
      // HTTP requests first (WebSockets count as in flight until they close)…
      while (state.inFlight - openSockets.size > 0 && Date.now() < deadline) await Bun.sleep(25);
      // …then ask WebSocket peers to go away (1001 Going Away), relayed to the upstream too.
      for (const ws of openSockets) ws.close(1001, "server shutting down");
      while (state.inFlight > 0 && Date.now() < deadline) await Bun.sleep(25);
      await Promise.race([Promise.all(stopped), Bun.sleep(Math.max(0, deadline - Date.now()))]);
      const aborted = Math.max(0, state.inFlight);
      if (aborted > 0) {
        log("warn", "grace period over; aborting remaining requests", { in_flight: aborted });
        state.aborting = true; // their log lines say so (pipeline.ts), rather than "client went away"
      }
      for (const s of servers) s.stop(true);
      stopProcessMetrics();
      stopHealthChecks(state.current);
      for (const r of superseded) stopHealthChecks(r);
      // Agents: no request needs them any more. Each closes after its outstanding calls were
      // answered (UDS: then the connection is closed; gRPC: the stream is half-closed so the
      // agent sees a clean end of stream, then the session ends).
      const agentGrace = Math.max(0, Math.min(2_000, deadline - Date.now()));
      const retired = [...retiring];
      retiring.clear();
      await Promise.all([state.current.agents.close(agentGrace), ...retired.map((a) => a.close(agentGrace))]);
      metricsServer?.stop(true);
      removePidFile(config.system.pidFile);
      log("info", "sentinel stopped", { aborted });
      setErrorLogSink(undefined);
      await closeLogs();
    })();
    return shuttingDown;
  }

  return { state, servers, reload, shutdown };
}
