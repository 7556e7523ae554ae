// Legacy v1 framing (spec §5, §7.2, §7.3) against v1 servers written here exactly as §5
// describes the TS and Python SDK runners, plus framing auto-detection.
import { afterEach, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { createUdsTransport } from "../../src/agents/uds/client.ts";
import type { AgentEvent, AgentTransport, TransportOptions } from "../../src/agents/types.ts";
import { serveUds } from "../../sdk/uds-server.ts";
import { allow } from "../../sdk/reply.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { waitFor as poll } from "../helpers/proxy.ts";
import { never } from "../helpers/agents.ts";

let seq = 0;
const sockPath = () => `/tmp/sentinel-uds-v1-${process.pid}-${++seq}.sock`;
const quiet = () => {};
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

type Envelope = { version: number; event_type: string; payload: any };
type V1Handler = (env: Envelope, conn: V1ConnState) => unknown | Promise<unknown>;

interface V1ConnState {
  id: number;
  /** SDK behaviour: request_headers cached per connection by metadata.correlation_id. */
  cache: Map<string, any>;
  outstanding: number;
  frames: Array<{ len: number; env: Envelope | null }>;
}

interface V1Server {
  conns: V1ConnState[];
  maxOutstanding: number;
  parseErrors: number;
  stop(): void;
}

/**
 * A v1 agent runner. flavor "ts": reassembles frames, ignores undecodable ones (logs, answers
 * nothing), handles each frame asynchronously. flavor "py": closes the connection on a bad
 * frame and on a frame that does not arrive in one piece (StreamReader.read(n) behaviour).
 */
function v1Server(path: string, flavor: "ts" | "py", handler: V1Handler): V1Server {
  rmSync(path, { force: true });
  const state: V1Server = { conns: [], maxOutstanding: 0, parseErrors: 0, stop: () => listener.stop(true) };
  let n = 0;
  const listener = Bun.listen<{ st: V1ConnState; buf: Buffer }>({
    unix: path,
    socket: {
      open(s) {
        const st: V1ConnState = { id: n++, cache: new Map(), outstanding: 0, frames: [] };
        state.conns.push(st);
        s.data = { st, buf: Buffer.alloc(0) };
      },
      data(s, chunk) {
        const d = s.data;
        if (flavor === "py" && d.buf.length > 0) {
          s.end(); // "Incomplete message"
          return;
        }
        d.buf = d.buf.length ? Buffer.concat([d.buf, chunk]) : Buffer.from(chunk);
        while (d.buf.length >= 4) {
          const len = d.buf.readUInt32BE(0);
          if (d.buf.length < 4 + len) {
            if (flavor === "py") {
              s.end();
              return;
            }
            break;
          }
          const json = d.buf.subarray(4, 4 + len).toString("utf8");
          d.buf = d.buf.subarray(4 + len);
          let env: Envelope;
          try {
            env = JSON.parse(json);
          } catch {
            state.parseErrors++;
            d.st.frames.push({ len, env: null });
            if (flavor === "py") {
              s.end();
              return;
            }
            continue; // TS runner: log and carry on, no answer
          }
          d.st.frames.push({ len, env });
          d.st.outstanding++;
          state.maxOutstanding = Math.max(state.maxOutstanding, d.st.outstanding);
          void (async () => {
            const reply = await handler(env, d.st);
            d.st.outstanding--;
            const b = Buffer.from(JSON.stringify(reply));
            const f = Buffer.alloc(4 + b.length);
            f.writeUInt32BE(b.length, 0);
            b.copy(f, 4);
            s.write(f);
          })();
        }
      },
    },
  });
  cleanups.push(() => {
    listener.stop(true);
    rmSync(path, { force: true });
  });
  return state;
}

/** SDK-like handler: per-connection request cache, body hook only with cached headers. */
function sdkLike(opts: { delay?: (env: Envelope) => number; onBody?: (p: any) => unknown; configOk?: boolean } = {}): V1Handler {
  return async (env, conn) => {
    const d = opts.delay?.(env) ?? 0;
    if (d > 0) await Bun.sleep(d);
    const p = env.payload;
    switch (env.event_type) {
      case "configure":
        return opts.configOk === false ? { success: false, error: "bad config" } : { success: true };
      case "request_complete":
        conn.cache.delete(p.correlation_id);
        return { success: true };
      case "request_headers":
        conn.cache.set(p.metadata.correlation_id, p);
        return {
          version: 2,
          decision: "allow",
          request_headers: [{ set: { name: "X-Echo-Uri", value: p.uri } }],
          response_headers: [],
          routing_metadata: {},
          audit: { tags: ["seen"] },
          needs_more: false,
        };
      case "request_body_chunk":
        if (!conn.cache.has(p.correlation_id)) return { version: 2, decision: "allow", needs_more: true };
        return opts.onBody?.(p) ?? { version: 2, decision: "allow", needs_more: !p.is_last };
      default:
        return { version: 2, decision: "allow" };
    }
  };
}

function transport(path: string, over: Partial<TransportOptions> = {}): AgentTransport & { framing?: string | null } {
  const t = createUdsTransport({ endpoint: path, connectTimeoutMs: 1000, connections: 2, proxyVersion: "0.1.0-test", protocol: "v1", log: quiet, ...over });
  cleanups.push(() => t.close(0));
  t.start();
  return t as AgentTransport & { framing?: string | null };
}

const waitFor = (cond: () => boolean, ms = 3000, what = "condition") => poll(cond, ms, what, 5);

function reqHeaders(id: string, uri = "/x"): AgentEvent {
  return requestHeadersEvent(id, { metadata: { requestId: `r-${id}`, clientPort: 40000 }, uri, headers: { host: ["a"] } });
}

describe("v1 mode", () => {
  test("envelope, no handshake, FIFO answers without correlation ids", async () => {
    const path = sockPath();
    const srv = v1Server(path, "py", sdkLike());
    const t = transport(path);
    await waitFor(() => t.isConnected());
    const r = await t.call(reqHeaders("a1", "/one"), never());
    expect(r.correlationId).toBe("a1");
    expect(r.requestHeaders).toEqual([{ op: "set", name: "X-Echo-Uri", value: "/one" }]);
    expect(r.audit.tags).toEqual(["seen"]);
    const first = srv.conns.flatMap((c) => c.frames)[0]!;
    expect(first.env!.version).toBe(1);
    expect(first.env!.event_type).toBe("request_headers");
    expect(first.env!.payload.metadata.correlation_id).toBe("a1");
    expect(first.env!.payload.correlation_id).toBe("a1");
    expect(srv.parseErrors).toBe(0);
  });

  test("one outstanding request per connection; 60 concurrent calls all matched", async () => {
    const path = sockPath();
    const srv = v1Server(path, "ts", sdkLike({ delay: () => Math.random() * 10 }));
    const t = transport(path, { connections: 3 });
    await waitFor(() => t.isConnected());
    await Bun.sleep(50);
    const rs = await Promise.all(Array.from({ length: 60 }, (_, i) => t.call(reqHeaders(`f-${i}`, `/u/${i}`), never())));
    rs.forEach((r, i) => {
      expect(r.correlationId).toBe(`f-${i}`);
      expect(r.requestHeaders[0]).toMatchObject({ value: `/u/${i}` });
    });
    expect(srv.maxOutstanding).toBe(1);
    expect(srv.conns.length).toBe(3);
  });

  test("body chunks are split at 32 KiB, stay on the request's connection, and mutations merge", async () => {
    const path = sockPath();
    const srv = v1Server(
      path,
      "py",
      sdkLike({
        onBody: (p) => ({
          version: 2,
          decision: "allow",
          needs_more: !p.is_last,
          request_body_mutation: { data: Buffer.from(Buffer.from(p.data, "base64").toString("latin1").toUpperCase(), "latin1").toString("base64"), chunk_index: p.chunk_index },
        }),
      }),
    );
    const t = transport(path, { connections: 4 });
    await waitFor(() => t.isConnected());
    await Bun.sleep(50);
    // spread some other requests first so affinity matters
    await Promise.all(Array.from({ length: 8 }, (_, i) => t.call(reqHeaders(`o-${i}`), never())));
    await t.call(reqHeaders("body-1"), never());
    const text = "abcdefghij".repeat(10 * 1024); // 100 KiB
    const data = new TextEncoder().encode(text);
    const r = await t.call({ type: "request_body_chunk", correlationId: "body-1", data, isLast: true, totalSize: data.length, chunkIndex: 0, bytesTransferred: data.length }, never());
    expect(Buffer.from(r.requestBodyMutation!.data!).toString()).toBe(text.toUpperCase());
    expect(r.requestBodyMutation!.chunkIndex).toBe(0);
    expect(r.needsMore).toBe(false);
    const conn = srv.conns.find((c) => c.frames.some((f) => f.env?.payload?.metadata?.correlation_id === "body-1"))!;
    const pieces = conn.frames.filter((f) => f.env?.event_type === "request_body_chunk").map((f) => ({ len: f.len, p: f.env!.payload }));
    expect(pieces.length).toBe(4); // 32+32+32+4 KiB, all on the connection that saw the headers
    for (const x of pieces) expect(x.len).toBeLessThanOrEqual(64 * 1024);
    expect(pieces.map((x) => x.p.chunk_index)).toEqual([0, 1, 2, 3]);
    expect(pieces.map((x) => x.p.is_last)).toEqual([false, false, false, true]);
    expect(pieces.map((x) => x.p.bytes_received)).toEqual([32768, 65536, 98304, 102400]);
    // a following streamed chunk continues the numbering
    const r2 = await t.call(
      { type: "request_body_chunk", correlationId: "body-2", data: new Uint8Array(10), isLast: true, totalSize: null, chunkIndex: 0, bytesTransferred: 10 },
      never(),
    );
    expect(r2.needsMore).toBe(true); // no request_headers seen for body-2: the SDK answers needs_more
  });

  test("a block on an early piece stops the split body", async () => {
    const path = sockPath();
    let pieces = 0;
    v1Server(
      path,
      "ts",
      sdkLike({
        onBody: () => {
          pieces++;
          return { version: 2, decision: { block: { status: 413 } } };
        },
      }),
    );
    const t = transport(path, { connections: 1 });
    await waitFor(() => t.isConnected());
    await t.call(reqHeaders("bb"), never());
    const data = new Uint8Array(100 * 1024);
    const r = await t.call({ type: "request_body_chunk", correlationId: "bb", data, isLast: true, totalSize: data.length, chunkIndex: 0, bytesTransferred: data.length }, never());
    expect(r.decision).toMatchObject({ kind: "block", status: 413 });
    expect(pieces).toBe(1);
  });

  test("config goes out as the first event on every connection; a rejection keeps it down", async () => {
    const path = sockPath();
    const srv = v1Server(path, "py", sdkLike());
    const t = transport(path, { config: { mode: "strict" }, agentId: "auth" } as Partial<TransportOptions>);
    await waitFor(() => t.isConnected());
    await Bun.sleep(50);
    for (const c of srv.conns) {
      expect(c.frames[0]!.env!.event_type).toBe("configure");
      expect(c.frames[0]!.env!.payload).toMatchObject({ agent_id: "auth", config: { mode: "strict" } });
    }
    expect((await t.call(reqHeaders("c1"), never())).correlationId).toBe("c1");

    const path2 = sockPath();
    v1Server(path2, "py", sdkLike({ configOk: false }));
    const t2 = transport(path2, { config: { mode: "x" } });
    await Bun.sleep(300);
    expect(t2.isConnected()).toBe(false);
  });

  test("abort keeps the FIFO aligned: the late answer is consumed and dropped", async () => {
    const path = sockPath();
    v1Server(path, "ts", sdkLike({ delay: (env) => (env.payload?.uri === "/slow" ? 150 : 0) }));
    const t = transport(path, { connections: 1 });
    await waitFor(() => t.isConnected());
    const ac = new AbortController();
    const slow = t.call(reqHeaders("s1", "/slow"), ac.signal).catch((e) => e);
    const queued = new AbortController();
    const q = t.call(reqHeaders("q1", "/queued"), queued.signal).catch((e) => e);
    const next = t.call(reqHeaders("n1", "/next"), never());
    setTimeout(() => {
      ac.abort();
      queued.abort();
    }, 20);
    expect((await slow).kind).toBe("timeout");
    const qe = await q;
    expect(qe.kind).toBe("timeout");
    expect(qe.notSent).toBe(true); // never written
    const r = await next;
    expect(r.correlationId).toBe("n1");
    expect(r.requestHeaders[0]).toMatchObject({ value: "/next" });
  });

  test("notify(request_complete) consumes its {success:true} answer", async () => {
    const path = sockPath();
    const srv = v1Server(path, "py", sdkLike());
    const t = transport(path, { connections: 1 });
    await waitFor(() => t.isConnected());
    await t.call(reqHeaders("rc"), never());
    t.notify({ type: "request_complete", correlationId: "rc", status: 200, durationMs: 1, requestBodySize: 0, responseBodySize: 0, upstreamAttempts: 1, error: null });
    const r = await t.call(reqHeaders("after", "/after"), never());
    expect(r.requestHeaders[0]).toMatchObject({ value: "/after" });
    const done = srv.conns[0]!.frames.find((f) => f.env?.event_type === "request_complete")!.env!.payload;
    expect(done).toMatchObject({ request_body_size: 0, request_size: 0, response_size: 0 });
    expect(srv.conns[0]!.cache.size).toBe(1); // "after" only: rc was freed
  });
});

describe("auto-detection", () => {
  test("Python-style runner (closes on the handshake) → v1", async () => {
    const path = sockPath();
    const srv = v1Server(path, "py", sdkLike());
    const t = transport(path, { protocol: "auto" });
    await waitFor(() => t.isConnected(), 3000);
    expect(t.framing).toBe("v1");
    expect(srv.parseErrors).toBeGreaterThanOrEqual(1);
    expect((await t.call(reqHeaders("p1"), never())).correlationId).toBe("p1");
  });

  test("TS-style runner (silent on the handshake) → v1 after the detection timeout", async () => {
    const path = sockPath();
    const srv = v1Server(path, "ts", sdkLike());
    const t0 = Date.now();
    const t = transport(path, { protocol: "auto", connectTimeoutMs: 300 });
    await waitFor(() => t.isConnected(), 3000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(t.framing).toBe("v1");
    expect(srv.parseErrors).toBeGreaterThanOrEqual(1);
    expect((await t.call(reqHeaders("t1"), never())).correlationId).toBe("t1");
  });

  test("v2 agent → v2", async () => {
    const path = sockPath();
    const s = await serveUds(path, { info: { agentId: "a", name: "a", version: "1" }, onRequestHeaders: () => allow() }, { log: quiet });
    cleanups.push(() => s.close());
    const t = transport(path, { protocol: "auto" });
    await waitFor(() => t.isConnected(), 3000);
    expect(t.framing).toBe("v2");
    expect((await t.call(reqHeaders("v2"), never())).correlationId).toBe("v2");
  });

  test("agent not running yet: detection waits for a real connection", async () => {
    const path = sockPath();
    const t = transport(path, { protocol: "auto" });
    await Bun.sleep(200);
    expect(t.framing).toBeNull();
    v1Server(path, "py", sdkLike());
    await waitFor(() => t.isConnected(), 4000);
    expect(t.framing).toBe("v1");
  });
});
