// gRPC client transport <-> serveGrpc SDK server, end to end over real HTTP/2 on 127.0.0.1.
import { afterEach, describe, expect, test } from "bun:test";
import { createServer } from "node:net";
import { serveGrpc } from "../../sdk/grpc-server.ts";
import type { AgentHandler, RunningServer } from "../../sdk/types.ts";
import { MAX_GRPC_MESSAGE_BYTES } from "../../src/agents/grpc/map.ts";
import type { AgentEvent, AgentTransport, TransportOptions } from "../../src/agents/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { waitFor as poll } from "../helpers/proxy.ts";
import { connected, grpcTransport, type LogLine, rejection } from "../helpers/agents.ts";

const cleanup: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function serve(handler: AgentHandler, address = "127.0.0.1:0"): Promise<RunningServer> {
  const s = await serveGrpc(address, handler, { log: () => {} });
  cleanup.push(() => s.close());
  return s;
}

const transport = (port: number, extra: Partial<TransportOptions> = {}) => grpcTransport(port, cleanup, extra);

const waitFor = (cond: () => boolean, ms = 5000, what = "condition") => poll(cond, ms, what, 5);

function reqHeaders(id: string, headers: Record<string, string[]> = {}, uri = "/"): AgentEvent {
  return requestHeadersEvent(id, { metadata: { requestId: "rid-" + id, clientPort: 40000, serverName: "example.test", routeId: "r" }, uri, headers });
}

const never = () => new AbortController().signal;
const info = { agentId: "test-agent", name: "Test Agent", version: "9.9.9" };

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

describe("gRPC transport <-> serveGrpc", () => {
  test("handshake delivers config_json to onConfigure, capabilities, connectivity events", async () => {
    let configured: unknown = null;
    const srv = await serve({ info, supportedEvents: [1, 3], onConfigure: (c) => void (configured = c) });
    const { t } = transport(srv.port, { config: { "paranoia-level": 2, rules: ["a"] } });
    const seen: boolean[] = [];
    t.onConnectivity((c) => seen.push(c));
    expect(t.isConnected()).toBe(false);
    await connected(t);
    expect(configured).toEqual({ "paranoia-level": 2, rules: ["a"] });
    expect(t.capabilities).toEqual({ agentId: "test-agent", name: "Test Agent", version: "9.9.9", supportedEvents: [1, 3], protocolVersion: 2 });
    expect(seen).toEqual([true]);
    await t.close();
    expect(t.isConnected()).toBe(false);
    expect(seen).toEqual([true, false]);
  });

  test("rejected handshake is a connect failure: never connected, calls fail fast with notSent", async () => {
    let attempts = 0;
    const srv = await serve({
      info,
      onConfigure: () => {
        attempts++;
        throw new Error("bad key");
      },
    });
    const { t, logs } = transport(srv.port, { config: { key: 1 } });
    t.start();
    await waitFor(() => attempts >= 2, 5000, "a retried handshake");
    expect(t.isConnected()).toBe(false);
    const err = await rejection(t.call(reqHeaders("x"), never()));
    expect(err.kind).toBe("connect");
    expect(err.notSent).toBe(true);
    expect(logs.some((l) => String(l.fields?.reason).includes("Configuration rejected: bad key"))).toBe(true);
  });

  test("an empty config object is not passed to onConfigure", async () => {
    let called = false;
    const srv = await serve({ info, onConfigure: () => void (called = true) });
    const { t } = transport(srv.port);
    await connected(t);
    expect(called).toBe(false);
  });

  test("allow with header ops; block; redirect; audit", async () => {
    const srv = await serve({
      info,
      onRequestHeaders(e) {
        if (e.uri === "/block") {
          return {
            decision: { kind: "block", status: 451, body: "nope", headers: { "x-reason": "legal" } },
            audit: { tags: ["t"], ruleIds: ["R-1"], confidence: 0.5, reasonCodes: [], custom: { who: "me", n: 3 } },
          };
        }
        if (e.uri === "/redirect") return { decision: { kind: "redirect", url: "https://login.example/", status: 307 } };
        return {
          requestHeaders: [
            { op: "set", name: "x-user", value: e.headers["x-token"]?.[0] ?? "anon" },
            { op: "remove", name: "x-token" },
          ],
          responseHeaders: [{ op: "add", name: "x-agent", value: "yes" }],
        };
      },
    });
    const { t } = transport(srv.port);
    await connected(t);
    const allow = await t.call(reqHeaders("a", { "x-token": ["alice"] }), never());
    expect(allow.correlationId).toBe("a");
    expect(allow.decision).toEqual({ kind: "allow" });
    expect(allow.requestHeaders).toEqual([
      { op: "set", name: "x-user", value: "alice" },
      { op: "remove", name: "x-token" },
    ]);
    expect(allow.responseHeaders).toEqual([{ op: "add", name: "x-agent", value: "yes" }]);

    const block = await t.call(reqHeaders("b", {}, "/block"), never());
    expect(block.decision).toEqual({ kind: "block", status: 451, body: "nope", headers: { "x-reason": "legal" } });
    expect(block.audit).toEqual({ tags: ["t"], ruleIds: ["R-1"], confidence: 0.5, reasonCodes: [], custom: { who: "me", n: "3" } });

    const redirect = await t.call(reqHeaders("c", {}, "/redirect"), never());
    expect(redirect.decision).toEqual({ kind: "redirect", url: "https://login.example/", status: 307 });
  });

  test("body chunks, response headers and request_complete reach the handler", async () => {
    const got: string[] = [];
    let completed: unknown = null;
    const srv = await serve({
      info,
      onRequestBodyChunk: (e: Extract<AgentEvent, { type: "request_body_chunk" | "response_body_chunk" }>) => {
        got.push(`req:${e.chunkIndex}:${new TextDecoder().decode(e.data)}:${e.isLast}`);
        return e.isLast ? {} : { needsMore: true };
      },
      onResponseBodyChunk: (e: Extract<AgentEvent, { type: "request_body_chunk" | "response_body_chunk" }>) => {
        got.push(`res:${e.data.byteLength}`);
        return {};
      },
      onResponseHeaders: (e) => {
        got.push(`status:${e.status}`);
        return { responseHeaders: [{ op: "set", name: "x-seen", value: String(e.status) }] };
      },
      onRequestComplete: (e) => void (completed = e),
    });
    const { t, logs } = transport(srv.port);
    await connected(t);
    const chunk = (i: number, text: string, last: boolean): AgentEvent => ({
      type: "request_body_chunk",
      correlationId: "b1",
      data: new TextEncoder().encode(text),
      isLast: last,
      totalSize: null,
      chunkIndex: i,
      bytesTransferred: 0,
    });
    expect((await t.call(chunk(0, "hello ", false), never())).needsMore).toBe(true);
    expect((await t.call(chunk(1, "world", true), never())).needsMore).toBe(false);
    const rh = await t.call({ type: "response_headers", correlationId: "b1", status: 201, headers: { "content-type": ["text/plain"] } }, never());
    expect(rh.responseHeaders).toEqual([{ op: "set", name: "x-seen", value: "201" }]);
    const big = new Uint8Array(1024 * 1024).fill(65);
    await t.call(
      { type: "response_body_chunk", correlationId: "b1", data: big, isLast: true, totalSize: big.length, chunkIndex: 0, bytesTransferred: big.length },
      never(),
    );
    t.notify({
      type: "request_complete",
      correlationId: "b1",
      status: 201,
      durationMs: 7,
      requestBodySize: 11,
      responseBodySize: big.length,
      upstreamAttempts: 1,
      error: null,
    });
    await waitFor(() => completed !== null, 2000, "request_complete");
    expect(got).toEqual(["req:0:hello :false", "req:1:world:true", "status:201", `res:${1024 * 1024}`]);
    expect(completed).toMatchObject({ correlationId: "b1", status: 201, requestBodySize: 11, responseBodySize: big.length });
    await Bun.sleep(50); // the request_complete answer arrives and must be dropped quietly
    expect(logs.filter((l) => l.msg.includes("unknown correlation id"))).toEqual([]);
  });

  test("500 concurrent calls with random delays each get their own answer", async () => {
    const srv = await serve({
      info,
      async onRequestHeaders(e) {
        await Bun.sleep(Math.floor(Math.random() * 20));
        return { requestHeaders: [{ op: "set", name: "x-echo", value: e.correlationId + ":" + e.uri }] };
      },
    });
    const { t } = transport(srv.port);
    await connected(t);
    const N = 500;
    const started = performance.now();
    const replies = await Promise.all(Array.from({ length: N }, (_, i) => t.call(reqHeaders(`id-${i}`, {}, `/p/${i}`), never())));
    const ms = performance.now() - started;
    for (let i = 0; i < N; i++) {
      expect(replies[i]!.correlationId).toBe(`id-${i}`);
      expect(replies[i]!.requestHeaders).toEqual([{ op: "set", name: "x-echo", value: `id-${i}:/p/${i}` }]);
    }
    console.log(`[grpc] ${N} concurrent calls (0-20 ms handler delay) in ${ms.toFixed(0)} ms`);
  });

  test("duplicate in-flight correlation id is rejected with overload", async () => {
    const srv = await serve({ info, onRequestHeaders: async () => (await Bun.sleep(100), {}) });
    const { t } = transport(srv.port);
    await connected(t);
    const first = t.call(reqHeaders("dup"), never());
    const err = await rejection(t.call(reqHeaders("dup"), never()));
    expect(err.kind).toBe("overload");
    expect(err.notSent).toBe(true);
    expect((await first).correlationId).toBe("dup");
    // settled: the id is free again
    expect((await t.call(reqHeaders("dup"), never())).correlationId).toBe("dup");
  });

  test("abort signal rejects the call; the late answer is dropped, never given to another call", async () => {
    const srv = await serve({
      info,
      async onRequestHeaders(e) {
        if (e.uri === "/slow") await Bun.sleep(300);
        return { requestHeaders: [{ op: "set", name: "x-uri", value: e.uri }] };
      },
    });
    const { t, logs } = transport(srv.port);
    await connected(t);
    const ac = new AbortController();
    const slow = t.call(reqHeaders("slow-1", {}, "/slow"), ac.signal);
    setTimeout(() => ac.abort(new Error("deadline")), 30);
    const err = await rejection(slow);
    expect(err.kind).toBe("timeout");
    expect(err.message).toContain("deadline");
    // An already aborted signal: rejected before sending.
    const pre = new AbortController();
    pre.abort();
    const e2 = await rejection(t.call(reqHeaders("pre"), pre.signal));
    expect(e2.notSent).toBe(true);
    // While the late answer for slow-1 is still expected, the same id is refused (it would be
    // ambiguous); other ids work.
    expect((await rejection(t.call(reqHeaders("slow-1", {}, "/fast"), never()))).kind).toBe("overload");
    expect((await t.call(reqHeaders("other", {}, "/fast"), never())).requestHeaders[0]).toMatchObject({ value: "/fast" });
    await Bun.sleep(400); // late answer arrives and is consumed silently
    const again = await t.call(reqHeaders("slow-1", {}, "/fast"), never());
    expect(again.requestHeaders).toEqual([{ op: "set", name: "x-uri", value: "/fast" }]);
    expect(logs.filter((l) => l.msg.includes("unknown correlation id"))).toEqual([]);
  });

  test("notify for an id with a call in flight waits for that call; its answer is dropped quietly", async () => {
    const order: string[] = [];
    const srv = await serve({
      info,
      async onRequestHeaders() {
        await Bun.sleep(100);
        order.push("headers");
        return { requestHeaders: [{ op: "set", name: "x-from", value: "headers" }] };
      },
      onRequestComplete: () => void order.push("complete"),
    });
    const { t, logs } = transport(srv.port);
    await connected(t);
    const call = t.call(reqHeaders("n1"), never());
    t.notify({ type: "request_complete", correlationId: "n1", status: 200, durationMs: 1, requestBodySize: 0, responseBodySize: 0, upstreamAttempts: 1, error: null });
    expect((await call).requestHeaders).toEqual([{ op: "set", name: "x-from", value: "headers" }]);
    await waitFor(() => order.length === 2, 2000, "request_complete");
    expect(order).toEqual(["headers", "complete"]);
    await Bun.sleep(30);
    expect(logs.filter((l) => l.msg.includes("unknown correlation id"))).toEqual([]);
  });

  test("ping / pong", async () => {
    const srv = await serve({ info });
    const { t } = transport(srv.port);
    await connected(t);
    await t.ping(1000);
    await Promise.all([t.ping(1000), t.ping(1000), t.ping(1000)]);
  });

  test("not connected: call and ping reject at once with connect / notSent", async () => {
    const port = await freePort();
    const { t } = transport(port, { connectTimeoutMs: 300 });
    t.start();
    const err = await rejection(t.call(reqHeaders("x"), never()));
    expect(err.kind).toBe("connect");
    expect(err.notSent).toBe(true);
    expect((await rejection(t.ping(100))).kind).toBe("connect");
  });

  test("oversize event is rejected as a protocol error before sending; configure is not sent as an event", async () => {
    const srv = await serve({ info });
    const { t } = transport(srv.port);
    await connected(t);
    const data = new Uint8Array(MAX_GRPC_MESSAGE_BYTES);
    const err = await rejection(
      t.call({ type: "request_body_chunk", correlationId: "big", data, isLast: true, totalSize: null, chunkIndex: 0, bytesTransferred: 0 }, never()),
    );
    expect(err.kind).toBe("protocol");
    expect(err.notSent).toBe(true);
    const ok = new Uint8Array(MAX_GRPC_MESSAGE_BYTES - 200);
    const r = await t.call({ type: "request_body_chunk", correlationId: "big", data: ok, isLast: true, totalSize: null, chunkIndex: 0, bytesTransferred: 0 }, never());
    expect(r.correlationId).toBe("big");
    const cfg = await rejection(t.call({ type: "configure", correlationId: "", config: {}, configVersion: null }, never()));
    expect(cfg.kind).toBe("protocol");
    // a header event is checked on its exact encoded size: 64 KiB less than the limit is sent,
    // one byte over it is refused before sending
    const bigHeaders = (n: number) => requestHeadersEvent("hdr", { headers: { "x-big": ["v".repeat(n)] } });
    const fits = await t.call(bigHeaders(MAX_GRPC_MESSAGE_BYTES - 64 * 1024), never());
    expect(fits.correlationId).toBe("hdr");
    const over = await rejection(t.call(bigHeaders(MAX_GRPC_MESSAGE_BYTES), never()));
    expect(over.kind).toBe("protocol");
    expect(over.message).toContain("gRPC message limit");
    expect(over.notSent).toBe(true);
    expect(t.isConnected()).toBe(true);
  });

  test("server restart: pending calls reject, the same transport reconnects by itself", async () => {
    const port = await freePort();
    let generation = 1;
    const handler: AgentHandler = {
      info,
      async onRequestHeaders(e) {
        if (e.uri === "/hang") await Bun.sleep(10_000);
        return { requestHeaders: [{ op: "set", name: "x-gen", value: String(generation) }] };
      },
    };
    const first = await serveGrpc(`127.0.0.1:${port}`, handler, { log: () => {} });
    const { t } = transport(port);
    const seen: boolean[] = [];
    t.onConnectivity((c) => seen.push(c));
    await connected(t);
    expect((await t.call(reqHeaders("g1"), never())).requestHeaders[0]).toMatchObject({ value: "1" });

    const hanging = rejection(t.call(reqHeaders("h", {}, "/hang"), never()));
    await Bun.sleep(20);
    await first.close();
    expect((await hanging).kind).toBe("closed");
    await waitFor(() => !t.isConnected(), 2000, "disconnect");
    // While the agent is down, calls fail fast and nothing is queued.
    expect((await rejection(t.call(reqHeaders("down"), never()))).kind).toBe("connect");
    await Bun.sleep(300); // let a few reconnect attempts fail

    generation = 2;
    const second = await serve(handler, `127.0.0.1:${port}`);
    expect(second.port).toBe(port);
    await waitFor(() => t.isConnected(), 5000, "reconnect");
    expect((await t.call(reqHeaders("g2"), never())).requestHeaders[0]).toMatchObject({ value: "2" });
    expect(seen).toEqual([true, false, true]);
  });

  test("close(graceMs) waits for pending answers and never half-closes before them", async () => {
    const srv = await serve({ info, onRequestHeaders: async () => (await Bun.sleep(150), { requestHeaders: [{ op: "set", name: "x", value: "1" }] }) });
    const { t } = transport(srv.port);
    await connected(t);
    const p = t.call(reqHeaders("late"), never());
    await Bun.sleep(10);
    const closed = t.close(2000);
    const r = await p;
    expect(r.requestHeaders).toEqual([{ op: "set", name: "x", value: "1" }]);
    await closed;
    expect(t.isConnected()).toBe(false);
    expect((await rejection(t.call(reqHeaders("after"), never()))).kind).toBe("closed");
  });

  test("close(graceMs) rejects what is still pending after the grace", async () => {
    const srv = await serve({ info, onRequestHeaders: async () => (await Bun.sleep(2000), {}) });
    const { t } = transport(srv.port);
    await connected(t);
    const p = t.call(reqHeaders("never"), never());
    await Bun.sleep(10);
    const started = performance.now();
    await t.close(100);
    expect(performance.now() - started).toBeLessThan(1000);
    expect((await rejection(p)).kind).toBe("closed");
  });

  test("a throwing handler leaves the event unanswered (the proxy's timeout decides); the stream survives", async () => {
    const srvLogs: LogLine[] = [];
    const srv = await serveGrpc(
      "127.0.0.1:0",
      {
        info,
        onRequestHeaders(e) {
          if (e.uri === "/boom") throw new Error("kaboom");
          return {};
        },
      },
      { log: (level, msg, fields) => srvLogs.push({ level, msg, fields }) },
    );
    cleanup.push(() => srv.close());
    const { t } = transport(srv.port);
    await connected(t);
    const err = await rejection(t.call(reqHeaders("boom", {}, "/boom"), AbortSignal.timeout(200)));
    expect(err.kind).toBe("timeout");
    expect(srvLogs.some((l) => l.msg.includes("event left unanswered") && String(l.fields?.error).includes("kaboom"))).toBe(true);
    expect((await t.call(reqHeaders("fine"), never())).decision).toEqual({ kind: "allow" });
  });

  test("supported events are derived from the hooks when not given", async () => {
    const srv = await serve({ info: { agentId: "a", name: "a", version: "1" }, onRequestHeaders: () => ({}), onResponseHeaders: () => ({}) });
    const { t } = transport(srv.port);
    await connected(t);
    expect(t.capabilities?.supportedEvents).toEqual([1, 3]);
  });
});
