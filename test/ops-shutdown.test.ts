// Graceful shutdown of the compiled binary: SIGTERM with a slow request, a streaming download,
// an open WebSocket and agent calls (UDS and gRPC) in flight; new connections refused; agents
// closed after their pending answers; exit 0. And the same as PID 1 of a PID namespace (a
// container), signalled from outside as `docker stop` does.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BINARY, startProxy, tempDir, waitFor } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { agentTransportKdl, startAgent, type AgentProcess } from "./helpers/agents.ts";
import { scrape, value } from "./ops-helpers.ts";

let up: Upstream;
beforeAll(() => {
  up = startUpstream("u");
});
afterAll(() => up.stop());

describe("SIGTERM", () => {
  let uds: AgentProcess;
  let grpc: AgentProcess;
  beforeAll(async () => {
    [uds, grpc] = await Promise.all([startAgent("sdk", "uds"), startAgent("sdk", "grpc")]);
  });
  afterAll(async () => {
    await Promise.all([uds?.kill(), grpc?.kill()]);
  });

  test("slow request, streaming download, WebSocket and agent calls in flight: all finish within the grace period, new connections refused, exit 0", async () => {
    const proxy = await startProxy(`
system { graceful-shutdown-timeout-secs 6 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
agents {
  agent "uds" type="auth" { ${agentTransportKdl(uds)}; events "request_headers"; timeout-ms 3000; failure-mode "closed" }
  agent "grpc" type="auth" { ${agentTransportKdl(grpc)}; events "request_headers"; timeout-ms 3000; failure-mode "closed" }
}
filters {
  filter "uds" { type "agent"; agent "uds" }
  filter "grpc" { type "agent"; agent "grpc" }
}
routes {
  route "uds" { matches { path-prefix "/uds" }; upstream "u"; filters "uds" }
  route "grpc" { matches { path-prefix "/grpc" }; upstream "u"; filters "grpc" }
  route "ws" { matches { path-prefix "/ws" }; upstream "u"; websocket #true }
  route "all" { priority "low"; upstream "u" }
}
observability { metrics { address "127.0.0.1:0" } }
`);
    await waitFor(async () => (await fetch(`${proxy.url}/uds/x`)).status === 200 && (await fetch(`${proxy.url}/grpc/x`)).status === 200, 10_000, "agents connected");

    const slow = fetch(`${proxy.url}/slow?ms=1500`).then(async (r) => `${r.status} ${await r.text()}`);
    const stream = fetch(`${proxy.url}/drip?chunks=10&ms=150`).then(async (r) => `${r.status} ${(await r.text()).split("\n").filter(Boolean).length}`);
    const udsCall = fetch(`${proxy.url}/uds/x`, { headers: { "x-delay-ms": "800" } }).then(async (r) => `${r.status} ${await r.text()}`);
    const grpcCall = fetch(`${proxy.url}/grpc/x`, { headers: { "x-delay-ms": "800" } }).then(async (r) => `${r.status} ${await r.text()}`);
    const ws = new WebSocket(proxy.url.replace("http", "ws") + "/ws/chat");
    await new Promise((r, j) => ((ws.onopen = r), (ws.onerror = j)));
    const echoed = new Promise((r) => (ws.onmessage = (e) => r(e.data)));
    ws.send("hello");
    expect(await echoed).toBe("hello");
    const wsClosed = new Promise<number>((r) => (ws.onclose = (e) => r(e.code)));
    await Bun.sleep(200);

    const t0 = Date.now();
    proxy.proc.kill("SIGTERM");
    await proxy.waitForLog((l) => l.msg === "shutting down: draining in-flight requests");
    expect(value(await scrape(proxy.metricsUrl!), "sentinel_ready")).toBe(0);
    let refused = false;
    try {
      await fetch(`${proxy.url}/x`, { headers: { connection: "close" } });
    } catch {
      refused = true;
    }
    expect(refused).toBe(true);
    proxy.proc.kill("SIGINT"); // a second signal does not cut the drain short
    expect(await slow).toBe("200 slow u");
    expect(await stream).toBe("200 10");
    expect(await udsCall).toBe("200 ok u");
    expect(await grpcCall).toBe("200 ok u");
    expect(await wsClosed).toBe(1001);
    expect(await proxy.proc.exited).toBe(0);
    expect(Date.now() - t0).toBeLessThan(6000);

    // Agents were closed after their answers, the drain was complete, logs say so.
    await waitFor(() => proxy.logs.some((l) => l.msg === "sentinel stopped"), 3000, "last log line read"); // stderr is read asynchronously
    const closed = proxy.logs.filter((l) => l.msg === "agent closed").map((l) => l.agent);
    expect(closed.sort()).toEqual(["grpc", "uds"]);
    expect(proxy.logs.some((l) => l.msg === "signal received; shutdown already in progress" && l.signal === "SIGINT")).toBe(true);
    expect(proxy.logs.find((l) => l.msg === "sentinel stopped")?.aborted).toBe(0);
    expect(proxy.logs.some((l) => l.msg === "grace period over; aborting remaining requests")).toBe(false);
  }, 30_000);

  test("the grace period bounds the drain: a request longer than it is cut, exit is still 0", async () => {
    const dir = tempDir();
    const proxy = await startProxy(
      `
system { graceful-shutdown-timeout-secs 1 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
routes { route "all" { priority "low"; upstream "u" } }
observability { logging { access-log { file "access.jsonl"; format "json" } } }
`,
      { dir },
    );
    const slow = fetch(`${proxy.url}/slow?ms=10000`).then(
      (r) => r.status,
      () => "cut",
    );
    await Bun.sleep(200);
    const t0 = Date.now();
    proxy.proc.kill("SIGTERM");
    expect(await proxy.proc.exited).toBe(0);
    expect(Date.now() - t0).toBeLessThan(3500);
    await waitFor(() => proxy.logs.some((l) => l.msg === "grace period over; aborting remaining requests"), 3000, "grace warning");
    expect(await slow).not.toBe(200);
    // The proxy cut it, not the client: said so in its access line and in the final count.
    expect(proxy.logs.find((l) => l.msg === "sentinel stopped")?.aborted).toBe(1);
    const line = readFileSync(join(dir, "access.jsonl"), "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l)).find((l) => l.path === "/slow");
    expect(line).toMatchObject({ status: 503, error: "aborted by the proxy: the shutdown grace period ended", target: up.address });
  }, 15_000);
});

// PID 1 ignores SIGTERM/SIGINT unless the program handles them; run the binary as PID 1 of a
// new PID namespace and signal it from outside, as a container runtime does.
const canUnshare = Bun.spawnSync(["unshare", "-p", "-f", "--mount-proc", "true"]).exitCode === 0;
describe("as PID 1 (container)", () => {
  test.skipIf(!canUnshare)("SIGTERM from outside drains and exits 0; pid-file written and removed", async () => {
    const dir = tempDir();
    const cfg = join(dir, "sentinel.kdl");
    const pidFile = join(dir, "sentinel.pid");
    writeFileSync(
      cfg,
      `
system { graceful-shutdown-timeout-secs 5; pid-file "${pidFile}" }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
routes { route "all" { priority "low"; upstream "u" } }
`,
    );
    const proc = Bun.spawn(["unshare", "-p", "-f", "--mount-proc", BINARY, "-c", cfg], { stdin: "ignore", stdout: "ignore", stderr: "pipe", env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } });
    const logs: Array<Record<string, unknown>> = [];
    void (async () => {
      let buf = "";
      for await (const c of proc.stderr) {
        buf += new TextDecoder().decode(c);
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          try {
            logs.push(JSON.parse(buf.slice(0, nl)));
          } catch {
            logs.push({ raw: buf.slice(0, nl) });
          }
          buf = buf.slice(nl + 1);
        }
      }
    })();
    try {
      const started = await waitFor(() => logs.find((l) => l.msg === "sentinel started"), 10_000, "started as PID 1");
      expect(started.pid).toBe(1);
      expect(readFileSync(pidFile, "utf8").trim()).toBe("1");
      const url = (started.listeners as string[])[0]!;
      // The binary's host pid: the only child of unshare.
      const child = Number(readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, "utf8").trim().split(/\s+/)[0]);
      expect(child).toBeGreaterThan(1);
      const slow = fetch(`${url}/slow?ms=1000`).then(async (r) => `${r.status} ${await r.text()}`);
      await Bun.sleep(200);
      process.kill(child, "SIGTERM");
      expect(await slow).toBe("200 slow u");
      expect(await proc.exited).toBe(0);
      await waitFor(() => logs.some((l) => l.msg === "sentinel stopped"), 3000, "last log line read"); // stderr is read asynchronously
      expect(() => readFileSync(pidFile)).toThrow();
    } finally {
      if (proc.exitCode === null) proc.kill("SIGKILL");
    }
  }, 20_000);
});
