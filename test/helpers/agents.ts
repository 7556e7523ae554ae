// Start agent processes (our SDK test agent, the chaos agents) and read what they received.
import { join } from "node:path";
import type { Subprocess } from "bun";
import { createGrpcTransport } from "../../src/agents/grpc/client.ts";
import { TransportError, type AgentTransport, type TransportOptions } from "../../src/agents/types.ts";
import { expect } from "bun:test";
import { ROOT, tempDir, waitFor, type ProxyProcess } from "./proxy.ts";
import type { Upstream } from "./upstream.ts";
import { readJsonLines } from "./jsonl.ts";

export type Transport = "uds" | "grpc";

export interface AgentProcess {
  transport: Transport;
  /** UDS socket path, or http://127.0.0.1:PORT for gRPC. */
  endpoint: string;
  port: number;
  logFile: string;
  proc: Subprocess;
  events(type?: string): Array<Record<string, unknown>>;
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Start again on the same socket path / port. */
  restart(mode?: string): Promise<void>;
}

const SCRIPTS = {
  sdk: join(ROOT, "test/helpers/sdk-agent.ts"),
  "chaos-uds": join(ROOT, "test/helpers/chaos-uds-agent.ts"),
  "chaos-grpc": join(ROOT, "test/helpers/chaos-grpc-agent.ts"),
};

/** The first READY / LISTENING / ready line the agent prints; stdout is drained after it. */
export async function readyLine(proc: Subprocess<"ignore", "pipe", "inherit">, timeoutMs = 10_000): Promise<string> {
  const reader = proc.stdout.getReader();
  const dec = new TextDecoder();
  let buf = "";
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await Promise.race([reader.read(), Bun.sleep(deadline - Date.now()).then(() => undefined)]);
    if (!r || r.done) break;
    buf += dec.decode(r.value);
    const line = buf.split("\n").find((l) => /^(READY|LISTENING|ready)/.test(l));
    if (line) {
      reader.releaseLock();
      // keep draining stdout so the child never blocks on a full pipe
      void proc.stdout.pipeTo(new WritableStream()).catch(() => {});
      return line;
    }
  }
  throw new Error(`agent did not become ready: ${buf}`);
}

/**
 * kind "sdk": our SDK agent (transport chosen by `transport`); "chaos": the raw chaos agent of
 * that transport with `mode`.
 */
export async function startAgent(kind: "sdk" | "chaos", transport: Transport, mode = "allow", dir = tempDir("sentinel-agent-")): Promise<AgentProcess> {
  const logFile = join(dir, "events.jsonl");
  const socket = join(dir, "agent.sock");
  let port = 0;
  const spawn = async (m: string) => {
    const script = kind === "sdk" ? SCRIPTS.sdk : transport === "uds" ? SCRIPTS["chaos-uds"] : SCRIPTS["chaos-grpc"];
    const args =
      kind === "sdk"
        ? transport === "uds"
          ? ["--socket", socket, "--log", logFile]
          : ["--grpc", `127.0.0.1:${port}`, "--log", logFile]
        : transport === "uds"
          ? ["--socket", socket, "--mode", m, "--log", logFile]
          : ["--listen", `127.0.0.1:${port}`, "--mode", m, "--log", logFile];
    const proc = Bun.spawn([process.execPath, script, ...args], { stdin: "ignore", stdout: "pipe", stderr: "inherit", cwd: ROOT });
    const line = await readyLine(proc as Subprocess<"ignore", "pipe", "inherit">);
    const m2 = /(\d+)\s*$/.exec(line);
    if (transport === "grpc" && m2) port = Number(m2[1]);
    return proc;
  };
  const agent: AgentProcess = {
    transport,
    endpoint: "",
    port: 0,
    logFile,
    proc: await spawn(mode),
    events(type) {
      // The three agents log slightly different shapes; normalise to {type: snake_case, id}.
      const lines = readJsonLines(logFile)
        .map((l) => ({ ...l, type: String(l.type).replace(/[A-Z]/g, (c) => "_" + c.toLowerCase()), id: l.id ?? l.correlationId }));
      return type ? lines.filter((l) => l.type === type) : lines;
    },
    async kill(signal = "SIGKILL") {
      if (agent.proc.exitCode === null && agent.proc.signalCode === null) {
        agent.proc.kill(signal);
        await agent.proc.exited;
      }
    },
    async restart(m = mode) {
      await agent.kill();
      agent.proc = await spawn(m);
    },
  };
  agent.port = port;
  agent.endpoint = transport === "uds" ? socket : `http://127.0.0.1:${port}`;
  return agent;
}

/** KDL for an agent block pointing at this process. */
export function agentTransportKdl(a: AgentProcess): string {
  return a.transport === "uds" ? `unix-socket "${a.endpoint}"` : `grpc "${a.endpoint}"`;
}

// ---- the proxy side of agent tests --------------------------------------------------------------

/** A proxy config with one listener, upstream "u" at `up`, the given agent, filter and route blocks, and metrics on. */
export function agentProxyConfig(up: Upstream, agents: string, filters: string, routes: string): string {
  return `
system { graceful-shutdown-timeout-secs 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
agents {
${agents}
}
filters {
${filters}
}
routes {
${routes}
}
observability { metrics { enabled #true; address "127.0.0.1:0"; path "/metrics" } }
`;
}

/** The value of the first series of metric `name` whose label text contains `labels`. */
export async function metric(proxy: ProxyProcess, name: string, labels: string): Promise<number | undefined> {
  const text = await (await fetch(proxy.metricsUrl!)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : undefined;
}

/** A describe block's afterAll: proxy, agent, upstream down, in that order; any may be unset if its start failed. */
export async function stopAll(proxy: ProxyProcess | undefined, agent: { kill(): Promise<void> } | undefined, up: Upstream | undefined): Promise<void> {
  await proxy?.stop("SIGKILL");
  await agent?.kill();
  await up?.stop();
}

/** Requests the upstream saw under `prefix`. */
export function hits(up: Upstream, prefix: string): number {
  return up.requests.filter((r) => r.path.startsWith(prefix)).length;
}

/** fetch with the whole body read, and the time it took. */
export async function timed(url: string, init?: RequestInit): Promise<{ status: number; ms: number; body: string; headers: Headers }> {
  const t0 = performance.now();
  const res = await fetch(url, init);
  const body = await res.text();
  return { status: res.status, ms: performance.now() - t0, body, headers: res.headers };
}

// ---- transports in-process, for the agent tests under test/agents/ -----------------------------

export type LogLine = { level: string; msg: string; fields?: Record<string, unknown> };

/**
 * A gRPC transport (not started) to `endpoint`, or to http://127.0.0.1:<port>, with 1 connection,
 * a 2 s connect timeout and its log lines collected in `logs`; `cleanup` gets its close.
 */
export function grpcTransport(endpoint: string | number, cleanup: Array<() => unknown>, extra: Partial<TransportOptions> = {}): { t: AgentTransport; logs: LogLine[] } {
  const logs: LogLine[] = [];
  const t = createGrpcTransport({
    endpoint: typeof endpoint === "number" ? `http://127.0.0.1:${endpoint}` : endpoint,
    connectTimeoutMs: 2000,
    connections: 1,
    proxyVersion: "0.1.0-test",
    log: (level, msg, fields) => logs.push({ level, msg, fields }),
    ...extra,
  });
  cleanup.push(() => t.close());
  return { t, logs };
}

/** Start `t` and wait (polling every `everyMs`) until it is connected. */
export async function connected(t: AgentTransport, ms = 5000, what = "handshake", everyMs = 5): Promise<void> {
  t.start();
  await waitFor(() => t.isConnected(), ms, what, everyMs);
}

/** A signal that never aborts (for transport calls whose cancellation is not under test). */
export const never = (): AbortSignal => new AbortController().signal;

/** The TransportError `p` rejects with (fails the test if it resolves or rejects otherwise). */
export async function rejection(p: Promise<unknown>): Promise<TransportError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(TransportError);
    return e as TransportError;
  }
  throw new Error("expected a rejection");
}
