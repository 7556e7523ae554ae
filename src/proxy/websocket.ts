// WebSocket proxying on routes with `websocket #true`: the upstream is connected first (so its
// chosen subprotocol is relayed and a dead upstream is a clean 502), then the client is upgraded
// and messages are relayed both ways with close codes preserved.
import type { ServerWebSocket, WebSocketHandler } from "bun";
import type { RequestContext } from "./context.ts";
import { errorResponse } from "./errors.ts";
import { eachHeader } from "../http/header-list.ts";

const HANDSHAKE_HEADERS = ["sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol", "content-length"];
const MAX_PENDING = 1024; // messages from upstream waiting for the client socket to open

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

function safeClose(ws: { close(code?: number, reason?: string): void }, code: number, reason: string): void {
  // 1005/1006/1015 are reserved and may not be sent.
  const c = code === 1005 || code === 1006 || code === 1015 || code < 1000 || code > 4999 ? 1000 : code;
  try {
    ws.close(c, reason.slice(0, 120));
  } catch {
    /* already closed */
  }
}

export async function proxyWebSocket(ctx: RequestContext, done: () => void): Promise<Response | undefined> {
  const pool = ctx.plan!.pool;
  const target = pool?.select({ clientIp: ctx.clientIp, hashKey: ctx.path });
  if (!pool || !target) {
    done();
    return errorResponse(503, ctx.traceId);
  }
  ctx.target = target;
  target.active++;
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
  const upstream = new WebSocket(url, { headers, protocols } as unknown as string[]);
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
  upstream.onmessage = (ev) => {
    const msg = ev.data as string | ArrayBuffer;
    if (data.client) data.client.send(msg);
    else if (data.pending.length < MAX_PENDING) data.pending.push(msg);
  };
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
    if (up.readyState === WebSocket.OPEN) up.send(message);
  },
  close(ws, code, reason) {
    openSockets.delete(ws);
    safeClose(ws.data.upstream, code, reason);
    ws.data.done();
  },
  maxPayloadLength: 16 * 1024 * 1024,
  idleTimeout: 120,
};
