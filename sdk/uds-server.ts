// Agent side of the UDS transport: serve an AgentHandler on a Unix socket, speaking the v2
// framing of spec §2 (handshake 0x01/0x02, events 0x10–0x17, answers 0x20, ping/pong).
//
// Events are dispatched concurrently; answers go out as soon as each handler finishes, so they
// may be out of order. Every answer carries `audit.custom.correlation_id` (the proxy routes by it).
//
// Failure policy (security-first; the proxy's failure mode decides, not the agent):
// - A handler that THROWS (or rejects) gets NO answer. The error is logged and the connection
//   stays open, so the proxy's own timeout fires and its configured failure mode applies
//   (fail-closed → 504, fail-open → skip). We deliberately do not answer Allow (the TS/Python
//   SDKs do, which silently fails open) nor Block (that would override a fail-open policy).
//   request_complete is informational: it is answered Allow even if its hook throws.
// - onConfigure throwing during the handshake answers success:false with the error, then closes.
//   A configure event (0x17) whose hook throws is answered Block 500 "Configuration rejected",
//   as the Rust agent server does.
// - An event that does not decode (bad JSON, missing required fields) closes the connection:
//   the proxy fails every call on it at once instead of trusting a guessed Allow.
// - guardrail_inspect (0x16) is not supported and gets no answer, like the Rust agent server.
import { chmodSync, linkSync, lstatSync, renameSync, unlinkSync } from "node:fs";
import { log as defaultLog } from "../src/observability/log.ts";
import { encodeFrame, encodeFrameString, FrameDecoder, FrameType } from "../src/agents/uds/frame.ts";
import {
  eventTypeName,
  handshakeResponseToWire,
  parseHandshakeRequest,
  parsePayload,
  replyToWire,
  wireToEvent,
  type WireEvent,
} from "../src/agents/uds/json.ts";
import { WriteQueue } from "../src/agents/uds/writer.ts";
import { block, completeReply } from "./reply.ts";
import { runDecisionHook, supportedEvents } from "./dispatch.ts";
import type { AgentHandler, ReplyInit, RunningServer } from "./types.ts";

type Log = (level: "debug" | "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

export interface ServeUdsOptions {
  log?: Log;
  /** File mode of the socket (default 0o660, as the SDKs do). */
  mode?: number;
}

interface ServerConn {
  decoder: FrameDecoder;
  writer: WriteQueue | null;
  /** "new": waiting for 0x01; "configuring": onConfigure running; "ready"; "closed". */
  state: "new" | "configuring" | "ready" | "closed";
  /** Frames that arrived while onConfigure was running. */
  held: Array<[number, Uint8Array]>;
}

type Sock = import("bun").Socket<ServerConn>;

/** EventType numbers (proto numbering, configure = 8) derived from the hooks a handler defines. */
function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // does not exist
  }
  if (!st.isSocket()) throw new Error(`refusing to replace ${path}: it exists and is not a socket`);
  unlinkSync(path);
}

/** Listen on `path` and serve `handler` until close(). Removes a stale socket file first. */
export async function serveUds(path: string, handler: AgentHandler, options: ServeUdsOptions = {}): Promise<RunningServer> {
  const log: Log = options.log ?? defaultLog;
  removeStaleSocket(path);

  const send = (c: ServerConn, frame: Uint8Array): void => {
    if (c.state !== "closed") c.writer?.write(frame);
  };

  const answer = (c: ServerConn, correlationId: string, init: ReplyInit | void | null | undefined): void => {
    if (c.state === "closed") return;
    const reply = completeReply(correlationId, init);
    send(c, encodeFrameString(FrameType.AgentResponse, JSON.stringify(replyToWire(reply))));
  };

  const handshakeReply = (success: boolean, error: string | null): Uint8Array => {
    const h = handler;
    return encodeFrameString(
      FrameType.HandshakeResponse,
      JSON.stringify(
        handshakeResponseToWire({
          success,
          error,
          agentId: h.info.agentId,
          name: h.info.name,
          version: h.info.version,
          supportedEvents: supportedEvents(h),
          features: {
            streaming_body: Boolean(h.onRequestBodyChunk || h.onResponseBodyChunk),
            config_push: Boolean(h.onConfigure),
            concurrent_requests: 100,
          },
        }),
      ),
    );
  };

  async function runHook(c: ServerConn, ev: WireEvent): Promise<void> {
    let init: ReplyInit | void | undefined;
    try {
      switch (ev.type) {
        case "request_headers":
        case "request_body_chunk":
        case "response_headers":
        case "response_body_chunk":
          init = await runDecisionHook(handler, ev);
          break;
        case "request_complete":
          try {
            await handler.onRequestComplete?.(ev);
          } catch (e) {
            log("error", "agent onRequestComplete threw", { correlation_id: ev.correlationId, error: String(e) });
          }
          break;
        case "configure":
          try {
            await handler.onConfigure?.(ev.config);
          } catch (e) {
            log("warn", "agent rejected a configure event", { error: String(e) });
            init = block(500, "Configuration rejected");
          }
          break;
        case "websocket_frame":
          break; // no hook in this SDK: allow
        case "guardrail_inspect":
          log("warn", "guardrail_inspect is not supported by this agent; not answered", { correlation_id: ev.correlationId });
          return;
      }
    } catch (e) {
      // See the failure policy at the top: no answer, the proxy's timeout and failure mode apply.
      log("error", "agent handler threw; event left unanswered", { event: ev.type, correlation_id: ev.correlationId, error: String(e) });
      return;
    }
    answer(c, ev.correlationId, init);
  }

  const close = (s: Sock, level: "debug" | "warn", why: string): void => {
    const c = s.data;
    if (c.state === "closed") return;
    c.state = "closed";
    c.writer?.kill();
    c.writer = null;
    c.held.length = 0;
    if (level === "warn") log("warn", `closing proxy connection: ${why}`);
    s.terminate();
  };

  function onFrame(s: Sock, type: number, payload: Uint8Array): void {
    const c = s.data;
    if (c.state === "closed") return;
    if (c.state === "configuring") {
      // The proxy should wait for the handshake answer; hold a few early frames, refuse a flood.
      if (c.held.length >= 1024) return close(s, "warn", "too many frames before the handshake answer");
      c.held.push([type, payload]);
      return;
    }
    if (c.state === "new") {
      if (type !== FrameType.HandshakeRequest) return close(s, "warn", `first frame is type 0x${type.toString(16)}, not a handshake`);
      let config: unknown;
      try {
        config = parseHandshakeRequest(parsePayload(payload)).config;
      } catch (e) {
        c.writer?.writeNow(handshakeReply(false, `invalid handshake: ${(e as Error).message}`));
        return close(s, "warn", "invalid handshake");
      }
      if (config === null || config === undefined || !handler.onConfigure) {
        c.state = "ready";
        send(c, handshakeReply(true, null));
        return;
      }
      c.state = "configuring";
      Promise.resolve()
        .then(() => handler.onConfigure!(config))
        .then(
          () => {
            if (c.state !== "configuring") return;
            c.state = "ready";
            send(c, handshakeReply(true, null));
            const held = c.held.splice(0);
            for (const [t, p] of held) onFrame(s, t, p);
          },
          (e) => {
            if (c.state !== "configuring") return;
            log("warn", "agent rejected the proxy's configuration", { error: String(e) });
            c.writer?.writeNow(handshakeReply(false, `Configuration rejected: ${e instanceof Error ? e.message : String(e)}`));
            c.state = "ready"; // let close() run
            s.end();
            close(s, "debug", "configuration rejected");
          },
        );
      return;
    }

    // ready
    const kind = eventTypeName(type);
    if (kind !== undefined) {
      let ev: WireEvent;
      try {
        ev = wireToEvent(kind, parsePayload(payload));
      } catch (e) {
        return close(s, "warn", `undecodable ${kind} event: ${(e as Error).message}`);
      }
      void runHook(c, ev);
      return;
    }
    switch (type) {
      case FrameType.Ping:
        send(c, encodeFrame(FrameType.Pong, payload));
        return;
      case FrameType.Cancel:
        log("debug", "cancel received (ignored; the handler keeps running)");
        return;
      default:
        log("debug", "frame type not handled by an agent; ignored", { type });
    }
  }

  const listener = Bun.listen<ServerConn>({
    unix: path,
    socket: {
      open(s) {
        s.data = { decoder: new FrameDecoder(), writer: null, state: "new", held: [] };
        s.data.writer = new WriteQueue(s, () => close(s, "debug", "write failed"));
      },
      data(s, chunk) {
        const c = s.data;
        if (c.state === "closed") return;
        try {
          c.decoder.push(chunk, (t, p) => onFrame(s, t, p));
        } catch (e) {
          close(s, "warn", (e as Error).message);
        }
      },
      drain(s) {
        s.data.writer?.flush();
      },
      close(s) {
        const c = s.data;
        if (c && c.state !== "closed") {
          c.state = "closed";
          c.writer?.kill();
        }
      },
      end(s) {
        close(s, "debug", "proxy closed the connection");
      },
      error(s, err) {
        log("error", "agent socket error", { error: err.message });
        close(s, "debug", "socket error");
      },
    },
  });
  try {
    chmodSync(path, options.mode ?? 0o660);
  } catch {
    /* best effort */
  }
  // Remember which file is ours, so close() never deletes a socket a newer server bound since.
  let ino: number | bigint | null = null;
  try {
    ino = lstatSync(path).ino;
  } catch {
    /* ignore */
  }

  let closed = false;
  return {
    port: 0,
    address: path,
    async close() {
      if (closed) return;
      closed = true;
      // Bun's stop() unlinks `path` whatever file is there now. If a newer server replaced our
      // socket (rolling restart), keep its file alive through a temporary hard link.
      let foreign: string | null = null;
      try {
        const st = lstatSync(path);
        if (st.ino !== ino) {
          foreign = `${path}.${process.pid}.keep`;
          linkSync(path, foreign);
        }
      } catch {
        foreign = null;
      }
      listener.stop(true);
      try {
        if (foreign) renameSync(foreign, path);
        else {
          const st = lstatSync(path);
          if (st.isSocket() && st.ino === ino) unlinkSync(path);
        }
      } catch {
        /* already gone */
      }
    },
  };
}
