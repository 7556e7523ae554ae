// Unit tests of the Bun.connect HTTP/1.1 upstream client against real local servers: Bun.serve
// for ordinary exchanges, raw Bun.listen servers for exact bytes (framing, errors, stale
// keep-alive connections, early closes).
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { ABORT_WATCH_AFTER_MS, H1Error, H1Pool, H1TimeoutError, type H1Response } from "./h1client.ts";

type RawConn = { buf: string; n: number };
type RawServer = { port: number; stop(): void; accepted: number; requests: string[] };

/** A raw TCP server: `respond(request text, connection)` returns the bytes to write (or null to stay silent). */
function raw(respond: (req: string, conn: RawConn, sock: import("bun").Socket<RawConn>) => string | Uint8Array | null | undefined): RawServer {
  const self: RawServer = { port: 0, stop: () => {}, accepted: 0, requests: [] };
  const server = Bun.listen<RawConn>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { buf: "", n: 0 };
        self.accepted++;
      },
      data(s, chunk) {
        s.data.buf += Buffer.from(chunk).toString("latin1");
        for (;;) {
          const end = s.data.buf.indexOf("\r\n\r\n");
          if (end < 0) return;
          const head = s.data.buf.slice(0, end);
          const cl = /\r\ncontent-length: (\d+)/i.exec(head);
          const len = cl ? Number(cl[1]) : 0;
          let total = end + 4 + len;
          if (/\r\ntransfer-encoding: chunked/i.test(head)) {
            const term = s.data.buf.indexOf("0\r\n\r\n", end + 4);
            if (term < 0) return;
            total = term + 5;
          }
          if (s.data.buf.length < total) return;
          const req = s.data.buf.slice(0, total);
          s.data.buf = s.data.buf.slice(total);
          s.data.n++;
          self.requests.push(req);
          const out = respond(req, s.data, s);
          if (out !== null && out !== undefined) s.write(out);
        }
      },
    },
  });
  self.port = server.port;
  self.stop = () => server.stop(true);
  return self;
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function pool(port: number, opts?: ConstructorParameters<typeof H1Pool>[2]): H1Pool {
  const p = new H1Pool("127.0.0.1", port, opts);
  cleanups.push(() => p.close());
  return p;
}

const get = (p: H1Pool, path = "/", extra: Partial<Parameters<H1Pool["request"]>[0]> = {}) =>
  p.request({ method: "GET", path, headers: new Headers({ host: "example.test" }), body: null, timeoutMs: 2000, ...extra });

async function text(r: H1Response): Promise<string> {
  if (r.body === null) return "";
  if (r.body instanceof Uint8Array) return Buffer.from(r.body).toString("latin1");
  return Buffer.from(await new Response(r.body).arrayBuffer()).toString("latin1");
}

const ok = (body: string, extra = "") => `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n${extra}\r\n${body}`;

describe("h1client against Bun.serve", () => {
  const big = new Uint8Array(200 * 1024).map((_, i) => i % 251);
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const url = new URL(req.url);
      if (url.pathname === "/big") return new Response(big);
      if (url.pathname === "/echo") {
        const body = new Uint8Array(await req.arrayBuffer());
        return new Response(body, { headers: { "x-method": req.method, "x-len": String(body.byteLength), "x-host": req.headers.get("host") ?? "", "x-te": req.headers.get("transfer-encoding") ?? "" } });
      }
      if (url.pathname === "/stream") {
        return new Response(
          new ReadableStream({
            async pull(c) {
              for (let i = 0; i < 5; i++) c.enqueue(new TextEncoder().encode(`part${i};`));
              c.close();
            },
          }),
        );
      }
      return new Response("Hello, World!", { headers: { "content-type": "text/plain", "x-custom": "1" } });
    },
  });
  afterAll(() => server.stop(true));

  test("small response comes back as bytes with the headers, and the connection is reused", async () => {
    const p = pool(server.port!);
    const r1 = await get(p);
    expect(r1.status).toBe(200);
    expect(r1.body).toBeInstanceOf(Uint8Array);
    expect(await text(r1)).toBe("Hello, World!");
    expect(r1.headers.get("x-custom")).toBe("1");
    expect(r1.headers.get("content-length")).toBe("13");
    expect(r1.reused).toBe(false);
    const r2 = await get(p);
    expect(await text(r2)).toBe("Hello, World!");
    expect(r2.reused).toBe(true);
    expect(p.size).toBe(1);
  });

  test("concurrent requests open more connections, all returned to the pool", async () => {
    const p = pool(server.port!);
    const rs = await Promise.all(Array.from({ length: 20 }, () => get(p)));
    for (const r of rs) expect(await text(r)).toBe("Hello, World!");
    expect(p.idleCount).toBe(p.size);
    expect(p.size).toBeGreaterThan(1);
  });

  test("max-idle is a soft bound: a wider burst keeps its connections, the excess is trimmed after a second idle", async () => {
    const p = pool(server.port!, { maxIdle: 2 });
    for (let round = 0; round < 3; round++) {
      const rs = await Promise.all(Array.from({ length: 10 }, () => get(p)));
      for (const r of rs) expect(await text(r)).toBe("Hello, World!");
    }
    expect(p.size).toBe(10); // reused across rounds, not closed and reopened
    await Bun.sleep(2300);
    expect(p.size).toBe(2);
  });

  test("a body larger than maxBufferedBody streams, byte for byte", async () => {
    const p = pool(server.port!);
    const r = await get(p, "/big");
    expect(r.body).toBeInstanceOf(ReadableStream);
    const got = new Uint8Array(await new Response(r.body as ReadableStream).arrayBuffer());
    expect(got.byteLength).toBe(big.byteLength);
    expect(Buffer.compare(Buffer.from(got), Buffer.from(big))).toBe(0);
    await Bun.sleep(5);
    expect(p.idleCount).toBe(1); // reused after the stream ended
  });

  test("chunked response streams and the connection is reused", async () => {
    const p = pool(server.port!);
    const r = await get(p, "/stream");
    expect(await text(r)).toBe("part0;part1;part2;part3;part4;");
    await Bun.sleep(5);
    expect(p.idleCount).toBe(1);
  });

  test("request bodies: bytes, a stream with a declared length, a chunked stream", async () => {
    const p = pool(server.port!);
    const bytes = new TextEncoder().encode("x".repeat(20000));
    const r1 = await p.request({ method: "POST", path: "/echo", headers: new Headers({ host: "h" }), body: bytes, timeoutMs: 2000 });
    expect(r1.headers.get("x-len")).toBe("20000");
    const mk = () =>
      new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(new TextEncoder().encode("abc"));
          c.enqueue(new TextEncoder().encode("defg"));
          c.close();
        },
      });
    const r2 = await p.request({ method: "PUT", path: "/echo", headers: new Headers({ host: "h", "content-length": "7" }), body: mk(), timeoutMs: 2000 });
    expect(r2.headers.get("x-len")).toBe("7");
    expect(r2.headers.get("x-method")).toBe("PUT");
    expect(await text(r2)).toBe("abcdefg");
    const r3 = await p.request({ method: "POST", path: "/echo", headers: new Headers({ host: "h" }), body: mk(), timeoutMs: 2000 });
    expect(r3.headers.get("x-te")).toBe("chunked");
    expect(await text(r3)).toBe("abcdefg");
  });

  test("the caller's Host header is sent; a default is added when missing", async () => {
    const p = pool(server.port!);
    const r1 = await p.request({ method: "GET", path: "/echo", headers: new Headers({ host: "client.example" }), body: null, timeoutMs: 2000 });
    expect(r1.headers.get("x-host")).toBe("client.example");
    const r2 = await p.request({ method: "GET", path: "/echo", headers: new Headers(), body: null, timeoutMs: 2000 });
    expect(r2.headers.get("x-host")).toBe(`127.0.0.1:${server.port!}`);
  });
});

describe("h1client framing and errors (raw upstream)", () => {
  test("hop-by-hop headers and Connection-listed names are removed; set-cookie stays separate", async () => {
    const s = raw(() => "HTTP/1.1 200 OK\r\nconnection: x-secret, keep-alive\r\nkeep-alive: timeout=5\r\nx-secret: 1\r\nset-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: 2\r\n\r\nok");
    cleanups.push(s.stop);
    const r = await get(pool(s.port));
    expect(r.headers.has("connection")).toBe(false);
    expect(r.headers.has("keep-alive")).toBe(false);
    expect(r.headers.has("x-secret")).toBe(false);
    expect(r.headers.getSetCookie()).toEqual(["a=1", "b=2"]);
    expect(await text(r)).toBe("ok");
  });

  test("HEAD, 204 and 304 have no body even with a content-length", async () => {
    const s = raw((req) => {
      if (req.startsWith("HEAD")) return "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
      if (req.includes("/204")) return "HTTP/1.1 204 No Content\r\n\r\n";
      return "HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\n\r\n";
    });
    cleanups.push(s.stop);
    const p = pool(s.port);
    const h = await p.request({ method: "HEAD", path: "/", headers: new Headers(), body: null, timeoutMs: 1000 });
    expect(h.status).toBe(200);
    expect(h.body).toBeNull();
    expect(h.headers.get("content-length")).toBe("100");
    expect((await get(p, "/204")).body).toBeNull();
    expect((await get(p, "/304")).status).toBe(304);
    expect(s.accepted).toBe(1);
  });

  test("interim 100/103 responses are skipped", async () => {
    const s = raw(() => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + ok("done"));
    cleanups.push(s.stop);
    const r = await get(pool(s.port));
    expect(r.status).toBe(200);
    expect(await text(r)).toBe("done");
  });

  test("a response split across many small packets is reassembled", async () => {
    const s = raw((_req, _c, sock) => {
      const bytes = ok("split-body", "x-a: 1\r\n");
      let i = 0;
      const t = setInterval(() => {
        sock.write(bytes.slice(i, i + 3));
        i += 3;
        if (i >= bytes.length) clearInterval(t);
      }, 1);
      return null;
    });
    cleanups.push(s.stop);
    const r = await get(pool(s.port));
    expect(r.headers.get("x-a")).toBe("1");
    expect(await text(r)).toBe("split-body");
  });

  test("chunked with extensions and trailers; a close-delimited body", async () => {
    const s = raw((req, _c, sock) => {
      if (req.includes("/close")) {
        sock.write("HTTP/1.1 200 OK\r\n\r\nuntil-");
        setTimeout(() => {
          sock.write("close");
          sock.end();
        }, 10);
        return null;
      }
      return "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nx-trailer: 1\r\n\r\n";
    });
    cleanups.push(s.stop);
    const p = pool(s.port);
    const r = await get(p);
    expect(await text(r)).toBe("abcdefg");
    expect(r.headers.has("transfer-encoding")).toBe(false);
    const c = await get(p, "/close");
    expect(await text(c)).toBe("until-close");
  });

  test("a small body cut short: the head arrives with a body that breaks off (truncation stays visible)", async () => {
    const s = raw((_req, _c, sock) => {
      sock.write("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
      setTimeout(() => sock.end(), 10);
      return null;
    });
    cleanups.push(s.stop);
    const r = await get(pool(s.port));
    expect(r.status).toBe(200);
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    expect(Buffer.from(first.value!).toString()).toBe("abc");
    expect(await reader.read().catch((e) => e)).toBeInstanceOf(H1Error);
  });

  test("a small body that stalls is cut by the body idle limit, not the head deadline", async () => {
    const s = raw((_req, _c, sock) => {
      sock.write("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab");
      return null;
    });
    cleanups.push(s.stop);
    const t0 = performance.now();
    const r = await get(pool(s.port), "/", { timeoutMs: 5000, bodyIdleMs: 150 });
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    expect(Buffer.from((await reader.read()).value!).toString()).toBe("ab");
    const e = await reader.read().catch((err) => err);
    expect((e as H1Error).code).toBe("ETIMEDOUT");
    expect(performance.now() - t0).toBeLessThan(2000);
  });

  test("a response head over maxHeadBytes is a protocol error, whether it arrives whole or in pieces", async () => {
    const s = raw(() => `HTTP/1.1 200 OK\r\nx-big: ${"b".repeat(100_000)}\r\ncontent-length: 2\r\n\r\nok`);
    cleanups.push(s.stop);
    const e = await get(pool(s.port, { maxHeadBytes: 64 * 1024 })).catch((err) => err);
    expect((e as H1Error).code).toBe("EPROTO");
    const small = await get(pool(s.port, { maxHeadBytes: 1024 })).catch((err) => err);
    expect((small as H1Error).code).toBe("EPROTO");
  });

  test("conflicting content-length and a bad status line are protocol errors", async () => {
    const s = raw((req) => (req.includes("/cl") ? "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc" : "HTTP/9 200 OK\r\n\r\n"));
    cleanups.push(s.stop);
    const p = pool(s.port);
    const e1 = await get(p, "/cl").catch((e) => e);
    expect(e1).toBeInstanceOf(H1Error);
    expect((e1 as H1Error).code).toBe("EPROTO");
    const e2 = await get(p, "/status").catch((e) => e);
    expect((e2 as H1Error).code).toBe("EPROTO");
  });

  test("a silent upstream times out at the deadline; the connection is closed", async () => {
    const s = raw(() => null);
    cleanups.push(s.stop);
    const p = pool(s.port);
    const t0 = performance.now();
    const e = await get(p, "/", { timeoutMs: 150 }).catch((err) => err);
    const took = performance.now() - t0;
    expect(e).toBeInstanceOf(H1TimeoutError);
    expect(took).toBeGreaterThanOrEqual(145);
    expect(took).toBeLessThan(1000);
    expect(p.size).toBe(0);
  });

  /** A raw upstream that never answers; `closed` turns true when the client closes its connection. */
  function silent(): { port: number; closed: () => boolean } {
    let closed = false;
    const server = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        data() {},
        close() {
          closed = true;
        },
      },
    });
    cleanups.push(() => server.stop(true));
    return { port: server.port!, closed: () => closed };
  }

  /** An abort signal that counts the listeners registered on it. */
  function countingSignal(): { ac: AbortController; adds: () => number; removes: () => number } {
    const ac = new AbortController();
    const sig = ac.signal;
    let adds = 0;
    let removes = 0;
    const add = sig.addEventListener.bind(sig);
    const remove = sig.removeEventListener.bind(sig);
    Object.assign(sig, {
      addEventListener: (...a: Parameters<AbortSignal["addEventListener"]>) => (adds++, add(...a)),
      removeEventListener: (...a: Parameters<AbortSignal["removeEventListener"]>) => (removes++, remove(...a)),
    });
    return { ac, adds: () => adds, removes: () => removes };
  }

  async function until(cond: () => boolean, ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (!cond() && Date.now() < end) await Bun.sleep(5);
    return cond();
  }

  test("an abort before the abort-watch mark ends the exchange at the mark and closes the upstream connection", async () => {
    const up = silent();
    const p = pool(up.port);
    const { ac, adds } = countingSignal();
    const t0 = performance.now();
    const pending = get(p, "/", { signal: ac.signal, timeoutMs: 5000 }).catch((e) => e);
    await Bun.sleep(10);
    ac.abort();
    const e = await pending;
    const took = performance.now() - t0;
    expect((e as Error).name).toBe("AbortError");
    expect(took).toBeGreaterThanOrEqual(ABORT_WATCH_AFTER_MS - 2);
    expect(took).toBeLessThan(1000);
    expect(adds()).toBe(0); // seen at the mark, never listened for
    expect(await until(up.closed, 2000)).toBe(true);
    expect(p.size).toBe(0);
  });

  test("past the mark the exchange listens: an abort ends it at once and closes the upstream connection", async () => {
    const up = silent();
    const p = pool(up.port);
    const { ac, adds, removes } = countingSignal();
    const pending = get(p, "/", { signal: ac.signal, timeoutMs: 5000 }).catch((e) => e);
    expect(await until(() => adds() === 1, 2000)).toBe(true);
    const t0 = performance.now();
    ac.abort();
    const e = await pending;
    expect(performance.now() - t0).toBeLessThan(ABORT_WATCH_AFTER_MS);
    expect((e as Error).name).toBe("AbortError");
    expect(removes()).toBe(1);
    expect(await until(up.closed, 2000)).toBe(true);
  });

  test("an exchange answered before the mark never registers a listener; a slower one removes its own", async () => {
    let delay = 0;
    const s = raw((_req, _c, sock) => {
      setTimeout(() => sock.write(ok("hi")), delay);
      return null;
    });
    cleanups.push(s.stop);
    const p = pool(s.port);
    const fast = countingSignal();
    expect(await text(await get(p, "/", { signal: fast.ac.signal }))).toBe("hi");
    expect(fast.adds()).toBe(0);
    delay = ABORT_WATCH_AFTER_MS + 40;
    const slow = countingSignal();
    expect(await text(await get(p, "/", { signal: slow.ac.signal }))).toBe("hi");
    expect(slow.adds()).toBe(1);
    expect(slow.removes()).toBe(1);
    slow.ac.abort(); // after the exchange: nothing left to end, and the connection stays pooled
    expect(p.idleCount).toBe(1);
  });

  test("an abort seen when a head arrives with part of a small body rejects the exchange (no answer that breaks off)", async () => {
    const s = raw((_req, _c, sock) => {
      setTimeout(() => sock.write("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"), 30);
      return null;
    });
    cleanups.push(s.stop);
    const p = pool(s.port);
    const ac = new AbortController();
    const pending = get(p, "/", { signal: ac.signal, timeoutMs: 5000 }).then(
      (r) => `resolved ${r.status}`,
      (e: Error) => e.name,
    );
    await Bun.sleep(10);
    ac.abort();
    expect(await pending).toBe("AbortError");
  });

  test("a client abort while a response body streams errors the body and closes the upstream connection", async () => {
    let closed = false;
    const server = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        data(sock) {
          sock.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
        },
        close() {
          closed = true;
        },
      },
    });
    cleanups.push(() => server.stop(true));
    const p = pool(server.port);
    const ac = new AbortController();
    const r = await get(p, "/", { signal: ac.signal, timeoutMs: 5000 });
    expect(r.body).toBeInstanceOf(ReadableStream);
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    expect(Buffer.from((await reader.read()).value!).toString()).toBe("hello");
    ac.abort();
    await expect(reader.read()).rejects.toThrow();
    expect(await until(() => closed, 2000)).toBe(true);
  });

  test("connection refused is a connect error that was never sent", async () => {
    const s = raw(() => null);
    const port = s.port;
    s.stop();
    const e = await get(pool(port)).catch((err) => err);
    expect(e).toBeInstanceOf(H1Error);
    expect((e as H1Error).notSent).toBe(true);
    expect(String((e as H1Error).code)).toMatch(/ECONNREFUSED|ConnectionRefused/);
  });

  test("a pooled connection the upstream closed is replayed once on a fresh connection", async () => {
    // The server answers, then closes every connection after its first request (without saying so).
    const s = raw((_req, c, sock) => {
      if (c.n === 1) {
        sock.write(ok("first"));
        return null;
      }
      sock.end();
      return null;
    });
    cleanups.push(s.stop);
    const p = pool(s.port);
    expect(await text(await get(p))).toBe("first");
    const r = await get(p);
    expect(await text(r)).toBe("first");
    expect(s.accepted).toBe(2);
  });

  test("no replay for a non-idempotent request on a dead pooled connection", async () => {
    const s = raw((_req, c, sock) => {
      if (c.n === 1) sock.write(ok("first"));
      else sock.end();
      return null;
    });
    cleanups.push(s.stop);
    const p = pool(s.port);
    await get(p);
    const e = await p.request({ method: "POST", path: "/", headers: new Headers(), body: new Uint8Array([1]), timeoutMs: 1000 }).catch((err) => err);
    expect(e).toBeInstanceOf(H1Error);
  });

  test("extra bytes after a response make the connection unusable (never reused)", async () => {
    const s = raw(() => ok("a") + "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb");
    cleanups.push(s.stop);
    const p = pool(s.port);
    expect(await text(await get(p))).toBe("a");
    expect(p.size).toBe(0);
    expect(await text(await get(p))).toBe("a");
    expect(s.accepted).toBe(2);
  });

  test("connection: close from the upstream is honoured", async () => {
    const s = raw(() => ok("bye", "connection: close\r\n"));
    cleanups.push(s.stop);
    const p = pool(s.port);
    await get(p);
    expect(p.size).toBe(0);
  });

  test("a streamed body is read only as fast as it is consumed (socket paused)", async () => {
    const total = 4 * 1024 * 1024;
    const s = raw((_req, _c, sock) => {
      sock.write(`HTTP/1.1 200 OK\r\ncontent-length: ${total}\r\n\r\n`);
      const chunk = new Uint8Array(64 * 1024).fill(0x62);
      let sent = 0;
      const push = () => {
        while (sent < total) {
          const w = sock.write(chunk);
          if (w <= 0) return;
          sent += w;
        }
      };
      (sock as unknown as { data: RawConn & { push?: () => void } }).data.push = push;
      push();
      const t = setInterval(() => (sent < total ? push() : clearInterval(t)), 5);
      return null;
    });
    cleanups.push(s.stop);
    const p = pool(s.port);
    const r = await get(p);
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    let got = 0;
    const first = await reader.read();
    got += first.value!.byteLength;
    await Bun.sleep(100); // slow consumer: the client must not buffer the whole body meanwhile
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      got += value.byteLength;
    }
    expect(got).toBe(total);
  });
});
