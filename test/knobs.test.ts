// Upstream knobs that an audit found accepted but without effect, through the compiled binary:
// the connect timeout (upstream and timeout filter), connection-pool max-lifetime, the retry
// policy's overall timeout-ms, HTTP health checks of a TLS upstream with its own CA, and the
// upstream write timeout.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from "node:net";
import { startProxy, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { upload } from "./helpers/raw.ts";
import { selfSignedCert } from "./helpers/tls.ts";

const hasPython = Bun.spawnSync(["python3", "-c", "pass"]).exitCode === 0;

/** A port whose accept queue is full: a connect to it hangs (SYNs dropped), as to a blackholed host. */
async function blackhole(): Promise<{ port: number; stop(): void }> {
  const p = Bun.spawn(
    [
      "python3",
      "-c",
      `import socket,time
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(0)
fill=[]
for i in range(3):
    c=socket.socket(); c.setblocking(False)
    try: c.connect(s.getsockname())
    except BlockingIOError: pass
    fill.append(c)
print(s.getsockname()[1], flush=True)
time.sleep(600)`,
    ],
    { stdout: "pipe", stderr: "ignore" },
  );
  const reader = p.stdout.getReader();
  const { value } = await reader.read();
  return { port: Number(new TextDecoder().decode(value).trim()), stop: () => p.kill() };
}

let ports: number[] = [];
const recorder = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  async fetch(req, server) {
    ports.push(server.requestIP(req)!.port);
    const ms = Number(new URL(req.url).searchParams.get("ms") ?? 0);
    if (ms) await Bun.sleep(ms);
    return new Response("ok");
  },
});

/** A server that accepts but never reads a byte. */
async function stalled(): Promise<NetServer> {
  const srv = createNetServer((s) => s.pause());
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return srv;
}

/** A server that answers as soon as the request head arrives, streams a 2.4 s response, and never reads the request body. */
async function earlyAnswer(): Promise<NetServer> {
  const srv = createNetServer((s) => {
    s.once("data", () => {
      s.pause();
      s.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
      let n = 0;
      const t = setInterval(() => {
        if (++n <= 8) s.write("5\r\nhello\r\n");
        else {
          clearInterval(t);
          s.end("0\r\n\r\n");
        }
      }, 300);
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return srv;
}

/** A server that reads steadily but slowly (16 KiB every 100 ms, small receive buffer); prints its port, then its byte total. */
function slowReader(): { port: Promise<number>; received(): number; stop(): void } {
  const p = Bun.spawn(
    [
      "python3",
      "-c",
      `import socket,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192); s.bind(("127.0.0.1",0)); s.listen(8)
print(s.getsockname()[1], flush=True)
c,_=s.accept(); total=0
while True:
    d=c.recv(16384)
    if not d: break
    total+=len(d); print(total, flush=True); time.sleep(0.1)`,
    ],
    { stdout: "pipe", stderr: "ignore" },
  );
  let last = 0;
  let resolvePort!: (n: number) => void;
  const port = new Promise<number>((r) => (resolvePort = r));
  void (async () => {
    let buf = "";
    let first = true;
    for await (const chunk of p.stdout) {
      buf += new TextDecoder().decode(chunk);
      const lines = buf.split("\n");
      buf = lines.pop()!;
      for (const l of lines) {
        if (first) resolvePort(Number(l));
        else last = Number(l);
        first = false;
      }
    }
  })();
  return { port, received: () => last, stop: () => p.kill() };
}
const portOf = (s: NetServer) => (s.address() as AddressInfo).port;

/** An upstream that answers after ?ms=N and records the most requests it ever had in flight at once. */
let inFlight = 0;
let peak = 0;
const counting = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  async fetch(req) {
    peak = Math.max(peak, ++inFlight);
    try {
      await Bun.sleep(Number(new URL(req.url).searchParams.get("ms") ?? 0));
      return new Response("counted");
    } finally {
      inFlight--;
    }
  },
});

let proxy: ProxyProcess;
let hole: { port: number; stop(): void } | undefined;
let secure: ReturnType<typeof Bun.serve>;
let sink: NetServer;
let slow: ReturnType<typeof slowReader> | undefined;
let early: NetServer;

beforeAll(async () => {
  if (hasPython) hole = await blackhole();
  const { cert, key } = selfSignedCert();
  secure = Bun.serve({ hostname: "127.0.0.1", port: 0, tls: { cert: Bun.file(cert), key: Bun.file(key) }, fetch: () => new Response("secure") });
  sink = await stalled();
  early = await earlyAnswer();
  if (hasPython) slow = slowReader();
  const slowPort = slow ? await slow.port : 9;
  proxy = await startProxy(`
system { }
listeners {
  listener "main" { address "127.0.0.1:0" }
}
upstreams {
  upstream "hole" { target "127.0.0.1:${hole?.port ?? 9}"; timeouts { connect 1; request 8 } }
  upstream "hole-slow-connect" { target "127.0.0.1:${hole?.port ?? 9}"; timeouts { connect 30; request 8 } }
  upstream "rec" { target "127.0.0.1:${recorder.port}"; connection-pool { max-lifetime 1 } }
  upstream "tls" {
    target "127.0.0.1:${secure.port}"
    tls { sni "localhost"; ca-cert "${cert}" }
    health-check { type "http" { path "/health"; expected-status 200 }; interval-secs 1; timeout-secs 1; healthy-threshold 1; unhealthy-threshold 1 }
  }
  upstream "capped" { target "127.0.0.1:${counting.port}"; connection-pool { max-connections 2 } }
  upstream "one" { target "127.0.0.1:${counting.port}"; connection-pool { max-connections 1 }; timeouts { connect 2; request 1 } }
  upstream "ej" { target "127.0.0.1:${counting.port}"; target "127.0.0.1:9"; connection-pool { max-connections 1 }; circuit-breaker { failure-threshold 1; timeout-seconds 60 }; timeouts { connect 1; request 5 } }
  upstream "cb" { target "127.0.0.1:${counting.port}"; connection-pool { max-connections 1 }; circuit-breaker { failure-threshold 1; timeout-seconds 60 }; timeouts { connect 2; request 5 } }
  upstream "pair" { target "127.0.0.1:${counting.port}"; target "127.0.0.1:${recorder.port}"; connection-pool { max-connections 1 } }
  upstream "sink" { target "127.0.0.1:${portOf(sink)}"; timeouts { write 1; request 20 } }
  upstream "early" { target "127.0.0.1:${portOf(early)}"; timeouts { write 1; request 20 } }
  upstream "slow" { target "127.0.0.1:${slowPort}"; timeouts { write 1; request 20 } }
}
filters { filter "ct" { type "timeout"; connect-timeout-secs 1 } }
routes {
  route "hole" { matches { path-prefix "/hole" }; upstream "hole" }
  route "ct" { matches { path-prefix "/ct" }; upstream "hole-slow-connect"; filters "ct" }
  route "budget" { matches { path-prefix "/budget" }; upstream "rec"; retry-policy { max-attempts 1; timeout-ms 1500 } }
  route "tls" { matches { path-prefix "/tls" }; upstream "tls" }
  route "capped" { matches { path-prefix "/capped" }; upstream "capped" }
  route "one" { matches { path-prefix "/one" }; upstream "one" }
  route "one-long" { matches { path-prefix "/long" }; upstream "one"; policies { timeout-secs 3 } }
  route "pair" { matches { path-prefix "/pair" }; upstream "pair" }
  route "ej" { matches { path-prefix "/ej" }; upstream "ej" }
  route "cb" { matches { path-prefix "/cb/" }; upstream "cb"; retry-policy { max-attempts 1; timeout-ms 500 } }
  route "cbx" { matches { path-prefix "/cbx/" }; upstream "cb" }
  route "ups" { matches { path "/-/upstreams" }; builtin-handler "upstreams" }
  route "sink" { matches { path-prefix "/sink" }; upstream "sink"; policies { max-body-size "1GB" } }
  route "early" { matches { path-prefix "/early" }; upstream "early"; policies { max-body-size "1GB" } }
  route "slow" { matches { path-prefix "/slow" }; upstream "slow"; policies { max-body-size "1GB" } }
  route "rec" { priority "low"; upstream "rec" }
}
observability { metrics { address "127.0.0.1:0" } }
`);
});
afterAll(async () => {
  await proxy?.stop("SIGKILL");
  hole?.stop();
  recorder.stop(true);
  secure?.stop(true);
  sink?.close();
  counting.stop(true);
  slow?.stop();
  early?.close();
});

const timed = async (url: string) => {
  const t0 = performance.now();
  const r = await fetch(url);
  await r.text();
  return { status: r.status, ms: performance.now() - t0 };
};

describe("upstream knobs", () => {
  test.skipIf(!hasPython)("timeouts { connect } and a timeout filter's connect-timeout-secs bound a connect that hangs", async () => {
    for (const path of ["/hole/x", "/ct/x"]) {
      const r = await timed(`${proxy.url}${path}`);
      expect({ path, status: r.status }).toEqual({ path, status: 502 });
      expect(r.ms).toBeGreaterThan(900);
      expect(r.ms).toBeLessThan(3000); // not the 8 s request timeout
    }
  });

  test("connection-pool max-lifetime: a connection older than it is not reused", async () => {
    ports = [];
    for (let i = 0; i < 6; i++) {
      expect((await fetch(`${proxy.url}/life`)).status).toBe(200);
      await Bun.sleep(500); // spacing the requests is the point of the test, not synchronisation
    }
    expect(new Set(ports).size).toBeGreaterThanOrEqual(2);
  });

  test("retry-policy timeout-ms is the budget of all attempts, the one attempt included", async () => {
    const r = await timed(`${proxy.url}/budget/x?ms=5000`);
    expect(r.status).toBe(504);
    expect(r.ms).toBeLessThan(3000);
  });

  test("an HTTP health check of a TLS upstream uses its CA and SNI: the target stays healthy", async () => {
    await waitFor(async () => (await fetch(`${proxy.url}/tls/x`)).status === 200, 5000, "first answer");
    await Bun.sleep(2500); // two health-check rounds; the route must still be served
    expect(await (await fetch(`${proxy.url}/tls/x`)).text()).toBe("secure");
  });

  test("timeouts { write }: an upstream that stops taking the request body gets 504 at the write timeout, not the request timeout", async () => {
    const size = 256 * 1024 * 1024; // far beyond every socket buffer on the way
    const head = `POST /sink/up HTTP/1.1\r\nHost: t\r\nContent-Length: ${size}\r\n\r\n`;
    const r = await upload(proxy.url, head, { bodyBytes: size, timeoutMs: 15_000 });
    expect(r.status).toBe(504);
    expect(r.closedMs).toBeLessThan(8_000); // the request timeout is 20 s
    const log = proxy.logs.filter((l) => typeof l.msg === "string" && String(l.error ?? l.reason ?? "").includes("write timeout"));
    expect(log.length).toBeGreaterThan(0);
  });

  test("timeouts { write }: once the upstream has answered, the rest of the request no longer times out its response", async () => {
    const size = 256 * 1024 * 1024;
    const head = `POST /early/up HTTP/1.1\r\nHost: t\r\nContent-Length: ${size}\r\n\r\n`;
    const r = await upload(proxy.url, head, { bodyBytes: size, timeoutMs: 4_000 }); // the answer takes 2.4 s
    expect(r.status).toBe(200);
    expect(r.text).toContain("hello\r\n");
    expect(r.text.split("hello").length - 1).toBe(8); // all of it, well past the 1 s write timeout
  });

  test.skipIf(!hasPython)("timeouts { write }: an upstream that keeps reading, however slowly, is not timed out", async () => {
    // ~160 KB/s: the kernel reports the socket writable again only after ~1/3 of its (MB-sized) send buffer
    // drained, many seconds here; the proxy must still see the progress within its 1 s write timeout.
    const size = 256 * 1024 * 1024;
    const head = `POST /slow/up HTTP/1.1\r\nHost: t\r\nContent-Length: ${size}\r\n\r\n`;
    const r = await upload(proxy.url, head, { bodyBytes: size, timeoutMs: 4_000 });
    expect(r.status).toBe(0); // no answer at all in 4 s: still uploading
    expect(slow!.received()).toBeGreaterThan(200_000);
  });

  test("connection-pool max-connections: past it, requests wait for a free connection (never more in flight), a wait bounded like a connect", async () => {
    peak = 0;
    const t0 = performance.now();
    const all = await Promise.all(Array.from({ length: 6 }, () => timed(`${proxy.url}/capped/x?ms=300`)));
    expect(all.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(peak).toBe(2);
    expect(performance.now() - t0).toBeGreaterThan(850); // three rounds of two
    // The wait is bounded like a connect (2 s here): past it, 503, and nothing was sent. The holder (3 s route timeout) is served.
    const later = async (ms: number, url: string) => (await Bun.sleep(ms), timed(url)); // spacing the requests is the point
    const [holder, waiter] = await Promise.all([timed(`${proxy.url}/long/x?ms=2800`), later(100, `${proxy.url}/one/y`)]);
    expect(holder.status).toBe(200);
    expect(waiter.status).toBe(503);
    expect(waiter.ms).toBeGreaterThan(1900);
    expect(waiter.ms).toBeLessThan(2700);
    // A request that waited for its slot still has its whole upstream timeout (1 s) for the exchange.
    const [first, second] = await Promise.all([timed(`${proxy.url}/long/a?ms=700`), later(100, `${proxy.url}/one/b?ms=700`)]);
    expect([first.status, second.status]).toEqual([200, 200]);
    expect(second.ms).toBeGreaterThan(1200); // waited ~600 ms, then 700 ms upstream: more than its 1 s timeout in all
    // …and the limit holds nothing once they are done.
    expect((await timed(`${proxy.url}/one/z`)).status).toBe(200);
  });

  test("connection-pool max-connections: a balancer's choice with no free slot yields to a target that has one", async () => {
    const busy = timed(`${proxy.url}/pair/busy?ms=1500`);
    await Bun.sleep(100); // the long request holds one target's only slot: the point of the test
    for (let i = 0; i < 4; i++) {
      const r = await timed(`${proxy.url}/pair/quick-${i}`);
      expect(r.status).toBe(200);
      expect(r.ms).toBeLessThan(700); // never queued behind the 1.5 s request
    }
    expect((await busy).status).toBe(200);
  });

  test("connection-pool max-connections: yielding from a full target never picks an ejected one", async () => {
    // Eject the dead target (port 9): one of two requests goes there and fails.
    await Promise.all([timed(`${proxy.url}/ej/p0`), timed(`${proxy.url}/ej/p1`)]);
    const ups = async () => ((await (await fetch(`${proxy.url}/-/upstreams`)).json()) as Record<string, { targets: Array<{ address: string; ejected: boolean }> }>);
    expect((await ups()).ej!.targets.find((t) => t.address === "127.0.0.1:9")!.ejected).toBe(true);
    const hold = timed(`${proxy.url}/ej/hold?ms=800`);
    await Bun.sleep(100); // the live target's only slot is held: the point of the test
    const r = await timed(`${proxy.url}/ej/s`);
    expect(r.status).toBe(200); // waited for the live target, never sent to the ejected one (502)
    expect(r.ms).toBeGreaterThan(500);
    expect((await hold).status).toBe(200);
  });

  test("connection-pool max-connections: a timeout cut short by the retry budget after queueing does not eject the target", async () => {
    const hold = timed(`${proxy.url}/cbx/h?ms=450`);
    await Bun.sleep(20); // queued behind the holder: the point of the test
    const r = await timed(`${proxy.url}/cb/b?ms=100`); // budget 500 ms: ~430 waited, ~70 left for 100 ms of work
    expect(r.status).toBe(504);
    expect((await hold).status).toBe(200);
    const ups = (await (await fetch(`${proxy.url}/-/upstreams`)).json()) as Record<string, { targets: Array<{ ejected: boolean; active_requests: number; waiting: number }> }>;
    expect(ups.cb!.targets[0]).toMatchObject({ ejected: false, active_requests: 0, waiting: 0 });
  });

  test("connection-pool max-connections: a refusal is counted in kind=max_connections; a client that leaves the queue is not", async () => {
    const refusals = async () => {
      const text = await (await fetch(proxy.metricsUrl!)).text();
      const line = text.split("\n").find((l) => l.startsWith("sentinel_upstream_errors_total{") && l.includes('upstream="one"') && l.includes('kind="max_connections"'));
      return Number(line?.split(" ").pop() ?? NaN);
    };
    const waiting = async () => ((await (await fetch(`${proxy.url}/-/upstreams`)).json()) as Record<string, { targets: Array<{ waiting: number }> }>).one!.targets[0]!.waiting;
    const before = await refusals();
    const hold = timed(`${proxy.url}/long/hold?ms=2800`); // the route's timeout is 3 s
    await waitFor(async () => (await (await fetch(`${proxy.url}/-/upstreams`)).json() as Record<string, { targets: Array<{ active_requests: number }> }>).one!.targets[0]!.active_requests === 1, 5000, "the holder");
    const ac = new AbortController();
    const left = fetch(`${proxy.url}/one/leaver`, { signal: ac.signal }).catch(() => "aborted");
    await waitFor(async () => (await waiting()) === 1, 5000, "the leaver queued");
    ac.abort();
    expect(await left).toBe("aborted");
    await waitFor(async () => (await waiting()) === 0, 5000, "the leaver gone from the queue");
    expect(await refusals()).toBe(before);
    const refused = await timed(`${proxy.url}/one/refused`); // waits the 2 s connect timeout while the holder runs on
    expect(refused.status).toBe(503);
    expect(await refusals()).toBe(before + 1);
    expect((await hold).status).toBe(200);
  });
});

