// The HTTP/2 client (src/agents/grpc/h2/connection.ts) and the gRPC call layer (h2/grpc.ts)
// against a scripted raw HTTP/2 server on Bun.listen: flow control and frame sizes in both
// directions, HPACK with Huffman and the dynamic table across blocks, CONTINUATION, padding,
// PING, GOAWAY, RST_STREAM, trailers-only answers, compressed messages, size limits, keepalive,
// and a peer that answers HTTP/1.1.
import { afterEach, describe, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import { H2Connection, type H2ConnectionOptions } from "../../src/agents/grpc/h2/connection.ts";
import {
  ErrorCode,
  Flag,
  FrameReader,
  FrameType,
  PREFACE,
  Setting,
  frame,
  goawayFrame,
  pingFrame,
  readU32,
  rstStreamFrame,
  settingsAckFrame,
  settingsFrame,
  windowUpdateFrame,
} from "../../src/agents/grpc/h2/frames.ts";
import { GrpcCall, GrpcStatusError, Status, decodeGrpcMessage } from "../../src/agents/grpc/h2/grpc.ts";
import { HpackDecoder } from "../../src/agents/grpc/h2/hpack.ts";
import { huffmanEncode } from "../../src/agents/grpc/h2/huffman.ts";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { GrpcAgentTransport, KEEPALIVE_INTERVAL_MS, createGrpcTransport } from "../../src/agents/grpc/client.ts";
import { AgentToProxySchema, ProxyToAgentSchema } from "../../src/gen/zentinel/agent/v2/agent_v2_pb.js";
import { TransportError, type AgentEvent, type TransportOptions } from "../../src/agents/types.ts";
import { requestHeadersEvent, testAgentConfig } from "../../src/agents/test-events.ts";
import { createAgent } from "../../src/agents/agent.ts";
import { setLogLevel } from "../../src/observability/log.ts";
import { waitFor as poll } from "../helpers/proxy.ts";

type Frame = { type: number; flags: number; stream: number; payload: Uint8Array };

/** A raw HTTP/2 peer: records every frame the client sends; the test writes frames by hand. */
class RawServer {
  listener!: TCPSocketListener<undefined>;
  socket: Socket<undefined> | null = null;
  frames: Frame[] = [];
  preface = false;
  headers: Array<[string, string]>[] = [];
  dataBytes = 0;
  messages: Uint8Array[] = [];
  closed = false;
  private buf = new Uint8Array(0);
  private reader = new FrameReader((type, flags, stream, payload) => this.onFrame({ type, flags, stream, payload: payload.slice() }));
  private hpack = new HpackDecoder();
  private data = new Uint8Array(0);
  onFrameHook: ((f: Frame) => void) | null = null;
  raw = false;
  rawReceived = "";
  /** Acknowledge the client's SETTINGS as a real peer does (set by serverSettings()). */
  ackSettings = false;

  constructor(private readonly script: (srv: RawServer) => void = () => {}) {}

  async start(): Promise<number> {
    this.listener = Bun.listen<undefined>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open: (s) => {
          this.socket = s;
          this.script(this);
        },
        data: (_s, d) => this.onData(new Uint8Array(d)),
        drain: () => this.drain(),
        close: () => void (this.closed = true),
        error: () => {},
      },
    });
    return this.listener.port;
  }

  stop(): void {
    this.socket?.terminate();
    this.listener?.stop(true);
  }

  private backlog: Uint8Array[] = [];

  /** Bun sockets do not keep what write() did not take: queue it until drain. */
  write(bytes: Uint8Array): void {
    this.backlog.push(bytes);
    if (this.backlog.length === 1) this.drain();
  }

  drain(): void {
    while (this.backlog.length > 0 && this.socket) {
      const b = this.backlog[0]!;
      const w = this.socket.write(b);
      if (w < b.length) {
        this.backlog[0] = b.subarray(Math.max(0, w));
        return;
      }
      this.backlog.shift();
    }
  }

  /** Bytes from the client (for RawPeers, which owns the listener). */
  feed(d: Uint8Array): void {
    this.onData(d);
  }

  private onData(d: Uint8Array): void {
    if (this.raw) {
      this.rawReceived += new TextDecoder().decode(d);
      return;
    }
    if (!this.preface) {
      const joined = new Uint8Array(this.buf.length + d.length);
      joined.set(this.buf);
      joined.set(d, this.buf.length);
      if (joined.length < PREFACE.length) {
        this.buf = joined;
        return;
      }
      expect(Buffer.from(joined.subarray(0, PREFACE.length)).toString()).toBe("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
      this.preface = true;
      this.buf = new Uint8Array(0);
      d = joined.subarray(PREFACE.length);
    }
    this.reader.maxFrameSize = 16_777_215;
    this.reader.push(d);
  }

  private onFrame(f: Frame): void {
    this.frames.push(f);
    if (this.ackSettings && f.type === FrameType.SETTINGS && !(f.flags & Flag.ACK)) this.write(settingsAckFrame());
    if (f.type === FrameType.HEADERS) this.headers.push(this.hpack.decode(f.payload));
    if (f.type === FrameType.DATA) {
      this.dataBytes += f.payload.length;
      const joined = new Uint8Array(this.data.length + f.payload.length);
      joined.set(this.data);
      joined.set(f.payload, this.data.length);
      this.data = joined;
      while (this.data.length >= 5) {
        const len = readU32(this.data, 1);
        if (this.data.length < 5 + len) break;
        this.messages.push(this.data.slice(5, 5 + len));
        this.data = this.data.slice(5 + len);
      }
    }
    this.onFrameHook?.(f);
  }

  ofType(type: number): Frame[] {
    return this.frames.filter((f) => f.type === type);
  }
}

/** A listener whose every accepted connection is its own RawServer (for reconnecting clients). */
class RawPeers {
  listener!: TCPSocketListener<undefined>;
  readonly peers: RawServer[] = [];

  constructor(private readonly script: (srv: RawServer, index: number) => void) {}

  async start(): Promise<number> {
    const bySocket = new Map<Socket<undefined>, RawServer>();
    this.listener = Bun.listen<undefined>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open: (s) => {
          const r = new RawServer();
          r.socket = s;
          bySocket.set(s, r);
          this.peers.push(r);
          this.script(r, this.peers.length - 1);
        },
        data: (s, d) => bySocket.get(s)?.feed(new Uint8Array(d)),
        drain: (s) => bySocket.get(s)?.drain(),
        close: (s) => void (bySocket.get(s)!.closed = true),
        error: () => {},
      },
    });
    return this.listener.port;
  }

  stop(): void {
    for (const p of this.peers) p.socket?.terminate();
    this.listener?.stop(true);
  }
}

const cleanup: (() => unknown)[] = [];
afterEach(() => {
  while (cleanup.length) cleanup.pop()!();
});

async function server(script?: (srv: RawServer) => void): Promise<{ srv: RawServer; port: number }> {
  const srv = new RawServer(script);
  const port = await srv.start();
  cleanup.push(() => srv.stop());
  return { srv, port };
}

function connect(port: number, extra: Partial<H2ConnectionOptions> = {}): { conn: H2Connection; closed: Error[] } {
  const closed: Error[] = [];
  const conn = new H2Connection({ host: "127.0.0.1", port, onClose: (e) => closed.push(e), ...extra });
  cleanup.push(() => conn.destroy(new Error("test done")));
  return { conn, closed };
}

interface CallLog {
  call: GrpcCall;
  messages: string[];
  sizes: number[];
  end: GrpcStatusError | null | undefined;
}

function grpcCall(conn: H2Connection, maxReceiveBytes?: number): CallLog {
  const log: CallLog = { call: null as unknown as GrpcCall, messages: [], sizes: [], end: undefined };
  log.call = new GrpcCall(
    conn,
    { authority: "agent.test:50051", scheme: "http", path: "/zentinel.agent.v2.AgentServiceV2/ProcessStream", maxReceiveBytes },
    {
      onMessage: (b) => {
        log.sizes.push(b.length);
        log.messages.push(b.length <= 64 ? new TextDecoder().decode(b) : `<${b.length}>`);
      },
      onEnd: (e) => void (log.end = e),
    },
  );
  return log;
}

const until = (cond: () => boolean, ms = 3000, what = "condition") => poll(cond, ms, what, 2);

const enc = (s: string) => new TextEncoder().encode(s);

function grpcMessage(body: Uint8Array | string, flag = 0): Uint8Array {
  const b = typeof body === "string" ? enc(body) : body;
  const out = new Uint8Array(5 + b.length);
  out[0] = flag;
  out[1] = (b.length >>> 24) & 0xff;
  out[2] = (b.length >>> 16) & 0xff;
  out[3] = (b.length >>> 8) & 0xff;
  out[4] = b.length & 0xff;
  out.set(b, 5);
  return out;
}

/** HPACK string literal, Huffman-coded. */
function hstr(s: string): number[] {
  const h = huffmanEncode(s);
  if (h.length >= 127) throw new Error("test helper: string too long");
  return [0x80 | h.length, ...h];
}
/** Literal with incremental indexing, new name (both Huffman-coded). */
const litIndexed = (name: string, value: string) => [0x40, ...hstr(name), ...hstr(value)];
/** Literal without indexing, indexed name (4-bit prefix integer). */
const litNameRef = (index: number, value: string) => [...(index < 15 ? [index] : [0x0f, index - 15]), ...hstr(value)];

/** :status 200 (static 8), content-type application/grpc added to the dynamic table, plus x-srv. */
const RESPONSE_HEADERS = Uint8Array.from([0x88, ...litIndexed("content-type", "application/grpc"), ...litIndexed("x-srv", "raw")]);

/** The server's SETTINGS (its first frame); the client's SETTINGS will be acknowledged. */
function serverSettings(srv: RawServer, entries: Array<[number, number]> = []): void {
  srv.write(settingsFrame(entries));
  srv.ackSettings = true;
}

describe("HTTP/2 client on Bun.connect", () => {
  test("preface, SETTINGS, request headers; response with Huffman + dynamic table + CONTINUATION, padded and split DATA, trailers", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn } = connect(port);
    const c = grpcCall(conn);
    c.call.send(enc("hello"));
    await until(() => srv.messages.length === 1, 3000, "first message");
    // Our SETTINGS: push disabled, a large initial window; the server's SETTINGS are acked.
    const ours = srv.ofType(FrameType.SETTINGS).find((f) => !(f.flags & Flag.ACK))!;
    const settings = new Map<number, number>();
    for (let i = 0; i < ours.payload.length; i += 6) settings.set((ours.payload[i]! << 8) | ours.payload[i + 1]!, readU32(ours.payload, i + 2));
    expect(settings.get(Setting.ENABLE_PUSH)).toBe(0);
    expect(settings.get(Setting.INITIAL_WINDOW_SIZE)).toBeGreaterThanOrEqual(1 << 20);
    await until(() => srv.ofType(FrameType.SETTINGS).some((f) => f.flags & Flag.ACK), 3000, "SETTINGS ACK");
    expect(Object.fromEntries(srv.headers[0]!)).toMatchObject({
      ":method": "POST",
      ":scheme": "http",
      ":path": "/zentinel.agent.v2.AgentServiceV2/ProcessStream",
      ":authority": "agent.test:50051",
      "content-type": "application/grpc",
      te: "trailers",
    });
    expect(new TextDecoder().decode(srv.messages[0]!)).toBe("hello");

    // Response headers split into HEADERS + CONTINUATION.
    srv.write(frame(FrameType.HEADERS, 0, 1, RESPONSE_HEADERS.subarray(0, 5)));
    srv.write(frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, RESPONSE_HEADERS.subarray(5)));
    // A padded DATA frame with one message and the first half of another.
    const m1 = grpcMessage("one");
    const m2 = grpcMessage("two-split");
    const pad = 7;
    const body = new Uint8Array(1 + m1.length + 6 + pad);
    body[0] = pad;
    body.set(m1, 1);
    body.set(m2.subarray(0, 6), 1 + m1.length);
    srv.write(frame(FrameType.DATA, Flag.PADDED, 1, body));
    await Bun.sleep(20);
    // The rest of the second message, written byte by byte across TCP segments.
    const rest = frame(FrameType.DATA, 0, 1, m2.subarray(6));
    for (const b of rest) {
      srv.write(Uint8Array.of(b));
      await Bun.sleep(1);
    }
    // Trailers that reference the dynamic table entry "x-srv: raw" (index 62) and use a
    // percent-encoded grpc-message.
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, Uint8Array.from([...litIndexed("grpc-status", "0"), 0xbe])));
    await until(() => c.end !== undefined, 3000, "trailers");
    expect(c.messages).toEqual(["one", "two-split"]);
    expect(c.end).toBeNull();
  });

  test("outgoing DATA honours the peer's stream window, connection window and SETTINGS_MAX_FRAME_SIZE", async () => {
    const { srv, port } = await server((s) => serverSettings(s, [[Setting.INITIAL_WINDOW_SIZE, 1000]]));
    const { conn } = connect(port);
    const c = grpcCall(conn);
    await until(() => srv.ofType(FrameType.SETTINGS).some((f) => f.flags & Flag.ACK), 3000, "SETTINGS ACK");
    const big = new Uint8Array(100_000).fill(7);
    c.call.send(big);
    await Bun.sleep(50);
    expect(srv.dataBytes).toBe(1000); // stream window
    srv.write(windowUpdateFrame(1, 200_000));
    await Bun.sleep(50);
    expect(srv.dataBytes).toBe(65_535); // now the connection window (default) limits
    srv.write(windowUpdateFrame(0, 100_000));
    await until(() => srv.messages.length === 1, 3000, "whole message");
    expect(srv.messages[0]!.length).toBe(100_000);
    expect(srv.messages[0]!.every((b) => b === 7)).toBe(true);
    for (const f of srv.ofType(FrameType.DATA)) expect(f.payload.length).toBeLessThanOrEqual(16_384);
  });

  test("a SETTINGS_INITIAL_WINDOW_SIZE decrease can make a stream window negative (RFC 9113 §6.9.2)", async () => {
    const { srv, port } = await server((s) => {
      serverSettings(s, [[Setting.INITIAL_WINDOW_SIZE, 1000]]);
      s.write(windowUpdateFrame(0, 1_000_000));
    });
    const { conn } = connect(port);
    const c = grpcCall(conn);
    await until(() => srv.ofType(FrameType.SETTINGS).some((f) => f.flags & Flag.ACK), 3000, "SETTINGS ACK");
    c.call.send(new Uint8Array(5000));
    await until(() => srv.dataBytes === 1000, 3000, "first 1000 bytes");
    srv.write(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 500]])); // window 0 -> -500
    srv.write(windowUpdateFrame(1, 400)); // -100: still nothing may be sent
    await Bun.sleep(50);
    expect(srv.dataBytes).toBe(1000);
    srv.write(windowUpdateFrame(1, 4105)); // 4005: exactly the rest (5000 + 5-byte prefix - 1000)
    await until(() => srv.messages.length === 1, 3000, "the rest");
    expect(srv.dataBytes).toBe(5005);
  });

  test("incoming DATA: WINDOW_UPDATE credit is returned for the stream and the connection", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn } = connect(port);
    const c = grpcCall(conn, 32 * 1024 * 1024);
    c.call.send(enc("go"));
    await until(() => srv.messages.length === 1);
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, RESPONSE_HEADERS));
    // 6 MiB in one message, 16 KiB frames: more than half of both receive windows.
    const payload = grpcMessage(new Uint8Array(6 * 1024 * 1024).fill(1));
    for (let off = 0; off < payload.length; off += 16_384) srv.write(frame(FrameType.DATA, 0, 1, payload.subarray(off, off + 16_384)));
    await until(() => c.sizes.length === 1, 10_000, "6 MiB message");
    expect(c.sizes[0]).toBe(6 * 1024 * 1024);
    const updates = () => srv.ofType(FrameType.WINDOW_UPDATE).filter((f) => readU32(f.payload, 0) > 0);
    // initial connection bump + credit for the connection and the stream
    await until(() => updates().some((f) => f.stream === 1) && updates().filter((f) => f.stream === 0).length >= 2, 3000, "WINDOW_UPDATE credit");
  });

  test("PING is answered with the same payload; SETTINGS are acknowledged", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    connect(port);
    await until(() => srv.preface);
    srv.write(pingFrame(enc("12345678"), false));
    await until(() => srv.ofType(FrameType.PING).length === 1, 3000, "PING ACK");
    const ack = srv.ofType(FrameType.PING)[0]!;
    expect(ack.flags & Flag.ACK).toBe(Flag.ACK);
    expect(new TextDecoder().decode(ack.payload)).toBe("12345678");
  });

  test("trailers-only error answer: status and percent-decoded UTF-8 message", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn } = connect(port);
    const c = grpcCall(conn);
    await until(() => srv.headers.length === 1);
    const block = Uint8Array.from([0x88, ...litIndexed("grpc-status", "12"), ...litIndexed("grpc-message", "no%20such%20method%20%E2%9C%93")]);
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, block));
    await until(() => c.end !== undefined);
    expect(c.end).toBeInstanceOf(GrpcStatusError);
    expect(c.end!.code).toBe(Status.UNIMPLEMENTED);
    expect(c.end!.detail).toBe("no such method ✓");
    expect(decodeGrpcMessage("100%25%20done")).toBe("100% done");
  });

  test("a compressed message is refused with a clear error and the stream is reset", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn } = connect(port);
    const c = grpcCall(conn);
    await until(() => srv.headers.length === 1);
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, Uint8Array.from([...RESPONSE_HEADERS, ...litIndexed("grpc-encoding", "gzip")])));
    srv.write(frame(FrameType.DATA, 0, 1, grpcMessage("zzz", 1)));
    await until(() => c.end !== undefined);
    expect(c.end!.code).toBe(Status.INTERNAL);
    expect(c.end!.message).toContain("compressed message (grpc-encoding gzip)");
    await until(() => srv.ofType(FrameType.RST_STREAM).length === 1, 3000, "RST_STREAM");
    expect(readU32(srv.ofType(FrameType.RST_STREAM)[0]!.payload, 0)).toBe(ErrorCode.CANCEL);
  });

  test("a message above the receive limit is RESOURCE_EXHAUSTED; a send above the send limit throws and sends nothing", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn } = connect(port);
    const c = grpcCall(conn, 1000);
    expect(() => c.call.send(new Uint8Array(4 * 1024 * 1024 + 1))).toThrow(/exceeds the send limit/);
    await until(() => srv.headers.length === 1);
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, RESPONSE_HEADERS));
    srv.write(frame(FrameType.DATA, 0, 1, grpcMessage(new Uint8Array(1001)).subarray(0, 100)));
    await until(() => c.end !== undefined);
    expect(c.end!.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(srv.dataBytes).toBe(0);
  });

  test("missing grpc-status, non-200 :status and a non-gRPC content-type are errors", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn } = connect(port);
    const a = grpcCall(conn);
    const b = grpcCall(conn);
    const d = grpcCall(conn);
    await until(() => srv.headers.length === 3);
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, RESPONSE_HEADERS));
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, Uint8Array.from([0xbe])));
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 3, Uint8Array.from([0x8d]))); // :status 404
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 5, Uint8Array.from([0x88, ...litNameRef(31, "text/html")]))); // content-type text/html
    await until(() => a.end !== undefined && b.end !== undefined && d.end !== undefined);
    expect(a.end!.message).toContain("missing grpc-status");
    expect(b.end!.code).toBe(Status.UNIMPLEMENTED);
    expect(d.end!.message).toContain("content-type");
  });

  test("1xx header blocks before the response headers are skipped (RFC 9113 §8.1); the call then works normally", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn } = connect(port);
    const c = grpcCall(conn);
    c.call.send(enc("hi"));
    await until(() => srv.messages.length === 1, 3000, "request message");
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, Uint8Array.from(litNameRef(8, "100")))); // :status 100
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, Uint8Array.from([...litNameRef(8, "103"), ...litIndexed("link", "</a>; rel=preload")])));
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, RESPONSE_HEADERS));
    srv.write(frame(FrameType.DATA, 0, 1, grpcMessage("after-1xx")));
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, Uint8Array.from(litIndexed("grpc-status", "0"))));
    await until(() => c.end !== undefined, 3000, "trailers");
    expect(c.end).toBeNull();
    expect(c.messages).toEqual(["after-1xx"]);
    expect(srv.ofType(FrameType.RST_STREAM).every((f) => readU32(f.payload, 0) === ErrorCode.NO_ERROR)).toBe(true);
  });

  test("101 in HTTP/2, or a 1xx block that ends the stream, is a stream PROTOCOL_ERROR (INTERNAL); the connection stays up", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn, closed } = connect(port);
    const a = grpcCall(conn);
    const b = grpcCall(conn);
    await until(() => srv.headers.length === 2);
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, Uint8Array.from(litNameRef(8, "101"))));
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 3, Uint8Array.from(litNameRef(8, "100"))));
    await until(() => a.end !== undefined && b.end !== undefined);
    expect(a.end!.code).toBe(Status.INTERNAL);
    expect(a.end!.message).toContain("101");
    expect(b.end!.code).toBe(Status.INTERNAL);
    expect(b.end!.message).toContain("ended the stream");
    await until(() => srv.ofType(FrameType.RST_STREAM).some((f) => f.stream === 1), 3000, "RST_STREAM on stream 1");
    expect(readU32(srv.ofType(FrameType.RST_STREAM).find((f) => f.stream === 1)!.payload, 0)).toBe(ErrorCode.PROTOCOL_ERROR);
    expect(closed).toEqual([]);
    const c = grpcCall(conn); // the connection still takes new streams
    await until(() => srv.headers.length === 3);
    expect(c.end).toBeUndefined();
  });

  test("RST_STREAM from the peer ends the call; GOAWAY refuses streams above last-stream-id", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const goaways: number[] = [];
    const { conn } = connect(port, { onGoaway: (code, last) => goaways.push(code, last) });
    const a = grpcCall(conn);
    const b = grpcCall(conn);
    await until(() => srv.headers.length === 2);
    srv.write(rstStreamFrame(1, ErrorCode.REFUSED_STREAM));
    await until(() => a.end !== undefined);
    expect(a.end!.code).toBe(Status.UNAVAILABLE);
    expect(a.end!.message).toContain("REFUSED_STREAM");
    srv.write(goawayFrame(1, ErrorCode.NO_ERROR, "bye"));
    await until(() => b.end !== undefined);
    expect(b.end!.code).toBe(Status.UNAVAILABLE);
    expect(goaways).toEqual([ErrorCode.NO_ERROR, 1]);
    expect(() => grpcCall(conn)).toThrow(/going away/);
  });

  test("GOAWAY with an error code closes the connection; every stream fails UNAVAILABLE", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn, closed } = connect(port);
    const a = grpcCall(conn);
    await until(() => srv.headers.length === 1);
    srv.write(goawayFrame(1, ErrorCode.ENHANCE_YOUR_CALM, "too many pings"));
    await until(() => a.end !== undefined && closed.length === 1);
    expect(a.end!.code).toBe(Status.UNAVAILABLE);
    expect(closed[0]!.message).toContain("ENHANCE_YOUR_CALM: too many pings");
    expect(conn.isClosed).toBe(true);
  });

  test("protocol violations end the connection with GOAWAY: frame on an idle stream, bad HPACK, oversized frame", async () => {
    for (const bad of [
      frame(FrameType.HEADERS, Flag.END_HEADERS, 7, Uint8Array.from([0x88])), // stream 7 never opened
      frame(FrameType.HEADERS, Flag.END_HEADERS, 1, Uint8Array.from([0xff, 0x00])), // index out of the tables
      (() => {
        const f = frame(FrameType.DATA, 0, 1, new Uint8Array(0));
        f[0] = 0x01; // 65 536+ bytes announced: above our SETTINGS_MAX_FRAME_SIZE (16 384)
        return f;
      })(),
    ]) {
      const { srv, port } = await server((s) => serverSettings(s));
      const { conn, closed } = connect(port);
      const a = grpcCall(conn);
      await until(() => srv.headers.length === 1);
      srv.write(bad);
      await until(() => closed.length === 1 && a.end !== undefined);
      await until(() => srv.ofType(FrameType.GOAWAY).length === 1, 3000, "GOAWAY");
      expect(a.end!.code).toBe(Status.UNAVAILABLE);
    }
  });

  test("CONTINUATION flood: endless (empty) CONTINUATION frames end the connection instead of growing a list", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn, closed } = connect(port);
    const a = grpcCall(conn);
    await until(() => srv.headers.length === 1);
    srv.write(frame(FrameType.HEADERS, 0, 1, Uint8Array.from([0x88])));
    const empty = frame(FrameType.CONTINUATION, 0, 1);
    const burst = new Uint8Array(empty.length * 10_000);
    for (let i = 0; i < 10_000; i++) burst.set(empty, i * empty.length);
    srv.write(burst);
    await until(() => closed.length === 1 && a.end !== undefined, 3000, "connection error");
    expect(closed[0]!.message).toContain("ENHANCE_YOUR_CALM");
    expect(conn.isClosed).toBe(true);
  });

  test("PING flood from a peer that does not read: the answers we cannot write are bounded", async () => {
    // A node:net peer that pauses reading, then sends PINGs (each wants a 17-byte PING ACK).
    const { createServer } = await import("node:net");
    const peer = createServer((sock) => {
      sock.pause();
      sock.write(settingsFrame([]));
      const ping = pingFrame(new Uint8Array(8), false);
      const burst = new Uint8Array(ping.length * 65_536);
      for (let i = 0; i < 65_536; i++) burst.set(ping, i * ping.length);
      for (let i = 0; i < 48; i++) sock.write(burst); // 3 M PINGs, ~51 MB of answers
      sock.on("error", () => {});
    });
    await new Promise<void>((r) => peer.listen(0, "127.0.0.1", r));
    cleanup.push(() => peer.close());
    const { conn, closed } = connect((peer.address() as { port: number }).port);
    let maxBuffered = 0;
    const t0 = performance.now();
    while (closed.length === 0 && performance.now() - t0 < 20_000) {
      maxBuffered = Math.max(maxBuffered, conn.bufferedBytes);
      await Bun.sleep(5);
    }
    expect(closed.length).toBe(1);
    expect(closed[0]!.message).toContain("ENHANCE_YOUR_CALM");
    expect(maxBuffered).toBeLessThanOrEqual(40 * 1024 * 1024);
  });

  test("window overflow: a stream WINDOW_UPDATE above 2^31-1 resets that stream; SETTINGS_INITIAL_WINDOW_SIZE overflow ends the connection", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const { conn, closed } = connect(port);
    const a = grpcCall(conn);
    const b = grpcCall(conn);
    await until(() => srv.headers.length === 2 && srv.ofType(FrameType.SETTINGS).some((f) => f.flags & Flag.ACK));
    srv.write(windowUpdateFrame(1, 0x7fffffff)); // 65 535 + 2^31-1 > 2^31-1
    await until(() => a.end !== undefined);
    expect(a.end!.code).toBe(Status.INTERNAL);
    await until(() => srv.ofType(FrameType.RST_STREAM).some((f) => f.stream === 1 && readU32(f.payload, 0) === ErrorCode.FLOW_CONTROL_ERROR));
    expect(b.end).toBeUndefined();
    srv.write(windowUpdateFrame(3, 0x7fffffff - 65_535)); // exactly 2^31-1: allowed
    await Bun.sleep(20);
    expect(b.end).toBeUndefined();
    srv.write(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 65_536]])); // +1 on stream 3: overflow
    await until(() => closed.length === 1 && b.end !== undefined);
    expect(closed[0]!.message).toContain("FLOW_CONTROL_ERROR");
  });

  test("a first frame other than SETTINGS, or an HTTP/1.1 answer, is refused", async () => {
    const h1 = await server((s) => {
      s.raw = true;
      s.write(enc("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"));
    });
    const a = connect(h1.port);
    await until(() => a.closed.length === 1);
    expect(a.closed[0]!.message).toContain("HTTP/1.x");

    const noSettings = await server((s) => s.write(pingFrame(new Uint8Array(8), false)));
    const b = connect(noSettings.port);
    await until(() => b.closed.length === 1);
    expect(b.closed[0]!.message).toContain("first frame was not SETTINGS");
  });

  test("keepalive: a silent peer gets a PING, and the connection closes when it is not answered", async () => {
    const { srv, port } = await server((s) => {
      serverSettings(s);
      s.write(settingsAckFrame());
    });
    const { closed } = connect(port, { keepaliveIntervalMs: 60, keepaliveTimeoutMs: 60 });
    await until(() => srv.ofType(FrameType.PING).length >= 1, 3000, "keepalive PING");
    expect(srv.ofType(FrameType.PING)[0]!.flags & Flag.ACK).toBe(0);
    await until(() => closed.length === 1, 3000, "keepalive timeout");
    expect(closed[0]!.message).toContain("keepalive PING");
  });

  test("SETTINGS not acknowledged within settingsTimeoutMs: GOAWAY SETTINGS_TIMEOUT, the connection fails (RFC 9113 §6.5.3)", async () => {
    const { srv, port } = await server((s) => s.write(settingsFrame([]))); // never ACKs ours
    const { conn, closed } = connect(port, { settingsTimeoutMs: 150 });
    const c = grpcCall(conn);
    await until(() => closed.length === 1, 3000, "settings timeout");
    expect(closed[0]!.message).toContain("SETTINGS_TIMEOUT");
    expect(closed[0]!.message).toContain("did not acknowledge our SETTINGS within 150 ms");
    expect(c.end!.code).toBe(Status.UNAVAILABLE);
    await until(() => srv.ofType(FrameType.GOAWAY).length === 1, 3000, "GOAWAY");
    expect(readU32(srv.ofType(FrameType.GOAWAY)[0]!.payload, 4)).toBe(ErrorCode.SETTINGS_TIMEOUT);

    // Acknowledged in time: the connection stays up past the timeout.
    const ok = await server((s) => serverSettings(s));
    const acked = connect(ok.port, { settingsTimeoutMs: 150 });
    const d = grpcCall(acked.conn);
    await until(() => ok.srv.headers.length === 1);
    await Bun.sleep(300); // twice the timeout: what is checked is that nothing happens
    expect(acked.closed).toEqual([]);
    expect(d.end).toBeUndefined();
  });

  test("connection refused surfaces as a connection error", async () => {
    const { srv, port } = await server();
    srv.stop();
    await Bun.sleep(10);
    const { conn, closed } = connect(port);
    const c = grpcCall(conn);
    await until(() => closed.length === 1 && c.end !== undefined);
    expect(c.end!.code).toBe(Status.UNAVAILABLE);
  });

  test("half-close sends END_STREAM after queued data; cancel sends RST_STREAM(CANCEL)", async () => {
    const { srv, port } = await server((s) => serverSettings(s, [[Setting.INITIAL_WINDOW_SIZE, 10]]));
    const { conn } = connect(port);
    const a = grpcCall(conn);
    const b = grpcCall(conn);
    await until(() => srv.ofType(FrameType.SETTINGS).some((f) => f.flags & Flag.ACK));
    a.call.send(enc("0123456789abcdef")); // 21 bytes with the prefix: more than the window
    a.call.end();
    await Bun.sleep(30);
    expect(srv.ofType(FrameType.DATA).some((f) => f.flags & Flag.END_STREAM)).toBe(false);
    srv.write(windowUpdateFrame(1, 100));
    await until(() => srv.ofType(FrameType.DATA).some((f) => f.stream === 1 && f.flags & Flag.END_STREAM), 3000, "END_STREAM");
    expect(srv.messages.map((m) => new TextDecoder().decode(m))).toEqual(["0123456789abcdef"]);
    b.call.cancel();
    await until(() => srv.ofType(FrameType.RST_STREAM).some((f) => f.stream === 3));
    expect(b.end).toBeUndefined(); // a cancelled call hears nothing more
  });

  test("a call the agent ended (trailers) while our side was still open releases its stream (RST_STREAM NO_ERROR)", async () => {
    const { srv, port } = await server((s) => serverSettings(s, [[Setting.MAX_CONCURRENT_STREAMS, 1]]));
    const { conn } = connect(port);
    const a = grpcCall(conn);
    await until(() => srv.headers.length === 1 && srv.ofType(FrameType.SETTINGS).some((f) => f.flags & Flag.ACK));
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, RESPONSE_HEADERS));
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, Uint8Array.from([...litIndexed("grpc-status", "0")])));
    await until(() => a.end !== undefined);
    expect(a.end).toBeNull();
    await until(() => srv.ofType(FrameType.RST_STREAM).some((f) => f.stream === 1), 3000, "RST_STREAM on stream 1");
    expect(readU32(srv.ofType(FrameType.RST_STREAM).find((f) => f.stream === 1)!.payload, 0)).toBe(ErrorCode.NO_ERROR);
    // The stream no longer counts against the agent's SETTINGS_MAX_CONCURRENT_STREAMS.
    const b = grpcCall(conn);
    await until(() => srv.headers.length === 2);
    // Trailers-only answer (status in the first block) releases the stream too.
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 3, Uint8Array.from([0x88, ...litIndexed("grpc-status", "5")])));
    await until(() => b.end !== undefined);
    expect(b.end!.code).toBe(Status.NOT_FOUND);
    expect(() => grpcCall(conn)).not.toThrow();
  });

  test("data the agent does not read is bounded: send() refuses with RESOURCE_EXHAUSTED when the send buffer is full", async () => {
    const { srv, port } = await server((s) => serverSettings(s, [[Setting.INITIAL_WINDOW_SIZE, 0]]));
    const { conn } = connect(port);
    const c = grpcCall(conn);
    await until(() => srv.ofType(FrameType.SETTINGS).some((f) => f.flags & Flag.ACK), 3000, "SETTINGS ACK");
    const chunk = new Uint8Array(1024 * 1024);
    let refused: unknown = null;
    for (let i = 0; i < 200 && refused === null; i++) {
      try {
        c.call.send(chunk);
      } catch (err) {
        refused = err;
      }
    }
    expect(refused).toBeInstanceOf(GrpcStatusError);
    expect((refused as GrpcStatusError).code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(c.call.bufferedBytes).toBeLessThanOrEqual(16 * 1024 * 1024);
    // The call itself is still usable once the agent takes the data.
    expect(c.call.isEnded).toBe(false);
    srv.write(windowUpdateFrame(0, 64 * 1024 * 1024));
    srv.write(windowUpdateFrame(1, 64 * 1024 * 1024));
    await until(() => c.call.bufferedBytes === 0, 10_000, "queue drained");
    expect(() => c.call.send(chunk)).not.toThrow();
  });
});

describe("gRPC agent transport on a scripted raw HTTP/2 peer", () => {
  /** Answer the handshake on stream 1 (response headers + one AgentToProxy handshake message). */
  function answerHandshake(srv: RawServer): void {
    const hs = toBinary(AgentToProxySchema, create(AgentToProxySchema, { message: { case: "handshake", value: { success: true, protocolVersion: 2 } } }));
    srv.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, RESPONSE_HEADERS));
    srv.write(frame(FrameType.DATA, 0, 1, grpcMessage(hs)));
  }

  function reqHeaders(id: string, big: string): AgentEvent {
    return requestHeadersEvent(id, { metadata: { requestId: "rid-" + id, clientPort: 40000, serverName: "example.test", routeId: "r" }, headers: { "x-big": [big] } });
  }

  test("an agent that grants no flow-control credit: calls are refused as overload (notSent), memory stays bounded", async () => {
    const { srv, port } = await server((s) => serverSettings(s));
    const t = createGrpcTransport({ endpoint: `http://127.0.0.1:${port}`, connectTimeoutMs: 3000, connections: 1, proxyVersion: "0.1.0-test", log: () => {} });
    cleanup.push(() => void t.close());
    t.start();
    await until(() => srv.messages.length === 1, 3000, "handshake sent");
    // From now on the stream window is negative: nothing more may be sent.
    srv.write(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 0]]));
    answerHandshake(srv);
    await until(() => t.isConnected(), 3000, "ready");
    const big = "x".repeat(1024 * 1024);
    const results: Array<Promise<unknown>> = [];
    const errors: TransportError[] = [];
    for (let i = 0; i < 40; i++) {
      const p = t.call(reqHeaders(`c${i}`, big), new AbortController().signal);
      p.catch((e: TransportError) => errors.push(e));
      results.push(p);
    }
    await until(() => errors.length > 0, 3000, "an overload rejection");
    expect(errors[0]!.kind).toBe("overload");
    expect(errors[0]!.notSent).toBe(true);
    expect(errors.length).toBeGreaterThanOrEqual(20); // at most 16 MiB is accepted
    // A ping either still fits (and times out: the agent reads nothing) or is refused at once.
    const pingErr = await t.ping(200).then(
      () => null,
      (e: TransportError) => e,
    );
    expect(["overload", "timeout"]).toContain(pingErr!.kind);
    // The notify that failed must not block the id for a later call.
    t.notify(reqHeaders("n1", big));
    expect(t.isConnected()).toBe(true);
    const again = await t.call(reqHeaders("n1", big), new AbortController().signal).then(
      () => null,
      (e: TransportError) => e,
    );
    expect(again!.message).toContain("send buffer full");
    // Everything still pending settles when the stream goes away.
    srv.write(goawayFrame(1, ErrorCode.INTERNAL_ERROR, "bye"));
    const settled = await Promise.allSettled(results);
    expect(settled.every((r) => r.status === "rejected")).toBe(true);
  });

  /** An AgentToProxy answer (Allow) for `id` on stream 1. */
  function answer(srv: RawServer, id: string): void {
    const r = toBinary(AgentToProxySchema, create(AgentToProxySchema, { message: { case: "response", value: { correlationId: id, decision: { case: "allow", value: {} } } } }));
    srv.write(frame(FrameType.DATA, 0, 1, grpcMessage(r)));
  }

  /** What the client sent on this connection, decoded (handshake first). */
  function sent(srv: RawServer): string[] {
    return srv.messages.map((m) => {
      const msg = fromBinary(ProxyToAgentSchema, m).message;
      return msg.case === "requestHeaders" ? `rh:${msg.value.metadata?.correlationId}` : String(msg.case);
    });
  }

  const endedStream1 = (srv: RawServer) => srv.frames.some((f) => f.type === FrameType.DATA && f.stream === 1 && (f.flags & Flag.END_STREAM) !== 0);

  type Logged = { level: string; msg: string; fields?: Record<string, unknown> };

  async function peersAndTransport(keepaliveIntervalMs?: number, extra: Partial<TransportOptions> = {}): Promise<{ peers: RawPeers; t: GrpcAgentTransport; logs: Logged[]; connectivity: boolean[] }> {
    const peers = new RawPeers((s) => serverSettings(s));
    const port = await peers.start();
    cleanup.push(() => peers.stop());
    const logs: Logged[] = [];
    const t = new GrpcAgentTransport(
      { endpoint: `http://127.0.0.1:${port}`, connectTimeoutMs: 3000, connections: 1, proxyVersion: "0.1.0-test", log: (level, msg, fields) => logs.push({ level, msg, fields }), ...extra },
      keepaliveIntervalMs === undefined ? {} : { keepaliveIntervalMs },
    );
    const connectivity: boolean[] = [];
    t.onConnectivity((c) => connectivity.push(c));
    cleanup.push(() => void t.close());
    t.start();
    return { peers, t, logs, connectivity };
  }

  /** First stream handshaken, ready, and older than STABLE_MS (a replacement then opens at once, not after a backoff). */
  async function stableStream(peers: RawPeers, t: GrpcAgentTransport): Promise<void> {
    await until(() => peers.peers[0]?.messages.length === 1, 3000, "handshake sent");
    answerHandshake(peers.peers[0]!);
    await until(() => t.isConnected(), 3000, "ready");
    await Bun.sleep(1100); // the stream's age is what is waited for, not an event
  }

  test("GOAWAY(NO_ERROR): new calls go to a replacement stream, calls in flight on the old one still get their answers (or their own deadline), then the old stream is half-closed and its connection closed", async () => {
    const { peers, t, logs, connectivity } = await peersAndTransport();
    await stableStream(peers, t);
    const old = peers.peers[0]!;
    const c1 = t.call(reqHeaders("c1", "a"), new AbortController().signal);
    const ac2 = new AbortController();
    const c2 = t.call(reqHeaders("c2", "b"), ac2.signal);
    await until(() => old.messages.length === 3, 3000, "two events on the old stream");

    old.write(goawayFrame(1, ErrorCode.NO_ERROR, "graceful"));
    await until(() => peers.peers.length === 2 && peers.peers[1]!.messages.length === 1, 3000, "replacement connection with its handshake");
    const fresh = peers.peers[1]!;
    expect(sent(fresh)).toEqual(["handshake"]);
    // No stream is ready until the replacement's handshake is answered: calls fail as while reconnecting.
    expect(t.isConnected()).toBe(false);
    const early = await t.call(reqHeaders("e1", "x"), new AbortController().signal).then(
      () => null,
      (e: TransportError) => e,
    );
    expect(early!.kind).toBe("connect");
    expect(early!.notSent).toBe(true);
    answerHandshake(fresh);
    await until(() => t.isConnected(), 3000, "replacement ready");
    // The listeners never heard the agent go away: the switch is seamless.
    expect(connectivity).toEqual([true]);

    const c3 = t.call(reqHeaders("c3", "c"), new AbortController().signal);
    await until(() => fresh.messages.length === 2, 3000, "new event on the new stream");
    expect(sent(fresh)).toEqual(["handshake", "rh:c3"]);
    expect(sent(old)).toEqual(["handshake", "rh:c1", "rh:c2"]);
    expect(endedStream1(old)).toBe(false); // answers are still outstanding: no half-close yet

    answer(old, "c1");
    expect((await c1).correlationId).toBe("c1");
    await Bun.sleep(50);
    expect(endedStream1(old)).toBe(false);
    ac2.abort(new Error("deadline"));
    expect(((await c2.then(() => null, (e: TransportError) => e)) as TransportError).kind).toBe("timeout");
    await until(() => endedStream1(old), 3000, "END_STREAM on the old stream");
    expect(old.closed).toBe(false);

    // The agent finishes the stream (status OK): the old connection is closed with GOAWAY.
    old.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, Uint8Array.from([...litIndexed("grpc-status", "0")])));
    await until(() => old.closed, 3000, "old connection closed");
    expect(old.ofType(FrameType.GOAWAY).length).toBe(1);

    answer(fresh, "c3");
    expect((await c3).correlationId).toBe("c3");
    expect(t.isConnected()).toBe(true);
    expect(connectivity).toEqual([true]);
    expect(logs.some((l) => l.level === "warn")).toBe(false);
    expect(sent(old)).toEqual(["handshake", "rh:c1", "rh:c2"]);
  });

  test("GOAWAY with an error code: the replacement is opened at once, what was in flight on the old connection fails closed", async () => {
    const { peers, t, connectivity } = await peersAndTransport();
    await stableStream(peers, t);
    const c1 = t.call(reqHeaders("c1", "a"), new AbortController().signal).then(
      () => null,
      (e: TransportError) => e,
    );
    await until(() => peers.peers[0]!.messages.length === 2, 3000, "event sent");
    peers.peers[0]!.write(goawayFrame(1, ErrorCode.INTERNAL_ERROR, "boom"));
    expect((await c1)!.kind).toBe("closed");
    await until(() => peers.peers.length === 2 && peers.peers[1]!.messages.length === 1, 3000, "replacement handshake");
    answerHandshake(peers.peers[1]!);
    await until(() => t.isConnected(), 3000, "replacement ready");
    expect(connectivity).toEqual([true]);
  });

  test("GOAWAY drain bounded by callTimeoutMs: a call whose caller never gives up fails closed just after its deadline, then the old connection is closed", async () => {
    const { peers, t, connectivity } = await peersAndTransport(undefined, { callTimeoutMs: 300 });
    await stableStream(peers, t);
    const old = peers.peers[0]!;
    const sentAt = performance.now();
    const c1 = t.call(reqHeaders("c1", "a"), new AbortController().signal).then(
      () => null,
      (e: TransportError) => e,
    );
    await until(() => old.messages.length === 2, 3000, "event on the old stream");
    old.write(goawayFrame(1, ErrorCode.NO_ERROR, "graceful"));
    await until(() => peers.peers.length === 2 && peers.peers[1]!.messages.length === 1, 3000, "replacement handshake");
    answerHandshake(peers.peers[1]!);
    const err = (await c1)!;
    const ms = performance.now() - sentAt;
    expect(err.kind).toBe("closed");
    expect(err.message).toContain("after the agent's GOAWAY");
    expect(ms).toBeGreaterThanOrEqual(300);
    expect(ms).toBeLessThan(1500); // 300 ms + the margin, far from the 30 s backstop
    await until(() => old.closed, 3000, "old connection closed");
    expect(old.ofType(FrameType.GOAWAY).length).toBe(1);
    expect(t.isConnected()).toBe(true);
    expect(connectivity).toEqual([true]);
  });

  test("a replacement that fails before it is ready: listeners hear false, the normal reconnect backoff applies", async () => {
    const { peers, t, connectivity } = await peersAndTransport();
    await stableStream(peers, t);
    peers.peers[0]!.write(goawayFrame(1, ErrorCode.NO_ERROR));
    await until(() => peers.peers.length === 2 && peers.peers[1]!.messages.length === 1, 3000, "replacement handshake");
    // The agent is going away for good: it refuses the new connection.
    peers.peers[1]!.write(goawayFrame(0, ErrorCode.NO_ERROR, "shutting down"));
    await until(() => connectivity.length === 2, 3000, "disconnected");
    expect(connectivity).toEqual([true, false]);
    expect(t.isConnected()).toBe(false);
    // The old stream (nothing in flight) was half-closed at once, and the reconnect goes on.
    expect(endedStream1(peers.peers[0]!)).toBe(true);
    await until(() => peers.peers.length === 3 && peers.peers[2]!.messages.length === 1, 3000, "reconnect after backoff");
    answerHandshake(peers.peers[2]!);
    await until(() => t.isConnected(), 3000, "reconnected");
    expect(connectivity).toEqual([true, false, true]);
  });

  test("an agent that never acknowledges our SETTINGS: its connection fails after connectTimeoutMs (GOAWAY SETTINGS_TIMEOUT), the call on it fails closed, the transport reconnects", async () => {
    const peers = new RawPeers((s, i) => (i === 0 ? s.write(settingsFrame([])) : serverSettings(s)));
    const port = await peers.start();
    cleanup.push(() => peers.stop());
    const t = new GrpcAgentTransport({ endpoint: `http://127.0.0.1:${port}`, connectTimeoutMs: 400, connections: 1, proxyVersion: "0.1.0-test", log: () => {} });
    const connectivity: boolean[] = [];
    t.onConnectivity((c) => connectivity.push(c));
    cleanup.push(() => void t.close());
    t.start();
    await until(() => peers.peers[0]?.messages.length === 1, 3000, "handshake sent");
    answerHandshake(peers.peers[0]!);
    await until(() => t.isConnected(), 3000, "ready");
    const err = (await t.call(reqHeaders("c1", "a"), new AbortController().signal).then(
      () => null,
      (e: TransportError) => e,
    ))!;
    expect(err.kind).toBe("closed");
    expect(err.message).toContain("SETTINGS_TIMEOUT");
    await until(() => peers.peers[0]!.ofType(FrameType.GOAWAY).length === 1, 3000, "GOAWAY");
    expect(readU32(peers.peers[0]!.ofType(FrameType.GOAWAY)[0]!.payload, 4)).toBe(ErrorCode.SETTINGS_TIMEOUT);
    await until(() => peers.peers.length === 2 && peers.peers[1]!.messages.length === 1, 3000, "reconnect");
    answerHandshake(peers.peers[1]!);
    await until(() => t.isConnected(), 3000, "reconnected");
    expect(connectivity).toEqual([true, false, true]);
  });

  /** Answer every ProxyToAgent ping on this peer's stream 1 with a pong. */
  function answerPings(srv: RawServer): void {
    let seen = 0;
    srv.onFrameHook = () => {
      for (; seen < srv.messages.length; seen++) {
        const m = fromBinary(ProxyToAgentSchema, srv.messages[seen]!).message;
        if (m.case !== "ping") continue;
        const pong = create(AgentToProxySchema, { message: { case: "pong", value: { sequence: m.value.sequence, pingTimestampMs: m.value.timestampMs } } });
        srv.write(frame(FrameType.DATA, 0, 1, grpcMessage(toBinary(AgentToProxySchema, pong))));
      }
    };
  }

  test("a failing health check drops a silently dead connection (TCP up, pings unanswered) after unhealthy-threshold misses; the agent reconnects and recovers", async () => {
    setLogLevel("error"); // the Agent logs through the process logger
    cleanup.push(() => setLogLevel("info"));
    const peers = new RawPeers((s) => serverSettings(s));
    const port = await peers.start();
    cleanup.push(() => peers.stop());
    const healthCheck = { enabled: true, intervalMs: 50, timeoutMs: 50, healthyThreshold: 1, unhealthyThreshold: 2 };
    const agent = createAgent(testAgentConfig(`hc-${process.pid}`, { transport: { kind: "grpc", address: `http://127.0.0.1:${port}`, protocol: "v2" }, healthCheck }));
    cleanup.push(() => void agent.close(0));
    agent.start();
    await until(() => peers.peers[0]?.messages.length === 1, 3000, "handshake sent");
    const dead = peers.peers[0]!;
    answerHandshake(dead); // ...and nothing more: every ping goes unanswered
    expect(await agent.whenConnected(3000)).toBe(true);
    await until(() => dead.closed, 3000, "the dead connection dropped");
    expect(sent(dead).filter((m) => m === "ping").length).toBeGreaterThanOrEqual(2);
    expect(dead.ofType(FrameType.GOAWAY).length).toBe(1);
    await until(() => peers.peers.length === 2 && peers.peers[1]!.messages.length === 1, 3000, "reconnect");
    const fresh = peers.peers[1]!;
    answerPings(fresh);
    answerHandshake(fresh);
    await until(() => agent.isHealthy(), 3000, "healthy on the new connection");
    expect(sent(fresh).filter((m) => m === "ping").length).toBeGreaterThanOrEqual(1);
    expect(fresh.closed).toBe(false);
    await agent.close(0); // before the log level is restored
  });

  test("pings failing on an agent that still answers calls: its stream is kept (slow, not dead) and no call fails", async () => {
    setLogLevel("error");
    cleanup.push(() => setLogLevel("info"));
    const peers = new RawPeers((s) => serverSettings(s));
    const port = await peers.start();
    cleanup.push(() => peers.stop());
    const healthCheck = { enabled: true, intervalMs: 50, timeoutMs: 20, healthyThreshold: 1, unhealthyThreshold: 2 };
    const agent = createAgent(testAgentConfig(`hc-slow-${process.pid}`, { transport: { kind: "grpc", address: `http://127.0.0.1:${port}`, protocol: "v2" }, healthCheck }));
    cleanup.push(() => void agent.close(0));
    agent.start();
    await until(() => peers.peers[0]?.messages.length === 1, 3000, "handshake sent");
    const srv = peers.peers[0]!;
    // Answer every request_headers event at once; never a ping.
    let seen = 1;
    srv.onFrameHook = () => {
      for (; seen < srv.messages.length; seen++) {
        const m = fromBinary(ProxyToAgentSchema, srv.messages[seen]!).message;
        if (m.case === "requestHeaders") answer(srv, m.value.metadata!.correlationId);
      }
    };
    answerHandshake(srv);
    expect(await agent.whenConnected(3000)).toBe(true);
    let stop = false;
    const results: string[] = [];
    const traffic = (async () => {
      for (let i = 0; !stop; i++) {
        const r = await agent.call(requestHeadersEvent(`slow-${i}`));
        results.push(r.ok ? r.reply.decision.kind : `fail:${r.kind}`);
        await Bun.sleep(2); // a failing call returns at once: never starve the event loop
      }
    })();
    await until(() => !agent.isHealthy(), 3000, "unhealthy");
    await Bun.sleep(healthCheck.intervalMs * 3); // a window in which a wrong drop would show
    stop = true;
    await traffic;
    expect(srv.closed).toBe(false);
    expect(peers.peers.length).toBe(1);
    expect(results.length).toBeGreaterThan(10);
    expect(results.every((r) => r === "allow")).toBe(true);
    await agent.close(0);
  });

  test("keepalive: 5 minutes by default (grpc-go's MinTime); GOAWAY ENHANCE_YOUR_CALM too_many_pings doubles it for the endpoint, warned once", async () => {
    expect(KEEPALIVE_INTERVAL_MS).toBeGreaterThanOrEqual(5 * 60_000);
    const plain = createGrpcTransport({ endpoint: "http://127.0.0.1:1", connectTimeoutMs: 100, connections: 1, proxyVersion: "t", log: () => {} }) as GrpcAgentTransport;
    expect(plain.keepaliveIntervalMs).toBe(KEEPALIVE_INTERVAL_MS);

    const { peers, t, logs } = await peersAndTransport(150);
    const pingTimes = new Map<number, number[]>();
    const watch = (i: number) => {
      const srv = peers.peers[i]!;
      pingTimes.set(i, []);
      srv.onFrameHook = (f) => {
        if (f.type !== FrameType.PING || f.flags & Flag.ACK) return;
        pingTimes.get(i)!.push(performance.now());
        srv.write(pingFrame(f.payload, true));
      };
    };
    await until(() => peers.peers[0]?.messages.length === 1, 3000, "handshake sent");
    watch(0);
    answerHandshake(peers.peers[0]!);
    await until(() => pingTimes.get(0)!.length >= 1, 3000, "a keepalive PING");
    peers.peers[0]!.write(goawayFrame(1, ErrorCode.ENHANCE_YOUR_CALM, "too_many_pings"));
    await until(() => t.keepaliveIntervalMs === 300, 3000, "interval doubled");
    await until(() => peers.peers.length === 2 && peers.peers[1]!.messages.length === 1, 3000, "reconnect");
    watch(1);
    answerHandshake(peers.peers[1]!);
    await until(() => pingTimes.get(1)!.length >= 3, 5000, "keepalive PINGs on the new connection");
    const times = pingTimes.get(1)!;
    for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(295);

    peers.peers[1]!.write(goawayFrame(1, ErrorCode.ENHANCE_YOUR_CALM, "too_many_pings"));
    await until(() => t.keepaliveIntervalMs === 600, 3000, "interval doubled again");
    const warned = logs.filter((l) => l.level === "warn" && l.msg.includes("too_many_pings"));
    expect(warned.length).toBe(1);
    expect(warned[0]!.fields).toMatchObject({ keepaliveIntervalMs: 300 });
    // Another ENHANCE_YOUR_CALM reason is not a keepalive complaint.
    await until(() => peers.peers.length === 3 && peers.peers[2]!.messages.length === 1, 3000, "reconnect");
    answerHandshake(peers.peers[2]!);
    await until(() => t.isConnected(), 3000, "ready");
    peers.peers[2]!.write(goawayFrame(1, ErrorCode.ENHANCE_YOUR_CALM, "too many streams"));
    await until(() => peers.peers.length === 4, 3000, "reconnect");
    expect(t.keepaliveIntervalMs).toBe(600);
  });
});
