// More core behaviour through the compiled binary: TLS listener, retries, limits, client
// disconnect propagation, upstream keep-alive reuse.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { startProxy, tempDir, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { rawRequest, upload } from "./helpers/raw.ts";

let up: Upstream;
let proxy: ProxyProcess;
let flakyCalls = 0;
let connections = 0;
const aborted: string[] = [];
let countingServer: ReturnType<typeof Bun.serve>;

beforeAll(async () => {
  up = startUpstream("u");
  // An upstream that fails twice with 503, then answers; and counts TCP connections.
  countingServer = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const path = new URL(req.url).pathname;
      if (path.endsWith("/flaky")) return ++flakyCalls % 3 === 0 ? new Response("finally") : new Response("busy", { status: 503 });
      if (path.endsWith("/hang")) {
        await new Promise<void>((resolve) => req.signal.addEventListener("abort", () => resolve()));
        aborted.push(path);
        return new Response("never");
      }
      return new Response("counted");
    },
  });
  const dir = tempDir();
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  const gen = Bun.spawnSync(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"], { stderr: "ignore" });
  if (gen.exitCode !== 0) throw new Error("openssl failed");
  proxy = await startProxy(
    `
system { }
listeners {
  listener "plain" { address "127.0.0.1:0" }
  listener "tls" { address "127.0.0.1:0"; protocol "https"; tls { cert-file "${cert}"; key-file "${key}" } }
}
upstreams {
  upstream "u" { target "${up.address}" }
  upstream "c" { target "127.0.0.1:${countingServer.port}" }
}
routes {
  route "retry" { matches { path-prefix "/retry" }; upstream "c"; retry-policy { max-attempts 3; backoff-base-ms 10; backoff-max-ms 50; retryable-status-codes 503 } }
  route "noretry" { matches { path-prefix "/noretry" }; upstream "c" }
  route "small" { matches { path-prefix "/small" }; upstream "u"; policies { max-body-size "1KB" } }
  route "c" { matches { path-prefix "/c" }; upstream "c" }
  route "all" { priority "low"; upstream "u" }
}
limits { max-header-count 20; max-header-size 4096 }
`,
    { dir },
  );
});

afterAll(async () => {
  await proxy?.stop("SIGKILL");
  await up?.stop();
  countingServer?.stop(true);
});

test("https listener with cert-file/key-file serves TLS", async () => {
  const res = await fetch(`${proxy.urls[1]!}/hello`, { tls: { rejectUnauthorized: false } } as RequestInit);
  expect(proxy.urls[1]!.startsWith("https://")).toBe(true);
  expect(res.status).toBe(200);
  expect(await res.text()).toBe("ok u");
  expect(up.requests.at(-1)!.headers["x-forwarded-proto"]).toBe("https");
});

describe("retry-policy", () => {
  test("an idempotent request is retried on a retryable status, with backoff", async () => {
    flakyCalls = 0;
    const res = await fetch(`${proxy.url}/retry/flaky`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("finally");
    expect(flakyCalls).toBe(3);
  });
  test("a non-idempotent request is not retried on a status", async () => {
    flakyCalls = 0;
    const res = await fetch(`${proxy.url}/retry/flaky`, { method: "POST", body: "x" });
    expect(res.status).toBe(503);
    expect(flakyCalls).toBe(1);
  });
  test("without a retry-policy there is exactly one attempt", async () => {
    flakyCalls = 0;
    expect((await fetch(`${proxy.url}/noretry/flaky`)).status).toBe(503);
    expect(flakyCalls).toBe(1);
  });
});

describe("limits", () => {
  test("413 for a declared body over max-body-size, before anything reaches the upstream", async () => {
    const before = up.requests.length;
    const res = await fetch(`${proxy.url}/small/x`, { method: "POST", body: "x".repeat(2048) });
    expect(res.status).toBe(413);
    expect(up.requests.length).toBe(before);
  });
  test("413 for a chunked body that crosses max-body-size", async () => {
    // The whole request in one write; a client that streams its chunks is the next-but-one test.
    const chunk = "200\r\n" + "x".repeat(512) + "\r\n";
    const res = await rawRequest(proxy.url, `POST /small/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n${chunk.repeat(4)}0\r\n\r\n`);
    expect(res.status).toBe(413);
  });
  test("an early 413 reaches a client that writes its whole body before reading (lingering close)", async () => {
    // 8 MiB is far more than the socket buffers hold: the client blocks until the proxy reads.
    // Closing with that body unread would reset the connection (EPIPE here, and often no 413).
    for (let i = 0; i < 3; i++) {
      const r = await upload(proxy.url, "POST /small/x HTTP/1.1\r\nHost: t\r\nContent-Length: 8388608\r\n\r\n", { bodyBytes: 8 * 1024 * 1024 });
      expect(r.error).toBeUndefined();
      expect(r.sent).toBe(8 * 1024 * 1024);
      expect(r.status).toBe(413);
      expect(r.text.toLowerCase()).toContain("\r\nconnection: close\r\n");
      expect(r.text).toContain("payload too large");
      expect(r.text.endsWith("0\r\n\r\n")).toBe(true); // complete: the chunked answer's last chunk
    }
  });
  test("a chunked body that crosses the limit mid-stream: the 413 reaches a client that writes its whole body first", async () => {
    for (let i = 0; i < 3; i++) {
      const r = await upload(proxy.url, "POST /small/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n", { bodyBytes: 8 * 1024 * 1024, chunked: true });
      expect(r.error).toBeUndefined();
      expect(r.status).toBe(413);
      expect(r.text.toLowerCase()).toContain("\r\nconnection: close\r\n");
      expect(r.text.endsWith("0\r\n\r\n")).toBe(true);
    }
  });
  test("the drain after an early answer is bounded: a client that pauses, or never stops sending, is closed", async () => {
    const head = "POST /small/x HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000000\r\n\r\n";
    const [paused, endless] = await Promise.all([upload(proxy.url, head, { bodyBytes: 0 }), upload(proxy.url, head, { forMs: 30_000, paceMs: 20 })]);
    // No body at all: the 413 at once, complete and closed after the 1 s pause allowance.
    expect(paused.status).toBe(413);
    expect(paused.text.endsWith("0\r\n\r\n")).toBe(true);
    expect(paused.closedMs).toBeGreaterThan(900);
    expect(paused.closedMs).toBeLessThan(3_000);
    // A body that never ends (64 KiB every 20 ms): the 413 at once, the close after 5 s of draining.
    expect(endless.status).toBe(413);
    expect(endless.closedMs).toBeGreaterThan(4_000);
    expect(endless.closedMs).toBeLessThan(8_000);
  }, 15_000);
  test("414 for a URI over the limit", async () => {
    const res = await rawRequest(proxy.url, `GET /${"a".repeat(9000)} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n`);
    expect(res.status).toBe(414);
  });
  test("431 for too many headers or too large a header section", async () => {
    const many = Array.from({ length: 30 }, (_, i) => `X-H${i}: v`).join("\r\n");
    expect((await rawRequest(proxy.url, `GET /x HTTP/1.1\r\nHost: t\r\n${many}\r\nConnection: close\r\n\r\n`)).status).toBe(431);
    expect((await rawRequest(proxy.url, `GET /x HTTP/1.1\r\nHost: t\r\nX-Big: ${"b".repeat(5000)}\r\nConnection: close\r\n\r\n`)).status).toBe(431);
  });
  test("a request rejected before routing that carries a body: answered at once, closed once the body is drained", async () => {
    const many = Array.from({ length: 30 }, (_, i) => `X-H${i}: v`).join("\r\n");
    const r = await upload(proxy.url, `POST /x HTTP/1.1\r\nHost: t\r\n${many}\r\nContent-Length: 8388608\r\n\r\n`, { bodyBytes: 8 * 1024 * 1024 });
    expect(r.error).toBeUndefined();
    expect(r.sent).toBe(8 * 1024 * 1024);
    expect(r.status).toBe(431);
    expect(r.text.toLowerCase()).toContain("\r\nconnection: close\r\n");
    expect(r.text.endsWith("0\r\n\r\n")).toBe(true);
    expect(r.closedMs).toBeLessThan(5_000);
  });
  test("a rejected request with an endless body is closed at the drain bound, not kept reading", async () => {
    const many = Array.from({ length: 30 }, (_, i) => `X-H${i}: v`).join("\r\n");
    const head = (method: string) => `${method} /x HTTP/1.1\r\nHost: t\r\n${method === "POST" ? many + "\r\n" : ""}Content-Length: 50000000000\r\n\r\n`;
    const opts = { forMs: 30_000, paceMs: 20, timeoutMs: 20_000 };
    const [tooMany, trace] = await Promise.all([upload(proxy.url, head("POST"), opts), upload(proxy.url, head("TRACE"), opts)]);
    expect(tooMany.status).toBe(431);
    expect(tooMany.text.toLowerCase()).toContain("\r\nconnection: close\r\n");
    expect(tooMany.closedMs).toBeGreaterThan(4_000);
    expect(tooMany.closedMs).toBeLessThan(8_000);
    // Bun gives a TRACE handler no body to drain: closed at once.
    expect(trace.status).toBe(405);
    expect(trace.text.toLowerCase()).toContain("\r\nconnection: close\r\n");
    expect(trace.closedMs).toBeLessThan(8_000);
  }, 25_000);
  test("a bodiless rejected request keeps its connection (pipelined rejections are all answered)", async () => {
    const r = await rawRequest(proxy.url, `TRACE /x HTTP/1.1\r\nHost: t\r\n\r\nTRACE /y HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n`);
    expect(r.text.match(/HTTP\/1\.1 405/g)?.length).toBe(2);
  });
});

test("a client disconnect aborts the upstream call", async () => {
  const ctrl = new AbortController();
  const pending = fetch(`${proxy.url}/c/hang`, { signal: ctrl.signal }).catch(() => "aborted");
  await Bun.sleep(150);
  ctrl.abort();
  expect(await pending).toBe("aborted");
  await waitFor(() => aborted.length > 0, 3000, "upstream to see the abort");
});

test("upstream keep-alive connections are reused", async () => {
  // A raw TCP upstream that counts the connections the proxy opens.
  let sockets = 0;
  const tcp = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        sockets++;
      },
      data(s) {
        s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok");
      },
    },
  });
  const p2 = await startProxy(`
system { }
listeners { listener "l" { address "127.0.0.1:0" } }
upstreams { upstream "t" { target "127.0.0.1:${tcp.port}" } }
routes { route "all" { priority "low"; upstream "t" } }
`);
  try {
    for (let i = 0; i < 20; i++) expect(await (await fetch(`${p2.url}/k${i}`)).text()).toBe("ok");
    expect(sockets).toBeLessThanOrEqual(2);
  } finally {
    await p2.stop("SIGKILL");
    tcp.stop(true);
  }
});
