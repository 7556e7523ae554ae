// The security suite's agent: one program, both transports, misbehaving on command.
//
//   bun test/security/hostile-agent.ts --transport uds  --socket PATH        --log FILE [--mode M]
//   bun test/security/hostile-agent.ts --transport grpc --listen HOST:PORT   --log FILE [--mode M]
//
// Prints "READY <endpoint> <control-port>" once listening. Control (HTTP on 127.0.0.1):
//   PUT  /mode    body = default mode          GET /stats  {events, inflight, maxInflight, connections}
//   POST /reset   zero the stats               PUT /flood  body "on" | "off" (unsolicited traffic)
// Every event received is appended to --log as one JSON line {t, type, id, mode, uri, h}
// (h: a few request headers the tests look at).
//
// The mode of a request is its `x-chaos` request header, else the default mode. Modes:
//   auth (default)   allow iff `authorization: Bearer good`, setting X-Auth-User: alice; else block 401
//   allow | deny     allow / block 403
//   block:<status>   block with that status (any number, even 200 or 999)
//   bigblock         block 403 with a 10 MB body
//   blockhdr:<json>  block 403 with these block headers (object)
//   redirect:<url>   redirect 302 to <url>
//   delay:<ms>[-<max>]  then behave like auth
//   hang             never answer (the proxy times out)
//   crash            exit(1) as soon as the event is read
//   parity           allow iff header x-token is even (random 0–150 ms delay), echo x-token back
//   mutate:<json>    allow with header ops: [{op,name,value}] (request) or {request:[…],response:[…]}
//   wrong-id         answer an allow for "<id>-wrong" (never the request's own id)
//   unknown-id       an allow for a random unknown id, then this request's own answer (auth)
//   dup-id           this request's answer (auth) twice
//   UDS only:  malformed (garbage JSON) | unknown-type | zero-len | truncate | bad-decision |
//              no-decision | oversize (LEN = 0xFFFFFFF0 + 10 bytes) | oversize-real (a 20 MB frame)
//   gRPC only: status-unavailable | status-exhausted (the stream ends with that gRPC status) |
//              empty (an AgentToProxy with no message) | no-decision | oversize-real (20 MB message)
import { appendFileSync, existsSync, lstatSync, unlinkSync } from "node:fs";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AgentServiceV2, type AgentToProxy, type ProxyToAgent } from "../../src/gen/zentinel/agent/v2/agent_v2_pb.ts";
import { correlationIdOf, eventFromProto, handshakeResponseToProto, replyToProto, responseEnvelope } from "../../src/agents/grpc/map.ts";
import { allowReply, type AgentReply, type Decision, type HeaderOp } from "../../src/agents/types.ts";
import { flush, frame, handshakeJson, pong, readFrames, write } from "../helpers/agent-wire.ts";

const arg = (n: string) => {
  const i = process.argv.indexOf(`--${n}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const transport = arg("transport") === "grpc" ? "grpc" : "uds";
const logFile = arg("log");
let defaultMode = arg("mode") ?? "auth";
let flooding = false;

const stats = { events: 0, inflight: 0, maxInflight: 0, connections: 0 };
const LOGGED_HEADERS = ["authorization", "x-auth-user", "x-token", "x-tag", "x-chaos", "x-request-id", "x-forwarded-for", "x-real-ip", "forwarded"];

// ------------------------------------------------------------------------------ decisions

interface Plan {
  /** What to do: "answer" (with reply), "none" (hang), or a transport-level misbehaviour. */
  kind: "answer" | "none" | "crash" | "raw";
  reply?: AgentReply;
  delayMs?: number;
  extra?: AgentReply[]; // more answers sent right before (unknown-id) or after (dup-id)
  extraAfter?: boolean;
  raw?: string; // misbehaviour name for the transport
}

function first(h: Record<string, string[]>, name: string): string | undefined {
  return h[name]?.[0];
}

function authReply(id: string, headers: Record<string, string[]>): AgentReply {
  const r = allowReply(id);
  if (first(headers, "authorization") === "Bearer good") {
    r.requestHeaders = [{ op: "set", name: "X-Auth-User", value: "alice" }];
    return r;
  }
  r.decision = { kind: "block", status: 401, body: "unauthorized by agent", headers: { "www-authenticate": "Bearer" } };
  return r;
}

function parseOps(json: string): { request: HeaderOp[]; response: HeaderOp[] } {
  const v = JSON.parse(json);
  return Array.isArray(v) ? { request: v, response: [] } : { request: v.request ?? [], response: v.response ?? [] };
}

function plan(id: string, headers: Record<string, string[]>, eventType: string): { plan: Plan; mode: string } {
  const mode = first(headers, "x-chaos") ?? defaultMode;
  const [name, ...rest] = mode.split(":");
  const param = rest.join(":");
  const r = allowReply(id);
  // Body and response events of a request are simply allowed unless the mode is connection-level.
  const headersEvent = eventType === "request_headers";
  switch (name) {
    case "auth":
      return { mode, plan: { kind: "answer", reply: headersEvent ? authReply(id, headers) : r } };
    case "allow":
      return { mode, plan: { kind: "answer", reply: r } };
    case "deny":
      r.decision = { kind: "block", status: 403, body: "denied by agent", headers: null };
      return { mode, plan: { kind: "answer", reply: r } };
    case "block":
      r.decision = { kind: "block", status: Number(param), body: "blocked by agent", headers: null };
      return { mode, plan: { kind: "answer", reply: r } };
    case "bigblock":
      r.decision = { kind: "block", status: 403, body: "B".repeat(10 * 1024 * 1024), headers: null };
      return { mode, plan: { kind: "answer", reply: r } };
    case "blockhdr":
      r.decision = { kind: "block", status: 403, body: "blocked", headers: JSON.parse(param) };
      return { mode, plan: { kind: "answer", reply: r } };
    case "redirect":
      r.decision = { kind: "redirect", url: param, status: 302 };
      return { mode, plan: { kind: "answer", reply: r } };
    case "delay": {
      const [a, b] = param.split("-").map(Number);
      const ms = b === undefined ? a! : a! + Math.random() * (b - a!);
      return { mode, plan: { kind: "answer", reply: headersEvent ? authReply(id, headers) : r, delayMs: ms } };
    }
    case "hang":
      return { mode, plan: { kind: "none" } };
    case "crash":
      return { mode, plan: { kind: "crash" } };
    case "parity": {
      const token = Number(first(headers, "x-token") ?? "1");
      if (token % 2 !== 0) r.decision = { kind: "block", status: 403, body: `odd ${token}`, headers: null };
      r.responseHeaders = [{ op: "set", name: "x-token-echo", value: String(token) }];
      return { mode, plan: { kind: "answer", reply: r, delayMs: Math.random() * 150 } };
    }
    case "mutate": {
      const ops = parseOps(param);
      r.requestHeaders = ops.request;
      r.responseHeaders = ops.response;
      return { mode, plan: { kind: "answer", reply: r } };
    }
    case "wrong-id":
      return { mode, plan: { kind: "answer", reply: allowReply(`${id}-wrong`) } };
    case "unknown-id":
      return { mode, plan: { kind: "answer", reply: authReply(id, headers), extra: [allowReply(`unknown-${Math.random().toString(36).slice(2)}`)] } };
    case "dup-id":
      return { mode, plan: { kind: "answer", reply: authReply(id, headers), extra: [allowReply(id)], extraAfter: true } };
    default:
      return { mode, plan: { kind: "raw", raw: name, reply: r } };
  }
}

function record(type: string, id: string, mode: string, uri: string | undefined, headers: Record<string, string[]>, ip?: string): void {
  if (!logFile) return;
  const h: Record<string, string[]> = {};
  for (const n of LOGGED_HEADERS) if (headers[n]) h[n] = headers[n]!;
  appendFileSync(logFile, JSON.stringify({ t: Date.now(), type, id, mode, uri, ip, h, names: Object.keys(headers) }) + "\n");
}

function track<T>(p: Promise<T>): Promise<T> {
  stats.inflight++;
  stats.maxInflight = Math.max(stats.maxInflight, stats.inflight);
  return p.finally(() => stats.inflight--);
}

// ------------------------------------------------------------------------------ UDS (v2 framing)

function decisionJson(d: Decision): unknown {
  switch (d.kind) {
    case "allow":
      return "allow";
    case "block":
      return { block: { status: d.status, body: d.body ?? null, headers: d.headers ?? null } };
    case "redirect":
      return { redirect: { url: d.url, status: d.status } };
    case "challenge":
      return { challenge: { challenge_type: d.challengeType, params: d.params } };
  }
}

const opsJson = (ops: HeaderOp[]) => ops.map((o) => (o.op === "remove" ? { remove: { name: o.name } } : { [o.op]: { name: o.name, value: o.value } }));

function replyFrame(r: AgentReply): Buffer {
  return frame(
    0x20,
    JSON.stringify({
      version: 2,
      decision: decisionJson(r.decision),
      request_headers: opsJson(r.requestHeaders),
      response_headers: opsJson(r.responseHeaders),
      routing_metadata: {},
      audit: { tags: [], rule_ids: [], confidence: null, reason_codes: [], custom: { correlation_id: r.correlationId } },
      needs_more: false,
      request_body_mutation: null,
      response_body_mutation: null,
      websocket_decision: null,
    }),
  );
}

const HANDSHAKE = handshakeJson("hostile", "hostile security-suite agent", 1000);

const EVENT_NAMES: Record<number, string> = {
  0x10: "request_headers",
  0x11: "request_body_chunk",
  0x12: "response_headers",
  0x13: "response_body_chunk",
  0x14: "request_complete",
  0x17: "configure",
};

interface Conn {
  buf: Buffer;
  handshaken: boolean;
  backlog: Buffer[];
  closed: boolean;
}
type Sock = import("bun").Socket<Conn>;
const udsConns = new Set<Sock>();

function udsRaw(s: Sock, name: string, r: AgentReply): void {
  const id = r.correlationId;
  switch (name) {
    case "malformed":
      return write(s, frame(0x20, '{"version":2,"decision":"allow",'));
    case "unknown-type":
      return write(s, frame(0x7e, "{}"));
    case "zero-len":
      return write(s, Buffer.alloc(4));
    case "truncate": {
      const f = replyFrame(r);
      write(s, f.subarray(0, f.length >> 1));
      setTimeout(() => s.end(), 20);
      return;
    }
    case "bad-decision":
      return write(s, frame(0x20, JSON.stringify({ version: 2, decision: "maybe", audit: { custom: { correlation_id: id } } })));
    case "no-decision":
      return write(s, frame(0x20, JSON.stringify({ version: 2, audit: { custom: { correlation_id: id } } })));
    case "oversize": {
      const b = Buffer.alloc(14);
      b.writeUInt32BE(0xfffffff0, 0);
      b[4] = 0x20;
      return write(s, b);
    }
    case "oversize-real": {
      const body = "x".repeat(20 * 1024 * 1024);
      r.decision = { kind: "block", status: 403, body, headers: null };
      return write(s, replyFrame(r));
    }
    default:
      process.stderr.write(`hostile agent: unknown mode ${name}\n`);
      return write(s, replyFrame(r));
  }
}

function udsEvent(s: Sock, type: number, obj: any): void {
  const name = EVENT_NAMES[type] ?? `0x${type.toString(16)}`;
  if (name === "configure" || name === "request_complete") return;
  const id: string = obj?.metadata?.correlation_id ?? obj?.correlation_id ?? "";
  const headers: Record<string, string[]> = obj?.headers ?? {};
  stats.events++;
  const { plan: p, mode } = plan(id, name === "request_headers" ? headers : {}, name);
  record(name, id, mode, obj?.uri, headers, obj?.metadata?.client_ip);
  if (p.kind === "crash") process.exit(1);
  if (p.kind === "none") {
    void track(new Promise<void>((res) => {
      const t = setInterval(() => s.data.closed && (clearInterval(t), res()), 50);
    }));
    return;
  }
  if (p.kind === "raw") return udsRaw(s, p.raw!, p.reply!);
  const send = () => {
    if (p.extra && !p.extraAfter) for (const e of p.extra) write(s, replyFrame(e));
    write(s, replyFrame(p.reply!));
    if (p.extra && p.extraAfter) for (const e of p.extra) write(s, replyFrame(e));
  };
  if (p.delayMs) void track(Bun.sleep(p.delayMs).then(send));
  else send();
}

function udsFrame(s: Sock, type: number, payload: Buffer): void {
  const c = s.data;
  if (!c.handshaken) {
    if (type !== 0x01) return void s.end();
    c.handshaken = true;
    write(s, frame(0x02, HANDSHAKE));
    return;
  }
  if (type === 0x41) return write(s, frame(0x42, payload));
  if (type === 0x43) return; // cancel
  if (type >= 0x10 && type <= 0x17) {
    let obj: unknown = null;
    try {
      obj = JSON.parse(payload.toString("utf8"));
    } catch {
      /* null */
    }
    udsEvent(s, type, obj);
  }
}

function udsFlood(): void {
  for (const s of udsConns) {
    if (!s.data.handshaken || s.data.backlog.length > 0) continue;
    const parts: Buffer[] = [];
    for (let i = 0; i < 50; i++) parts.push(replyFrame(allowReply(`flood-${Math.random().toString(36).slice(2)}`)));
    parts.push(frame(0x42, JSON.stringify({ sequence: 999999, timestamp_ms: 0 })));
    parts.push(frame(0x30, JSON.stringify({ agent_id: "hostile", state: 1, timestamp_ms: Date.now(), padding: "p".repeat(16384) })));
    write(s, Buffer.concat(parts));
  }
}

async function serveUds(path: string): Promise<string> {
  if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
  Bun.listen<Conn>({
    unix: path,
    socket: {
      open(s) {
        s.data = { buf: Buffer.alloc(0), handshaken: false, backlog: [], closed: false };
        udsConns.add(s);
        stats.connections++;
      },
      data(s, chunk) {
        readFrames(s.data, chunk, (type, payload) => udsFrame(s, type, payload));
      },
      drain(s) {
        flush(s);
      },
      close(s) {
        s.data.closed = true;
        udsConns.delete(s);
        stats.connections--;
      },
      error() {},
    },
  });
  setInterval(() => flooding && udsFlood(), 5);
  return path;
}

// ------------------------------------------------------------------------------ gRPC

const INFO = { agentId: "hostile", name: "hostile security-suite agent", version: "0.0.1" };
/** Outgoing messages of one stream; end(err) makes the response iterable throw (a gRPC status). */
class OutQueue {
  private items: AgentToProxy[] = [];
  private waiter: (() => void) | null = null;
  private done = false;
  private error: Error | undefined;
  push(v: AgentToProxy): void {
    if (this.done) return;
    this.items.push(v);
    this.wake();
  }
  end(err?: Error): void {
    if (this.done) return;
    this.done = true;
    this.error = err;
    this.wake();
  }
  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }
  async *iterate(): AsyncGenerator<AgentToProxy> {
    for (;;) {
      if (this.items.length > 0) {
        yield this.items.shift()!;
        continue;
      }
      if (this.done) {
        if (this.error) throw this.error;
        return;
      }
      await new Promise<void>((r) => (this.waiter = r));
    }
  }
}
const grpcStreams = new Set<OutQueue>();

const answer = (r: AgentReply) => responseEnvelope(replyToProto(r));

function processStream(requests: AsyncIterable<ProxyToAgent>, ctx: HandlerContext): AsyncIterable<AgentToProxy> {
  const out = new OutQueue();
  grpcStreams.add(out);
  stats.connections++;
  let ended = false;
  const end = (err?: Error) => {
    if (ended) return;
    ended = true;
    grpcStreams.delete(out);
    stats.connections--;
    out.end(err);
  };
  ctx.signal.addEventListener("abort", () => end());
  (async () => {
    try {
      for await (const msg of requests) {
        const m = msg.message;
        if (m.case === "handshake") {
          out.push(handshakeResponseToProto(INFO, [1, 2, 3, 4, 5], true));
          continue;
        }
        if (m.case === "ping") {
          out.push(pong(m.value));
          continue;
        }
        if (m.case === "cancel" || m.case === undefined) continue;
        const ev = eventFromProto(msg);
        if (!ev || ev.type === "configure" || ev.type === "request_complete") continue;
        const id = correlationIdOf(msg);
        const headers = ev.type === "request_headers" ? ev.headers : {};
        stats.events++;
        const { plan: p, mode } = plan(id, headers, ev.type);
        record(ev.type, id, mode, ev.type === "request_headers" ? ev.uri : undefined, headers, ev.type === "request_headers" ? ev.metadata.clientIp : undefined);
        if (p.kind === "crash") process.exit(1);
        if (p.kind === "none") {
          void track(new Promise<void>((res) => ctx.signal.addEventListener("abort", () => res())));
          continue;
        }
        if (p.kind === "raw") {
          switch (p.raw) {
            case "status-unavailable":
              end(new ConnectError("chaos: unavailable", Code.Unavailable));
              break;
            case "status-exhausted":
              end(new ConnectError("chaos: resource exhausted", Code.ResourceExhausted));
              break;
            case "empty":
              out.push({ $typeName: "zentinel.agent.v2.AgentToProxy", message: { case: undefined } } as AgentToProxy);
              break;
            case "no-decision": {
              const resp = replyToProto(p.reply!);
              resp.decision = undefined as never;
              out.push(responseEnvelope(resp));
              break;
            }
            case "oversize-real": {
              p.reply!.decision = { kind: "block", status: 403, body: "x".repeat(20 * 1024 * 1024), headers: null };
              out.push(answer(p.reply!));
              break;
            }
            default:
              out.push(answer(p.reply!));
          }
          continue;
        }
        const send = () => {
          if (ended) return;
          if (p.extra && !p.extraAfter) for (const e of p.extra) out.push(answer(e));
          out.push(answer(p.reply!));
          if (p.extra && p.extraAfter) for (const e of p.extra) out.push(answer(e));
        };
        if (p.delayMs) void track(Bun.sleep(p.delayMs).then(send));
        else send();
      }
    } catch {
      // peer reset
    } finally {
      end();
    }
  })();
  return out.iterate();
}

function grpcFlood(): void {
  for (const q of grpcStreams) {
    for (let i = 0; i < 20; i++) {
      const r = allowReply(`flood-${Math.random().toString(36).slice(2)}`);
      r.decision = { kind: "block", status: 599, body: "flood", headers: null };
      q.push(answer(r));
    }
  }
}

async function serveGrpc(listen: string): Promise<string> {
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new Error(`--listen HOST:PORT, got ${listen}`);
  const server = http2.createServer(
    {},
    connectNodeAdapter({
      routes: (router) =>
        router.service(AgentServiceV2, {
          processStream: (reqs, ctx) => processStream(reqs, ctx),
          async processEvent() {
            throw new ConnectError("unary not supported by the hostile agent", Code.Unimplemented);
          },
          async *controlStream() {},
        }),
    }),
  );
  server.on("session", (s) => s.on("error", () => {}));
  await new Promise<void>((res) => server.listen(Number(m[2]), m[1] || "127.0.0.1", () => res()));
  setInterval(() => flooding && grpcFlood(), 5);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

// ------------------------------------------------------------------------------ main

const endpoint = transport === "grpc" ? await serveGrpc(arg("listen") ?? "127.0.0.1:0") : await serveUds(arg("socket") ?? "/tmp/hostile-agent.sock");
const control = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  development: false,
  async fetch(req) {
    const p = new URL(req.url).pathname;
    if (p === "/mode" && req.method === "PUT") {
      defaultMode = (await req.text()).trim();
      return new Response(defaultMode);
    }
    if (p === "/flood" && req.method === "PUT") {
      flooding = (await req.text()).trim() === "on";
      return new Response(String(flooding));
    }
    if (p === "/reset") {
      stats.events = 0;
      stats.maxInflight = stats.inflight;
      return Response.json(stats);
    }
    if (p === "/stats") return Response.json(stats);
    return new Response("not found", { status: 404 });
  },
});
process.stdout.write(`READY ${endpoint} ${control.port}\n`);
const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
