// WebSocket proxying on routes with `websocket #true`: the upstream is connected first (so its
// chosen subprotocol is relayed and a dead upstream is a clean 502), then the client is upgraded
// and messages are relayed both ways with close codes preserved.
//
// Bounds: a message over MAX_MESSAGE either way closes both sides with 1009. Neither Bun
// WebSocket can pause its reads, so a reader slower than its writer cannot be slowed down: the
// bytes waiting for a side are bounded by MAX_BUFFERED, past which both sides are closed with
// 1008, never a message silently dropped (Bun drops them past its backpressure limit).
import type { ServerWebSocket, WebSocketHandler } from "bun";
import type { RequestContext } from "./context.ts";
import { errorResponse } from "./errors.ts";
import { eachHeader } from "../http/header-list.ts";
import { chooseTarget, noteSlotRefused, tlsOptions } from "../upstreams/forward.ts";
import { takeSlot } from "../upstreams/slots.ts";

const HANDSHAKE_HEADERS = ["sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol", "content-length"];
const MAX_PENDING = 1024; // messages from upstream waiting for the client socket to open
/** Largest message relayed, either way (SECURITY.md, "WebSocket message"). */
const MAX_MESSAGE = 16 * 1024 * 1024;
/** Bytes queued for one side before the relay gives up (it cannot slow the other side down). */
const MAX_BUFFERED = 32 * 1024 * 1024;

export interface WsData {
  upstream: WebSocket;
  pending: Array<string | ArrayBuffer | Uint8Array>;
  client?: ServerWebSocket<WsData>;
  done: () => void;
}

/** Every open relayed client socket, so that shutdown can close them cleanly. */
export const openSockets = new Set<ServerWebSocket<WsData>>();

export function isWebSocketUpgrade(req: Request): boolean {
  const up = req.headers.get("upgrade");
  return up !== null && up.toLowerCase() === "websocket";
}

/**
 * Relay the end of one side to the other. 1005 (a close frame without a code) is relayed as such;
 * an abnormal end (1006, 1015: the connection was lost) ends the other side abnormally too where
 * it can (a server socket is terminated, so its peer sees 1006), else with 1001 (going away):
 * never as 1000, which tells an application that all went as planned.
 */
function safeClose(ws: { close(code?: number, reason?: string): void; terminate?: () => void }, code: number, reason: string): void {
  try {
    if (code === 1005) ws.close();
    else if (code === 1006 || code === 1015) {
      if (typeof ws.terminate === "function") ws.terminate();
      else ws.close(1001, "peer connection lost");
    } else ws.close(code < 1000 || code > 4999 ? 1011 : code, reason.slice(0, 120));
  } catch {
    /* already closed */
  }
}

/** Size of a relayed message. */
function messageBytes(m: string | ArrayBuffer | Uint8Array): number {
  return typeof m === "string" ? Buffer.byteLength(m) : m.byteLength;
}

/** Close both sides of a relay with `code` (1008 over MAX_BUFFERED, 1009 over MAX_MESSAGE). */
function closeBoth(data: WsData, code: number, reason: string): void {
  if (data.client) safeClose(data.client, code, reason);
  safeClose(data.upstream, code, reason);
}

/** Upstream → client, bounded (see the top of this file). */
function toClient(data: WsData, msg: string | ArrayBuffer): void {
  if (messageBytes(msg) > MAX_MESSAGE) return closeBoth(data, 1009, "message too big");
  const client = data.client;
  if (!client) {
    if (data.pending.length < MAX_PENDING) data.pending.push(msg);
    else closeBoth(data, 1008, "backpressure limit");
    return;
  }
  // 0: Bun dropped it (past its backpressure limit); never lose a message silently.
  if (client.send(msg) === 0 || client.getBufferedAmount() > MAX_BUFFERED) closeBoth(data, 1008, "backpressure limit");
}

export async function proxyWebSocket(ctx: RequestContext, done: () => void): Promise<Response | undefined> {
  const pool = ctx.plan!.pool;
  const target = pool ? chooseTarget(pool, ctx.clientIp, ctx.path, []) : undefined;
  if (!pool || !target) {
    done();
    return errorResponse(503, ctx.traceId);
  }
  // connection-pool max-connections counts WebSocket connections too (src/upstreams/slots.ts);
  // the wait is bounded like a connect, as for HTTP (forward.ts).
  const waitStart = performance.now();
  const slot = takeSlot(target, ctx.plan!.connectTimeoutMs, ctx.signal);
  const got = slot === "ok" ? slot : await slot;
  if (got !== "ok") {
    if (got !== "aborted") noteSlotRefused(pool, target);
    ctx.targetAddress = target.address;
    ctx.status = got === "aborted" ? 499 : 503;
    const waited = Math.round(performance.now() - waitStart);
    ctx.error =
      got === "aborted"
        ? "client went away"
        : `upstream ${target.address}: max-connections (${target.maxConnections}) in use${got === "full" ? " and the wait queue is full" : `; none free within ${waited} ms`}`;
    done();
    return errorResponse(503, ctx.traceId);
  }
  ctx.target = target; // holds the slot; released when the request finishes
  ctx.attempts = 1;
  const headers: Record<string, string> = {};
  eachHeader(ctx.upstreamHeaders!.list, (v, k) => {
    if (!HANDSHAKE_HEADERS.includes(k)) headers[k] = v;
  });
  const protocols = (ctx.req.headers.get("sec-websocket-protocol") ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  const url = target.baseUrl.replace(/^http/, "ws") + ctx.path + ctx.query;
  // The pool's TLS settings (CA, SNI, client certificate, verification) apply to wss:// too.
  const tls = tlsOptions(pool);
  const upstream = new WebSocket(url, { headers, protocols, ...(tls ? { tls } : {}) } as unknown as string[]);
  upstream.binaryType = "arraybuffer";
  const opened = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), ctx.plan!.upstreamTimeoutMs);
    upstream.onopen = () => {
      clearTimeout(timer);
      resolve(true);
    };
    upstream.onerror = () => {
      clearTimeout(timer);
      resolve(false);
    };
    upstream.onclose = () => {
      clearTimeout(timer);
      resolve(false);
    };
  });
  if (!opened || ctx.signal.aborted) {
    try {
      upstream.close();
    } catch {
      /* ignore */
    }
    ctx.error = "websocket upstream unavailable";
    ctx.status = 502;
    done();
    return errorResponse(502, ctx.traceId);
  }
  const data: WsData = { upstream, pending: [], done };
  upstream.onmessage = (ev) => toClient(data, ev.data as string | ArrayBuffer);
  upstream.onclose = (ev) => {
    if (data.client) safeClose(data.client, ev.code, ev.reason);
  };
  upstream.onerror = () => {
    if (data.client) safeClose(data.client, 1011, "upstream error");
  };
  const responseHeaders: Record<string, string> = { "x-correlation-id": ctx.traceId };
  if (upstream.protocol) responseHeaders["sec-websocket-protocol"] = upstream.protocol;
  ctx.status = 101;
  if (!ctx.server.upgrade(ctx.req, { data, headers: responseHeaders })) {
    upstream.close();
    ctx.status = 400;
    done();
    return errorResponse(400, ctx.traceId);
  }
  return undefined;
}

export const websocketHandler: WebSocketHandler<WsData> = {
  open(ws) {
    const data = ws.data;
    data.client = ws;
    openSockets.add(ws);
    for (const m of data.pending) ws.send(m);
    data.pending.length = 0;
    if (data.upstream.readyState !== WebSocket.OPEN) safeClose(ws, 1011, "upstream closed");
  },
  message(ws, message) {
    const up = ws.data.upstream;
    if (up.readyState !== WebSocket.OPEN) return;
    up.send(message);
    if (up.bufferedAmount > MAX_BUFFERED) closeBoth(ws.data, 1008, "backpressure limit");
  },
  close(ws, code, reason) {
    openSockets.delete(ws);
    safeClose(ws.data.upstream, code, reason);
    ws.data.done();
  },
  maxPayloadLength: MAX_MESSAGE,
  // Past this, close rather than drop (toClient closes first, with 1008, at MAX_BUFFERED).
  backpressureLimit: MAX_BUFFERED + MAX_MESSAGE,
  closeOnBackpressureLimit: true,
  idleTimeout: 120,
};
