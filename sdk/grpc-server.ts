// Agent SDK: serve an AgentHandler over gRPC (zentinel.agent.v2.AgentServiceV2, spec §6).
//
// Runs on node:http2 with connect-node's adapter (Bun.serve cannot send HTTP/2 trailers, which
// gRPC needs). Works under Bun and Node.
//
//   ProcessStream  handshake -> onConfigure(config_json) when it is a non-empty object; answers
//                  success:false + error if that throws (and then ends the stream). Events are
//                  dispatched to the handler concurrently; every answer carries the event's
//                  correlation id; ping -> pong. Events that arrive before the handshake are
//                  processed anyway (lenient). configure -> onConfigure, no answer (as Rust agents);
//                  cancel -> ignored; websocket_frame / guardrail -> Allow (not in the model).
//   ProcessEvent   unary: the same dispatch for one message.
//   ControlStream  accepted and left idle until the proxy ends it.
//
// A handler that throws gets a Block 500 answer (fail closed, with reason code AGENT_ERROR) rather
// than the SDKs' silent Allow (spec §5 "Agent errors").
//
// Reply helpers: written locally here (sdk/reply.ts did not exist when this was written).
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import type { HandlerContext } from "@connectrpc/connect";
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
import { allowReply, type AgentEvent, type AgentReply } from "../src/agents/types.ts";
import type { AgentHandler, ReplyInit, RunningServer } from "./types.ts";

const DEFAULT_EVENTS = [1, 2, 3, 4, 5];

/** Fill a handler's partial reply with allow / empty defaults. */
function completeReply(correlationId: string, init: ReplyInit | void | undefined): AgentReply {
  const base = allowReply(correlationId);
  if (!init) return base;
  return {
    correlationId,
    decision: init.decision ?? base.decision,
    requestHeaders: init.requestHeaders ?? base.requestHeaders,
    responseHeaders: init.responseHeaders ?? base.responseHeaders,
    routingMetadata: init.routingMetadata ?? base.routingMetadata,
    audit: init.audit ? { ...base.audit, ...init.audit } : base.audit,
    needsMore: init.needsMore ?? false,
    requestBodyMutation: init.requestBodyMutation ?? null,
    responseBodyMutation: init.responseBodyMutation ?? null,
  };
}

function errorReply(correlationId: string, err: unknown): AgentReply {
  const r = allowReply(correlationId);
  r.decision = { kind: "block", status: 500, body: "Agent error", headers: null };
  r.audit.reasonCodes = ["AGENT_ERROR"];
  r.audit.custom = { error: err instanceof Error ? err.message : String(err) };
  return r;
}

async function runHandler(handler: AgentHandler, event: AgentEvent): Promise<ReplyInit | void> {
  switch (event.type) {
    case "request_headers":
      return handler.onRequestHeaders?.(event);
    // sdk/types.ts EventOf<"request_body_chunk"> resolves to never (the body-chunk member of
    // AgentEvent has a union `type`), hence the casts.
    case "request_body_chunk":
      return handler.onRequestBodyChunk?.(event as never);
    case "response_headers":
      return handler.onResponseHeaders?.(event);
    case "response_body_chunk":
      return handler.onResponseBodyChunk?.(event as never);
    case "request_complete":
      await handler.onRequestComplete?.(event);
      return;
    case "configure":
      await handler.onConfigure?.(event.config);
      return;
  }
}

/** Handle one event; resolves to the answer envelope. */
async function dispatchEvent(handler: AgentHandler, event: AgentEvent): Promise<AgentToProxy> {
  const started = performance.now();
  let reply: AgentReply;
  try {
    reply = completeReply(event.correlationId, await runHandler(handler, event));
  } catch (err) {
    reply = errorReply(event.correlationId, err);
  }
  return responseEnvelope(replyToProto(reply, performance.now() - started));
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

async function handshake(handler: AgentHandler, configJson: string): Promise<AgentToProxy> {
  const events = handler.supportedEvents ?? DEFAULT_EVENTS;
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
    return handshakeResponseToProto(handler.info, events, false, `Configuration rejected: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function allowFor(msg: ProxyToAgent): AgentToProxy {
  return responseEnvelope(replyToProto(allowReply(correlationIdOf(msg))));
}

/** One ProcessStream: read messages, answer concurrently, end after the reader ends and answers drain. */
function processStream(handler: AgentHandler, requests: AsyncIterable<ProxyToAgent>, ctx: HandlerContext): AsyncIterable<AgentToProxy> {
  const out = new PushQueue<AgentToProxy>();
  let inFlight = 0;
  let inputDone = false;
  const settle = (answer: AgentToProxy | null) => {
    if (answer !== null) out.push(answer);
    if (--inFlight === 0 && inputDone) out.end();
  };
  const track = (p: Promise<AgentToProxy | null>) => {
    inFlight++;
    p.then(settle, () => settle(null));
  };
  ctx.signal.addEventListener("abort", () => out.clear(), { once: true });

  (async () => {
    try {
      for await (const msg of requests) {
        if (out.isEnded) break;
        const m = msg.message;
        switch (m.case) {
          case "handshake": {
            const answer = await handshake(handler, m.value.configJson);
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
          case "configure": {
            const ev = eventFromProto(msg);
            if (ev) track(dispatchEvent(handler, ev).then(() => null));
            break;
          }
          case undefined:
            break;
          default: {
            const ev = eventFromProto(msg);
            track(ev ? dispatchEvent(handler, ev) : Promise.resolve(allowFor(msg)));
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

async function processEvent(handler: AgentHandler, msg: ProxyToAgent): Promise<AgentToProxy> {
  const m = msg.message;
  switch (m.case) {
    case "handshake":
      return handshake(handler, m.value.configJson);
    case "ping":
      return pong(m.value);
    default: {
      const ev = eventFromProto(msg);
      return ev ? dispatchEvent(handler, ev) : allowFor(msg);
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
export async function serveGrpc(address: string, handler: AgentHandler): Promise<RunningServer> {
  const { host, port } = parseAddress(address);
  const adapter = connectNodeAdapter({
    readMaxBytes: 16 * 1024 * 1024,
    routes: (router) =>
      router.service(AgentServiceV2, {
        processStream: (requests, ctx) => processStream(handler, requests, ctx),
        processEvent: (req) => processEvent(handler, req),
        controlStream: (requests, ctx) => controlStream(requests, ctx),
      }),
  });
  const server = http2.createServer({}, adapter);
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
