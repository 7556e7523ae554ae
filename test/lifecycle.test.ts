// Process lifecycle of the compiled binary: start with upstreams down, graceful SIGTERM.
import { afterAll, expect, test } from "bun:test";
import { startProxy } from "./helpers/proxy.ts";
import { startUpstream } from "./helpers/upstream.ts";

const up = startUpstream("u");
afterAll(() => up.stop());

const config = (target: string) => `
system { graceful-shutdown-timeout-secs 5 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${target}" } }
routes { route "all" { priority "low"; upstream "u" } }
`;

test("starts even when its upstream is down, and answers 502", async () => {
  const proxy = await startProxy(config("127.0.0.1:1"));
  try {
    expect((await fetch(`${proxy.url}/x`)).status).toBe(502);
  } finally {
    await proxy.stop("SIGKILL");
  }
});

test("SIGTERM lets a slow in-flight request finish, refuses new connections, exits 0", async () => {
  const proxy = await startProxy(config(up.address));
  const slow = fetch(`${proxy.url}/slow?ms=1500`).then(async (r) => ({ status: r.status, body: await r.text() }));
  await Bun.sleep(200);
  proxy.proc.kill("SIGTERM");
  await proxy.waitForLog((l) => l.msg === "shutting down: draining in-flight requests");
  // New connections are refused once the listener stopped accepting.
  let refused = false;
  try {
    await fetch(`${proxy.url}/x`, { headers: { connection: "close" } });
  } catch {
    refused = true;
  }
  expect(refused).toBe(true);
  const res = await slow;
  expect(res.status).toBe(200);
  expect(res.body).toBe("slow u");
  expect(await proxy.proc.exited).toBe(0);
});

test("SIGTERM with a streaming download and an open WebSocket: both end cleanly within the grace period", async () => {
  const proxy = await startProxy(config(up.address).replace('upstream "u" }', 'upstream "u"; websocket #true }'));
  const download = fetch(`${proxy.url}/drip?chunks=8&ms=100`).then((r) => r.text());
  const ws = new WebSocket(proxy.url.replace("http", "ws") + "/ws");
  await new Promise((r) => (ws.onopen = r));
  const closed = new Promise<number>((r) => (ws.onclose = (e) => r(e.code)));
  await Bun.sleep(100);
  const t0 = Date.now();
  proxy.proc.kill("SIGTERM");
  expect((await download).split("\n").filter(Boolean).length).toBe(8);
  expect(await closed).toBe(1001);
  expect(await proxy.proc.exited).toBe(0);
  expect(Date.now() - t0).toBeLessThan(5000);
});
