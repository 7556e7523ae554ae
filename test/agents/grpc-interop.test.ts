// Interop with an independent gRPC stack: @grpc/grpc-js + @grpc/proto-loader under Node
// (test/helpers/grpcjs-agent.mjs), loading our .proto at run time.
//   - our client transport (our HTTP/2 client on Bun.connect) -> grpc-js agent: bidi ProcessStream
//   - grpc-js probe client (Node) -> our serveGrpc: unary ProcessEvent and bidi ProcessStream
import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { serveGrpc } from "../../sdk/grpc-server.ts";
import { createGrpcTransport } from "../../src/agents/grpc/client.ts";
import { MAX_GRPC_MESSAGE_BYTES } from "../../src/agents/grpc/map.ts";
import type { AgentEvent, AgentTransport } from "../../src/agents/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { connected as connectedWithin, never } from "../helpers/agents.ts";

const root = join(import.meta.dir, "..", "..");
const helper = join(root, "test/helpers/grpcjs-agent.mjs");
const nodeBin = Bun.which("node");

const cleanup: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function startGrpcJsAgent(mode: string, extra: string[] = []): Promise<number> {
  const proc = Bun.spawn([nodeBin!, helper, "--listen", "127.0.0.1:0", "--mode", mode, ...extra], { cwd: root, stdout: "pipe", stderr: "inherit" });
  cleanup.push(async () => {
    proc.kill();
    await proc.exited;
  });
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  let text = "";
  while (!/LISTENING (\d+)/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`grpc-js agent exited: ${text}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return Number(/LISTENING (\d+)/.exec(text)![1]);
}

function transport(port: number): AgentTransport {
  const t = createGrpcTransport({
    endpoint: `http://127.0.0.1:${port}`,
    connectTimeoutMs: 3000,
    connections: 1,
    proxyVersion: "0.1.0-test",
    log: () => {},
  });
  cleanup.push(() => t.close());
  return t;
}

const connected = (t: AgentTransport) => connectedWithin(t, 10_000, "a handshake with the grpc-js agent", 10);

function ev(id: string, headers: Record<string, string[]> = {}): AgentEvent {
  return requestHeadersEvent(id, { metadata: { requestId: "rid" }, headers });
}

describe.skipIf(!nodeBin)("gRPC interop with @grpc/grpc-js on Node", () => {
  test("our client -> grpc-js agent (header-block): handshake, capabilities, decisions, response header ops", async () => {
    const port = await startGrpcJsAgent("header-block");
    const t = transport(port);
    await connected(t);
    expect(t.capabilities).toMatchObject({ agentId: "grpcjs-agent", name: "grpc-js interop agent", version: "1.0.0", supportedEvents: [1, 2, 3, 4, 5] });
    const blocked = await t.call(ev("1", { "x-decision": ["block"], "x-request-tag": ["tag-1"] }), never());
    expect(blocked.decision).toEqual({ kind: "block", status: 403, body: "blocked by header", headers: null });
    expect(blocked.responseHeaders).toEqual([{ op: "set", name: "x-request-tag", value: "tag-1" }]);
    const allowed = await t.call(ev("2", { "x-request-tag": ["tag-2"] }), never());
    expect(allowed.decision).toEqual({ kind: "allow" });
    expect(allowed.responseHeaders).toEqual([{ op: "set", name: "x-request-tag", value: "tag-2" }]);
    await t.ping(2000);
  });

  test("our client -> grpc-js agent (allow, jittered): 300 concurrent out-of-order answers, 1 MiB body chunk, D23 unquoting", async () => {
    const port = await startGrpcJsAgent("allow", ["--jitter-ms", "15"]);
    const t = transport(port);
    await connected(t);
    const replies = await Promise.all(Array.from({ length: 300 }, (_, i) => t.call(ev(`c${i}`), never())));
    replies.forEach((r, i) => {
      expect(r.correlationId).toBe(`c${i}`);
      expect(r.responseHeaders).toEqual([{ op: "set", name: "x-grpcjs", value: "1" }]);
    });
    const data = new Uint8Array(1024 * 1024).fill(7);
    const body = await t.call(
      { type: "request_body_chunk", correlationId: "body", data, isLast: true, totalSize: data.length, chunkIndex: 0, bytesTransferred: data.length },
      never(),
    );
    expect(body.audit.custom).toEqual({ bytes: String(data.length), quoted: "rust-style" });
    // The largest chunk our size check lets through fits grpc-js's default 4 MiB receive limit.
    const max = new Uint8Array(MAX_GRPC_MESSAGE_BYTES - 256);
    const big = await t.call(
      { type: "request_body_chunk", correlationId: "max", data: max, isLast: true, totalSize: max.length, chunkIndex: 0, bytesTransferred: max.length },
      never(),
    );
    expect(big.audit.custom.bytes).toBe(String(max.length));
    expect(t.isConnected()).toBe(true);
  });

  test("our client -> grpc-js agent (block)", async () => {
    const port = await startGrpcJsAgent("block");
    const t = transport(port);
    await connected(t);
    expect((await t.call(ev("b"), never())).decision).toEqual({ kind: "block", status: 403, body: "grpcjs block", headers: null });
  });

  test("grpc-js client -> our serveGrpc: unary ProcessEvent (ping, request_headers) and bidi ProcessStream", async () => {
    let configured: unknown = null;
    const srv = await serveGrpc("127.0.0.1:0", {
      info: { agentId: "sdk-agent", name: "SDK agent", version: "2.0.0" },
      supportedEvents: [1, 2],
      onConfigure: (c) => void (configured = c),
      onRequestHeaders(e) {
        if (e.headers["x-decision"]?.[0] === "block") return { decision: { kind: "block", status: 403, body: "no" } };
        return { requestHeaders: [{ op: "set", name: "x-probe-seen", value: e.headers["x-probe"]?.[0] ?? "" }] };
      },
      onRequestBodyChunk: (e: Extract<AgentEvent, { type: "request_body_chunk" | "response_body_chunk" }>) => ({
        audit: { tags: [], ruleIds: [], confidence: null, reasonCodes: [], custom: { len: e.data.byteLength } },
      }),
    }, { log: () => {} });
    cleanup.push(() => srv.close());
    // Spawned asynchronously: a blocking spawn would stall this process and with it our server.
    const proc = Bun.spawn([nodeBin!, helper, "--probe", `127.0.0.1:${srv.port}`], { cwd: root, stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    expect(err).toBe("");
    expect(code).toBe(0);
    const r = JSON.parse(out);
    expect(r.unaryPong).toMatchObject({ sequence: "7", ping_timestamp_ms: "1000" });
    expect(r.unaryAnswer.correlation_id).toBe("u1");
    expect(r.unaryAnswer.decision).toBe("allow");
    expect(r.unaryAnswer.request_headers).toEqual([{ set: { name: "x-probe-seen", value: "unary" }, operation: "set" }]);
    expect(r.handshake).toMatchObject({ success: true, protocol_version: 2, capabilities: { agent_id: "sdk-agent", supported_events: [1, 2] } });
    expect(configured).toEqual({ probe: true });
    expect(r.streamPong.sequence).toBe("9");
    const [s1, s2, s3] = r.streamAnswers;
    expect(s1).toMatchObject({ correlation_id: "s1", decision: "allow", request_headers: [{ set: { name: "x-probe-seen", value: "stream" } }] });
    expect(s2).toMatchObject({ correlation_id: "s2", decision: "block", block: { status: 403, body: "no" } });
    expect(s3).toMatchObject({ correlation_id: "s3", audit: { custom: { len: "100000" } } });
  });
});
