// A real upstream HTTP server that records what it receives (the oracle for "the upstream saw
// nothing") and answers per path:
// Behaviour is chosen by the LAST path segment (so /any/prefix/slow works):
//   /slow?ms=N          answers after N ms (headers), /drip?ms=N&chunks=K streams K chunks N ms apart
//   /status/NNN         answers with that status
//   /bytes?n=N          streams N bytes (deterministic pattern)
//   /echo               echoes the request body (streamed)
//   /sha                answers the sha256 and length of the request body
//   /health             200 unless marked unhealthy
//   anything else       200 "ok <name>"
import type { Server } from "bun";
import { createHash } from "node:crypto";

export interface Recorded {
  method: string;
  path: string; // raw path + query as received
  headers: Record<string, string>;
  rawHeaders: [string, string][];
  bodyBytes: number;
}

export interface Upstream {
  server: Server<unknown>;
  name: string;
  port: number;
  address: string; // 127.0.0.1:PORT
  url: string;
  requests: Recorded[];
  healthy: boolean;
  stop(): Promise<void>;
}

export function pattern(n: number, chunk = 64 * 1024): ReadableStream<Uint8Array> {
  let sent = 0;
  const block = new Uint8Array(chunk);
  for (let i = 0; i < chunk; i++) block[i] = i % 251;
  return new ReadableStream({
    pull(c) {
      if (sent >= n) return c.close();
      const len = Math.min(chunk, n - sent);
      sent += len;
      c.enqueue(len === chunk ? block.slice() : block.slice(0, len));
    },
  }, { highWaterMark: 0 });
}

export function startUpstream(name = "u1", opts: { port?: number; hostname?: string; delayMs?: number } = {}): Upstream {
  const up: Upstream = {
    name,
    requests: [],
    healthy: true,
  } as unknown as Upstream;
  up.server = Bun.serve({
    hostname: opts.hostname ?? "127.0.0.1",
    port: opts.port ?? 0,
    idleTimeout: 120,
    maxRequestBodySize: Number.MAX_SAFE_INTEGER,
    development: false,
    async fetch(req, server) {
      const url = new URL(req.url);
      const raw = req.url.slice(req.url.indexOf("/", 8));
      if (url.pathname === "/health" || url.pathname.endsWith("/health")) return new Response(up.healthy ? "ok" : "down", { status: up.healthy ? 200 : 503 });
      const rec: Recorded = {
        method: req.method,
        path: raw,
        headers: Object.fromEntries(req.headers),
        rawHeaders: [...req.headers],
        bodyBytes: 0,
      };
      up.requests.push(rec);
      if (opts.delayMs) await Bun.sleep(opts.delayMs);
      if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
        const proto = req.headers.get("sec-websocket-protocol")?.split(",")[0]?.trim();
        if (server.upgrade(req, { data: { name }, headers: proto ? { "sec-websocket-protocol": proto } : undefined })) return undefined as unknown as Response;
        return new Response("upgrade failed", { status: 400 });
      }
      const q = url.searchParams;
      // Dispatch on the last path segment, so that any route prefix can reach every behaviour.
      const segs = url.pathname.split("/");
      const leaf = "/" + segs[segs.length - 1];
      const statusAt = segs.lastIndexOf("status");
      if (leaf === "/slow") {
        await Bun.sleep(Number(q.get("ms") ?? 1000));
        return new Response(`slow ${name}`);
      }
      if (statusAt >= 0 && statusAt === segs.length - 2) return new Response(`status ${name}`, { status: Number(segs[statusAt + 1]) });
      if (leaf === "/bytes") return new Response(pattern(Number(q.get("n") ?? 0)), { headers: { "content-type": "application/octet-stream" } });
      if (leaf === "/drip") {
        const chunks = Number(q.get("chunks") ?? 5);
        const ms = Number(q.get("ms") ?? 100);
        let i = 0;
        return new Response(
          new ReadableStream({
            async pull(c) {
              if (i++ >= chunks) return c.close();
              await Bun.sleep(ms);
              c.enqueue(new TextEncoder().encode(`chunk${i}\n`));
            },
          }),
        );
      }
      if (leaf === "/echo") return new Response(req.body, { headers: { "content-type": req.headers.get("content-type") ?? "application/octet-stream" } });
      if (leaf === "/sha") {
        const h = createHash("sha256");
        let n = 0;
        if (req.body) for await (const c of req.body) {
          h.update(c);
          n += c.byteLength;
        }
        rec.bodyBytes = n;
        return Response.json({ sha256: h.digest("hex"), bytes: n });
      }
      if (req.body) {
        for await (const c of req.body) rec.bodyBytes += c.byteLength;
      }
      return new Response(`ok ${name}`, { headers: { "x-upstream": name } });
    },
    websocket: {
      message(ws, msg) {
        if (msg === "close-me") ws.close(4001, "bye from upstream");
        else ws.send(msg);
      },
    },
  });
  up.port = up.server.port!;
  up.address = `127.0.0.1:${up.port}`;
  up.url = `http://${up.address}`;
  up.stop = async () => {
    up.server.stop(true);
  };
  return up;
}
