// Compatibility with agents we did not write, through the compiled binary:
//   - test/helpers/v1-agent.ts: a legacy v1-framing UDS agent written as spec §5 describes the TS
//     SDK runner (and, with --python, the Python runner), reached with `protocol "auto"` (the
//     default) and with an explicit `protocol "v1"`;
//   - test/helpers/grpcjs-agent.mjs: a gRPC agent on @grpc/grpc-js + @grpc/proto-loader under Node,
//     loading our .proto (bidi ProcessStream; its unary ProcessEvent is covered by
//     test/agents/grpc-interop.test.ts, since the proxy itself only uses ProcessStream).
// Same scenarios as test/agents-proxy.test.ts: allow with mutations, block, fail-closed with the
// agent absent, reconnect, timeouts, circuit breaker; plus the v1 specifics (envelope, one request
// at a time per connection, every event of a request on one connection, request_complete at the
// end so the SDK's per-connection cache is freed) and agents whose framing cannot be detected.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { ROOT, startProxy, tempDir, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { agentProxyConfig, hits, metric, timed, stopAll } from "./helpers/agents.ts";
import { readJsonLines } from "./helpers/jsonl.ts";

setDefaultTimeout(30_000);
const NODE = Bun.which("node");
const V1_AGENT = join(ROOT, "test/helpers/v1-agent.ts");
const GRPCJS_AGENT = join(ROOT, "test/helpers/grpcjs-agent.mjs");

type Json = Record<string, any>;

// ---- agent processes -------------------------------------------------------------------------

interface Variant {
  name: string;
  kind: "v1" | "grpcjs";
  /** extra KDL inside the agent block (protocol setting) */
  protocol: string;
  python?: boolean;
}

const VARIANTS: Variant[] = [
  { name: `v1 agent (TS runner), protocol "auto" (default)`, kind: "v1", protocol: "" },
  { name: `v1 agent (TS runner), protocol "v1"`, kind: "v1", protocol: `protocol "v1"` },
  { name: `v1 agent (Python runner), protocol "auto"`, kind: "v1", protocol: `protocol "auto"`, python: true },
  { name: "grpc-js agent under node", kind: "grpcjs", protocol: "" },
];

interface TestAgent {
  /** transport (+ protocol) lines for the agent block */
  kdl: string;
  logFile: string;
  start(mode: string): Promise<void>;
  kill(): Promise<void>;
  events(type?: string): Json[];
}

async function readyLine(proc: Subprocess<"ignore", "pipe", "inherit">, re: RegExp, timeoutMs = 10_000): Promise<RegExpExecArray> {
  const reader = proc.stdout.getReader();
  const dec = new TextDecoder();
  let buf = "";
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await Promise.race([reader.read(), Bun.sleep(Math.max(1, deadline - Date.now())).then(() => undefined)]);
    if (!r || r.done) break;
    buf += dec.decode(r.value);
    const m = re.exec(buf);
    if (m) {
      reader.releaseLock();
      void proc.stdout.pipeTo(new WritableStream()).catch(() => {});
      return m;
    }
  }
  throw new Error(`agent did not become ready: ${buf}`);
}

function readLog(file: string, type?: string): Json[] {
  const lines = readJsonLines<Json>(file).map((l) => ({ ...l, type: l.type ?? l.event_type }));
  return type ? lines.filter((l) => l.type === type) : lines;
}

/** An agent of this variant in its own temp dir; restarts reuse the socket path / port. */
async function makeAgent(v: Variant): Promise<TestAgent> {
  const dir = tempDir("sentinel-compat-agent-");
  const logFile = join(dir, "events.jsonl");
  let proc: Subprocess<"ignore", "pipe", "inherit"> | null = null;
  let port = 0;
  const socket = join(dir, "agent.sock");
  if (v.kind === "grpcjs") {
    // Reserve a port: start once on port 0, remember it, stop.
    const p = Bun.spawn([NODE!, GRPCJS_AGENT, "--listen", "127.0.0.1:0", "--mode", "allow"], { cwd: ROOT, stdin: "ignore", stdout: "pipe", stderr: "inherit" });
    port = Number((await readyLine(p, /LISTENING (\d+)/))[1]);
    p.kill("SIGKILL");
    await p.exited;
  }
  const agent: TestAgent = {
    kdl: v.kind === "v1" ? [`unix-socket "${socket}"`, v.protocol].filter(Boolean).join("; ") : `grpc "http://127.0.0.1:${port}"`,
    logFile,
    async start(mode) {
      await agent.kill();
      if (v.kind === "v1") {
        const args = [process.execPath, V1_AGENT, "--socket", socket, "--mode", mode, "--log", logFile, ...(v.python ? ["--python"] : [])];
        proc = Bun.spawn(args, { cwd: ROOT, stdin: "ignore", stdout: "pipe", stderr: "inherit" });
        await readyLine(proc, /^ready /m);
      } else {
        const args = [NODE!, GRPCJS_AGENT, "--listen", `127.0.0.1:${port}`, "--mode", mode, "--log", logFile];
        for (let attempt = 0; ; attempt++) {
          proc = Bun.spawn(args, { cwd: ROOT, stdin: "ignore", stdout: "pipe", stderr: "inherit" });
          try {
            await readyLine(proc, /LISTENING (\d+)/);
            break;
          } catch (e) {
            // The port may still be held for a moment after a kill.
            proc.kill("SIGKILL");
            await proc.exited;
            if (attempt >= 20) throw e;
            await Bun.sleep(100);
          }
        }
      }
    },
    async kill() {
      const p = proc;
      proc = null;
      if (p && p.exitCode === null && p.signalCode === null) {
        p.kill("SIGKILL");
        await p.exited;
      }
    },
    events: (type) => readLog(logFile, type),
  };
  return agent;
}

// ---- proxy helpers -----------------------------------------------------------------------------

/** COMPAT_DEBUG=1: print the proxy's log lines (above debug) when a describe block ends. */
function dumpLogs(proxy: ProxyProcess | undefined): void {
  if (!process.env.COMPAT_DEBUG || !proxy) return;
  for (const l of proxy.logs) if (l.level !== "debug" || process.env.COMPAT_DEBUG === "all") console.error(JSON.stringify(l));
}

/** afterAll of each describe block: the logs (with COMPAT_DEBUG), then everything down. */
function teardown(proxy: ProxyProcess | undefined, agent: TestAgent | undefined, up: Upstream | undefined): Promise<void> {
  dumpLogs(proxy);
  return stopAll(proxy, agent, up);
}

/**
 * Wait until the proxy logs "agent connected" for `agent` after log index `mark` (and, with
 * `afterDisconnect`, after an "agent disconnected" that follows `mark`). Waiting on the log rather
 * than hammering the route keeps connect failures out of the circuit breaker.
 */
async function connectedSince(proxy: ProxyProcess, agent: string, mark: number, afterDisconnect = false): Promise<void> {
  await waitFor(
    () => {
      const after = proxy.logs.slice(mark);
      let from = 0;
      if (afterDisconnect) {
        from = after.findIndex((l) => l.agent === agent && l.msg === "agent disconnected");
        if (from < 0) return false;
      }
      return after.slice(from).some((l) => l.agent === agent && l.msg === "agent connected");
    },
    15_000,
    `agent ${agent} connected`,
  );
}

/** Restart the agent process in `mode` and wait until the proxy is connected to the new one. */
async function restart(proxy: ProxyProcess, agent: TestAgent, id: string, mode: string): Promise<void> {
  const mark = proxy.logs.length;
  await agent.start(mode);
  await connectedSince(proxy, id, mark, true);
}

function burst(url: string, n: number) {
  return Promise.all(Array.from({ length: n }, (_, i) => timed(`${url}/${i}`, i % 2 ? { method: "POST", body: "x".repeat(100) } : undefined)));
}

// ---- scenarios per variant ---------------------------------------------------------------------

for (const v of VARIANTS) {
  const isV1 = v.kind === "v1";
  const skip = v.kind === "grpcjs" && !NODE;

  describe.skipIf(skip)(`${v.name}: decisions`, () => {
    let up: Upstream;
    let agent: TestAgent;
    let proxy: ProxyProcess;
    beforeAll(async () => {
      up = startUpstream("u");
      agent = await makeAgent(v);
      await agent.start("allow-with-mutations");
      proxy = await startProxy(
        agentProxyConfig(
          up,
          `agent "compat" type="auth" { ${agent.kdl}; events "request_headers" "request_body" "response_headers" "response_body" "request_complete"; timeout-ms 3000; failure-mode "closed"; config { mode "compat"; level 2 } }`,
          `filter "compat" { type "agent"; agent "compat" }`,
          `route "compat" { matches { path-prefix "/c" }; upstream "u"; filters "compat" }`,
        ),
      );
      await connectedSince(proxy, "compat", 0);
      expect((await fetch(`${proxy.url}/c/warm`)).status).toBe(200);
    });
    afterAll(() => teardown(proxy, agent, up));

    test("allow: request header mutations reach the upstream, response header ops reach the client", async () => {
      const res = await fetch(`${proxy.url}/c/allow`, { headers: { "x-strip-me": "1", "x-request-tag": "tag-allow" } });
      expect(res.status).toBe(200);
      const rec = up.requests.filter((r) => r.path === "/c/allow").at(-1)!;
      expect(rec.headers["x-strip-me"]).toBeUndefined();
      expect(res.headers.get("x-request-tag")).toBe("tag-allow");
      if (isV1) {
        expect(rec.headers["x-v1-agent"]).toBe("1");
        // response header ops returned on request headers (D20) are applied at response time
        expect(res.headers.get("x-v1-resp")).toBe("1");
        expect(res.headers.get("x-v1-saw-status")).toBe("200");
      } else {
        expect(rec.headers["x-grpcjs-agent"]).toBe("1");
        expect(res.headers.get("x-grpcjs")).toBe("1");
        expect(res.headers.get("x-grpcjs-saw-status")).toBe("200");
      }
    });

    test("block: the agent's status and body; the upstream saw nothing", async () => {
      const before = hits(up, "/c/blocked");
      const res = await timed(`${proxy.url}/c/blocked`, { headers: { "x-decision": "block" } });
      expect(res.status).toBe(403);
      expect(res.body).toBe(isV1 ? "blocked by v1 agent" : "blocked by header");
      if (!isV1) expect(res.headers.get("x-blocked-by")).toBe("grpcjs");
      expect(hits(up, "/c/blocked")).toBe(before);
    });

    test("every event of a request reaches the agent, request_complete last", async () => {
      const res = await fetch(`${proxy.url}/c/body/echo`, { method: "POST", body: "plain body", headers: { "x-request-tag": "tag-order" } });
      expect(res.status).toBe(200);
      const id = agent.events("request_headers").find((e) => e.headers?.["x-request-tag"] === "tag-order" || e.headers?.["x-request-tag"]?.[0] === "tag-order")!.id;
      await waitFor(() => agent.events("request_complete").some((e) => e.id === id), 5000, "request_complete");
      const seq = agent.events().filter((e) => e.id === id).map((e) => e.type);
      expect(seq).toEqual(["request_headers", "request_body_chunk", "response_headers", "response_body_chunk", "request_complete"]);
    });

    if (isV1) {
      test("v1: config {} arrives as the first event of every connection, with the agent's id", () => {
        const conns = new Map<number, Json[]>();
        for (const e of agent.events()) conns.set(e.conn, [...(conns.get(e.conn) ?? []), e]);
        expect(conns.size).toBeGreaterThan(0);
        for (const evs of conns.values()) {
          if (evs[0]!.type === "connection_closed") continue;
          expect(evs[0]!.type).toBe("configure");
          expect(evs[0]!.config).toEqual({ mode: "compat", level: 2 });
          expect(evs[0]!.agent_id).toBe("compat");
        }
      });

      test("v1: base64 body mutations in both phases (request body replaced, response body replaced)", async () => {
        const ok = await fetch(`${proxy.url}/c/body/echo`, { method: "POST", body: "please REPLACE me" });
        expect(ok.status).toBe(200);
        // the request body mutation reached the upstream (echo), the response body mutation
        // turned nothing here ("please…" does not start with "ok ")
        expect(await ok.text()).toBe("please REPLACED me");
        const plain = await fetch(`${proxy.url}/c/plain`);
        expect(await plain.text()).toBe("OK u");
        const before = hits(up, "/c/body");
        const evil = await fetch(`${proxy.url}/c/body/echo`, { method: "POST", body: "an EVIL body" });
        expect(evil.status).toBe(403);
        expect(hits(up, "/c/body")).toBe(before);
      });

      test("v1: a challenge without params (TS SDK shape, D19) is answered as a challenge with params {}", async () => {
        const res = await fetch(`${proxy.url}/c/challenge`, { headers: { "x-decision": "challenge" } });
        expect(res.status).toBe(403);
        expect(res.headers.get("x-sentinel-challenge")).toBe("captcha");
        expect(await res.json()).toEqual({ challenge: "captcha", params: {} });
        expect(hits(up, "/c/challenge")).toBe(0);
      });

      test("v1: a hook that throws is answered Allow by the SDK (the proxy cannot tell; spec §5)", async () => {
        const res = await fetch(`${proxy.url}/c/throws`, { headers: { "x-decision": "throw" } });
        expect(res.status).toBe(200);
        expect(hits(up, "/c/throws")).toBe(1);
      });

      test("v1: one request at a time per connection, every event of a request on one connection, request_complete frees the per-connection cache", async () => {
        const N = 40;
        const results = await Promise.all(
          Array.from({ length: N }, async (_, i) => {
            const init: RequestInit = { headers: { "x-request-tag": `many-${i}` } };
            if (i % 2) Object.assign(init, { method: "POST", body: `body ${i}` });
            const res = await fetch(`${proxy.url}/c/many/${i % 2 ? "echo" : "x"}`, init);
            await res.arrayBuffer();
            return res.status;
          }),
        );
        expect(results.every((s) => s === 200)).toBe(true);
        const ids = new Map<string, number>(); // correlation id -> connection
        for (const e of agent.events("request_headers")) {
          const tag = e.headers?.["x-request-tag"]?.[0];
          if (typeof tag === "string" && tag.startsWith("many-")) ids.set(e.id, e.conn);
        }
        expect(ids.size).toBe(N);
        await waitFor(() => agent.events("request_complete").filter((e) => ids.has(e.id)).length === N, 5000, "request_complete for every request");
        for (const e of agent.events()) if (ids.has(e.id)) expect(e.conn).toBe(ids.get(e.id));
        // The cache-size log line after the last request_complete: nothing left cached anywhere.
        const last = agent.events().at(-1)!;
        expect(last.type).toBe("request_complete");
        expect(last.total_cache).toBe(0);
        expect(Math.max(...agent.events("request_complete").map((e) => e.cache))).toBeLessThanOrEqual(N);
      });

      test("v1: a 300 KiB body goes out in ≤ 32 KiB chunks, one frame each, and reaches the upstream intact", async () => {
        const body = new Uint8Array(300 * 1024).map((_, i) => 97 + (i % 26));
        const res = await fetch(`${proxy.url}/c/big/sha`, { method: "POST", body });
        expect(res.status).toBe(200);
        const got = (await res.json()) as { bytes: number; sha256: string };
        expect(got.bytes).toBe(body.length);
        expect(got.sha256).toBe(new Bun.CryptoHasher("sha256").update(body).digest("hex"));
        const reqHeaders = agent.events("request_headers").filter((e) => e.uri === "/c/big/sha").at(-1)!;
        const chunks = agent.events("request_body_chunk").filter((e) => e.id === reqHeaders.id);
        expect(chunks.length).toBe(Math.ceil(body.length / (32 * 1024)));
        expect(chunks.every((c) => c.bytes <= 32 * 1024 && c.conn === reqHeaders.conn)).toBe(true);
        expect(chunks.map((c) => c.chunk_index)).toEqual(chunks.map((_, i) => i));
        expect(chunks.at(-1)!.is_last).toBe(true);
        // The Python runner closes a connection on a frame that does not arrive in one piece
        // (its other closes are its answer to the v2 handshake probe: invalid JSON).
        expect(agent.events("connection_closed").filter((e) => !String(e.reason).startsWith("invalid JSON"))).toEqual([]);
      });
    } else {
      test("grpc-js: request bodies pass (body mutations cannot be carried over gRPC, §6.4)", async () => {
        const res = await fetch(`${proxy.url}/c/body/echo`, { method: "POST", body: "please REPLACE me" });
        expect(res.status).toBe(200);
        expect(await res.text()).toBe("please REPLACE me");
      });
    }
  });

  if (isV1) {
    describe(`${v.name}: a request whose agent connection died between its events`, () => {
      let up: Upstream;
      let agent: TestAgent;
      let proxy: ProxyProcess;
      beforeAll(async () => {
        up = startUpstream("u");
        agent = await makeAgent(v);
        await agent.start("allow-with-mutations");
        proxy = await startProxy(
          agentProxyConfig(
            up,
            `agent "compat" { ${agent.kdl}; events "request_headers" "request_body"; timeout-ms 2000; failure-mode "closed" }`,
            `filter "compat" { type "agent"; agent "compat" }`,
            `route "compat" { matches { path-prefix "/v" }; upstream "u"; filters "compat" }`,
          ),
        );
        await connectedSince(proxy, "compat", 0);
      });
      afterAll(() => teardown(proxy, agent, up));

      test("its body is not sent on another connection (the SDK would skip its hooks and allow it): fail-closed", async () => {
        const enc = new TextEncoder();
        let release!: () => void;
        const gate = new Promise<void>((r) => (release = r));
        const body = new ReadableStream<Uint8Array>({
          async start(c) {
            c.enqueue(enc.encode("an EV"));
            await gate;
            c.enqueue(enc.encode("IL body"));
            c.close();
          },
        });
        const pending = fetch(`${proxy.url}/v/split/echo`, { method: "POST", body, duplex: "half" } as RequestInit);
        await waitFor(() => agent.events("request_headers").some((e) => e.uri === "/v/split/echo"), 5000, "request_headers seen");
        await restart(proxy, agent, "compat", "allow-with-mutations");
        release();
        const res = await pending;
        await res.arrayBuffer();
        expect(res.status).toBe(503);
        expect(hits(up, "/v/split")).toBe(0);
        // the new agent process never saw a body for a request it holds no headers for
        const id = agent.events("request_headers").find((e) => e.uri === "/v/split/echo")!.id;
        expect(agent.events("request_body_chunk").filter((e) => e.id === id)).toEqual([]);
        // and the same request made again in one piece is inspected (and blocked) normally
        const again = await fetch(`${proxy.url}/v/split/echo`, { method: "POST", body: "an EVIL body" });
        expect(again.status).toBe(403);
      });
    });
  }

  describe.skipIf(skip)(`${v.name}: failure modes and reconnect`, () => {
    let up: Upstream;
    let agent: TestAgent;
    let proxy: ProxyProcess;
    beforeAll(async () => {
      up = startUpstream("u");
      agent = await makeAgent(v); // not started: absent when the proxy starts
      proxy = await startProxy(
        agentProxyConfig(
          up,
          // The breaker is the subject of its own test below; here it must not open.
          `agent "compat" { ${agent.kdl}; timeout-ms 300; failure-mode "closed"; circuit-breaker { failure-threshold 1000; success-threshold 1; timeout-seconds 1; half-open-max-requests 1 } }`,
          `filter "closed" { type "agent"; agent "compat"; failure-mode "closed" }
filter "open" { type "agent"; agent "compat"; failure-mode "open" }`,
          `route "closed" { matches { path-prefix "/closed" }; upstream "u"; filters "closed" }
route "open" { matches { path-prefix "/open" }; upstream "u"; filters "open" }`,
        ),
      );
    });
    afterAll(() => teardown(proxy, agent, up));


    test("agent absent at start: fail-closed lets zero requests through; fail-open passes", async () => {
      const closed = await burst(`${proxy.url}/closed/absent`, 20);
      expect(closed.map((r) => r.status)).toEqual(closed.map(() => 503));
      expect(closed.every((r) => r.ms < 300)).toBe(true);
      expect(hits(up, "/closed/absent")).toBe(0);
      const open = await burst(`${proxy.url}/open/absent`, 20);
      expect(open.every((r) => r.status === 200)).toBe(true);
    });

    test("the agent started later is used without restarting the proxy", async () => {
      const mark = proxy.logs.length;
      await agent.start("allow-with-mutations");
      await connectedSince(proxy, "compat", mark);
      const res = await fetch(`${proxy.url}/closed/now`);
      expect(res.status).toBe(200);
      expect(up.requests.at(-1)!.headers[isV1 ? "x-v1-agent" : "x-grpcjs-agent"]).toBe("1");
    });

    test("reconnect: killed, then restarted on the same socket/port, it is used again", async () => {
      await agent.kill();
      const down = await burst(`${proxy.url}/closed/down`, 6);
      expect(down.every((r) => r.status >= 500)).toBe(true);
      expect(hits(up, "/closed/down")).toBe(0);
      const mark = proxy.logs.length;
      await agent.start("header-block");
      await connectedSince(proxy, "compat", mark);
      expect((await fetch(`${proxy.url}/closed/back`)).status).toBe(200);
      const blocked = await fetch(`${proxy.url}/closed/back-blocked`, { headers: { "x-decision": "block" } });
      expect(blocked.status).toBe(403);
      expect(hits(up, "/closed/back-blocked")).toBe(0);
    });

    test("hung agent: fail-closed answers 504 at the timeout with zero bypass; fail-open passes", async () => {
      await restart(proxy, agent, "compat", "hang");
      const closed = await Promise.all(Array.from({ length: 3 }, (_, i) => timed(`${proxy.url}/closed/hung/${i}`)));
      for (const r of closed) {
        expect(r.status).toBe(504);
        expect(r.ms).toBeGreaterThan(250);
        expect(r.ms).toBeLessThan(700);
      }
      expect(hits(up, "/closed/hung")).toBe(0);
      const open = await Promise.all(Array.from({ length: 3 }, (_, i) => timed(`${proxy.url}/open/hung/${i}`)));
      for (const r of open) expect(r.status).toBe(200);
    });

    test("a well-behaved agent is used again after all of that", async () => {
      await restart(proxy, agent, "compat", "allow-with-mutations");
      expect((await fetch(`${proxy.url}/closed/final`)).status).toBe(200);
    });
  });

  describe.skipIf(skip)(`${v.name}: circuit breaker`, () => {
    let up: Upstream;
    let agent: TestAgent;
    let proxy: ProxyProcess;
    beforeAll(async () => {
      up = startUpstream("u");
      agent = await makeAgent(v);
      await agent.start("allow");
      proxy = await startProxy(
        agentProxyConfig(
          up,
          `agent "cb" { ${agent.kdl}; timeout-ms 150; failure-mode "closed"
  circuit-breaker { failure-threshold 3; success-threshold 2; timeout-seconds 1; half-open-max-requests 1 } }`,
          `filter "cb" { type "agent"; agent "cb" }`,
          `route "cb" { matches { path-prefix "/cb" }; upstream "u"; filters "cb" }`,
        ),
      );
      await connectedSince(proxy, "cb", 0);
      expect((await fetch(`${proxy.url}/cb/warm`)).status).toBe(200);
    });
    afterAll(() => teardown(proxy, agent, up));

    test("after failure-threshold failures the agent is not contacted until timeout-seconds; then one half-open probe; then closed", async () => {
      await restart(proxy, agent, "cb", "hang");
      expect(await metric(proxy, "sentinel_agent_circuit_state", 'agent="cb"')).toBe(0);
      for (let i = 0; i < 3; i++) expect((await timed(`${proxy.url}/cb/fail`)).status).toBe(504);
      const openedAt = Date.now();
      expect(await metric(proxy, "sentinel_agent_circuit_state", 'agent="cb"')).toBe(1);
      await Bun.sleep(100);
      const seen = agent.events("request_headers").length;
      const open = await Promise.all(Array.from({ length: 10 }, () => timed(`${proxy.url}/cb/open`)));
      for (const r of open) {
        expect(r.status).toBe(503);
        expect(r.ms).toBeLessThan(100);
      }
      await Bun.sleep(100);
      expect(agent.events("request_headers").length).toBe(seen);
      expect(hits(up, "/cb/fail") + hits(up, "/cb/open")).toBe(0);

      // The agent recovers (answering after 60 ms, so that concurrent probes overlap); the breaker
      // stays open until timeout-seconds, then half-open admits exactly one probe at a time.
      const beforeRecovery = agent.events("request_headers").length;
      await restart(proxy, agent, "cb", "delay:60");
      if (Date.now() - openedAt < 900) {
        // Still open: refused at once, the recovered agent is not contacted either.
        expect((await timed(`${proxy.url}/cb/still-open`)).status).toBe(503);
        expect(agent.events("request_headers").length).toBe(beforeRecovery);
      }
      await Bun.sleep(Math.max(0, openedAt + 1100 - Date.now()));
      const probes = await Promise.all(Array.from({ length: 10 }, () => timed(`${proxy.url}/cb/probe`)));
      expect(probes.filter((r) => r.status === 200).length).toBe(1);
      expect(probes.filter((r) => r.status === 503).length).toBe(9);
      expect((await timed(`${proxy.url}/cb/second`)).status).toBe(200);
      expect(await metric(proxy, "sentinel_agent_circuit_state", 'agent="cb"')).toBe(0);
      // (4 at once: a v1 connection carries one request at a time, and there are 4 by default)
      const after = await Promise.all(Array.from({ length: 4 }, () => timed(`${proxy.url}/cb/closed`)));
      expect(after.every((r) => r.status === 200)).toBe(true);
    }, 40_000);
  });
}

// ---- agents whose framing cannot be detected ---------------------------------------------------

type Bad = { name: string; serve: (path: string) => { stop(): void } };

const BAD: Bad[] = [
  {
    name: "accepts and closes every connection at once",
    serve: (unix) => Bun.listen({ unix, socket: { open: (s) => void s.end(), data() {} } }),
  },
  {
    name: "answers every read with garbage",
    serve: (unix) => Bun.listen({ unix, socket: { data: (s) => void s.write("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n") } }),
  },
  {
    name: "greets every connection with garbage, then stays silent",
    serve: (unix) => Bun.listen({ unix, socket: { open: (s) => void s.write("SSH-2.0-OpenSSH_9.6\r\n"), data() {} } }),
  },
  {
    name: "accepts and never says anything",
    serve: (unix) => Bun.listen({ unix, socket: { data() {} } }),
  },
];

describe("UDS agent whose framing cannot be detected (protocol auto)", () => {
  for (const bad of BAD) {
    test(`${bad.name}: a clear log line naming the agent; fail-closed answers 503 at once, fail-open passes`, async () => {
      const up = startUpstream("u");
      const dir = tempDir("sentinel-compat-bad-");
      const socket = join(dir, "bad.sock");
      const server = bad.serve(socket);
      const proxy = await startProxy(
        agentProxyConfig(
          up,
          `agent "mystery" { unix-socket "${socket}"; timeout-ms 1000; failure-mode "closed" }`,
          `filter "closed" { type "agent"; agent "mystery"; failure-mode "closed" }
filter "open" { type "agent"; agent "mystery"; failure-mode "open" }`,
          `route "closed" { matches { path-prefix "/closed" }; upstream "u"; filters "closed" }
route "open" { matches { path-prefix "/open" }; upstream "u"; filters "open" }`,
        ),
      );
      try {
        const line = await proxy.waitForLog((l) => l.agent === "mystery" && String(l.msg).startsWith("agent framing could not be detected"), 10_000);
        expect(line.level).toBe("error");
        expect(line.endpoint).toBe(socket);
        expect(typeof line.v2_probe).toBe("string");
        expect(typeof line.v1_probe).toBe("string");
        // Let it cycle through detection a few times: every request is answered by the failure
        // mode, none hangs, none reaches the upstream on the closed route.
        for (let round = 0; round < 3; round++) {
          const closed = await Promise.all(Array.from({ length: 5 }, (_, i) => timed(`${proxy.url}/closed/${round}/${i}`)));
          for (const r of closed) {
            expect(r.status).toBe(503);
            expect(r.ms).toBeLessThan(1000);
          }
          const open = await Promise.all(Array.from({ length: 5 }, (_, i) => timed(`${proxy.url}/open/${round}/${i}`)));
          for (const r of open) expect(r.status).toBe(200);
          await Bun.sleep(500);
        }
        expect(hits(up, "/closed/")).toBe(0);
        // Nothing was ever "connected" (no request data went to the peer), and the log is not
        // flooded: detection keeps retrying, the error line is rate limited.
        const mine = proxy.logs.filter((l) => l.agent === "mystery");
        expect(mine.filter((l) => l.msg === "agent connected")).toEqual([]);
        expect(mine.filter((l) => String(l.msg).startsWith("agent framing could not be detected")).length).toBe(1);
        expect(mine.filter((l) => l.level === "warn" || l.level === "error").length).toBeLessThanOrEqual(2);
      } finally {
        await proxy.stop("SIGKILL");
        server.stop();
        await up.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    }, 30_000);
  }
});
