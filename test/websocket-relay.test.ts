// WebSocket relay limits through the compiled binary: a wss:// upstream uses the pool's TLS
// settings; a client that reads slower than the upstream writes is closed with 1008 once the
// bound is reached, never left open with messages silently dropped; an upstream that vanishes
// without a close frame is not reported to the client as a normal closure (1000). Under
// connection-pool max-connections, WebSocket connections are capped, logged and counted like HTTP.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { startProxy, tempDir, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { selfSignedCert } from "./helpers/tls.ts";

const MiB = 1024 * 1024;
type Up = { firehose?: number; sent: number };

/** Upstream: /firehose?mb=N sends N messages of 1 MiB as fast as its own backpressure allows; /echo echoes; "drop" kills the TCP connection. */
function wsUpstream(tls?: { cert: string; key: string }) {
  const chunk = new Uint8Array(MiB).fill(7);
  const pump = (ws: import("bun").ServerWebSocket<Up>) => {
    while (ws.data.firehose !== undefined && ws.data.sent < ws.data.firehose) {
      ws.data.sent++;
      if (ws.send(chunk) === -1) return; // wait for drain
    }
  };
  return Bun.serve<Up>({
    hostname: "127.0.0.1",
    port: 0,
    tls: tls ? { cert: Bun.file(tls.cert), key: Bun.file(tls.key) } : undefined,
    fetch(req, server) {
      const u = new URL(req.url);
      const mb = u.pathname.endsWith("/firehose") ? Number(u.searchParams.get("mb")) : undefined;
      return server.upgrade(req, { data: { firehose: mb, sent: 0 } }) ? undefined : new Response("no", { status: 400 });
    },
    websocket: {
      open: pump,
      drain: pump,
      message(ws, m) {
        if (m === "drop") ws.terminate();
        else ws.send(m);
      },
    },
  });
}

let plain: ReturnType<typeof wsUpstream>;
let plain2: ReturnType<typeof wsUpstream>;
let secure: ReturnType<typeof wsUpstream>;
let proxy: ProxyProcess;
let dir: string;

beforeAll(async () => {
  const { cert, key } = selfSignedCert();
  plain = wsUpstream();
  plain2 = wsUpstream();
  secure = wsUpstream({ cert, key });
  dir = tempDir();
  proxy = await startProxy(
    `
system { }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "plain" { target "127.0.0.1:${plain.port}" }
  upstream "secure" { target "127.0.0.1:${secure.port}"; tls { sni "localhost"; ca-cert "${cert}" } }
  upstream "capped" { target "127.0.0.1:${plain.port}"; connection-pool { max-connections 1 }; timeouts { connect 1 } }
  upstream "pair" { target "127.0.0.1:${plain.port}"; target "127.0.0.1:${plain2.port}"; connection-pool { max-connections 1 }; timeouts { connect 1 } }
}
routes {
  route "tls" { matches { path-prefix "/tls" }; upstream "secure"; websocket #true }
  route "capped" { matches { path-prefix "/cap" }; upstream "capped"; websocket #true }
  route "pair" { matches { path-prefix "/pair" }; upstream "pair"; websocket #true }
  route "ups" { matches { path "/-/upstreams" }; builtin-handler "upstreams" }
  route "ws" { priority "low"; upstream "plain"; websocket #true }
}
observability {
  metrics { address "127.0.0.1:0" }
  logging { access-log { file "ws-access.jsonl"; buffer-size 1 } }
}
`,
    { dir },
  );
});
afterAll(async () => {
  await proxy?.stop("SIGKILL");
  plain?.stop(true);
  plain2?.stop(true);
  secure?.stop(true);
});

/** Open a WebSocket client through the proxy and collect what happens. */
function client(path: string) {
  const ws = new WebSocket(proxy.url.replace("http", "ws") + path);
  const got: string[] = [];
  const closed = new Promise<{ code: number; reason: string }>((resolve) => (ws.onclose = (e) => resolve({ code: e.code, reason: e.reason })));
  const opened = new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("websocket error"));
  });
  ws.onmessage = (e) => got.push(String(e.data));
  return { ws, got, closed, opened };
}

describe("WebSocket relay", () => {
  test("a wss:// upstream is reached with the pool's TLS settings (CA, SNI)", async () => {
    const c = client("/tls/echo");
    await c.opened;
    c.ws.send("over tls");
    await waitFor(() => c.got.length > 0, 5000, "the echo");
    expect(c.got).toEqual(["over tls"]);
    c.ws.close(1000, "done");
    expect((await c.closed).code).toBe(1000);
  });

  test("an upstream that drops its connection is not relayed as a normal closure", async () => {
    const c = client("/echo");
    await c.opened;
    c.ws.send("drop");
    const end = await c.closed;
    expect(end.code).not.toBe(1000);
  });

  test("a reader slower than the upstream: every message arrives, or the relay closes with 1008 — none is dropped silently", async () => {
    const mb = 48; // past the relay's 32 MiB bound for one side
    const { payload, closeCode, open } = await new Promise<{ payload: number; closeCode: number | null; open: boolean }>((resolve) => {
      const sock = connect(Number(new URL(proxy.url).port), "127.0.0.1");
      let buf = Buffer.alloc(0);
      let head = true;
      let payload = 0;
      let closeCode: number | null = null;
      const finish = (open: boolean) => {
        clearTimeout(timer);
        sock.destroy();
        resolve({ payload, closeCode, open });
      };
      const timer = setTimeout(() => finish(true), 20_000);
      sock.on("connect", () =>
        sock.write(`GET /firehose?mb=${mb} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`),
      );
      sock.on("data", (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (head) {
          const i = buf.indexOf("\r\n\r\n");
          if (i < 0) return;
          buf = buf.subarray(i + 4);
          head = false;
          sock.pause(); // a slow reader: nothing read for 3 s
          setTimeout(() => sock.resume(), 3000);
        }
        // Unmasked server frames: count data payload, stop at a close frame.
        for (;;) {
          if (buf.length < 2) return;
          const op = buf[0]! & 0x0f;
          let len = buf[1]! & 0x7f;
          let off = 2;
          if (len === 126) {
            if (buf.length < 4) return;
            len = buf.readUInt16BE(2);
            off = 4;
          } else if (len === 127) {
            if (buf.length < 10) return;
            len = Number(buf.readBigUInt64BE(2));
            off = 10;
          }
          if (buf.length < off + len) return;
          if (op === 8) {
            closeCode = len >= 2 ? buf.readUInt16BE(off) : 1005;
            return finish(false);
          }
          if (op === 0 || op === 1 || op === 2) payload += len;
          buf = buf.subarray(off + len);
          if (payload >= mb * MiB) return finish(true);
        }
      });
      sock.on("close", () => finish(false));
    });
    if (payload >= mb * MiB) expect(payload).toBe(mb * MiB);
    else {
      expect(open).toBe(false);
      expect(closeCode).toBe(1008);
    }
  }, 30_000);
});

describe("WebSocket and connection-pool max-connections", () => {
  const access = () => (existsSync(join(dir, "ws-access.jsonl")) ? readFileSync(join(dir, "ws-access.jsonl"), "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) : []);
  const refusals = async (upstream: string) => {
    const text = await (await fetch(proxy.metricsUrl!)).text();
    const line = text.split("\n").find((l) => l.startsWith("sentinel_upstream_errors_total{") && l.includes(`upstream="${upstream}"`) && l.includes('kind="max_connections"'));
    return Number(line?.split(" ").pop() ?? NaN);
  };
  const ups = async () => (await (await fetch(`${proxy.url}/-/upstreams`)).json()) as Record<string, { targets: Array<{ address: string; active_requests: number; waiting: number }> }>;

  test("a WebSocket past the cap is refused with 503, logged as 503 and counted; one whose client leaves while queued is logged 499 and not counted", async () => {
    const holder = client("/cap/hold");
    await holder.opened;
    const refused = client("/cap/refused");
    await expect(refused.opened).rejects.toThrow();
    await waitFor(() => access().some((l) => l.path === "/cap/refused"), 5000, "the refused line");
    expect(access().find((l) => l.path === "/cap/refused")).toMatchObject({ status: 503 });
    expect(await refusals("capped")).toBe(1);
    // A client that gives up while queued: 499, and not a refusal by the cap.
    const leaver = client("/cap/leaver");
    leaver.opened.catch(() => {});
    await waitFor(async () => (await ups()).capped!.targets[0]!.waiting === 1, 5000, "the leaver queued");
    leaver.ws.close();
    await waitFor(() => access().some((l) => l.path === "/cap/leaver"), 5000, "the leaver's line");
    expect(access().find((l) => l.path === "/cap/leaver")).toMatchObject({ status: 499 });
    expect(await refusals("capped")).toBe(1);
    holder.ws.close(1000, "done");
    await holder.closed;
    await waitFor(async () => (await ups()).capped!.targets[0]!.active_requests === 0, 5000, "the holder's slot released");
  });

  test("a WebSocket whose balancer choice is full goes to the target with a free slot", async () => {
    const a = client("/pair/a");
    await a.opened;
    const b = client("/pair/b"); // round robin: the other target
    await b.opened;
    b.ws.close(1000, "done");
    await b.closed;
    await waitFor(async () => (await ups()).pair!.targets.filter((t) => t.active_requests === 1).length === 1, 5000, "b's slot released");
    // Round robin now points at a's target, whose only slot a holds: c must take the free one at once.
    const t0 = performance.now();
    const c = client("/pair/c");
    await c.opened;
    expect(performance.now() - t0).toBeLessThan(700); // not the 1 s wait for a's slot (then 503)
    c.ws.send("hi");
    await waitFor(() => c.got.length > 0, 5000, "the echo");
    for (const x of [a, c]) x.ws.close(1000, "done");
    await Promise.all([a.closed, c.closed]);
  });
});

