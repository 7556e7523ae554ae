// Upstream knobs that an audit found accepted but without effect, through the compiled binary:
// the connect timeout (upstream and timeout filter), connection-pool max-lifetime, the retry
// policy's overall timeout-ms, HTTP health checks of a TLS upstream with its own CA, and the
// upstream write timeout (plain and TLS).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from "node:net";
import { createServer as createTlsServer } from "node:tls";
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

/** A server that accepts (and, with TLS, completes the handshake) but never reads a byte. */
async function stalled(tls?: { cert: string; key: string }): Promise<NetServer> {
  const hold = (s: { pause(): void }) => s.pause();
  const srv = tls ? createTlsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, hold) : createNetServer(hold);
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return srv;
}
const portOf = (s: NetServer) => (s.address() as AddressInfo).port;

let proxy: ProxyProcess;
let hole: { port: number; stop(): void } | undefined;
let secure: ReturnType<typeof Bun.serve>;
let sink: NetServer;
let tlsSink: NetServer;

beforeAll(async () => {
  if (hasPython) hole = await blackhole();
  const { cert, key } = selfSignedCert();
  secure = Bun.serve({ hostname: "127.0.0.1", port: 0, tls: { cert: Bun.file(cert), key: Bun.file(key) }, fetch: () => new Response("secure") });
  sink = await stalled();
  tlsSink = await stalled({ cert, key });
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
  upstream "sink" { target "127.0.0.1:${portOf(sink)}"; timeouts { write 1; request 20 } }
  upstream "tls-sink" { target "127.0.0.1:${portOf(tlsSink)}"; tls { sni "localhost"; ca-cert "${cert}" }; timeouts { write 1; request 20 } }
}
filters { filter "ct" { type "timeout"; connect-timeout-secs 1 } }
routes {
  route "hole" { matches { path-prefix "/hole" }; upstream "hole" }
  route "ct" { matches { path-prefix "/ct" }; upstream "hole-slow-connect"; filters "ct" }
  route "budget" { matches { path-prefix "/budget" }; upstream "rec"; retry-policy { max-attempts 1; timeout-ms 1500 } }
  route "tls" { matches { path-prefix "/tls" }; upstream "tls" }
  route "sink" { matches { path-prefix "/sink" }; upstream "sink"; policies { max-body-size "1GB" } }
  route "tls-sink" { matches { path-prefix "/tsink" }; upstream "tls-sink"; policies { max-body-size "1GB" } }
  route "rec" { priority "low"; upstream "rec" }
}
`);
});
afterAll(async () => {
  await proxy?.stop("SIGKILL");
  hole?.stop();
  recorder.stop(true);
  secure?.stop(true);
  sink?.close();
  tlsSink?.close();
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

  test("timeouts { write }: an upstream that stops taking the request body gets 504 at the write timeout, not the request timeout (plain and TLS)", async () => {
    const size = 256 * 1024 * 1024; // far beyond every socket buffer on the way
    for (const path of ["/sink/up", "/tsink/up"]) {
      const head = `POST ${path} HTTP/1.1\r\nHost: t\r\nContent-Length: ${size}\r\n\r\n`;
      const r = await upload(proxy.url, head, { bodyBytes: size, timeoutMs: 15_000 });
      expect({ path, status: r.status }).toEqual({ path, status: 504 });
      expect(r.closedMs).toBeLessThan(8_000); // the request timeout is 20 s
    }
    const log = proxy.logs.filter((l) => typeof l.msg === "string" && String(l.error ?? l.reason ?? "").includes("write timeout"));
    expect(log.length).toBeGreaterThan(0);
  });
});

