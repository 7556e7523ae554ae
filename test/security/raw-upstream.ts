// The oracle of the security suite: a raw TCP upstream that records the exact bytes of every
// request it receives (per connection) and answers per path. "The upstream saw nothing" is
// checked here, never inferred from the status the client got.
//
// The answer is chosen by a path segment pair `/r/<mode>` anywhere in the path
// (e.g. /public/r/slow:500/x); without one the answer is `200 ok <METHOD> <target>`.
//   ok | status:N | slow:N | hang | close (answers with Connection: close)
//   clte | dupcl | samecl | badchunk | obsfold | spcolon | nul | status2000 | http09 | bigheader:N
//   hop | 204body | 304body | headbody | early103 | s100 | s101 | setcookie | trailers
//   truncate | reset | bytes:N | sha | drip:N:MS (N chunks of "chunkK\n", MS apart)
// Every request also gets `aggressivePath`: what a deliberately aggressive upstream (decodes
// every %XX incl. %2F, '\' → '/', strips ;params, merges slashes, resolves dots, lower-cases)
// would route on. A request whose aggressive path is under /admin is answered by the "admin
// handler" and flagged `servedAdmin`.
import { createHash } from "node:crypto";
import * as net from "node:net";

export interface RawRecord {
  conn: number;
  seq: number;
  at: number;
  method: string;
  target: string;
  version: string;
  /** Header lines exactly as received, in order. */
  headers: Array<[string, string]>;
  head: string;
  body: Buffer;
  aggressivePath: string;
  servedAdmin: boolean;
}

export interface RawUpstream {
  port: number;
  address: string;
  records: RawRecord[];
  /** Connection ids that are currently open. */
  open: Set<number>;
  /** Connection id → time it was closed (by either side). */
  closedAt: Map<number, number>;
  /** Connection id → target of a request whose head arrived but whose body never completed. */
  partial: Map<number, string>;
  /** Connection id → body bytes written for bytes:N answers. */
  sent: Map<number, number>;
  connections: number;
  /** Requests received (also when not recording). */
  count: number;
  header(r: RawRecord, name: string): string[];
  since(mark: number): RawRecord[];
  mark(): number;
  stop(): Promise<void>;
}

export function aggressivePath(target: string): string {
  let p = target.split("?")[0]!;
  p = p.replace(/%([0-9a-fA-F]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
  p = p.replace(/\\/g, "/");
  const out: string[] = [];
  for (const raw of p.split("/")) {
    const seg = raw.split(";")[0]!;
    if (seg === "" || seg === ".") continue;
    if (seg === "..") {
      out.pop();
      continue;
    }
    out.push(seg);
  }
  return ("/" + out.join("/")).toLowerCase();
}

function modeOf(target: string): string {
  const segs = target.split("?")[0]!.split("/");
  const i = segs.indexOf("r");
  return i >= 0 && i + 1 < segs.length ? decodeURIComponent(segs[i + 1]!) : "ok";
}

const CRLF = "\r\n";

function okResponse(r: RawRecord, extra = ""): string {
  const body = r.servedAdmin ? `ADMIN HANDLER ${r.method} ${r.target}` : `ok ${r.method} ${r.target}`;
  return `HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Upstream-Seq: ${r.seq}\r\n${extra}\r\n${r.method === "HEAD" ? "" : body}`;
}

export interface RawUpstreamOptions {
  /** Fixed port (to restart an upstream where it was); default: any free port. */
  port?: number;
  /** Keep every request (default true); false keeps only the count (soak runs). */
  record?: boolean;
}

export function startRawUpstream(opts: RawUpstreamOptions = {}): Promise<RawUpstream> {
  const records: RawRecord[] = [];
  const keep = opts.record !== false;
  let count = 0;
  const open = new Set<number>();
  const closedAt = new Map<number, number>();
  const partial = new Map<number, string>();
  const sent = new Map<number, number>();
  let connSeq = 0;
  let reqSeq = 0;
  const sockets = new Set<net.Socket>();
  const timers = new Set<ReturnType<typeof setTimeout>>();
  const later = (ms: number, f: () => void) => {
    const t = setTimeout(() => {
      timers.delete(t);
      f();
    }, ms);
    timers.add(t);
  };

  async function writeBig(sock: net.Socket, conn: number, n: number): Promise<void> {
    const block = Buffer.alloc(64 * 1024, 0x61);
    let done = 0;
    while (done < n && !sock.destroyed) {
      const len = Math.min(block.length, n - done);
      done += len;
      sent.set(conn, done);
      if (!sock.write(len === block.length ? block : block.subarray(0, len))) {
        await new Promise<void>((res) => {
          sock.once("drain", res);
          sock.once("close", res);
        });
      }
    }
  }

  function respond(sock: net.Socket, r: RawRecord): void {
    const [mode, param] = (() => {
      const m = modeOf(r.target);
      const i = m.indexOf(":");
      return i < 0 ? [m, ""] : [m.slice(0, i), m.slice(i + 1)];
    })();
    const w = (s: string | Buffer) => !sock.destroyed && sock.write(s);
    switch (mode) {
      case "hang":
        return;
      case "slow":
        return later(Number(param), () => w(okResponse(r)));
      case "status": {
        const body = `status ${param}`;
        return void w(`HTTP/1.1 ${param} X\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      }
      case "close":
        w(okResponse(r, "Connection: close\r\n"));
        return void sock.end();
      case "clte":
        return void w("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
      case "dupcl":
        return void w("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc");
      case "samecl":
        return void w("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab");
      case "badchunk":
        return void w("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
      case "obsfold":
        return void w("HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok");
      case "spcolon":
        return void w("HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 2\r\n\r\nok");
      case "nul":
        return void w("HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok");
      case "status2000":
        return void w("HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok");
      case "http09":
        w("hello from 0.9\n");
        return void sock.end();
      case "bigheader": {
        const n = Number(param);
        return void w(`HTTP/1.1 200 OK\r\nX-Big: ${"b".repeat(n)}\r\nContent-Length: 2\r\n\r\nok`);
      }
      case "hop":
        return void w(
          "HTTP/1.1 200 OK\r\nConnection: X-Internal, close\r\nX-Internal: s\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: foo\r\nTrailer: X-T\r\nProxy-Connection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        );
      case "204body":
        return void w("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON");
      case "304body":
        return void w("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON");
      case "headbody":
        return void w("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON");
      case "early103":
        return void w("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + okResponse(r));
      case "s100":
        return void w("HTTP/1.1 100 Continue\r\n\r\n" + okResponse(r));
      case "s101":
        return void w("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\nRAW TUNNEL BYTES");
      case "setcookie":
        return void w(
          "HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\nContent-Length: 2\r\n\r\nok",
        );
      case "trailers":
        return void w("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n");
      case "truncate":
        w("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n123456789");
        return later(50, () => sock.destroy());
      case "reset":
        w("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nonly");
        return later(50, () => sock.resetAndDestroy());
      case "bytes": {
        const n = Number(param);
        w(`HTTP/1.1 200 OK\r\nContent-Length: ${n}\r\nContent-Type: application/octet-stream\r\n\r\n`);
        void writeBig(sock, r.conn, n);
        return;
      }
      case "drip": {
        const [n, ms] = param.split(":").map(Number);
        w("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let k = 0;
        const tick = () => {
          if (sock.destroyed) return;
          if (k >= n!) return void w("0\r\n\r\n");
          const c = `chunk${++k}\n`;
          w(`${c.length.toString(16)}\r\n${c}\r\n`);
          later(ms!, tick);
        };
        later(ms!, tick);
        return;
      }
      case "sha": {
        const body = JSON.stringify({ sha256: createHash("sha256").update(r.body).digest("hex"), bytes: r.body.length });
        return void w(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      }
      default:
        return void w(okResponse(r));
    }
  }

  /** Parse as many complete requests as the buffer holds; returns the unconsumed rest. */
  function parse(sock: net.Socket, conn: number, buf: Buffer): Buffer {
    // eslint-disable-next-line no-constant-condition
    for (;;) {
      const headEnd = buf.indexOf("\r\n\r\n");
      if (headEnd < 0) return buf;
      const head = buf.subarray(0, headEnd).toString("latin1");
      const lines = head.split(CRLF);
      const [method = "", target = "", version = ""] = lines[0]!.split(" ");
      const headers: Array<[string, string]> = [];
      for (const l of lines.slice(1)) {
        const c = l.indexOf(":");
        headers.push(c < 0 ? [l, ""] : [l.slice(0, c), l.slice(c + 1).trim()]);
      }
      const get = (n: string) => headers.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v);
      let rest: Buffer = buf.subarray(headEnd + 4);
      let body: Buffer = Buffer.alloc(0);
      if (get("transfer-encoding").some((v) => /chunked/i.test(v))) {
        const parts: Buffer[] = [];
        let off = 0;
        let complete = false;
        for (;;) {
          const nl = rest.indexOf(CRLF, off);
          if (nl < 0) break;
          const size = parseInt(rest.subarray(off, nl).toString("latin1"), 16);
          if (Number.isNaN(size)) {
            complete = true; // garbage: take what we have
            off = rest.length;
            break;
          }
          if (size === 0) {
            const end = rest.indexOf("\r\n\r\n", nl - 2 < off ? off : nl - 2);
            if (end < 0) break;
            off = end + 4;
            complete = true;
            break;
          }
          if (rest.length < nl + 2 + size + 2) break;
          parts.push(rest.subarray(nl + 2, nl + 2 + size));
          off = nl + 2 + size + 2;
        }
        if (!complete) {
          partial.set(conn, target);
          return buf;
        }
        body = Buffer.concat(parts);
        rest = rest.subarray(off);
      } else {
        const cl = Number(get("content-length")[0] ?? 0);
        if (rest.length < cl) {
          partial.set(conn, target);
          return buf;
        }
        body = rest.subarray(0, cl);
        rest = rest.subarray(cl);
      }
      const agg = aggressivePath(target);
      const r: RawRecord = {
        conn,
        seq: ++reqSeq,
        at: Date.now(),
        method,
        target,
        version,
        headers,
        head,
        body: Buffer.from(body),
        aggressivePath: agg,
        servedAdmin: agg === "/admin" || agg.startsWith("/admin/"),
      };
      count++;
      partial.delete(conn);
      if (keep) records.push(r);
      respond(sock, r);
      buf = rest;
    }
  }

  const server = net.createServer((sock) => {
    const conn = ++connSeq;
    open.add(conn);
    sockets.add(sock);
    let buf: Buffer = Buffer.alloc(0);
    sock.on("data", (d: Buffer) => {
      buf = parse(sock, conn, buf.length === 0 ? d : Buffer.concat([buf, d]));
    });
    const closed = () => {
      if (!open.has(conn)) return;
      open.delete(conn);
      closedAt.set(conn, Date.now());
      sockets.delete(sock);
    };
    sock.on("close", closed);
    sock.on("error", closed);
  });

  return new Promise((resolve) => {
    server.listen(opts.port ?? 0, "127.0.0.1", () => {
      const port = (server.address() as net.AddressInfo).port;
      const up: RawUpstream = {
        port,
        address: `127.0.0.1:${port}`,
        records,
        open,
        closedAt,
        partial,
        sent,
        get connections() {
          return connSeq;
        },
        get count() {
          return count;
        },
        header: (r, name) => r.headers.filter(([k]) => k.toLowerCase() === name.toLowerCase()).map(([, v]) => v),
        mark: () => records.length,
        since: (mark) => records.slice(mark),
        stop: () =>
          new Promise<void>((res) => {
            for (const t of timers) clearTimeout(t);
            for (const s of sockets) s.destroy();
            server.close(() => res());
          }),
      };
      resolve(up);
    });
  });
}
