// createUdsTransport (proxy side) against serveUds (agent side), end to end over real sockets.
import { afterEach, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { createUdsTransport } from "../../src/agents/uds/client.ts";
import { TransportError, type AgentEvent, type AgentTransport, type TransportOptions } from "../../src/agents/types.ts";
import { serveUds } from "../../sdk/uds-server.ts";
import { allow, block, setHeader } from "../../sdk/reply.ts";
import type { AgentHandler, RunningServer } from "../../sdk/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { waitFor as poll } from "../helpers/proxy.ts";
import { never } from "../helpers/agents.ts";

let seq = 0;
const sockPath = () => `/tmp/sentinel-uds-e2e-${process.pid}-${++seq}.sock`;
const quiet = () => {};

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function transport(path: string, over: Partial<TransportOptions> = {}): AgentTransport {
  const t = createUdsTransport({ endpoint: path, connectTimeoutMs: 1000, connections: 2, proxyVersion: "0.1.0-test", protocol: "v2", log: quiet, ...over });
  cleanups.push(() => t.close(0));
  t.start();
  return t;
}

async function serve(path: string, h: AgentHandler): Promise<RunningServer> {
  const s = await serveUds(path, h, { log: quiet });
  cleanups.push(() => s.close());
  return s;
}

const waitFor = (cond: () => boolean, ms = 3000, what = "condition") => poll(cond, ms, what, 5);

function reqHeaders(id: string, headers: Record<string, string[]> = {}): AgentEvent {
  return requestHeadersEvent(id, { metadata: { requestId: `r-${id}`, clientPort: 40000, serverName: "example.test", routeId: "r" }, uri: "/x", headers });
}

const info = { agentId: "test-agent", name: "Test", version: "1.0.0" };

describe("client ↔ serveUds", () => {
  test("handshake, capabilities, connectivity and a simple call", async () => {
    const path = sockPath();
    await serve(path, { info, onRequestHeaders: (e) => allow({ requestHeaders: [setHeader("x-seen", e.uri)] }) });
    const t = transport(path);
    const events: boolean[] = [];
    t.onConnectivity((c) => events.push(c));
    await waitFor(() => t.isConnected(), 3000, "connected");
    expect(events).toEqual([true]);
    expect(t.capabilities?.agentId).toBe("test-agent");
    const r = await t.call(reqHeaders("c1"), never());
    expect(r.correlationId).toBe("c1");
    expect(r.decision).toEqual({ kind: "allow" });
    expect(r.requestHeaders).toEqual([{ op: "set", name: "x-seen", value: "/x" }]);
  });

  test("500 concurrent calls with random delays each get their own answer", async () => {
    const path = sockPath();
    await serve(path, {
      info,
      async onRequestHeaders(e) {
        await Bun.sleep(Math.random() * 30);
        const n = Number(e.correlationId.split("-")[1]);
        const tag = e.headers["x-tag"]![0]!;
        return n % 3 === 0 ? block(403, `no ${tag}`) : allow({ requestHeaders: [setHeader("x-tag-echo", tag)] });
      },
    });
    const t = transport(path, { connections: 4 });
    await waitFor(() => t.isConnected());
    await Bun.sleep(50); // let every connection handshake
    const calls = Array.from({ length: 500 }, (_, i) => t.call(reqHeaders(`id-${i}`, { "x-tag": [`tag-${i}`] }), never()));
    const replies = await Promise.all(calls);
    replies.forEach((r, i) => {
      expect(r.correlationId).toBe(`id-${i}`);
      if (i % 3 === 0) expect(r.decision).toEqual({ kind: "block", status: 403, body: `no tag-${i}`, headers: null });
      else expect(r.requestHeaders).toEqual([{ op: "set", name: "x-tag-echo", value: `tag-${i}` }]);
    });
  });

  test("body chunks, response phases and request_complete notify", async () => {
    const path = sockPath();
    const seen: string[] = [];
    await serve(path, {
      info,
      onRequestBodyChunk(e: any) {
        seen.push(`body:${Buffer.from(e.data).toString()}`);
        return allow({ requestBodyMutation: { data: new TextEncoder().encode("REDACTED"), chunkIndex: e.chunkIndex } });
      },
      onResponseHeaders(e) {
        seen.push(`resp:${e.status}`);
        return allow({ responseHeaders: [setHeader("x-r", "1")] });
      },
      onRequestComplete(e) {
        seen.push(`done:${e.status}`);
      },
    });
    const t = transport(path);
    await waitFor(() => t.isConnected());
    const body = await t.call(
      { type: "request_body_chunk", correlationId: "b1", data: new TextEncoder().encode("secret"), isLast: true, totalSize: 6, chunkIndex: 0, bytesTransferred: 6 },
      never(),
    );
    expect(Buffer.from(body.requestBodyMutation!.data!).toString()).toBe("REDACTED");
    const resp = await t.call({ type: "response_headers", correlationId: "b1", status: 201, headers: { "content-type": ["text/plain"] } }, never());
    expect(resp.responseHeaders).toEqual([{ op: "set", name: "x-r", value: "1" }]);
    t.notify({ type: "request_complete", correlationId: "b1", status: 201, durationMs: 3, requestBodySize: 6, responseBodySize: 0, upstreamAttempts: 1, error: null });
    await waitFor(() => seen.includes("done:201"));
    expect(seen).toEqual(["body:secret", "resp:201", "done:201"]);
    // the notify answer was dropped quietly and the id is usable again
    await Bun.sleep(20);
    expect((await t.call(reqHeaders("b1"), never())).correlationId).toBe("b1");
  });

  test("reconnects after the agent restarts on the same path", async () => {
    const path = sockPath();
    const h: AgentHandler = { info, onRequestHeaders: () => allow() };
    let srv = await serveUds(path, h, { log: quiet });
    const t = transport(path);
    const events: boolean[] = [];
    t.onConnectivity((c) => events.push(c));
    await waitFor(() => t.isConnected());
    await srv.close();
    await waitFor(() => !t.isConnected(), 3000, "disconnect");
    const err = await t.call(reqHeaders("down"), never()).catch((e) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect(err.kind).toBe("connect");
    expect(err.notSent).toBe(true);
    await Bun.sleep(300); // let a few reconnect attempts fail
    srv = await serveUds(path, h, { log: quiet });
    cleanups.push(() => srv.close());
    const t0 = Date.now();
    await waitFor(() => t.isConnected(), 4000, "reconnect");
    expect(Date.now() - t0).toBeLessThan(2600); // backoff is capped near 2 s
    expect((await t.call(reqHeaders("up"), never())).correlationId).toBe("up");
    expect(events).toEqual([true, false, true]);
  });

  test("no agent at all: calls fail at once with connect/notSent, start with missing socket works later", async () => {
    const path = sockPath();
    const t = transport(path);
    const t0 = Date.now();
    const err = await t.call(reqHeaders("x"), never()).catch((e) => e);
    expect(Date.now() - t0).toBeLessThan(50);
    expect(err.kind).toBe("connect");
    expect(err.notSent).toBe(true);
    await Bun.sleep(150);
    await serve(path, { info, onRequestHeaders: () => allow() });
    await waitFor(() => t.isConnected(), 3000);
  });

  test("abort removes the pending entry and the late answer is dropped", async () => {
    const path = sockPath();
    await serve(path, {
      info,
      async onRequestHeaders(e) {
        if (e.correlationId === "slow") await Bun.sleep(150);
        return allow({ requestHeaders: [setHeader("x-id", e.correlationId)] });
      },
    });
    const t = transport(path, { connections: 1 });
    await waitFor(() => t.isConnected());
    const ac = new AbortController();
    const p = t.call(reqHeaders("slow"), ac.signal);
    setTimeout(() => ac.abort(), 20);
    const err = await p.catch((e) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect(err.kind).toBe("timeout");
    // the same id can be reused right away; it must get ITS answer, not the late one
    const r = await t.call(reqHeaders("other"), never());
    expect(r.requestHeaders[0]).toEqual({ op: "set", name: "x-id", value: "other" });
    await Bun.sleep(200);
    expect(t.isConnected()).toBe(true);
    // already-aborted signal
    const ac2 = new AbortController();
    ac2.abort();
    const e2 = await t.call(reqHeaders("z"), ac2.signal).catch((e) => e);
    expect(e2.notSent).toBe(true);
    // AbortSignal.timeout works as the caller's timeout
    const e3 = await t.call(reqHeaders("slow"), AbortSignal.timeout(30)).catch((e) => e);
    expect(e3.kind).toBe("timeout");
  });

  test("duplicate correlation id in flight: another connection or overload", async () => {
    const path = sockPath();
    await serve(path, {
      info,
      async onRequestHeaders() {
        await Bun.sleep(50);
        return allow();
      },
    });
    const one = transport(path, { connections: 1 });
    await waitFor(() => one.isConnected());
    const a = one.call(reqHeaders("dup"), never());
    const b = await one.call(reqHeaders("dup"), never()).catch((e) => e);
    expect(b.kind).toBe("overload");
    expect(b.notSent).toBe(true);
    expect((await a).correlationId).toBe("dup");

    const two = transport(path, { connections: 2 });
    await waitFor(() => two.isConnected());
    await Bun.sleep(50);
    const [x, y] = await Promise.all([two.call(reqHeaders("dup"), never()), two.call(reqHeaders("dup"), never())]);
    expect(x.correlationId).toBe("dup");
    expect(y.correlationId).toBe("dup");
  });

  test("ping/pong", async () => {
    const path = sockPath();
    await serve(path, { info });
    const t = transport(path);
    await expect(t.ping(100)).rejects.toMatchObject({ kind: "connect" });
    await waitFor(() => t.isConnected());
    await t.ping(500);
    await Promise.all([t.ping(500), t.ping(500), t.ping(500)]);
  });

  test("a handler that throws gets no answer (the caller's timeout decides)", async () => {
    const path = sockPath();
    await serve(path, {
      info,
      onRequestHeaders(e) {
        if (e.correlationId === "boom") throw new Error("handler bug");
        return allow();
      },
    });
    const t = transport(path, { connections: 1 });
    await waitFor(() => t.isConnected());
    const err = await t.call(reqHeaders("boom"), AbortSignal.timeout(100)).catch((e) => e);
    expect(err.kind).toBe("timeout");
    expect((await t.call(reqHeaders("fine"), never())).decision.kind).toBe("allow");
  });

  test("handshake config reaches onConfigure; a throwing onConfigure refuses the connection", async () => {
    const path = sockPath();
    const got: unknown[] = [];
    await serve(path, {
      info,
      onConfigure(c) {
        got.push(c);
        if ((c as { bad?: boolean }).bad) throw new Error("bad config");
      },
      onRequestHeaders: () => allow(),
    });
    const ok = transport(path, { config: { keys: ["a"] }, connections: 1 });
    await waitFor(() => ok.isConnected());
    expect(got).toEqual([{ keys: ["a"] }]);
    const bad = transport(path, { config: { bad: true }, connections: 1 });
    await Bun.sleep(300);
    expect(bad.isConnected()).toBe(false);
    expect(got.length).toBeGreaterThanOrEqual(2);
    const noCfg = transport(path, { connections: 1 });
    await waitFor(() => noCfg.isConnected());
    expect(got.filter((g) => g === null).length).toBe(0); // onConfigure never called with null
  });

  test("configure event: allow on success, block 500 on rejection", async () => {
    const path = sockPath();
    await serve(path, {
      info,
      onConfigure(c) {
        if (c === "nope") throw new Error("rejected");
      },
    });
    const t = transport(path);
    await waitFor(() => t.isConnected());
    const ok = await t.call({ type: "configure", correlationId: "cfg-1", config: { a: 1 }, configVersion: "1" }, never());
    expect(ok.decision.kind).toBe("allow");
    const no = await t.call({ type: "configure", correlationId: "cfg-2", config: "nope", configVersion: null }, never());
    expect(no.decision).toMatchObject({ kind: "block", status: 500 });
  });

  test("close(grace) waits for pending answers, then rejects new calls", async () => {
    const path = sockPath();
    await serve(path, {
      info,
      async onRequestHeaders() {
        await Bun.sleep(80);
        return allow();
      },
    });
    const t = createUdsTransport({ endpoint: `unix:${path}`, connectTimeoutMs: 1000, connections: 1, proxyVersion: "t", protocol: "v2", log: quiet });
    t.start();
    await waitFor(() => t.isConnected());
    const p = t.call(reqHeaders("pending"), never());
    const closed = t.close(1000);
    const late = await t.call(reqHeaders("late"), never()).catch((e) => e);
    expect(late.kind).toBe("closed");
    expect((await p).correlationId).toBe("pending");
    await closed;
    expect(t.isConnected()).toBe(false);

    // with a short grace, the pending call is rejected "closed"
    const t2 = createUdsTransport({ endpoint: path, connectTimeoutMs: 1000, connections: 1, proxyVersion: "t", protocol: "v2", log: quiet });
    t2.start();
    await waitFor(() => t2.isConnected());
    const p2 = t2.call(reqHeaders("p2"), never()).catch((e) => e);
    await t2.close(10);
    expect((await p2).kind).toBe("closed");
  });

  test("serveUds replaces a stale socket file and removes only its own file on close", async () => {
    const path = sockPath();
    const a = await serveUds(path, { info }, { log: quiet });
    // a second server replaces the (now stale from its point of view) socket file
    const b = await serveUds(path, { info }, { log: quiet });
    await a.close(); // must not delete b's socket
    expect(existsSync(path)).toBe(true);
    const t = transport(path);
    await waitFor(() => t.isConnected());
    await b.close();
    expect(existsSync(path)).toBe(false);
  });

  test("large bodies (1 MiB) go through the write queue intact; a full queue refuses with overload", async () => {
    const path = sockPath();
    await serve(path, {
      info,
      onRequestBodyChunk(e: any) {
        let sum = 0;
        for (const b of e.data as Uint8Array) sum = (sum + b) % 65521;
        return allow({ routingMetadata: { sum: String(sum), len: String(e.data.length) } });
      },
    });
    const t = transport(path, { connections: 1 });
    await waitFor(() => t.isConnected());
    const data = new Uint8Array(1024 * 1024).map((_, i) => (i * 7) & 0xff);
    let sum = 0;
    for (const b of data) sum = (sum + b) % 65521;
    const big = (i: number) =>
      t.call({ type: "request_body_chunk", correlationId: `big-${i}`, data, isLast: true, totalSize: data.length, chunkIndex: 0, bytesTransferred: data.length }, never());
    const rs = await Promise.all(Array.from({ length: 5 }, (_, i) => big(i)));
    for (const r of rs) expect(r.routingMetadata).toEqual({ sum: String(sum), len: String(data.length) });
    // 8 × 1.4 MiB of base64 in one tick exceeds the 8 MiB write queue: the excess is refused, unsent
    const settled = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => big(10 + i)));
    const refused = settled.filter((s) => s.status === "rejected").map((s) => (s as PromiseRejectedResult).reason);
    expect(refused.length).toBeGreaterThan(0);
    for (const e of refused) expect(e).toMatchObject({ kind: "overload", notSent: true });
    for (const s of settled) if (s.status === "fulfilled") expect(s.value.routingMetadata.sum).toBe(String(sum));
    expect((await t.call(reqHeaders("after"), never())).decision.kind).toBe("allow");
  });
});
