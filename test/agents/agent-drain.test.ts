// An agent built from its config (createTransportFor / createAgent, gRPC transport) bounds the
// GOAWAY drain of its connection by the config's timeouts: createTransportFor passes
// callTimeoutMs = max(timeout-ms, chunk-timeout-ms), and the transport ends the drain of a
// connection the agent sent away callTimeoutMs + max(100 ms, callTimeoutMs / 10) after the GOAWAY
// (src/agents/grpc/client.ts, drainBoundMs). Without callTimeoutMs the drain would only end after
// the transport's 30 s backstop. grpc-h2.test.ts covers the bound on a hand-built transport; this
// file checks that the config path actually sets it.
//
// Why a second call with a signal that never fires: a call made through Agent.call always carries
// the agent's deadline signal, so when it times out the old stream is half-closed at once and
// the drain bound is never what ends it (the connection then closes END_WAIT_MS = 2 s later if the
// agent does not end the stream, with or without callTimeoutMs). The bound exists for calls nobody
// aborts; one such call on the same transport keeps the drained connection open until the bound.
//
// The peer is a raw HTTP/2 server on Bun.listen (a trimmed copy of the one in grpc-h2.test.ts,
// whose helpers are not exported): it completes the HTTP/2 handshake (SETTINGS + ACK), answers
// the gRPC handshake message (the transport sends no event before that), never answers an event,
// and never closes a connection itself.
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import { create, toBinary } from "@bufbuild/protobuf";
import { createAgent, createTransportFor } from "../../src/agents/agent.ts";
import { ErrorCode, Flag, FrameReader, FrameType, PREFACE, frame, goawayFrame, readU32, settingsAckFrame, settingsFrame } from "../../src/agents/grpc/h2/frames.ts";
import { encodeHeaders } from "../../src/agents/grpc/h2/hpack.ts";
import { AgentToProxySchema } from "../../src/gen/zentinel/agent/v2/agent_v2_pb.js";
import { requestHeadersEvent, testAgentConfig } from "../../src/agents/test-events.ts";
import { TransportError } from "../../src/agents/types.ts";
import { setLogLevel } from "../../src/observability/log.ts";
import { waitFor } from "../helpers/proxy.ts";
import { WriteQueue } from "../../src/agents/uds/writer.ts";

/** One accepted connection of the raw peer. */
class Conn {
  /** gRPC messages received (the handshake first), from any stream. */
  messages = 0;
  /** Highest stream id the client opened. */
  maxStream = 0;
  /** performance.now() when the client closed the TCP connection (we never close it). */
  closedAt: number | null = null;
  private preface = new Uint8Array(0);
  private prefaceDone = false;
  private data = new Uint8Array(0);
  /** Bun sockets do not keep what write() did not take: the product's write queue keeps it. */
  private readonly out: WriteQueue;
  private readonly reader = new FrameReader((type, flags, stream, payload) => this.onFrame(type, flags, stream, payload));

  constructor(readonly socket: Socket<undefined>) {
    this.out = new WriteQueue(socket);
    this.reader.maxFrameSize = 16_777_215;
    this.write(settingsFrame([]));
  }

  write(bytes: Uint8Array): void {
    if (this.closedAt === null) this.out.write(bytes);
  }

  drain(): void {
    this.out.flush();
  }

  feed(d: Uint8Array): void {
    if (!this.prefaceDone) {
      const joined = new Uint8Array(this.preface.length + d.length);
      joined.set(this.preface);
      joined.set(d, this.preface.length);
      if (joined.length < PREFACE.length) {
        this.preface = joined;
        return;
      }
      this.prefaceDone = true;
      d = joined.subarray(PREFACE.length);
    }
    this.reader.push(d);
  }

  private onFrame(type: number, flags: number, stream: number, payload: Uint8Array): void {
    if (type === FrameType.SETTINGS && !(flags & Flag.ACK)) this.write(settingsAckFrame());
    if (type === FrameType.HEADERS) this.maxStream = Math.max(this.maxStream, stream);
    if (type !== FrameType.DATA) return;
    const joined = new Uint8Array(this.data.length + payload.length);
    joined.set(this.data);
    joined.set(payload, this.data.length);
    this.data = joined;
    while (this.data.length >= 5) {
      const len = readU32(this.data, 1);
      if (this.data.length < 5 + len) break;
      this.data = this.data.slice(5 + len);
      if (++this.messages === 1) this.answerHandshake(stream);
    }
  }

  /** Response headers and a successful handshake answer; nothing else is ever answered. */
  private answerHandshake(stream: number): void {
    const hs = toBinary(AgentToProxySchema, create(AgentToProxySchema, { message: { case: "handshake", value: { success: true, protocolVersion: 2 } } }));
    const msg = new Uint8Array(5 + hs.length);
    msg[1] = (hs.length >>> 24) & 0xff;
    msg[2] = (hs.length >>> 16) & 0xff;
    msg[3] = (hs.length >>> 8) & 0xff;
    msg[4] = hs.length & 0xff;
    msg.set(hs, 5);
    const headers = encodeHeaders([
      [":status", "200"],
      ["content-type", "application/grpc"],
    ]);
    this.write(frame(FrameType.HEADERS, Flag.END_HEADERS, stream, headers));
    this.write(frame(FrameType.DATA, 0, stream, msg));
  }
}

/** A raw HTTP/2 listener: every accepted connection is a Conn. */
class RawPeer {
  readonly conns: Conn[] = [];
  private listener!: TCPSocketListener<undefined>;

  start(): number {
    const bySocket = new Map<Socket<undefined>, Conn>();
    this.listener = Bun.listen<undefined>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open: (s) => {
          const c = new Conn(s);
          bySocket.set(s, c);
          this.conns.push(c);
        },
        data: (s, d) => bySocket.get(s)?.feed(new Uint8Array(d)),
        drain: (s) => bySocket.get(s)?.drain(),
        close: (s) => {
          const c = bySocket.get(s);
          if (c && c.closedAt === null) c.closedAt = performance.now();
        },
        error: () => {},
      },
    });
    return this.listener.port;
  }

  stop(): void {
    for (const c of this.conns) if (c.closedAt === null) c.socket.terminate();
    this.listener?.stop(true);
  }
}

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

beforeAll(() => setLogLevel("error")); // GOAWAY / drain info logs
afterAll(() => setLogLevel("info"));

const until = (cond: () => boolean, ms: number, what: string) => waitFor(cond, ms, what, 2);

test.each([
  { timeoutMs: 300, chunkTimeoutMs: 100 },
  { timeoutMs: 100, chunkTimeoutMs: 300 },
])(
  "agent from config (timeout-ms $timeoutMs, chunk-timeout-ms $chunkTimeoutMs): after a GOAWAY the proxy closes the drained connection max(timeouts) + margin later, not after the 30 s backstop",
  async ({ timeoutMs, chunkTimeoutMs }) => {
    const peer = new RawPeer();
    const port = peer.start();
    cleanup.push(() => peer.stop());
    const config = testAgentConfig(`drain-${timeoutMs}-${chunkTimeoutMs}-${process.pid}`, {
      transport: { kind: "grpc", address: `http://127.0.0.1:${port}`, protocol: "v2" },
      timeoutMs,
      chunkTimeoutMs,
      connections: 1,
    });
    const callTimeoutMs = Math.max(timeoutMs, chunkTimeoutMs);
    const boundMs = callTimeoutMs + Math.max(100, Math.ceil(callTimeoutMs / 10)); // 400

    // The transport the config builds, used by an Agent built from the same config.
    const transport = createTransportFor(config);
    const agent = createAgent(config, transport);
    cleanup.push(() => agent.close(0));
    agent.start();
    expect(await agent.whenConnected(3000)).toBe(true);
    const old = peer.conns[0]!;

    // One call through the Agent (bounded by its own deadline) and one on the same transport
    // whose caller never gives up (only the drain bound ends it).
    const agentCall = agent.call(requestHeadersEvent("a1"));
    const stuck = transport.call(requestHeadersEvent("s1"), new AbortController().signal).then(
      () => null,
      (e: unknown) => e,
    );
    await until(() => old.messages === 3, 3000, "both events on the connection");
    old.write(goawayFrame(old.maxStream, ErrorCode.NO_ERROR, "graceful"));
    const goawayAt = performance.now();

    const res = await agentCall;
    expect(res.ok).toBe(false);
    if (!res.ok) expect(res.kind).toBe("timeout");

    // The proxy closes the drained connection shortly after the bound (30 s without callTimeoutMs).
    await until(() => old.closedAt !== null, 3000, "the proxy to close the drained connection");
    const closedAfterMs = old.closedAt! - goawayAt;
    expect(closedAfterMs).toBeGreaterThanOrEqual(boundMs - 50);
    expect(closedAfterMs).toBeLessThan(1500);

    const err = await stuck;
    expect(err).toBeInstanceOf(TransportError);
    expect((err as TransportError).kind).toBe("closed");
    // The exact bound the transport applied: callTimeoutMs = max(timeout-ms, chunk-timeout-ms).
    expect((err as TransportError).message).toContain(`calls still in flight ${boundMs} ms after the agent's GOAWAY`);
  },
);
