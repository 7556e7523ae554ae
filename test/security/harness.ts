// Shared pieces of the security suite: the catalog's test configuration, the hostile agent
// processes, a raw client that parses every response on a connection, and metric scraping.
//
// Catalog test config (reliability-catalog.md §1): routes /public/* (no agent), /admin/* and
// /protected/* (agent "auth", fail-closed), /open/* (agent "waf", fail-open), /ws/* (websocket);
// limits: 8 KiB head, 100 fields, 8 KiB URI, 1 MiB body; agent timeout 200 ms, 10 concurrent
// calls, breaker 5 / 2 / 2 s / 1; upstream timeout 5 s.
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { ROOT, startProxy, tempDir, waitFor, type ProxyProcess } from "../helpers/proxy.ts";
import { readJsonLines } from "../helpers/jsonl.ts";

export type Transport = "uds" | "grpc";

// ------------------------------------------------------------------------------ agents

export interface AgentEventLine {
  t: number;
  type: string;
  id: string;
  mode: string;
  uri?: string;
  ip?: string;
  h: Record<string, string[]>;
  /** Every request header name the agent saw. */
  names: string[];
}

export interface HostileAgent {
  transport: Transport;
  endpoint: string;
  logFile: string;
  proc: Subprocess;
  kdl(): string;
  setMode(mode: string): Promise<void>;
  flood(on: boolean): Promise<void>;
  stats(): Promise<{ events: number; inflight: number; maxInflight: number; connections: number }>;
  resetStats(): Promise<void>;
  events(type?: string): AgentEventLine[];
  alive(): boolean;
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Start again on the same socket path / port, with the given default mode. */
  restart(mode?: string): Promise<void>;
}

const AGENT_SCRIPT = join(import.meta.dir, "hostile-agent.ts");

export async function startHostileAgent(transport: Transport, opts: { mode?: string; dir?: string; name?: string; log?: boolean } = {}): Promise<HostileAgent> {
  const dir = opts.dir ?? tempDir("sentinel-sec-agent-");
  const name = opts.name ?? "agent";
  const logFile = join(dir, `${name}.jsonl`);
  const socket = join(dir, `${name}.sock`);
  let port = 0;
  let control = "";
  const spawn = async (mode: string) => {
    const log = opts.log === false ? [] : ["--log", logFile];
    const args =
      transport === "uds"
        ? ["--transport", "uds", "--socket", socket, ...log, "--mode", mode]
        : ["--transport", "grpc", "--listen", `127.0.0.1:${port}`, ...log, "--mode", mode];
    const proc = Bun.spawn([process.execPath, AGENT_SCRIPT, ...args], { stdin: "ignore", stdout: "pipe", stderr: "inherit", cwd: ROOT });
    const reader = proc.stdout.getReader();
    const dec = new TextDecoder();
    let buf = "";
    const deadline = Date.now() + 15_000;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`hostile agent did not start: ${buf}`);
      const r = await Promise.race([reader.read(), Bun.sleep(left).then(() => undefined)]);
      if (!r || r.done) throw new Error(`hostile agent exited: ${buf}`);
      buf += dec.decode(r.value);
      const m = /READY (\S+) (\d+)/.exec(buf);
      if (m) {
        reader.releaseLock();
        void proc.stdout.pipeTo(new WritableStream()).catch(() => {});
        if (transport === "grpc") port = Number(/:(\d+)$/.exec(m[1]!)![1]);
        control = `http://127.0.0.1:${m[2]}`;
        return proc;
      }
    }
  };
  const agent: HostileAgent = {
    transport,
    endpoint: "",
    logFile,
    proc: await spawn(opts.mode ?? "auth"),
    kdl: () => (transport === "uds" ? `unix-socket "${socket}"` : `grpc "http://127.0.0.1:${port}"`),
    async setMode(mode) {
      await fetch(`${control}/mode`, { method: "PUT", body: mode });
    },
    async flood(on) {
      await fetch(`${control}/flood`, { method: "PUT", body: on ? "on" : "off" });
    },
    async stats() {
      return (await fetch(`${control}/stats`)).json() as never;
    },
    async resetStats() {
      await fetch(`${control}/reset`, { method: "POST" });
    },
    events(type) {
      const lines = readJsonLines<AgentEventLine>(logFile);
      return type ? lines.filter((l) => l.type === type) : lines;
    },
    alive: () => agent.proc.exitCode === null && agent.proc.signalCode === null,
    async kill(signal = "SIGKILL") {
      if (agent.alive()) {
        agent.proc.kill(signal);
        await agent.proc.exited;
      }
    },
    async restart(mode = "auth") {
      await agent.kill();
      agent.proc = await spawn(mode);
    },
  };
  agent.endpoint = transport === "uds" ? socket : `http://127.0.0.1:${port}`;
  return agent;
}

// ------------------------------------------------------------------------------ config

export interface CatalogOptions {
  upstream: string; // host:port of the raw recording upstream
  wsUpstream?: string;
  auth: string; // KDL transport line of agent A
  waf?: string; // KDL transport line of agent W (defaults to A's)
  system?: string;
  listener?: string;
  upstreamExtra?: string;
  extraUpstreams?: string;
  authExtra?: string;
  extraAgents?: string;
  extraFilters?: string;
  extraRoutes?: string;
  limits?: string;
  /** max-concurrent-calls of both catalog agents (default 10). */
  agentConcurrency?: number;
}

export function catalogConfig(o: CatalogOptions): string {
  return `
system { ${o.system?.includes("graceful-shutdown-timeout-secs") ? "" : "graceful-shutdown-timeout-secs 10;"} ${o.system ?? ""} }
listeners { listener "main" { address "127.0.0.1:0"; ${o.listener ?? ""} } }
limits { ${o.limits ?? `max-header-size 8192; max-header-count 100; max-body-size "1MiB"; max-uri-length 8192`} }
upstreams {
  upstream "u" { target "${o.upstream}"; timeouts { request-secs 5 }; ${o.upstreamExtra ?? ""} }
  ${o.wsUpstream ? `upstream "ws" { target "${o.wsUpstream}" }` : ""}
  ${o.extraUpstreams ?? ""}
}
agents {
  agent "auth" type="auth" { ${o.auth}; timeout-ms 200; failure-mode "closed"; max-concurrent-calls ${o.agentConcurrency ?? 10}
    circuit-breaker { failure-threshold 5; success-threshold 2; timeout-seconds 2; half-open-max-requests 1 }
    ${o.authExtra ?? ""} }
  agent "waf" type="waf" { ${o.waf ?? o.auth}; timeout-ms 200; failure-mode "open"; max-concurrent-calls ${o.agentConcurrency ?? 10}
    circuit-breaker { failure-threshold 1000; success-threshold 1; timeout-seconds 1; half-open-max-requests 1 } }
  ${o.extraAgents ?? ""}
}
filters {
  filter "auth" { type "agent"; agent "auth" }
  filter "waf" { type "agent"; agent "waf" }
  ${o.extraFilters ?? ""}
}
routes {
  route "public" { matches { path-prefix "/public" }; upstream "u"; policies { request-headers { remove "X-Auth-User" } } }
  route "admin" { matches { path-prefix "/admin" }; upstream "u"; filters "auth" }
  route "protected" { matches { path-prefix "/protected" }; upstream "u"; filters "auth" }
  route "open" { matches { path-prefix "/open" }; upstream "u"; filters "waf" }
  ${o.wsUpstream ? `route "ws" { matches { path-prefix "/ws" }; upstream "ws"; websocket #true }` : ""}
  ${o.extraRoutes ?? ""}
}
observability { metrics { enabled #true; address "127.0.0.1:0"; path "/metrics" } }
`;
}

export { startProxy, tempDir, waitFor, type ProxyProcess };

// ------------------------------------------------------------------------------ raw client

export interface ParsedResponse {
  status: number;
  head: string;
  headers: Array<[string, string]>;
  body: Buffer;
  complete: boolean;
}

export interface Exchange {
  text: string;
  responses: ParsedResponse[];
  statuses: number[];
  /** The server closed the connection (or reset it). */
  closed: boolean;
  /** ms from connect to close, when closed. */
  closedMs?: number;
  /** ms from connect to the first byte received, when any was. */
  firstByteMs?: number;
  elapsedMs: number;
}

export function header(r: ParsedResponse, name: string): string[] {
  return r.headers.filter(([k]) => k.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
}

/** Parse every response in a byte stream (CL, chunked, 1xx, 204/304, close-delimited). */
export function parseResponses(buf: Buffer, headMethods: boolean[] = []): ParsedResponse[] {
  const out: ParsedResponse[] = [];
  let off = 0;
  let finals = 0;
  while (off < buf.length) {
    const end = buf.indexOf("\r\n\r\n", off);
    if (end < 0) break;
    const head = buf.subarray(off, end).toString("latin1");
    const lines = head.split("\r\n");
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!);
    if (!m) break;
    const status = Number(m[1]);
    const headers: Array<[string, string]> = lines.slice(1).map((l) => {
      const c = l.indexOf(":");
      return [l.slice(0, c), l.slice(c + 1).trim()];
    });
    const get = (n: string) => headers.find(([k]) => k.toLowerCase() === n)?.[1];
    let p = end + 4;
    if (status < 200) {
      out.push({ status, head, headers, body: Buffer.alloc(0), complete: true });
      off = p;
      continue;
    }
    const isHead = headMethods[finals++] === true;
    if (isHead || status === 204 || status === 304) {
      out.push({ status, head, headers, body: Buffer.alloc(0), complete: true });
      off = p;
      continue;
    }
    const te = get("transfer-encoding");
    const cl = get("content-length");
    if (te && /chunked/i.test(te)) {
      const parts: Buffer[] = [];
      let complete = false;
      for (;;) {
        const nl = buf.indexOf("\r\n", p);
        if (nl < 0) break;
        const size = parseInt(buf.subarray(p, nl).toString("latin1"), 16);
        if (Number.isNaN(size)) break;
        if (size === 0) {
          const tEnd = buf.indexOf("\r\n\r\n", nl - 2);
          if (tEnd < 0) break;
          p = tEnd + 4;
          complete = true;
          break;
        }
        if (buf.length < nl + 2 + size + 2) {
          parts.push(buf.subarray(nl + 2, Math.min(buf.length, nl + 2 + size)));
          p = buf.length;
          break;
        }
        parts.push(buf.subarray(nl + 2, nl + 2 + size));
        p = nl + 2 + size + 2;
      }
      out.push({ status, head, headers, body: Buffer.concat(parts), complete });
      off = p;
      if (!complete) break;
    } else if (cl !== undefined) {
      const n = Number(cl);
      const body = buf.subarray(p, Math.min(buf.length, p + n));
      out.push({ status, head, headers, body, complete: body.length === n });
      off = p + body.length;
      if (body.length < n) break;
    } else {
      out.push({ status, head, headers, body: buf.subarray(p), complete: false });
      off = buf.length;
    }
  }
  return out;
}

export interface ExchangeOptions {
  /** Stop once this many final (>= 200) responses are complete (default 1; 0 = wait for close/timeout). */
  responses?: number;
  timeoutMs?: number;
  localAddress?: string;
  /** Which final responses answer HEAD requests (no body). */
  headMethods?: boolean[];
  /** Called with the socket once connected (for slow readers, custom pacing). */
  onSocket?: (s: Socket) => void;
}

/**
 * Send `parts` on one connection (a number is a pause in ms) and collect everything until
 * `responses` final responses are complete, the server closes, or the timeout.
 */
export function exchange(url: string, parts: Array<string | Uint8Array | number>, opts: ExchangeOptions = {}): Promise<Exchange> {
  const u = new URL(url);
  const want = opts.responses ?? 1;
  const t0 = performance.now();
  return new Promise((resolve) => {
    const sock = connect({ host: u.hostname, port: Number(u.port), localAddress: opts.localAddress });
    const chunks: Buffer[] = [];
    let closed = false;
    let closedMs: number | undefined;
    let firstByteMs: number | undefined;
    let finished = false;
    let grace: ReturnType<typeof setTimeout> | undefined;
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      clearTimeout(grace);
      sock.destroy();
      const buf = Buffer.concat(chunks);
      const responses = parseResponses(buf, opts.headMethods);
      resolve({
        text: buf.toString("latin1"),
        responses,
        statuses: responses.map((r) => r.status),
        closed,
        closedMs,
        firstByteMs,
        elapsedMs: performance.now() - t0,
      });
    };
    const timer = setTimeout(finish, opts.timeoutMs ?? 3000);
    sock.on("connect", async () => {
      opts.onSocket?.(sock);
      for (const p of parts) {
        if (typeof p === "number") await Bun.sleep(p);
        else if (!sock.destroyed) sock.write(p);
      }
    });
    sock.on("data", (d: Buffer) => {
      firstByteMs ??= performance.now() - t0;
      chunks.push(d);
      if (want > 0) {
        const rs = parseResponses(Buffer.concat(chunks), opts.headMethods).filter((r) => r.status >= 200 && r.complete);
        if (rs.length >= want && !grace) grace = setTimeout(finish, 30); // catch a close right after
      }
    });
    const onClose = () => {
      if (!closed) {
        closed = true;
        closedMs = performance.now() - t0;
      }
      finish();
    };
    sock.on("end", onClose);
    sock.on("close", onClose);
    sock.on("error", onClose);
  });
}

export const H = "Host: t\r\n";
export const SM = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
export const req = (method: string, path: string, extra = "", body = ""): string => `${method} ${path} HTTP/1.1\r\n${H}${extra}\r\n${body}`;

// ------------------------------------------------------------------------------ metrics

export async function scrape(proxy: ProxyProcess): Promise<string> {
  return (await fetch(proxy.metricsUrl!)).text();
}

/** Sum of the samples of `name` whose label set contains every `labels` fragment. */
export function sample(text: string, name: string, ...labels: string[]): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue;
    if (!labels.every((l) => line.includes(l))) continue;
    sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

export async function metric(proxy: ProxyProcess, name: string, ...labels: string[]): Promise<number> {
  return sample(await scrape(proxy), name, ...labels);
}

/** A fresh connection to /public/canary gets its own answer (no response-queue poisoning). */
export async function canary(proxy: ProxyProcess): Promise<boolean> {
  const r = await exchange(proxy.url, [req("GET", "/public/canary", "Connection: close\r\n")]);
  return r.statuses[0] === 200 && r.responses[0]!.body.toString() === "ok GET /public/canary";
}

export function alive(proxy: ProxyProcess): boolean {
  return proxy.proc.exitCode === null && proxy.proc.signalCode === null;
}

/** Open file descriptors of a process. */
export function fdCount(pid: number): number {
  return require("node:fs").readdirSync(`/proc/${pid}/fd`).length;
}
