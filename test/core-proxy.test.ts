// Core proxying through the compiled binary, in front of real upstream servers.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { startProxy, type ProxyProcess } from "./helpers/proxy.ts";
import { pattern, startUpstream, type Upstream } from "./helpers/upstream.ts";
import { get, rawRequest } from "./helpers/raw.ts";

let up: Upstream;
let slowUp: Upstream;
let proxy: ProxyProcess;

beforeAll(async () => {
  up = startUpstream("main");
  slowUp = startUpstream("slow");
  proxy = await startProxy(`
system { graceful-shutdown-timeout-secs 10 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "main" { target "${up.address}" }
  upstream "slow" { target "${slowUp.address}" }
  upstream "down" { target "127.0.0.1:1" }
}
routes {
  route "admin" { matches { path-prefix "/admin" }; upstream "main"; policies { request-headers { set { "X-Route" "admin" } } } }
  route "timeout" { matches { path-prefix "/t" }; upstream "slow"; policies { timeout-secs 1 } }
  route "down" { matches { path-prefix "/down" }; upstream "down" }
  route "big" { matches { path-prefix "/big" }; upstream "main"; policies { max-body-size "300MB" } }
  route "ws" { matches { path-prefix "/ws" }; upstream "main"; websocket #true }
  route "public" { matches { path-prefix "/public" }; upstream "main" }
  route "methods" { matches { path-prefix "/m" }; upstream "main" }
}
`);
});

afterAll(async () => {
  await proxy?.stop("SIGKILL");
  await up?.stop();
  await slowUp?.stop();
});

const last = () => up.requests[up.requests.length - 1]!;

describe("methods and bodies", () => {
  for (const method of ["GET", "POST", "PUT", "DELETE", "HEAD"]) {
    test(`${method} goes through`, async () => {
      const body = method === "POST" || method === "PUT" ? "payload" : undefined;
      const res = await fetch(`${proxy.url}/m/x?q=1`, { method, body });
      expect(res.status).toBe(200);
      const text = await res.text();
      if (method !== "HEAD") expect(text).toBe("ok main");
      expect(last().method).toBe(method);
      expect(last().path).toBe("/m/x?q=1");
      if (body) expect(last().bodyBytes).toBe(body.length);
    });
  }

  test("a 1 MB body arrives byte-identical", async () => {
    const data = new Uint8Array(1024 * 1024);
    crypto.getRandomValues(data.subarray(0, 65536));
    for (let i = 65536; i < data.length; i++) data[i] = (i * 7) & 0xff;
    const res = await fetch(`${proxy.url}/m/sha`, { method: "POST", body: data });
    const got = (await res.json()) as { sha256: string; bytes: number };
    expect(got.bytes).toBe(data.length);
    expect(got.sha256).toBe(createHash("sha256").update(data).digest("hex"));
  });
});

describe("streaming with bounded memory", () => {
  const SIZE = 200 * 1024 * 1024;
  test("200 MB upload and 200 MB download stream through; peak RSS stays within 50 MB of idle", async () => {
    const pid = proxy.proc.pid;
    // Warm up (JIT, socket buffers, allocator arenas) with 8 MB each way, then measure idle.
    await (await fetch(`${proxy.url}/big/sha`, { method: "POST", body: pattern(8 << 20), duplex: "half" } as RequestInit)).text();
    for await (const _ of (await fetch(`${proxy.url}/big/bytes?n=${8 << 20}`)).body!);
    await Bun.sleep(200);
    const idle = proxy.rss();
    await Bun.write(`/proc/${pid}/clear_refs`, "5"); // reset VmHWM to the current RSS
    const up1 = await fetch(`${proxy.url}/big/sha`, {
      method: "POST",
      body: pattern(SIZE),
      duplex: "half",
    } as RequestInit);
    const got = (await up1.json()) as { bytes: number };
    expect(up1.status).toBe(200);
    expect(got.bytes).toBe(SIZE);

    const down = await fetch(`${proxy.url}/big/bytes?n=${SIZE}`);
    let n = 0;
    for await (const c of down.body!) n += c.byteLength;
    expect(n).toBe(SIZE);

    const status = await Bun.file(`/proc/${pid}/status`).text();
    const hwm = Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) * 1024;
    expect(hwm - idle).toBeLessThan(50 * 1024 * 1024);
  }, 120_000);
});

describe("headers", () => {
  test("hop-by-hop and Connection-listed headers never reach the upstream", async () => {
    const res = await fetch(`${proxy.url}/public/h`, {
      headers: {
        connection: "keep-alive, x-secret-hop",
        "keep-alive": "timeout=5",
        "proxy-connection": "keep-alive",
        te: "trailers",
        "proxy-authorization": "Basic eA==",
        "x-secret-hop": "1",
        "x-normal": "kept",
      },
    });
    expect(res.status).toBe(200);
    const h = last().headers;
    for (const name of ["keep-alive", "proxy-connection", "te", "proxy-authorization", "x-secret-hop"]) expect(h[name]).toBeUndefined();
    expect(h["x-normal"]).toBe("kept");
  });

  test("X-Forwarded-* and correlation headers", async () => {
    const res = await fetch(`${proxy.url}/public/xf`, { headers: { "x-forwarded-for": "10.9.9.9", "x-request-id": "abc-123" } });
    expect(res.status).toBe(200);
    const h = last().headers;
    expect(h["x-forwarded-for"]).toBe("10.9.9.9, 127.0.0.1");
    expect(h["x-forwarded-proto"]).toBe("http");
    expect(h["x-forwarded-host"]).toBe(new URL(proxy.url).host);
    expect(h["x-correlation-id"]).toBe("abc-123");
    expect(res.headers.get("x-correlation-id")).toBe("abc-123");

    const res2 = await fetch(`${proxy.url}/public/xf2`, { headers: { "x-request-id": "<script>" } });
    const id = res2.headers.get("x-correlation-id")!;
    expect(id).toMatch(/^[A-Za-z0-9._:-]+$/);
    expect(last().headers["x-correlation-id"]).toBe(id);
  });

  test("route request-header policy applies", async () => {
    await fetch(`${proxy.url}/admin/p`);
    expect(last().headers["x-route"]).toBe("admin");
  });
});

describe("errors", () => {
  test("404 for no route", async () => {
    const res = await fetch(`${proxy.url}/nothing-here`);
    expect(res.status).toBe(404);
    expect(await res.text()).not.toContain("at ");
  });
  test("502 when the upstream is down", async () => {
    const res = await fetch(`${proxy.url}/down/x`);
    expect(res.status).toBe(502);
  });
  test("504 when the upstream is slower than the route timeout", async () => {
    const t0 = performance.now();
    const res = await fetch(`${proxy.url}/t/slow?ms=3000`);
    expect(res.status).toBe(504);
    const elapsed = performance.now() - t0;
    expect(elapsed).toBeGreaterThan(900);
    expect(elapsed).toBeLessThan(2000);
  });
});

describe("path normalisation: the upstream gets the path that was matched", () => {
  // Raw bytes on the wire: fetch() would normalise these paths itself before sending.
  for (const p of ["/%61dmin/x", "//admin/x", "/public/../admin/x", "/public/%2e%2e/admin/x", "/public/.%2e/admin/x", "/admin//x", "/admin/./x", "/ADMIN/x"]) {
    test(`${p} matches the /admin route`, async () => {
      const res = await rawRequest(proxy.url, get(p));
      expect(res.status).toBe(200);
      expect(last().headers["x-route"]).toBe("admin");
      expect(last().path.toLowerCase()).toBe("/admin/x");
    });
  }
  for (const p of ["/admin%2fx", "/admin%2Fx", "/admin%00/x", "/public/..%2fadmin/x", "/admin%09/x", "/admin%c0%afx"]) {
    test(`${p} is rejected`, async () => {
      const before = up.requests.length;
      const res = await rawRequest(proxy.url, get(p));
      expect(res.status).toBe(400);
      expect(up.requests.length).toBe(before);
    });
  }
});

describe("websocket", () => {
  test("messages flow both ways and close codes propagate", async () => {
    const ws = new WebSocket(proxy.url.replace("http", "ws") + "/ws/chat", ["chat"]);
    const messages: string[] = [];
    const closed = new Promise<{ code: number; reason: string }>((r) => (ws.onclose = (e) => r({ code: e.code, reason: e.reason })));
    ws.onmessage = (e) => messages.push(String(e.data));
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error("ws error"));
    });
    expect(ws.protocol).toBe("chat");
    ws.send("hello");
    ws.send("world");
    await Bun.sleep(0);
    const deadline = Date.now() + 5000;
    while (messages.length < 2 && Date.now() < deadline) await Bun.sleep(10);
    expect(messages).toEqual(["hello", "world"]);
    ws.send("close-me");
    const c = await closed;
    expect(c.code).toBe(4001);
  });
});
