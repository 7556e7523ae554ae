// Reference proxies for the benchmark: no logic at all, to show what the runtime itself costs.
// They are measured in the same run as sentinel, so "what limits the rest" is a figure, not a guess.
//   bun scripts/bench/floor.ts --mode fetch|serve|raw --port N --upstream PORT
//
//   fetch  Bun.serve + fetch(): the naive Bun proxy the performance issue describes.
//   serve  Bun.serve + a minimal keep-alive HTTP/1.1 client on Bun.connect: the floor of any
//          proxy built on Bun.serve's Request/Response (sentinel's architecture).
//   raw    Bun.listen + Bun.connect, bytes relayed with a minimal HTTP/1.1 parser (requests
//          without bodies, responses with Content-Length): the floor of the runtime's sockets.
//   rawreq raw, plus the web-standard objects a Request/Response pipeline needs per request:
//          a Request (Headers, AbortSignal) built from the parsed head, and a Response read back
//          and serialised. What a proxy-owned front end on Bun.listen would cost if it kept
//          Request/Response as its currency (compare with serve and raw).
// None of them is safe to expose (no validation, no limits, no timeouts); they exist to be measured.
import type { Socket } from "bun";

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const mode = arg("mode") ?? "serve";
const port = Number(arg("port") ?? 0);
const upPort = Number(arg("upstream"));
const UP_HOST = "127.0.0.1";
const CRLF2 = Buffer.from("\r\n\r\n");

/** Content-Length of a response head (lower-case match on the usual spelling). */
function contentLength(head: string): number {
  const i = head.search(/\r\ncontent-length:/i);
  if (i < 0) return 0;
  return parseInt(head.slice(i + 17, head.indexOf("\r\n", i + 2)).trim(), 10) || 0;
}

interface UpState {
  onHead: ((head: string, body: Buffer) => void) | null;
  onBody: ((chunk: Buffer) => void) | null;
  buf: Buffer | null;
  remaining: number;
}

const idle: Socket<UpState>[] = [];

/** Send a request head on a pooled upstream connection; callbacks get the head, then body bytes. */
function upstreamRequest(head: string, onHead: UpState["onHead"], onBody: UpState["onBody"]): void {
  const s = idle.pop();
  if (s) {
    Object.assign(s.data, { onHead, onBody, buf: null, remaining: -1 });
    s.write(head);
    return;
  }
  void Bun.connect<UpState>({
    hostname: UP_HOST,
    port: upPort,
    data: { onHead, onBody, buf: null, remaining: -1 },
    socket: {
      open(sock) {
        sock.setNoDelay(true);
        sock.write(head);
      },
      data(sock, chunk) {
        const d = sock.data;
        let bytes = chunk as Buffer;
        if (d.remaining < 0) {
          if (d.buf) bytes = Buffer.concat([d.buf, bytes]);
          const end = bytes.indexOf(CRLF2);
          if (end < 0) {
            d.buf = bytes;
            return;
          }
          d.buf = null;
          const headText = bytes.toString("latin1", 0, end + 4);
          d.remaining = contentLength(headText);
          bytes = bytes.subarray(end + 4);
          d.remaining -= bytes.byteLength;
          const cb = d.onHead!;
          if (d.remaining <= 0) idle.push(sock);
          cb(headText, bytes);
          return;
        }
        d.remaining -= bytes.byteLength;
        const cb = d.onBody!;
        if (d.remaining <= 0) idle.push(sock);
        cb(bytes);
      },
      close(sock) {
        // An idle connection the upstream closed must not be handed out again.
        const i = idle.indexOf(sock);
        if (i >= 0) idle.splice(i, 1);
      },
      error() {},
    },
  });
}

/** Send a request head upstream; `done` gets the status and the whole body. */
function upstreamWhole(head: string, done: (status: number, body: Buffer) => void): void {
  let status = 200;
  const parts: Buffer[] = [];
  let left = 0;
  upstreamRequest(
    head,
    (h, body) => {
      status = Number(h.slice(9, 12));
      left = contentLength(h) - body.byteLength;
      parts.push(body);
      if (left <= 0) done(status, parts.length === 1 ? parts[0]! : Buffer.concat(parts));
    },
    (chunk) => {
      parts.push(chunk);
      left -= chunk.byteLength;
      if (left <= 0) done(status, parts.length === 1 ? parts[0]! : Buffer.concat(parts));
    },
  );
}

function serveMode(): void {
  Bun.serve({
    hostname: "127.0.0.1",
    port,
    development: false,
    fetch(req, server) {
      const url = req.url;
      let head = `${req.method} ${url.slice(url.indexOf("/", 8))} HTTP/1.1\r\n`;
      req.headers.forEach((v, k) => {
        if (k !== "connection") head += `${k}: ${v}\r\n`;
      });
      head += `x-forwarded-for: ${server.requestIP(req)?.address ?? ""}\r\n\r\n`;
      return new Promise<Response>((resolve) => upstreamWhole(head, (status, body) => resolve(new Response(body, { status }))));
    },
  });
}

function fetchMode(): void {
  const base = `http://${UP_HOST}:${upPort}`;
  Bun.serve({
    hostname: "127.0.0.1",
    port,
    development: false,
    fetch(req) {
      const url = req.url;
      return fetch(base + url.slice(url.indexOf("/", 8)), { method: req.method, headers: req.headers, body: req.body, redirect: "manual" });
    },
  });
}

interface ClientState {
  buf: Buffer | null;
}

/** A request head (without its blank line) once the bytes so far hold one; else null (bytes kept). */
function takeHead(d: ClientState, chunk: Buffer): string | null {
  let bytes = chunk;
  if (d.buf) bytes = Buffer.concat([d.buf, bytes]);
  const end = bytes.indexOf(CRLF2);
  if (end < 0) {
    d.buf = bytes;
    return null;
  }
  d.buf = null;
  return bytes.toString("latin1", 0, end);
}

function rawMode(): void {
  Bun.listen<ClientState>({
    hostname: "127.0.0.1",
    port,
    data: { buf: null },
    socket: {
      open(s) {
        s.data = { buf: null };
        s.setNoDelay(true);
      },
      data(s, chunk) {
        const text = takeHead(s.data, chunk as Buffer);
        if (text === null) return;
        const lineEnd = text.indexOf("\r\n");
        const sp = text.lastIndexOf(" ", lineEnd);
        let head = text.slice(0, sp) + " HTTP/1.1\r\n";
        for (const line of text.slice(lineEnd + 2).split("\r\n")) if (!/^connection:/i.test(line)) head += line + "\r\n";
        head += `x-forwarded-for: ${s.remoteAddress}\r\n\r\n`;
        upstreamRequest(
          head,
          (h, body) => {
            // Head and first body bytes in one write (one send), as Bun.serve does.
            if (body.byteLength) s.write(Buffer.concat([Buffer.from(h, "latin1"), body]));
            else s.write(h);
          },
          (c) => s.write(c),
        );
      },
      close() {},
      error() {},
    },
  });
}

interface ReqState extends ClientState {
  ac: AbortController | null;
}

/** One request from a head (no body): a web Request, as Bun.serve would hand to a handler. */
function toRequest(text: string, signal: AbortSignal): Request {
  const lineEnd = text.indexOf("\r\n");
  const sp1 = text.indexOf(" ");
  const sp2 = text.lastIndexOf(" ", lineEnd);
  const headers = new Headers();
  let host = "";
  let pos = lineEnd + 2;
  while (pos < text.length) {
    let e = text.indexOf("\r\n", pos);
    if (e < 0) e = text.length;
    const c = text.indexOf(":", pos);
    const name = text.slice(pos, c);
    const value = text.slice(c + 1, e).trim();
    headers.append(name, value);
    if (name.length === 4 && name.toLowerCase() === "host") host = value;
    pos = e + 2;
  }
  return new Request(`http://${host}${text.slice(sp1 + 1, sp2)}`, { method: text.slice(0, sp1), headers, signal });
}

function rawReqMode(): void {
  Bun.listen<ReqState>({
    hostname: "127.0.0.1",
    port,
    data: { buf: null, ac: null },
    socket: {
      open(s) {
        s.data = { buf: null, ac: null };
        s.setNoDelay(true);
      },
      data(s, chunk) {
        const text = takeHead(s.data, chunk as Buffer);
        if (text === null) return;
        const ac = new AbortController();
        s.data.ac = ac;
        const req = toRequest(text, ac.signal);
        const url = req.url;
        let head = `${req.method} ${url.slice(url.indexOf("/", 8))} HTTP/1.1\r\n`;
        req.headers.forEach((v, k) => {
          if (k !== "connection") head += `${k}: ${v}\r\n`;
        });
        head += `x-forwarded-for: ${s.remoteAddress}\r\n\r\n`;
        upstreamWhole(head, async (status, bytes) => {
          const res = new Response(bytes, { status });
          const body = await res.bytes();
          let out = `HTTP/1.1 ${res.status} OK\r\n`;
          res.headers.forEach((v, k) => {
            if (k !== "content-length") out += `${k}: ${v}\r\n`;
          });
          out += `content-length: ${body.byteLength}\r\n\r\n`;
          s.write(Buffer.concat([Buffer.from(out, "latin1"), body]));
          s.data.ac = null;
        });
      },
      close(s) {
        s.data.ac?.abort();
      },
      error() {},
    },
  });
}

const MODES: Record<string, () => void> = { fetch: fetchMode, serve: serveMode, raw: rawMode, rawreq: rawReqMode };
const start = MODES[mode];
if (!start) {
  process.stderr.write(`floor.ts: unknown --mode ${JSON.stringify(mode)}; one of ${Object.keys(MODES).join(", ")}\n`);
  process.exit(2);
}
start();
process.stdout.write(`READY ${port}\n`);
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
