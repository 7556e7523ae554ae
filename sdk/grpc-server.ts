// Agent SDK: serve an AgentHandler over gRPC (zentinel.agent.v2.AgentServiceV2, spec §6).
//
// Runs on node:http2 (Bun.serve cannot send HTTP/2 trailers, which gRPC needs). ProcessStream
// calls in plain gRPC are served directly (sdk/grpc-direct.ts); everything else goes through
// connect-node's adapter. Works under Bun and Node.
//
//   ProcessStream  handshake -> onConfigure(config_json) when it is a non-empty object; answers
//                  success:false + error if that throws (and then ends the stream). Messages
//                  behind the handshake wait until it is answered. Events are dispatched to the
//                  handler concurrently; every answer carries the event's correlation id;
//                  ping -> pong. Events that arrive without a handshake are processed anyway
//                  (lenient). configure -> onConfigure, no answer (as Rust agents; the gRPC
//                  ConfigureEvent has no correlation id); cancel -> ignored;
//                  websocket_frame / guardrail -> Allow (not in the model).
//   ProcessEvent   unary: the same dispatch for one message.
//   ControlStream  accepted and left idle until the proxy ends it.
//
// Failure policy, the same as sdk/uds-server.ts: a handler that throws gets NO answer (logged),
// so the proxy's timeout and its configured failure mode decide, rather than a silent Allow (what
// the TS SDK does) or a Block that would override a fail-open policy. request_complete is
// answered Allow even if its hook throws. On ProcessEvent (unary) a throwing handler gets an
// INTERNAL error status.
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  AgentServiceV2,
  type AgentControl,
  type AgentToProxy,
  type ProxyControl,
  type ProxyToAgent,
} from "../src/gen/zentinel/agent/v2/agent_v2_pb.ts";
import {
  correlationIdOf,
  eventFromProto,
  handshakeResponseToProto,
  replyToProto,
  responseEnvelope,
} from "../src/agents/grpc/map.ts";
import { PushQueue } from "../src/agents/grpc/queue.ts";
import { isDirectProcessStream, serveDirectProcessStream } from "./grpc-direct.ts";
import { log as defaultLog } from "../src/observability/log.ts";
import { allowReply, type AgentEvent, type AgentReply } from "../src/agents/types.ts";
import { completeReply } from "./reply.ts";
import { runDecisionHook, supportedEvents } from "./dispatch.ts";
import type { AgentHandler, ReplyInit, RunningServer } from "./types.ts";

type Log = (level: "debug" | "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

export interface ServeGrpcOptions {
  log?: Log;
  /**
   * Serve TLS (PEM text). With `ca`, clients must present a certificate signed by it (mTLS).
   * Without this option the server speaks h2c (plaintext HTTP/2), like the SDK agents.
   */
  tls?: { cert: string; key: string; ca?: string };
}

async function runHandler(handler: AgentHandler, event: AgentEvent): Promise<ReplyInit | void> {
  switch (event.type) {
    case "request_complete":
      await handler.onRequestComplete?.(event);
      return;
    case "configure":
      await handler.onConfigure?.(event.config);
      return;
    default:
      return runDecisionHook(handler, event);
  }
}

/** How an answer leaves: a message for Connect, or bytes already encoded (sdk/grpc-direct.ts). */
export type AnswerEncoder<T> = (reply: AgentReply, processingTimeMs: number) => T;

const toEnvelope: AnswerEncoder<AgentToProxy> = (reply, ms) => responseEnvelope(replyToProto(reply, ms));

/** Handle one event; resolves to the encoded answer, or null when there must be no answer. */
async function dispatchEvent<T>(handler: AgentHandler, event: AgentEvent, log: Log, encode: AnswerEncoder<T>): Promise<T | null> {
  const started = performance.now();
  let init: ReplyInit | void = undefined;
  try {
    init = await runHandler(handler, event);
  } catch (err) {
    if (event.type === "request_complete") {
      log("error", "agent onRequestComplete threw", { correlation_id: event.correlationId, error: String(err) });
    } else if (event.type === "configure") {
      log("warn", "agent rejected a configure event", { error: String(err) });
      return null;
    } else {
      log("error", "agent handler threw; event left unanswered", { event: event.type, correlation_id: event.correlationId, error: String(err) });
      return null;
    }
  }
  if (event.type === "configure") return null;
  return encode(completeReply(event.correlationId, init), performance.now() - started);
}

function pong(msg: Extract<ProxyToAgent["message"], { case: "ping" }>["value"]): AgentToProxy {
  return {
    $typeName: "zentinel.agent.v2.AgentToProxy",
    message: {
      case: "pong",
      value: {
        $typeName: "zentinel.agent.v2.Pong",
        sequence: msg.sequence,
        pingTimestampMs: msg.timestampMs,
        timestampMs: BigInt(Date.now()),
      },
    },
  };
}

function isNonEmptyObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && Object.keys(v).length > 0;
}

async function handshake(handler: AgentHandler, configJson: string, log: Log): Promise<AgentToProxy> {
  const events = supportedEvents(handler);
  try {
    let config: unknown = undefined;
    if (configJson.trim() !== "") {
      try {
        config = JSON.parse(configJson);
      } catch (err) {
        throw new Error(`config_json is not valid JSON: ${(err as Error).message}`);
      }
    }
    if (isNonEmptyObject(config) && handler.onConfigure) await handler.onConfigure(config);
    return handshakeResponseToProto(handler.info, events, true);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    log("warn", "agent rejected the proxy's configuration", { error: message });
    return handshakeResponseToProto(handler.info, events, false, `Configuration rejected: ${message}`);
  }
}

function allowFor(msg: ProxyToAgent): AgentToProxy {
  return responseEnvelope(replyToProto(allowReply(correlationIdOf(msg))));
}

/**
 * One ProcessStream: read messages, answer concurrently, end after the reader ends and answers
 * drain. Requests are protobuf messages, or events already decoded (sdk/grpc-direct.ts); answers
 * to events are made by `encode` (protobuf messages for Connect by default).
 */
export function processStream<T = AgentToProxy>(
  handler: AgentHandler,
  requests: AsyncIterable<ProxyToAgent | AgentEvent>,
  ctx: HandlerContext,
  log: Log,
  encode: AnswerEncoder<T> = toEnvelope as AnswerEncoder<T>,
): AsyncIterable<AgentToProxy | T> {
  const out = new PushQueue<AgentToProxy | T>();
  let inFlight = 0;
  let inputDone = false;
  const settle = (answer: AgentToProxy | T | null) => {
    if (answer !== null) out.push(answer);
    if (--inFlight === 0 && inputDone) out.end();
  };
  const track = (p: Promise<AgentToProxy | T | null>) => {
    inFlight++;
    p.then(settle, () => settle(null));
  };
  ctx.signal.addEventListener("abort", () => out.clear(), { once: true });

  (async () => {
    try {
      for await (const msg of requests) {
        if (out.isEnded) break;
        if (!("$typeName" in msg)) {
          track(dispatchEvent(handler, msg, log, encode));
          continue;
        }
        const m = msg.message;
        switch (m.case) {
          case "handshake": {
            const answer = await handshake(handler, m.value.configJson, log);
            out.push(answer);
            if (answer.message.case === "handshake" && !answer.message.value.success) {
              inputDone = true;
              if (inFlight === 0) out.end();
              return;
            }
            break;
          }
          case "ping":
            out.push(pong(m.value));
            break;
          case "cancel":
            break;
          case undefined:
            break;
          default: {
            const ev = eventFromProto(msg);
            track(ev ? dispatchEvent(handler, ev, log, encode) : Promise.resolve(allowFor(msg)));
          }
        }
      }
    } catch {
      // stream reset by the proxy: nothing to answer any more
    } finally {
      inputDone = true;
      if (inFlight === 0) out.end();
    }
  })();
  return out;
}

async function processEvent(handler: AgentHandler, msg: ProxyToAgent, log: Log): Promise<AgentToProxy> {
  const m = msg.message;
  switch (m.case) {
    case "handshake":
      return handshake(handler, m.value.configJson, log);
    case "ping":
      return pong(m.value);
    default: {
      const ev = eventFromProto(msg);
      if (!ev) return allowFor(msg);
      const answer = await dispatchEvent(handler, ev, log, toEnvelope);
      if (answer === null) {
        if (ev.type === "configure") return allowFor(msg);
        throw new ConnectError("agent handler failed", Code.Internal);
      }
      return answer;
    }
  }
}

async function* controlStream(requests: AsyncIterable<AgentControl>, ctx: HandlerContext): AsyncIterable<ProxyControl> {
  // Accept and stay idle: drain whatever the peer sends until it ends or cancels.
  try {
    for await (const _ of requests) {
      if (ctx.signal.aborted) break;
    }
  } catch {
    // peer went away
  }
}

function parseAddress(address: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(address) ?? /^([^:]*):(\d+)$/.exec(address);
  if (!m) throw new Error(`serveGrpc: address must be HOST:PORT, got ${JSON.stringify(address)}`);
  return { host: m[1] || "127.0.0.1", port: Number(m[2]) };
}

/**
 * Serve `handler` on `address` ("127.0.0.1:0" picks a free port; the bound port is returned).
 * close() stops listening and tears down every open connection.
 */
export async function serveGrpc(address: string, handler: AgentHandler, options: ServeGrpcOptions = {}): Promise<RunningServer> {
  const log = options.log ?? defaultLog;
  const { host, port } = parseAddress(address);
  const adapter = connectNodeAdapter({
    readMaxBytes: 16 * 1024 * 1024,
    routes: (router) =>
      router.service(AgentServiceV2, {
        processStream: (requests, ctx) => processStream(handler, requests, ctx, log),
        processEvent: (req) => processEvent(handler, req, log),
        controlStream: (requests, ctx) => controlStream(requests, ctx),
      }),
  });
  // ProcessStream (every per-request event) skips Connect's pipeline: sdk/grpc-direct.ts
  const onRequest = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
    if (isDirectProcessStream(req)) serveDirectProcessStream(req, res, (requests, ctx, encode) => processStream(handler, requests, ctx, log, encode));
    else adapter(req, res);
  };
  const server: http2.Http2Server | http2.Http2SecureServer = options.tls
    ? http2.createSecureServer(
        {
          cert: options.tls.cert,
          key: options.tls.key,
          ca: options.tls.ca,
          requestCert: options.tls.ca !== undefined,
          rejectUnauthorized: options.tls.ca !== undefined,
          allowHTTP1: false,
        },
        onRequest,
      )
    : http2.createServer({}, onRequest);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s: http2.ServerHttp2Session) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
    s.on("error", () => {});
  });
  server.on("error", () => {});

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  const shownHost = host.includes(":") ? `[${host}]` : host;
  let closing: Promise<void> | null = null;
  return {
    port: bound,
    address: `${shownHost}:${bound}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sessions) s.destroy();
        sessions.clear();
      });
      return closing;
    },
  };
}
