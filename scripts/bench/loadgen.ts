// Fallback HTTP/1.1 load generator, used only when wrk / h2load are not installed. It is slower
// and costs more CPU per request than wrk (which shares the 2 cores with the systems under
// test), so its absolute numbers are not comparable with wrk's; the benchmark says so loudly.
//
//   bun scripts/bench/loadgen.ts --url http://127.0.0.1:8080/ -c 50 -d 10 [--rps 5000]
//        [--method POST --body-size 16384] [--header "x-a: b"]
//
// Closed loop (default): every connection sends its next request as soon as the previous answer
// is complete (like wrk). With --rps: open loop at a fixed total rate; a request's latency is
// counted from the time it was due, not from when a connection became free.
// Prints one JSON line: {requests, seconds, rps, errors, non2xx, latency_us: {p50,p75,p90,p99,p999,max}}.

interface Opts {
  url: URL;
  connections: number;
  seconds: number;
  rps: number;
  method: string;
  bodySize: number;
  headers: string[];
}

function parseOpts(argv: string[]): Opts {
  const o: Opts = { url: new URL("http://127.0.0.1:8080/"), connections: 50, seconds: 5, rps: 0, method: "GET", bodySize: 0, headers: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = () => argv[++i]!;
    if (a === "--url") o.url = new URL(v());
    else if (a === "-c") o.connections = Number(v());
    else if (a === "-d") o.seconds = Number(v());
    else if (a === "--rps") o.rps = Number(v());
    else if (a === "--method") o.method = v();
    else if (a === "--body-size") o.bodySize = Number(v());
    else if (a === "--header") o.headers.push(v());
  }
  return o;
}

const o = parseOpts(process.argv.slice(2));
const body = o.bodySize > 0 ? "x".repeat(o.bodySize) : "";
let head = `${o.method} ${o.url.pathname}${o.url.search} HTTP/1.1\r\nhost: ${o.url.host}\r\nuser-agent: sentinel-bench-loadgen\r\n`;
for (const h of o.headers) head += `${h}\r\n`;
if (o.bodySize > 0) head += `content-type: application/octet-stream\r\ncontent-length: ${o.bodySize}\r\n`;
const REQUEST = new TextEncoder().encode(head + "\r\n" + body);

const MAX_SAMPLES = 4_000_000;
const samples = new Float64Array(MAX_SAMPLES);
let nSamples = 0;
let requests = 0;
let errors = 0;
let non2xx = 0;
let running = true;
const t0 = performance.now();
const endAt = t0 + o.seconds * 1000;

function record(us: number): void {
  requests++;
  if (nSamples < MAX_SAMPLES) samples[nSamples++] = us;
  else {
    const j = Math.floor(Math.random() * requests);
    if (j < MAX_SAMPLES) samples[j] = us;
  }
}

interface Conn {
  socket: import("bun").Socket<Conn> | null;
  buf: Uint8Array | null;
  sentAt: number; // due/sent time of the request in flight, or -1 when idle
  dead: boolean;
}

function indexOfHeadEnd(b: Uint8Array, from: number): number {
  for (let i = from; i + 3 < b.length; i++) if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  return -1;
}

/** Length of one complete response at the start of `b`, or -1 if more bytes are needed. */
function responseLength(b: Uint8Array): { len: number; status: number } | null {
  const he = indexOfHeadEnd(b, 0);
  if (he < 0) return null;
  const headText = Buffer.from(b.buffer, b.byteOffset, he).toString("latin1");
  const status = Number(headText.slice(9, 12));
  const lower = headText.toLowerCase();
  const cl = /\r\ncontent-length:\s*(\d+)/.exec(lower);
  const start = he + 4;
  if (cl) {
    const n = Number(cl[1]);
    return b.length >= start + n ? { len: start + n, status } : null;
  }
  if (/\r\ntransfer-encoding:[^\r]*chunked/.test(lower)) {
    let p = start;
    for (;;) {
      let e = p;
      while (e + 1 < b.length && !(b[e] === 13 && b[e + 1] === 10)) e++;
      if (e + 1 >= b.length) return null;
      const size = parseInt(Buffer.from(b.buffer, b.byteOffset + p, e - p).toString("latin1"), 16);
      if (size === 0) {
        // trailers end with an empty line
        const te = indexOfHeadEnd(b, e - 2 < p ? p : e - 2);
        return te >= 0 ? { len: te + 4, status } : null;
      }
      p = e + 2 + size + 2;
      if (p > b.length) return null;
    }
  }
  if (status === 204 || status === 304 || (status >= 100 && status < 200)) return { len: start, status };
  return null; // close-delimited: not supported (counted as an error at close)
}

const conns: Conn[] = [];
const due: number[] = []; // open loop: due times waiting for a free connection
const idle: Conn[] = [];

function send(c: Conn, at: number): void {
  c.sentAt = at;
  const w = c.socket!.write(REQUEST);
  if (w < REQUEST.length) c.socket!.write(REQUEST.subarray(Math.max(0, w)));
}

function onIdle(c: Conn): void {
  if (!running || c.dead) return;
  if (o.rps <= 0) return send(c, performance.now());
  const next = due.shift();
  if (next !== undefined) send(c, next);
  else idle.push(c);
}

const handlers: import("bun").SocketHandler<Conn> = {
  open(s) {
    s.data.socket = s;
    onIdle(s.data);
  },
  data(s, chunk) {
    const c = s.data;
    let b = c.buf ? concat(c.buf, chunk) : chunk;
    for (;;) {
      const r = responseLength(b);
      if (r === null) break;
      const now = performance.now();
      if (c.sentAt >= 0) {
        record((now - c.sentAt) * 1000);
        if (r.status < 200 || r.status >= 300) non2xx++;
      }
      c.sentAt = -1;
      b = b.subarray(r.len);
      onIdle(c);
    }
    c.buf = b.length > 0 ? b.slice() : null;
  },
  close(s) {
    const c = s.data;
    if (running && !c.dead) {
      errors++;
      c.dead = true;
      if (c.sentAt >= 0) errors++;
      reconnect();
    }
  },
  error(s) {
    s.data.dead = true;
  },
  connectError() {
    errors++;
  },
};

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function connect(): void {
  const c: Conn = { socket: null, buf: null, sentAt: -1, dead: false };
  conns.push(c);
  Bun.connect<Conn>({ hostname: o.url.hostname, port: Number(o.url.port || 80), data: c, socket: handlers }).catch(() => {
    errors++;
  });
}

function reconnect(): void {
  if (running) setTimeout(connect, 1);
}

for (let i = 0; i < o.connections; i++) connect();

if (o.rps > 0) {
  const interval = 1000 / o.rps;
  let nextDue = performance.now();
  const tick = () => {
    const now = performance.now();
    while (nextDue <= now && running) {
      const c = idle.pop();
      if (c) send(c, nextDue);
      else due.push(nextDue);
      nextDue += interval;
    }
  };
  setInterval(tick, 1);
}

setTimeout(() => {
  running = false;
  const seconds = (performance.now() - t0) / 1000;
  const s = samples.subarray(0, nSamples).sort();
  const q = (p: number) => (s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : 0);
  process.stdout.write(
    JSON.stringify({
      requests,
      seconds,
      rps: requests / seconds,
      errors,
      non2xx,
      latency_us: { p50: q(0.5), p75: q(0.75), p90: q(0.9), p99: q(0.99), p999: q(0.999), max: s.length ? s[s.length - 1] : 0 },
    }) + "\n",
  );
  for (const c of conns) c.socket?.terminate();
  process.exit(0);
}, endAt - performance.now());
