// The SDK's direct ProcessStream path (sdk/grpc-direct.ts) against a real serveGrpc server, driven
// by our HTTP/2 client writing raw gRPC framing: messages split across DATA frames or packed into
// one, bad framing (compressed flag, oversize length, undecodable bytes) ending the call with the
// status Connect would send, and the server serving new calls afterwards.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { H2Connection } from "../../src/agents/grpc/h2/connection.ts";
import type { H2Stream } from "../../src/agents/grpc/h2/connection.ts";
import { GrpcCall, type GrpcStatusError, Status } from "../../src/agents/grpc/h2/grpc.ts";
import { AgentToProxySchema, ProxyToAgentSchema, type AgentToProxy } from "../../src/gen/zentinel/agent/v2/agent_v2_pb.ts";
import { eventToProto, handshakeToProto } from "../../src/agents/grpc/map.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { serveGrpc } from "../../sdk/grpc-server.ts";
import type { RunningServer } from "../../sdk/types.ts";
import type { HeaderMap } from "../../src/agents/types.ts";
import { waitFor } from "../helpers/proxy.ts";

let server: RunningServer;
const conns: H2Connection[] = [];

beforeAll(async () => {
  server = await serveGrpc(
    "127.0.0.1:0",
    {
      info: { agentId: "direct", name: "direct", version: "1" },
      onRequestHeaders: (e) =>
        e.uri === "/block"
          ? { decision: { kind: "block", status: 451, body: `saw ${e.headers["x-name"]?.[0]} ${e.headers["constructor"]?.[0]}` } }
          : { requestHeaders: [{ op: "set", name: "x-seen", value: e.uri }] },
    },
    { log: () => {} },
  );
});

afterAll(async () => {
  for (const c of conns) c.destroy(new Error("test done"));
  await server.close();
});

interface Call {
  call: GrpcCall;
  stream: H2Stream;
  conn: H2Connection;
  answers: AgentToProxy[];
  end: GrpcStatusError | null | undefined;
}

function open(): Call {
  const conn = new H2Connection({ host: "127.0.0.1", port: server.port });
  conns.push(conn);
  const c = { answers: [], end: undefined, conn } as unknown as Call;
  c.call = new GrpcCall(
    conn,
    { authority: `127.0.0.1:${server.port}`, scheme: "http", path: "/zentinel.agent.v2.AgentServiceV2/ProcessStream" },
    {
      onMessage: (b) => void c.answers.push(fromBinary(AgentToProxySchema, b)),
      onEnd: (e) => void (c.end = e),
    },
  );
  c.stream = (c.call as unknown as { stream: H2Stream }).stream;
  return c;
}

/** One gRPC message: flag, 4-byte big-endian length, body. `length` overrides the declared size. */
function framed(body: Uint8Array, flag = 0, length = body.length): Uint8Array {
  const out = new Uint8Array(5 + body.length);
  out[0] = flag;
  new DataView(out.buffer).setUint32(1, length);
  out.set(body, 5);
  return out;
}

function rawWrite(c: Call, bytes: Uint8Array, end = false): void {
  c.conn.writeData(c.stream, new Uint8Array(0), bytes, end);
}

const handshake = () => framed(toBinary(ProxyToAgentSchema, handshakeToProto("test", "0", null)));
const headersEvent = (id: string, uri = `/${id}`, headers: HeaderMap = {}) =>
  framed(toBinary(ProxyToAgentSchema, eventToProto(requestHeadersEvent(id, { uri, headers }))));

function responses(c: Call): { id: string; seen: string }[] {
  return c.answers
    .filter((a) => a.message.case === "response")
    .map((a) => {
      const r = a.message.value as Extract<AgentToProxy["message"], { case: "response" }>["value"];
      const op = r.requestHeaders[0]?.operation;
      return { id: r.correlationId, seen: op?.case === "set" ? op.value.value : "" };
    });
}

describe("SDK gRPC server: direct ProcessStream", () => {
  test("messages split byte by byte across DATA frames, then three in one frame; half-close ends with OK", async () => {
    const c = open();
    const first = new Uint8Array([...handshake(), ...headersEvent("a")]);
    for (let i = 0; i < first.length; i++) rawWrite(c, first.subarray(i, i + 1));
    rawWrite(c, new Uint8Array([...headersEvent("b"), ...headersEvent("c"), ...headersEvent("d")]), true);
    await waitFor(() => c.end !== undefined, 5000, "the call to end");
    expect(c.end).toBeNull();
    expect(c.answers[0]!.message.case).toBe("handshake");
    expect(responses(c).sort((x, y) => x.id.localeCompare(y.id))).toEqual([
      { id: "a", seen: "/a" },
      { id: "b", seen: "/b" },
      { id: "c", seen: "/c" },
      { id: "d", seen: "/d" },
    ]);
  });

  test("a 1 MiB message written in 16 KiB pieces is reassembled and answered", async () => {
    const c = open();
    rawWrite(c, handshake());
    const big = headersEvent("big", "/big", { "x-big": ["b".repeat(1024 * 1024)] });
    for (let i = 0; i < big.length; i += 16 * 1024) rawWrite(c, big.subarray(i, i + 16 * 1024));
    rawWrite(c, new Uint8Array(0), true);
    await waitFor(() => c.end !== undefined, 10_000, "the call to end");
    expect(c.end).toBeNull();
    expect(responses(c)).toEqual([{ id: "big", seen: "/big" }]);
  });

  test("a message flagged compressed on a stream without grpc-encoding: INTERNAL", async () => {
    const c = open();
    rawWrite(c, handshake());
    rawWrite(c, framed(new Uint8Array([1, 2, 3]), 1));
    await waitFor(() => c.end !== undefined, 5000, "the call to end");
    expect(c.end?.code).toBe(Status.INTERNAL);
    expect(c.end?.detail).toContain("compressed");
  });

  test("a declared length above 16 MiB: RESOURCE_EXHAUSTED before any of it is buffered", async () => {
    const c = open();
    rawWrite(c, framed(new Uint8Array(10), 0, 64 * 1024 * 1024));
    await waitFor(() => c.end !== undefined, 5000, "the call to end");
    expect(c.end?.code).toBe(Status.RESOURCE_EXHAUSTED);
  });

  test("undecodable protobuf: INTERNAL parse binary", async () => {
    const c = open();
    rawWrite(c, framed(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff])));
    await waitFor(() => c.end !== undefined, 5000, "the call to end");
    expect(c.end?.code).toBe(Status.INTERNAL);
    expect(c.end?.detail).toContain("parse binary");
  });

  test("a stream that ends inside a message: INTERNAL; the server still serves new calls", async () => {
    const c = open();
    rawWrite(c, handshake().subarray(0, 3), true);
    await waitFor(() => c.end !== undefined, 5000, "the call to end");
    expect(c.end?.code).toBe(Status.INTERNAL);
    const next = open();
    rawWrite(next, new Uint8Array([...handshake(), ...headersEvent("z")]), true);
    await waitFor(() => next.end !== undefined, 5000, "the next call to end");
    expect(next.end).toBeNull();
    expect(responses(next)).toEqual([{ id: "z", seen: "/z" }]);
  });
});

describe("SDK gRPC server: direct ProcessStream answers beyond the fast codec", () => {
  test("a non-ASCII header and a block answer go through the generated code; any header name reaches the handler", async () => {
    const c = open();
    const headers = Object.fromEntries([["x-name", ["Zoë"]], ["constructor", ["c"]]]);
    rawWrite(c, new Uint8Array([...handshake(), ...headersEvent("nb", "/block", headers), ...headersEvent("ok")]), true);
    await waitFor(() => c.end !== undefined, 5000, "the call to end");
    expect(c.end).toBeNull();
    const byId = new Map(c.answers.filter((a) => a.message.case === "response").map((a) => [(a.message.value as { correlationId: string }).correlationId, a.message.value]));
    const blocked = byId.get("nb") as { decision: { case: string; value: { status: number; body?: string } } };
    expect(blocked.decision.case).toBe("block");
    expect(blocked.decision.value).toMatchObject({ status: 451, body: "saw Zoë c" });
    expect(responses(c).find((r) => r.id === "ok")).toEqual({ id: "ok", seen: "/ok" });
  });
});
