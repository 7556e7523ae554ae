// gRPC client transport against a misbehaving agent process (test/helpers/chaos-grpc-agent.ts).
import { afterEach, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AgentEvent, AgentTransport, TransportOptions } from "../../src/agents/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { waitFor as poll } from "../helpers/proxy.ts";
import { connected, grpcTransport, type LogLine, rejection, never } from "../helpers/agents.ts";
import { readJsonLines } from "../helpers/jsonl.ts";

const root = join(import.meta.dir, "..", "..");
const cleanup: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

interface Chaos {
  port: number;
  logFile: string;
  proc: ReturnType<typeof Bun.spawn>;
  received(): Array<{ rpc: string; type: string; correlationId: string; [k: string]: unknown }>;
}

async function startChaos(mode: string): Promise<Chaos> {
  const logFile = join(tmpdir(), `chaos-grpc-${process.pid}-${Math.random().toString(36).slice(2)}.jsonl`);
  const proc = Bun.spawn([process.execPath, join(root, "test/helpers/chaos-grpc-agent.ts"), "--listen", "127.0.0.1:0", "--mode", mode, "--log", logFile], {
    cwd: root,
    stdout: "pipe",
    stderr: "inherit",
  });
  cleanup.push(async () => {
    proc.kill();
    await proc.exited;
    rmSync(logFile, { force: true });
  });
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  let text = "";
  const deadline = performance.now() + 10_000;
  while (!/LISTENING (\d+)/.test(text)) {
    if (performance.now() > deadline) throw new Error(`chaos agent did not start: ${text}`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`chaos agent exited: ${text}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const port = Number(/LISTENING (\d+)/.exec(text)![1]);
  return {
    port,
    logFile,
    proc,
    received: () => readJsonLines(logFile),
  };
}

const transport = (port: number, extra: Partial<TransportOptions> = {}) => grpcTransport(port, cleanup, extra);

const waitFor = (cond: () => boolean, ms = 5000, what = "condition") => poll(cond, ms, what, 5);

function ev(id: string, headers: Record<string, string[]> = {}): AgentEvent {
  return requestHeadersEvent(id, { metadata: { requestId: "rid" }, headers });
}

describe("gRPC transport vs chaos agent", () => {
  test("allow: handshake goes first with proxy_id, versions [2,1] and config_json; events are logged in order", async () => {
    const c = await startChaos("allow");
    const { t } = transport(c.port, { config: { level: 3 } });
    await connected(t);
    for (let i = 0; i < 3; i++) expect((await t.call(ev(`e${i}`), never())).decision).toEqual({ kind: "allow" });
    const got = c.received();
    expect(got[0]).toMatchObject({ rpc: "stream", type: "handshake", proxyId: "sentinel", proxyVersion: "0.1.0-test", supportedVersions: [2, 1], configJson: '{"level":3}' });
    expect(got.slice(1).map((l) => l.correlationId)).toEqual(["e0", "e1", "e2"]);
    expect((got[1] as unknown as { event: { metadata: { correlationId: string } } }).event.metadata.correlationId).toBe("e0");
  });

  test("block:<status>", async () => {
    const c = await startChaos("block:429");
    const { t } = transport(c.port);
    await connected(t);
    expect((await t.call(ev("b"), never())).decision).toEqual({ kind: "block", status: 429, body: "chaos block", headers: null });
  });

  test("delay:<ms>: answers arrive late, the caller's abort wins when it is earlier", async () => {
    const c = await startChaos("delay:200");
    const { t } = transport(c.port);
    await connected(t);
    const started = performance.now();
    const slowOk = t.call(ev("ok"), never());
    const err = await rejection(t.call(ev("cut"), AbortSignal.timeout(50)));
    expect(err.kind).toBe("timeout");
    expect((await slowOk).correlationId).toBe("ok");
    expect(performance.now() - started).toBeGreaterThanOrEqual(190);
  });

  test("hang: events time out through the signal, pings still work, the stream stays up", async () => {
    const c = await startChaos("hang");
    const { t } = transport(c.port);
    await connected(t);
    const errs = await Promise.all([1, 2, 3].map((i) => rejection(t.call(ev(`h${i}`), AbortSignal.timeout(100)))));
    expect(errs.map((e) => e.kind)).toEqual(["timeout", "timeout", "timeout"]);
    await t.ping(1000);
    expect(t.isConnected()).toBe(true);
  });

  test("nopong: ping times out, calls keep working", async () => {
    const c = await startChaos("nopong");
    const { t } = transport(c.port);
    await connected(t);
    const err = await rejection(t.ping(150));
    expect(err.kind).toBe("timeout");
    expect((await t.call(ev("x"), never())).correlationId).toBe("x");
  });

  test("crash-after-read: pending calls reject with closed, connectivity drops, reconnect keeps trying", async () => {
    const c = await startChaos("crash-after-read");
    const { t, logs } = transport(c.port);
    const seen: boolean[] = [];
    t.onConnectivity((x) => seen.push(x));
    await connected(t);
    const err = await rejection(t.call(ev("boom"), never()));
    expect(err.kind).toBe("closed");
    expect(err.notSent).toBe(false);
    expect(await c.proc.exited).toBe(1);
    await waitFor(() => !t.isConnected(), 2000, "disconnect");
    expect(seen).toEqual([true, false]);
    await Bun.sleep(400);
    expect(logs.filter((l) => l.msg === "grpc agent connect failed").length).toBeGreaterThanOrEqual(2);
    expect(c.received().map((l) => l.type)).toEqual(["handshake", "requestHeaders"]);
  });

  test("wrong-id: answers with ids nobody asked for never resolve a call", async () => {
    const c = await startChaos("wrong-id");
    const { t, logs } = transport(c.port);
    await connected(t);
    const errs = await Promise.all(["a", "b", "c"].map((id) => rejection(t.call(ev(id), AbortSignal.timeout(300)))));
    expect(errs.map((e) => e.kind)).toEqual(["timeout", "timeout", "timeout"]);
    const drop = logs.find((l) => l.msg.includes("unknown correlation id"));
    expect(drop?.fields?.correlationId).toBe("a-wrong");
    expect(t.isConnected()).toBe(true);
  });

  test("flood: unsolicited answers with random ids are dropped, real calls get their own answers", async () => {
    const c = await startChaos("flood");
    const { t, logs } = transport(c.port);
    await connected(t);
    const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => t.call(ev(`f${i}`), never())));
    replies.forEach((r, i) => {
      expect(r.correlationId).toBe(`f${i}`);
      expect(r.decision).toEqual({ kind: "allow" });
    });
    const drops = logs.filter((l) => l.msg.includes("unknown correlation id"));
    expect(drops.length).toBeGreaterThanOrEqual(1);
    expect(drops.length).toBeLessThanOrEqual(3); // rate limited, not one line per answer
    expect(t.isConnected()).toBe(true);
  });

  test("mutate:<json>: header ops come back as given", async () => {
    const ops = [
      { op: "set", name: "x-a", value: "1" },
      { op: "add", name: "x-a", value: "2" },
      { op: "remove", name: "x-b" },
    ];
    const c = await startChaos(`mutate:${JSON.stringify(ops)}`);
    const { t } = transport(c.port);
    await connected(t);
    expect((await t.call(ev("m"), never())).requestHeaders).toEqual(ops as never);
  });

  test("header-block: block iff x-decision=block, x-request-tag echoed as a response header op", async () => {
    const c = await startChaos("header-block");
    const { t } = transport(c.port);
    await connected(t);
    const blocked = await t.call(ev("1", { "x-decision": ["block"], "x-request-tag": ["t-1"] }), never());
    expect(blocked.decision).toMatchObject({ kind: "block", status: 403 });
    expect(blocked.responseHeaders).toEqual([{ op: "set", name: "x-request-tag", value: "t-1" }]);
    const allowed = await t.call(ev("2", { "x-decision": ["allow"], "x-request-tag": ["t-2"] }), never());
    expect(allowed.decision).toEqual({ kind: "allow" });
    expect(allowed.responseHeaders).toEqual([{ op: "set", name: "x-request-tag", value: "t-2" }]);
  });

  test("no-handshake: an answer before the handshake is a protocol error, the transport never becomes ready", async () => {
    const c = await startChaos("no-handshake");
    const { t, logs } = transport(c.port);
    t.start();
    await waitFor(() => logs.some((l) => l.msg === "grpc agent connect failed" && l.fields?.kind === "protocol"), 3000, "protocol error");
    expect(t.isConnected()).toBe(false);
    expect((await rejection(t.call(ev("x"), never()))).kind).toBe("connect");
    expect(c.received().every((l) => l.type === "handshake")).toBe(true);
  });

  test("reject-handshake: success:false closes the stream from our side; no event is ever sent", async () => {
    const c = await startChaos("reject-handshake");
    const { t, logs } = transport(c.port);
    t.start();
    await waitFor(() => c.received().length >= 2, 3000, "a second handshake attempt");
    expect(t.isConnected()).toBe(false);
    expect(c.received().every((l) => l.type === "handshake")).toBe(true);
    expect(logs.some((l) => String(l.fields?.reason).includes("chaos says no"))).toBe(true);
  });

  test("mute: no handshake answer within connectTimeoutMs is a connect failure", async () => {
    const c = await startChaos("mute");
    const { t, logs } = transport(c.port, { connectTimeoutMs: 150 });
    t.start();
    await waitFor(() => logs.some((l) => String(l.fields?.reason).includes("no handshake answer within 150 ms")), 3000, "handshake timeout");
    expect(t.isConnected()).toBe(false);
  });
});
