// Reliability & security catalog §5 — resource exhaustion (RE-01 … RE-10; RE-07 runs per transport
// in ag-suite.ts). The slow attacks of RE-01/02/03 start together in beforeAll and are checked by
// their own tests, so that the suite waits for Bun's fixed 10 s header timeout only once.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash } from "node:crypto";
import * as net from "node:net";
import { startRawUpstream, type RawUpstream } from "./raw-upstream.ts";
import {
  alive,
  canary,
  catalogConfig,
  exchange,
  fdCount,
  H,
  parseResponses,
  metric,
  req,
  startHostileAgent,
  startProxy,
  waitFor,
  type HostileAgent,
  type ProxyProcess,
} from "./harness.ts";
import { soak } from "../../scripts/soak.ts";

setDefaultTimeout(40_000);

let up: RawUpstream;
let agent: HostileAgent;
let proxy: ProxyProcess;
let port = 0;
let blackhole: ReturnType<typeof Bun.spawn> | undefined;
let blackholePort = 0;
let deadPort = 0;
let baselineFds = 0;

/** Sequential allowed requests until the auth agent's breaker is closed (half-open needs two successes). */
async function breakerClosed(): Promise<void> {
  await waitFor(
    async () => (await fetch(`${proxy.url}/admin/breaker`, { headers: { authorization: "Bearer good" } })).status === 200 && (await metric(proxy, "sentinel_agent_circuit_state", 'agent="auth"')) === 0,
    10_000,
    "auth breaker closed",
  );
}

/** Result of one slow connection: when the server closed it (ms after it opened). */
interface SlowResult {
  closedMs: number | null;
  status: number;
}

function slowConnection(head: string, drip: string | null, dripEveryMs: number, maxMs: number): Promise<SlowResult> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const s = net.connect({ host: "127.0.0.1", port });
    let text = "";
    let timer: ReturnType<typeof setInterval> | undefined;
    const stop = setTimeout(() => finish(null), maxMs);
    function finish(closedMs: number | null) {
      clearInterval(timer);
      clearTimeout(stop);
      s.destroy();
      // the final status (a 100 Continue may come first)
      const finals = [...text.matchAll(/(?:^|\r\n\r\n)HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1])).filter((x) => x >= 200);
      resolve({ closedMs, status: finals[0] ?? 0 });
    }
    s.on("connect", () => {
      if (head) s.write(head);
      if (drip !== null) timer = setInterval(() => !s.destroyed && s.write(drip), dripEveryMs);
    });
    s.on("data", (d) => (text += d.toString("latin1")));
    s.on("close", () => finish(performance.now() - t0));
    s.on("error", () => {});
  });
}

/** Open `n` idle TCP connections; resolves when all are connected, with a promise of their close times. */
async function idleConnections(n: number, localAddress?: string): Promise<{ sockets: net.Socket[]; closed: Promise<number[]> }> {
  const sockets: net.Socket[] = [];
  const closes: Promise<number>[] = [];
  const opened: Promise<void>[] = [];
  // In batches, so that the listen backlog never overflows (a dropped SYN is retried seconds later).
  for (let i = 0; i < n; i += 250) {
    const batch: Promise<void>[] = [];
    for (let j = i; j < Math.min(n, i + 250); j++) {
      const s = net.connect({ host: "127.0.0.1", port, localAddress });
      sockets.push(s);
      const t0 = performance.now();
      batch.push(new Promise((r) => s.once("connect", () => r()).once("error", () => r())));
      closes.push(new Promise((r) => s.once("close", () => r(performance.now() - t0))));
      s.on("error", () => {});
    }
    await Promise.all(batch);
    opened.push(...batch);
  }
  return { sockets, closed: Promise.all(closes) };
}

let slowloris: Promise<SlowResult[]>;
let slowBody: Promise<SlowResult[]>;
let idle: { first: Awaited<ReturnType<typeof idleConnections>>; second: Awaited<ReturnType<typeof idleConnections>>; oneClient: Awaited<ReturnType<typeof idleConnections>>; rssBefore: number; rssAfter: number } | undefined;
let legitDuringAttack: number[] = [];
let re08: Promise<Array<{ path: string; status: number; ms: number }>>;
let slowReader: Promise<{ closedMs?: number; closed: boolean; bytes: number; upstreamReleasedMs?: number; upstreamSent: number }>;
let keepAlive: Promise<{ idleClosedAfterMs: number | null; afterPause: number }>;

beforeAll(async () => {
  up = await startRawUpstream();
  agent = await startHostileAgent("uds");
  // A listener whose accept queue is full: SYNs to it are dropped (a blackholed upstream).
  blackhole = Bun.spawn(
    [
      "python3",
      "-c",
      "import socket,time,sys\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen(0)\np=s.getsockname()[1]\nc=[socket.socket() for _ in range(3)]\nfor x in c:\n  x.setblocking(False)\n  try: x.connect(('127.0.0.1',p))\n  except Exception: pass\nprint(p,flush=True)\ntime.sleep(600)",
    ],
    { stdout: "pipe", stderr: "ignore" },
  );
  const reader = (blackhole.stdout as ReadableStream<Uint8Array>).getReader();
  const { value } = await reader.read();
  blackholePort = Number(new TextDecoder().decode(value).trim());
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
  deadPort = (probe.address() as net.AddressInfo).port;
  probe.close();

  proxy = await startProxy(
    catalogConfig({
      upstream: up.address,
      auth: agent.kdl(),
      system: "idle-timeout-secs 2",
      listener: "keepalive-timeout-secs 3; request-timeout-secs 3",
      upstreamExtra: "",
      extraUpstreams: `
  upstream "slowread" { target "${up.address}"; timeouts { request-secs 5; read-secs 2 } }
  upstream "dead" { target "127.0.0.1:${deadPort}"; timeouts { request-secs 5 } }
  upstream "blackhole" { target "127.0.0.1:${blackholePort}"; timeouts { request-secs 5 } }`,
      extraAgents: `
  agent "inspect" { ${agent.kdl()}; events "request_headers" "request_body"; max-request-body-bytes 1048576; timeout-ms 2000; failure-mode "closed"; max-concurrent-calls 100 }`,
      extraFilters: `
  filter "inspect" { type "agent"; agent "inspect"; failure-mode "closed" }
  filter "inspect-open" { type "agent"; agent "inspect"; failure-mode "open" }`,
      extraRoutes: `
  route "inspect" { matches { path-prefix "/inspect" }; upstream "u"; filters "inspect"; policies { max-body-size "4MB" } }
  route "inspect-open" { matches { path-prefix "/iopen" }; upstream "u"; filters "inspect-open"; policies { max-body-size "4MB" } }
  route "slowread" { matches { path-prefix "/slowread" }; upstream "slowread" }
  route "dead" { matches { path-prefix "/dead" }; upstream "dead" }
  route "blackhole" { matches { path-prefix "/blackhole" }; upstream "blackhole" }`,
    }),
  );
  port = Number(new URL(proxy.url).port);
  await waitFor(async () => (await fetch(`${proxy.url}/admin/warm`, { headers: { authorization: "Bearer good" } })).status === 200, 10_000, "agent ready");
  baselineFds = fdCount(proxy.proc.pid);

  // RE-01, RE-02, RE-03 start now and run side by side.
  slowloris = Promise.all(Array.from({ length: 500 }, () => slowConnection(`GET /public/a HTTP/1.1\r\n${H}X-a: `, "a", 1000, 20_000)));
  slowBody = Promise.all([
    slowConnection(`POST /public/up HTTP/1.1\r\n${H}Content-Length: 100000\r\n\r\n`, "x", 500, 20_000),
    slowConnection(`POST /admin/up HTTP/1.1\r\n${H}Authorization: Bearer good\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n`, "x", 500, 20_000),
  ]);
  slowReader = (async () => {
    const mark = up.mark();
    const t0 = performance.now();
    let released: number | undefined;
    const watch = setInterval(() => {
      const rec = up.since(mark).find((r) => r.target.startsWith("/slowread/"));
      if (rec && released === undefined && up.closedAt.has(rec.conn)) released = performance.now() - t0;
    }, 50);
    const r = await exchange(proxy.url, [req("GET", `/slowread/r/bytes:${50 * 1024 * 1024}/x`)], {
      responses: 0,
      timeoutMs: 13_000,
      onSocket: (s) => void setTimeout(() => s.pause(), 50), // stop reading after the first bytes
    });
    clearInterval(watch);
    const rec = up.since(mark).find((x) => x.target.startsWith("/slowread/"));
    return { closed: r.closed, closedMs: r.closedMs, bytes: r.text.length, upstreamReleasedMs: released, upstreamSent: rec ? (up.sent.get(rec.conn) ?? 0) : Infinity };
  })();
  const rssBefore = proxy.rss();
  const first = await idleConnections(5000);
  const second = await idleConnections(5000);
  const oneClient = await idleConnections(200, "127.0.0.3");
  await Bun.sleep(500);
  idle = { first, second, oneClient, rssBefore, rssAfter: proxy.rss() };
  for (let i = 0; i < 10; i++) {
    const t0 = performance.now();
    const r = await fetch(`${proxy.url}/public/legit`);
    await r.text();
    legitDuringAttack.push(r.status === 200 ? performance.now() - t0 : Infinity);
  }
  // RE-08's four slow cases take the upstream timeout (5 s): they run while the tests do.
  const timed = async (path: string) => {
    const t0 = performance.now();
    const res = await fetch(`${proxy.url}${path}`);
    await res.text();
    return { path, status: res.status, ms: performance.now() - t0 };
  };
  re08 = Promise.all([timed("/public/r/hang/x"), timed("/public/r/slow:6000/x"), timed("/dead/x"), timed("/blackhole/x")]);
  // Keep-alive timers: an idle kept-alive connection is closed at keepalive-timeout-secs (3 s,
  // raised to Bun's minimum useful 5 s: between 4 and 8 s with its 4 s ticks);
  // a request arriving after a pause still gets its whole in-flight time (Bun does not restart
  // its idle timer for it by itself).
  keepAlive = (async () => {
    const idleConn = exchange(proxy.url, [req("GET", "/public/ka-idle")], { responses: 0, timeoutMs: 12_000 });
    const paused = exchange(proxy.url, [req("GET", "/public/ka-first"), 2500, req("GET", "/public/r/slow:4000/ka")], { responses: 2, timeoutMs: 12_000 });
    const [i, p] = await Promise.all([idleConn, paused]);
    return { idleClosedAfterMs: i.closed ? i.closedMs! : null, afterPause: p.statuses[1] ?? 0 };
  })();
});

afterAll(async () => {
  for (const c of [idle?.first, idle?.second, idle?.oneClient]) for (const s of c?.sockets ?? []) s.destroy();
  await proxy?.stop("SIGKILL");
  await agent?.kill();
  await up?.stop();
  blackhole?.kill();
});

describe("RE: limits and floods", () => {
  const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

  test("RE-05 body limits: 1 MiB passes, 1 MiB + 1 is 413 (at once for CL), agent inspection limits follow the failure mode", async () => {
    const MiB = 1024 * 1024;
    for (const n of [MiB - 1, MiB]) {
      const body = new Uint8Array(n).map((_, i) => (i * 13) & 0xff);
      const r = await fetch(`${proxy.url}/public/r/sha/x`, { method: "POST", body });
      expect(await r.json()).toEqual({ sha256: sha(body), bytes: n });
      // chunked
      const c = await fetch(`${proxy.url}/public/r/sha/c`, { method: "POST", body: new Blob([body]).stream(), duplex: "half" } as RequestInit);
      expect(await c.json()).toEqual({ sha256: sha(body), bytes: n });
    }
    const over = await exchange(proxy.url, [`POST /public/over HTTP/1.1\r\n${H}Content-Length: ${MiB + 1}\r\n\r\n`], { responses: 1, timeoutMs: 2000 });
    expect(over.statuses).toEqual([413]);
    expect(over.responses[0]!.head.toLowerCase()).toContain("connection: close");
    const chunkedOver = await fetch(`${proxy.url}/public/over-chunked`, { method: "POST", body: new Blob([new Uint8Array(MiB + 1)]).stream(), duplex: "half" } as RequestInit).then(
      (r) => r.status,
      () => 0,
    );
    expect(chunkedOver).toBe(413); // the rest of the body is drained before the close (lingering close)
    for (const expect100 of ["", "Expect: 100-continue\r\n"]) {
      const big = await exchange(proxy.url, [`POST /public/huge HTTP/1.1\r\n${H}${expect100}Content-Length: 50000000\r\n\r\n`], { responses: 1, timeoutMs: 5000 });
      expect(big.statuses.filter((s) => s >= 200)).toEqual([413]);
      // At once; the answer's last chunk follows the lingering close's drain, which ends when
      // no body byte arrives for 1 s (src/proxy/linger.ts).
      expect(big.firstByteMs!).toBeLessThan(1000);
      expect(big.responses.at(-1)!.status).toBe(413);
      expect(big.responses.at(-1)!.complete).toBe(true);
      expect(big.elapsedMs).toBeLessThan(4000);
    }
    expect(up.records.filter((r) => r.target.startsWith("/public/over") || r.target === "/public/huge")).toEqual([]);
    // 2 MiB to a route whose agent inspects at most 1 MiB: fail-closed 413, fail-open forwarded uninspected.
    const two = new Uint8Array(2 * MiB).map((_, i) => i & 0xff);
    const closed = await fetch(`${proxy.url}/inspect/r/sha/x`, { method: "POST", body: two, headers: { authorization: "Bearer good" } });
    expect(closed.status).toBe(413);
    const before = await metric(proxy, "sentinel_agent_errors_total", 'agent="inspect"', 'kind="body_limit"');
    const open = await fetch(`${proxy.url}/iopen/r/sha/x`, { method: "POST", body: two, headers: { authorization: "Bearer good" } });
    expect(await open.json()).toEqual({ sha256: sha(two), bytes: two.length });
    expect(await metric(proxy, "sentinel_agent_errors_total", 'agent="inspect"', 'kind="body_limit"')).toBe(before + 1);
    // The proxy never decompresses: a gzip body (a "bomb" or not) is forwarded byte for byte.
    const gz = Bun.gzipSync(new Uint8Array(512 * 1024));
    const g = await fetch(`${proxy.url}/public/r/sha/gz`, { method: "POST", body: gz, headers: { "content-encoding": "gzip" } });
    expect(await g.json()).toEqual({ sha256: sha(gz), bytes: gz.length });
  });

  test("RE-06 per-connection floods: 100 000 pipelined requests stay bounded; 10 000 keep-alive requests served in order", async () => {
    const rss0 = proxy.rss();
    const mark = up.mark();
    const one = req("GET", "/public/flood");
    const r = await exchange(proxy.url, [one.repeat(100_000)], { responses: 0, timeoutMs: 5000 });
    expect(r.closed).toBe(true);
    expect(proxy.rss() - rss0).toBeLessThan(50 * 1024 * 1024);
    expect(up.since(mark).length).toBeLessThanOrEqual(1);
    expect(await canary(proxy)).toBe(true);

    // 10 000 requests one after another on one keep-alive connection.
    const N = 10_000;
    const s = net.connect({ host: "127.0.0.1", port });
    await new Promise((res) => s.once("connect", res));
    let buf = Buffer.alloc(0);
    let answered = 0;
    let inOrder = true;
    const done = new Promise<void>((resolve) => {
      s.on("data", (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const rs = parseResponses(buf);
        if (rs.length === 0 || !rs[0]!.complete) return;
        if (rs[0]!.body.toString() !== `ok GET /public/ka${answered}`) inOrder = false;
        buf = Buffer.alloc(0); // one request in flight at a time: the buffer holds one response
        answered++;
        if (answered === N) return resolve();
        s.write(req("GET", `/public/ka${answered}`));
      });
      s.on("close", () => resolve());
    });
    s.write(req("GET", "/public/ka0"));
    await done;
    s.destroy();
    expect(answered).toBe(N);
    expect(inOrder).toBe(true);
  }, 60_000);

  test("RE-08 slow and dead upstreams: 504 at the 5 s timeout with the upstream request aborted; refused → 502 at once", async () => {
    const [hang, slow, dead, hole] = await re08;
    for (const [name, r] of [["hang", hang!], ["slow", slow!], ["blackhole", hole!]] as const) {
      expect({ name, status: r.status }).toEqual({ name, status: 504 });
      expect({ name, ms: r.ms > 4500 && r.ms < 5500 ? "5 s" : r.ms }).toEqual({ name, ms: "5 s" });
    }
    expect(dead!.status).toBe(502);
    expect(dead!.ms).toBeLessThan(500);
    const hangConn = up.records.find((r) => r.target === "/public/r/hang/x")!.conn;
    await waitFor(() => up.closedAt.has(hangConn), 2000, "upstream saw the abort");
  });

  test("RE-09 client abort storm: every per-request resource is released, memory does not keep growing", async () => {
    const fds0 = fdCount(proxy.proc.pid);
    const abortAt = async (i: number) => {
      const kind = i % 4;
      const s = net.connect({ host: "127.0.0.1", port });
      s.on("error", () => {});
      await new Promise((r) => s.once("connect", r));
      if (kind === 0) s.write(`GET /public/a HTTP/1.1\r\n${H}X-Partial: `); // during headers
      else if (kind === 1) s.write(`POST /public/r/sha/b HTTP/1.1\r\n${H}Content-Length: 100000\r\n\r\n${"x".repeat(1000)}`); // mid-body
      else if (kind === 2) s.write(req("GET", "/admin/wait", "Authorization: Bearer good\r\nX-Chaos: delay:150\r\n")); // waiting for the agent
      else s.write(req("GET", "/public/r/bytes:2000000/x")); // mid-response
      await Bun.sleep(Math.random() * 30);
      s.destroy();
    };
    const storm = async (n: number) => {
      let next = 0;
      await Promise.all(
        Array.from({ length: 100 }, async () => {
          while (next < n) await abortAt(next++);
        }),
      );
      await waitFor(async () => (await metric(proxy, "sentinel_requests_in_flight")) === 0, 10_000, "in-flight back to 0");
      await Bun.sleep(500);
      return proxy.rss();
    };
    const afterWarmup = await storm(3000);
    const afterStorm = await storm(10_000);
    // Agent slots are free again: a full set of concurrent calls is admitted (once the breaker,
    // which the storm may have opened with agent timeouts, has closed again).
    await breakerClosed();
    const again = await Promise.all(Array.from({ length: 10 }, () => fetch(`${proxy.url}/admin/after-storm`, { headers: { authorization: "Bearer good" } }).then((r) => r.status)));
    expect(again).toEqual(Array(10).fill(200));
    await waitFor(() => fdCount(proxy.proc.pid) <= fds0 + 10, 10_000, "fds back to baseline");
    // RSS follows the GC, not the request count (measured over 6 × 10 000 aborted requests: JS heap
    // 34–127 MB and back, RSS 90–126 MB, no upward trend); the long-run flatness check is the
    // soak (RE-10, `npm run soak`). Here: bounded.
    expect(afterStorm).toBeLessThan(afterWarmup + 128 * 1024 * 1024);
    expect(proxy.logs.filter((l) => /unhandled|uncaught/i.test(JSON.stringify(l)))).toEqual([]);
    expect(alive(proxy)).toBe(true);
  }, 60_000);
});

test("RE-10 soak (short): faults injected, zero unexpected errors, RSS flat, metric series bounded", async () => {
  // Short: 20 000 requests are mostly warm-up and GC noise (±15 %) dominates, so RSS is compared
  // from 40 % on with a loose bound; `npm run soak` (1 000 000 requests) holds the 10 % bound.
  const report = await soak({ requests: 20_000, concurrency: 32, faults: 3, warmupFraction: 0.4, rssTolerancePct: 35 });
  expect(report.unexpectedSamples).toEqual([]);
  expect(report.problems).toEqual([]);
  expect(report.faults.map((f) => f.kind)).toEqual(["agent-kill", "waf-hang", "upstream-restart"]);
  for (const f of report.faults) expect(f.recoveredMs).toBeDefined();
}, 90_000);

// Checked last: the attacks started in beforeAll and ran while the tests above did.
describe("RE: slow and idle clients", () => {
  test("RE-01 slowloris: 500 trickling heads are cut at the header timeout; legit requests still fast", async () => {
    for (const ms of legitDuringAttack) expect(ms).toBeLessThan(200);
    const rs = await slowloris;
    for (const r of rs) {
      expect(r.closedMs).not.toBeNull();
      expect(r.closedMs!).toBeGreaterThan(8_000);
      expect(r.closedMs!).toBeLessThan(14_000);
      expect([0, 408]).toContain(r.status);
    }
  });

  test("RE-02 idle connections: 10 000 idle connections cost < 2 KB each, legit traffic served, all closed at the header timeout", async () => {
    const i = idle!;
    expect((i.rssAfter - i.rssBefore) / 10_200).toBeLessThan(2048);
    const closes = [...(await i.first.closed), ...(await i.second.closed), ...(await i.oneClient.closed)];
    for (const ms of closes) expect(ms).toBeLessThan(15_000);
    expect(alive(proxy)).toBe(true);
    expect(await canary(proxy)).toBe(true);
    await waitFor(() => fdCount(proxy.proc.pid) <= baselineFds + 20, 5000, "fds back to baseline");
  });

  test("RE-02 idle keep-alive: closed at keepalive-timeout-secs; a request after a pause gets its whole timeout", async () => {
    const k = await keepAlive;
    expect(k.idleClosedAfterMs).not.toBeNull();
    expect(k.idleClosedAfterMs!).toBeGreaterThan(3900);
    expect(k.idleClosedAfterMs!).toBeLessThan(8500);
    expect(k.afterPause).toBe(200);
  });

  test("RE-03 slow body: cut by the upstream request timeout (5 s), the upstream sees the abort", async () => {
    const rs = await slowBody;
    for (const r of rs) {
      expect(r.closedMs).not.toBeNull();
      expect(r.closedMs!).toBeLessThan(12_000);
      expect([0, 408, 504]).toContain(r.status);
    }
    const forwarded = up.records.filter((r) => r.target === "/public/up" || r.target === "/admin/up");
    expect(forwarded).toEqual([]); // never complete: the upstream never got a whole request
    const conns = [...up.partial].filter(([, t]) => t === "/public/up" || t === "/admin/up").map(([c]) => c);
    expect(conns.length).toBe(2);
    await waitFor(() => conns.every((c) => up.closedAt.has(c)), 5000, "upstream connections of the slow bodies released");
    // The agent slot of /admin/up was released: a full set of concurrent calls is admitted.
    await breakerClosed();
    const again = await Promise.all(Array.from({ length: 10 }, () => fetch(`${proxy.url}/admin/again`, { headers: { authorization: "Bearer good" } }).then((r) => r.status)));
    expect(again).toEqual(Array(10).fill(200));
  });

  test("RE-04 slow reader: memory bounded by backpressure; the upstream released after read-secs without progress", async () => {
    const r = await slowReader;
    expect(r.bytes).toBeLessThan(50 * 1024 * 1024);
    // Backpressure reached the upstream: it could not push the 50 MB through (what the proxy
    // holds is bounded by its socket buffers, never the whole body).
    expect(r.upstreamSent).toBeLessThan(r.bytes + 32 * 1024 * 1024);
    expect(r.upstreamReleasedMs).toBeDefined();
    expect(r.upstreamReleasedMs!).toBeLessThan(5000); // read-secs 2 after the stall
  });

  // Known gap (SECURITY.md): Bun 1.4.5 never times out a connection whose writes are blocked by a
  // client that stopped reading (bare Bun.serve with idleTimeout 4: still open at 15 s), and a
  // handler cannot close its connection. The response is abandoned and the upstream released
  // (above); the client connection itself stays until the client reads or goes away.
  test.failing("RE-04 slow reader: the client connection is closed at the send timeout", async () => {
    const r = await slowReader;
    expect(r.closed).toBe(true);
    expect(r.closedMs!).toBeLessThan(14_000);
  });
});
