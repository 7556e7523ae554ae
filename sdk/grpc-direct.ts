// Agent SDK: ProcessStream served straight from node:http2's request/response, without Connect.
//
// ProcessStream carries every event the proxy sends, so its per-message cost is the agent's cost
// per request. Connect's server pipeline runs each message through several async generators;
// this path reads gRPC messages off the request body (the same deframer as the proxy's client,
// src/agents/grpc/h2/messages.ts), hands them to the same processStream() logic, and writes the
// answers back as they come. request_headers events and allow answers go through the hand-written
// codec (src/agents/grpc/wire.ts), other messages through the generated protobuf-es code. Other
// calls (ProcessEvent, ControlStream, non-gRPC content types such as Connect or gRPC-web,
// compressed streams) still go through Connect.
//
// Limits: a message may be at most MAX_MESSAGE_BYTES (RESOURCE_EXHAUSTED otherwise, as Connect's
// readMaxBytes); a flagged-compressed message on a stream without grpc-encoding is INTERNAL, an
// undecodable one INTERNAL ("parse binary: …", Connect's wording). While the response stream
// asks to wait (write() returned false), answers queue in memory; the proxy bounds how many
// events it has in flight per stream, so the queue is bounded by the proxy's in-flight limit.
import type * as http2 from "node:http2";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { AgentToProxySchema, ProxyToAgentSchema, type AgentToProxy, type ProxyToAgent } from "../src/gen/zentinel/agent/v2/agent_v2_pb.ts";
import { PushQueue } from "../src/agents/grpc/queue.ts";
import { MessageDeframer, messagePrefix, type FramingProblem } from "../src/agents/grpc/h2/messages.ts";
import { replyToProto, responseEnvelope } from "../src/agents/grpc/map.ts";
import { decodeSimpleEvent, encodeAllowReply } from "../src/agents/grpc/wire.ts";
import type { AgentEvent, AgentReply } from "../src/agents/types.ts";

export const PROCESS_STREAM_PATH = "/zentinel.agent.v2.AgentServiceV2/ProcessStream";
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

const GRPC_OK = 0;
const GRPC_INTERNAL = 13;
const GRPC_RESOURCE_EXHAUSTED = 8;

/** An answer to an event, encoded here: the protobuf bytes of an AgentToProxy message. */
type Encoded = Uint8Array;

type StreamLogic = (
  requests: AsyncIterable<ProxyToAgent | AgentEvent>,
  ctx: HandlerContext,
  encode: (reply: AgentReply, processingTimeMs: number) => Encoded,
) => AsyncIterable<AgentToProxy | Encoded>;

/** Allow answers through the hand-written codec, anything else through the generated code. */
function encodeAnswer(reply: AgentReply, processingTimeMs: number): Encoded {
  return encodeAllowReply(reply, processingTimeMs) ?? toBinary(AgentToProxySchema, responseEnvelope(replyToProto(reply, processingTimeMs)));
}

/** True when this request is a plain (uncompressed) gRPC ProcessStream call this module serves. */
export function isDirectProcessStream(req: http2.Http2ServerRequest): boolean {
  if (req.method !== "POST" || req.url !== PROCESS_STREAM_PATH) return false;
  const ct = req.headers["content-type"];
  if (ct !== "application/grpc" && ct !== "application/grpc+proto") return false;
  const enc = req.headers["grpc-encoding"];
  return enc === undefined || enc === "identity";
}

/** One gRPC message: the 5-byte prefix and the message, in one buffer (one write). */
function frame(msg: AgentToProxy | Encoded): Uint8Array {
  const body = msg instanceof Uint8Array ? msg : toBinary(AgentToProxySchema, msg);
  const out = new Uint8Array(5 + body.length);
  out.set(messagePrefix(body.length));
  out.set(body, 5);
  return out;
}

/** Connect's wording for framing it refuses, with the status it answers. */
function framingFailure(bad: FramingProblem): [number, string] {
  switch (bad.kind) {
    case "compressed":
      return [GRPC_INTERNAL, "compressed message on a stream without grpc-encoding"];
    case "flag":
      return [GRPC_INTERNAL, `invalid message flag ${bad.flag}`];
    case "size":
      return [GRPC_RESOURCE_EXHAUSTED, `message size ${bad.length} is larger than configured readMaxBytes ${MAX_MESSAGE_BYTES}`];
  }
}

/** Serve one ProcessStream call on `req`/`res` with `logic` (sdk/grpc-server.ts processStream). */
export function serveDirectProcessStream(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse, logic: StreamLogic): void {
  const abort = new AbortController();
  const input = new PushQueue<ProxyToAgent | AgentEvent>();
  const reader = new MessageDeframer(MAX_MESSAGE_BYTES);
  let finished = false;
  const isFinished = () => finished;

  res.writeHead(200, { "content-type": "application/grpc" });

  const finish = (code: number, message?: string) => {
    if (finished) return;
    finished = true;
    input.clear();
    if (res.writableEnded || res.destroyed) return;
    const trailers: Record<string, string> = { "grpc-status": String(code) };
    if (message !== undefined) trailers["grpc-message"] = encodeURIComponent(message);
    res.addTrailers(trailers);
    res.end();
  };
  const fail = (code: number, message: string) => {
    finish(code, message);
    abort.abort(new Error(message));
    req.destroy();
  };

  req.on("data", (chunk: Buffer) => {
    if (finished) return;
    const bad = reader.push(chunk, (bytes) => {
      let msg: ProxyToAgent | AgentEvent | undefined;
      try {
        msg = decodeSimpleEvent(bytes) ?? fromBinary(ProxyToAgentSchema, bytes);
      } catch (e) {
        fail(GRPC_INTERNAL, `parse binary: ${e instanceof Error ? e.message : String(e)}`);
        return;
      }
      input.push(msg);
    }, isFinished);
    if (bad !== null) fail(...framingFailure(bad));
  });
  req.on("end", () => {
    if (reader.midMessage) fail(GRPC_INTERNAL, "request stream ended inside a message");
    else input.end();
  });
  const gone = () => {
    if (finished) return;
    finished = true;
    input.clear();
    abort.abort(new Error("stream closed by the peer"));
  };
  req.on("aborted", gone);
  req.on("error", gone);
  res.on("close", gone);
  res.on("error", gone);

  const answers = logic(input, { signal: abort.signal } as HandlerContext, encodeAnswer)[Symbol.asyncIterator]();
  const pump = async () => {
    for (;;) {
      const r = await answers.next();
      if (r.done || finished) break;
      if (!res.write(frame(r.value))) await new Promise<void>((resolve) => {
        const done = () => {
          res.off("drain", done);
          res.off("close", done);
          resolve();
        };
        res.on("drain", done);
        res.on("close", done);
      });
    }
    finish(GRPC_OK);
  };
  pump().catch((e) => fail(GRPC_INTERNAL, e instanceof Error ? e.message : String(e)));
}
