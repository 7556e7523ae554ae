// forward() to a TLS upstream (the fetch() path) against a real local HTTPS server: the answer,
// the response-head deadline (on the shared deadline queue) and the client's abort.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../config/load.ts";
import { createPool, type Pool } from "./pool.ts";
import { forward, releaseTarget, type ForwardInput } from "./forward.ts";

const openssl = Bun.which("openssl");

describe.skipIf(!openssl)("forward() over TLS (fetch path)", () => {
  const dir = mkdtempSync(join(tmpdir(), "sentinel-fwd-tls-"));
  let server: ReturnType<typeof Bun.serve> | undefined;
  let pool: Pool;
  let closedRequests = 0;

  beforeAll(() => {
    const r = spawnSync(openssl!, ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=localhost"], { cwd: dir, encoding: "utf8" });
    if (r.status !== 0) throw new Error(r.stderr);
    server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: readFileSync(join(dir, "c.pem"), "utf8"), key: readFileSync(join(dir, "k.pem"), "utf8") },
      async fetch(req) {
        if (new URL(req.url).pathname === "/hang") {
          req.signal.addEventListener("abort", () => closedRequests++);
          await new Promise(() => {});
        }
        return new Response("over tls");
      },
    });
    const file = join(dir, "s.kdl");
    writeFileSync(
      file,
      `system { worker-threads 1 }
listeners { listener "l" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "127.0.0.1:${server.port}"; tls { insecure-skip-verify #true } } }
routes { route "r" { matches { path-prefix "/" }; upstream "u" } }
`,
    );
    const loaded = loadConfig(file);
    if (!loaded.config) throw new Error(JSON.stringify(loaded.diagnostics));
    pool = createPool(loaded.config.upstreams.get("u")!);
  });
  afterAll(() => {
    server?.stop(true);
    rmSync(dir, { recursive: true, force: true });
  });

  const input = (path: string, signal: AbortSignal, timeoutMs = 2000): ForwardInput => ({
    pool,
    method: "GET",
    pathAndQuery: path,
    headers: ["host", "localhost"],
    body: null,
    clientIp: "127.0.0.1",
    hashKey: path,
    signal,
    timeoutMs,
    retry: { maxAttempts: 1, backoffBaseMs: 0, backoffMaxMs: 0, retryableStatusCodes: [] },
  });

  test("an answer", async () => {
    const r = await forward(input("/", new AbortController().signal));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.response.status).toBe(200);
    expect(await new Response(r.response.body).text()).toBe("over tls");
    releaseTarget(r.target);
  });

  test("no response head within the timeout: 504 at the deadline, the upstream request aborted", async () => {
    const before = closedRequests;
    const t0 = performance.now();
    const r = await forward(input("/hang", new AbortController().signal, 300));
    const ms = performance.now() - t0;
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.status).toBe(504);
    expect(ms).toBeGreaterThanOrEqual(295);
    expect(ms).toBeLessThan(1500);
    const end = Date.now() + 2000;
    while (closedRequests === before && Date.now() < end) await Bun.sleep(10);
    expect(closedRequests).toBe(before + 1);
  });

  test("the client going away ends the attempt at once (499), long before the deadline", async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const t0 = performance.now();
    const r = await forward(input("/hang", ac.signal, 5000));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.status).toBe(499);
    expect(performance.now() - t0).toBeLessThan(1000);
  });
});
