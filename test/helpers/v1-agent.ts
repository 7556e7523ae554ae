// A legacy "v1" UDS agent written from the description of the TS SDK runner in
// ../shared/spec/agent-protocol.md §5 (AgentRunner + AgentHandler), with no code from src/ or sdk/,
// so that the proxy's v1 transport is tested against a peer it did not write.
//
//   bun test/helpers/v1-agent.ts --socket PATH [--mode MODE] [--log FILE] [--python]
//
// Prints "ready <socket>" on stdout once listening. Wire behaviour, as §5 describes the SDK runners:
//   - frame = u32 BE length of the JSON bytes, then the JSON (no type byte), no handshake;
//   - request = envelope {version, event_type, payload}; `version` is ignored;
//   - exactly one reply per request, no correlation id in it, stamped "version": 2: an
//     AgentResponse for header/body events (keys the TS SDK leaves undefined are left out),
//     {"success":true} for configure and request_complete, a bare GuardrailResponse for
//     guardrail_inspect;
//   - ONE handler per connection: request_headers is cached by metadata.correlation_id; body and
//     response hooks run only for a cached id (otherwise Allow, plus needs_more for body chunks);
//     the cache entry is freed only by request_complete;
//   - a hook that throws is answered with Allow (the SDK catches it);
//   - TS runner: frames are reassembled from pieces; the `data` listener is async (a frame that
//     does not parse as JSON is logged and NOT answered, the connection stays open; this is
//     what a v2 handshake frame meets); a length over 10 MiB destroys the connection.
//   - --python: the Python runner instead. It reads with StreamReader.read(n), which returns only
//     what is buffered: a frame whose bytes are not all there when it is read fails with
//     "Incomplete message" and the connection is closed; so does a frame that is not JSON.
//     Frames are handled strictly one after another.
//
// Modes (what the request hooks answer; the request header `x-decision` can override per request
// in allow-with-mutations and header-block: block | challenge | throw):
//   allow-with-mutations  request headers: set x-v1-agent: 1, remove x-strip-me, response header
//                         x-v1-resp: 1 (returned on request headers, D20), x-request-tag echoed as
//                         a response header; request body: "EVIL" → block 403, "REPLACE" →
//                         "REPLACED" (base64 request_body_mutation); response headers:
//                         x-v1-saw-status; response body: "ok " → "OK " (base64 response_body_mutation)
//   allow                 Allow, nothing else
//   block                 Block 403 "v1 block" (the Python SDK shape: no `headers` key)
//   header-block          Block 403 iff x-decision is "block", else Allow; echoes x-request-tag
//   hang                  the request/response hooks never return (so those events are never
//                         answered); configure and request_complete, which the SDK handles
//                         itself, are still answered
//   silent                read everything, never answer anything
//   delay:MS              Allow after MS milliseconds
//
// --log FILE appends one JSON line per received event, written when the event arrives:
//   {t, conn, event_type, id, cache, total_cache, ...}: `cache` is this connection's cache of
//   requests once the event's synchronous part ran (request_headers added, request_complete
//   removed), `total_cache` the sum over open connections.
import { appendFileSync, existsSync, mkdirSync, unlinkSync, chmodSync } from "node:fs";
import * as net from "node:net";
import { dirname } from "node:path";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const socketPath = arg("socket") ?? "/tmp/zentinel-agent.sock";
const mode = arg("mode") ?? "allow-with-mutations";
const logFile = arg("log");
const python = process.argv.includes("--python");
/** The TS AgentRunner's MAX_MESSAGE_SIZE. */
const MAX_MESSAGE_SIZE = 10 * 1024 * 1024;

type Json = Record<string, any>;

function record(line: Json): void {
  if (logFile) appendFileSync(logFile, JSON.stringify({ t: Date.now(), ...line }) + "\n");
}

/** Diagnostics go to stdout, like the SDK runners' logger (console.log); tests drain it. */
function diag(msg: string): void {
  process.stdout.write(`v1-agent: ${msg}\n`);
}

// ---- the SDK's decision builder, as JSON --------------------------------------------------------

interface Built {
  decision: unknown;
  requestHeaders: Json[];
  responseHeaders: Json[];
  tags: string[];
  needsMore: boolean;
  requestBodyMutation?: Json;
  responseBodyMutation?: Json;
}

function allow(): Built {
  return { decision: "allow", requestHeaders: [], responseHeaders: [], tags: [], needsMore: false };
}

/** agentResponseToDict: undefined keys are left out, `audit` holds only non-empty keys. */
function toDict(b: Built): Json {
  const audit: Json = {};
  if (b.tags.length > 0) audit.tags = b.tags;
  const o: Json = {
    version: 2,
    decision: b.decision,
    request_headers: b.requestHeaders,
    response_headers: b.responseHeaders,
    routing_metadata: {},
    audit,
    needs_more: b.needsMore,
  };
  if (b.requestBodyMutation) o.request_body_mutation = b.requestBodyMutation;
  if (b.responseBodyMutation) o.response_body_mutation = b.responseBodyMutation;
  return o;
}

const set = (name: string, value: string) => ({ set: { name, value } });
const header = (h: Json | undefined, name: string): string | undefined => {
  const v = h?.[name];
  return Array.isArray(v) ? v[0] : undefined;
};

// ---- the agent (hooks) --------------------------------------------------------------------------

interface CachedRequest {
  headers: Json;
  uri: string;
  body: Buffer;
}

async function wait(): Promise<void> {
  if (mode === "hang") await new Promise<never>(() => {});
  if (mode.startsWith("delay:")) await Bun.sleep(Number(mode.slice(6)) || 0);
}

async function onRequest(req: CachedRequest): Promise<Built> {
  await wait();
  const b = allow();
  const want = header(req.headers, "x-decision");
  const tag = header(req.headers, "x-request-tag");
  if (mode === "block") {
    b.decision = { block: { status: 403, body: "v1 block" } };
    b.tags.push("blocked");
    return b;
  }
  if (mode === "allow-with-mutations" || mode === "header-block") {
    if (want === "throw") throw new Error("hook failure requested by x-decision");
    if (want === "block") {
      b.decision = { block: { status: 403, body: "blocked by v1 agent" } };
      b.tags.push("blocked");
    } else if (want === "challenge") {
      // The TS SDK omits `params` when none are given (D19).
      b.decision = { challenge: { challenge_type: "captcha" } };
    }
    if (tag !== undefined) b.responseHeaders.push(set("x-request-tag", tag));
  }
  if (mode === "allow-with-mutations" && b.decision === "allow") {
    b.requestHeaders.push(set("X-V1-Agent", "1"), { remove: { name: "x-strip-me" } });
    b.responseHeaders.push(set("x-v1-resp", "1"));
    b.tags.push("allowed");
  }
  return b;
}

async function onRequestBody(req: CachedRequest): Promise<Built> {
  await wait();
  const b = allow();
  if (mode !== "allow-with-mutations") return b;
  const text = req.body.toString("utf8");
  if (text.includes("EVIL")) b.decision = { block: { status: 403, body: "evil body" } };
  else if (text.includes("REPLACE")) {
    b.requestBodyMutation = { data: Buffer.from(text.replaceAll("REPLACE", "REPLACED")).toString("base64"), chunk_index: 0 };
  }
  return b;
}

async function onResponse(_req: CachedRequest, status: number): Promise<Built> {
  await wait();
  const b = allow();
  if (mode === "allow-with-mutations") b.responseHeaders.push(set("x-v1-saw-status", String(status)));
  return b;
}

async function onResponseBody(_req: CachedRequest, body: Buffer): Promise<Built> {
  await wait();
  const b = allow();
  if (mode !== "allow-with-mutations") return b;
  const text = body.toString("utf8");
  if (text.startsWith("ok ")) b.responseBodyMutation = { data: Buffer.from("OK " + text.slice(3)).toString("base64"), chunk_index: 0 };
  return b;
}

// ---- the SDK handler: one per connection ---------------------------------------------------------

let connSeq = 0;
const liveHandlers = new Set<Handler>();

class Handler {
  readonly id = ++connSeq;
  readonly requests = new Map<string, CachedRequest>();
  readonly responseBodies = new Map<string, Buffer>();
  readonly responseStatus = new Map<string, number>();

  async handleEvent(event: Json): Promise<Json | null> {
    const type = String(event.event_type ?? "");
    const p: Json = event.payload ?? {};
    const id: string = p.metadata?.correlation_id ?? p.correlation_id ?? "";
    // The cache changes happen in dispatch's synchronous part; log right after it.
    const pending = this.dispatch(type, p, id);
    let total = 0;
    for (const h of liveHandlers) total += h.requests.size;
    const line: Json = { conn: this.id, event_type: type, id, cache: this.requests.size, total_cache: total };
    if (type === "request_headers") {
      line.headers = p.headers;
      line.uri = p.uri;
    } else if (type === "configure") {
      line.config = p.config;
      line.agent_id = p.agent_id;
    } else if (type === "request_complete") {
      line.status = p.status;
      line.request_size = p.request_size;
      line.response_size = p.response_size;
    } else if (type.endsWith("_body_chunk")) {
      line.bytes = typeof p.data === "string" ? Buffer.from(p.data, "base64").length : -1;
      line.is_last = p.is_last;
      line.chunk_index = p.chunk_index;
    }
    record(line);
    try {
      return await pending;
    } catch (e) {
      diag(`error handling event ${type}: ${e}`);
      return toDict(allow());
    }
  }

  private async dispatch(type: string, p: Json, id: string): Promise<Json | null> {
    if (mode === "silent") return null;
    switch (type) {
      case "configure":
        return { success: true };
      case "request_headers": {
        const req: CachedRequest = { headers: p.headers ?? {}, uri: String(p.uri), body: Buffer.alloc(0) };
        this.requests.set(id, req);
        return toDict(await onRequest(req));
      }
      case "request_body_chunk": {
        const req = this.requests.get(id);
        if (req) req.body = Buffer.concat([req.body, Buffer.from(String(p.data), "base64")]);
        if (p.is_last && req) return toDict(await onRequestBody(req));
        return toDict({ ...allow(), needsMore: true });
      }
      case "response_headers": {
        const req = this.requests.get(id);
        if (!req) return toDict(allow());
        this.responseStatus.set(id, Number(p.status));
        this.responseBodies.set(id, Buffer.alloc(0));
        return toDict(await onResponse(req, Number(p.status)));
      }
      case "response_body_chunk": {
        const prev = this.responseBodies.get(id);
        if (prev !== undefined) this.responseBodies.set(id, Buffer.concat([prev, Buffer.from(String(p.data), "base64")]));
        const req = this.requests.get(id);
        if (p.is_last && req) return toDict(await onResponseBody(req, this.responseBodies.get(id) ?? Buffer.alloc(0)));
        return toDict({ ...allow(), needsMore: true });
      }
      case "request_complete":
        this.requests.delete(id);
        this.responseBodies.delete(id);
        this.responseStatus.delete(id);
        return { success: true };
      case "guardrail_inspect":
        return { detected: false, confidence: 0, detections: [] };
      default:
        diag(`unknown event type: ${type}`);
        return toDict(allow());
    }
  }
}

function encodeMessage(o: Json): Buffer {
  const json = Buffer.from(JSON.stringify(o), "utf8");
  const out = Buffer.alloc(4 + json.length);
  out.writeUInt32BE(json.length, 0);
  json.copy(out, 4);
  return out;
}

// ---- TS AgentRunner connection loop --------------------------------------------------------------

function tsConnection(socket: net.Socket): void {
  const handler = new Handler();
  liveHandlers.add(handler);
  let buffer = Buffer.alloc(0);
  socket.on("data", async (data: Buffer) => {
    buffer = Buffer.concat([buffer, data]);
    while (buffer.length >= 4) {
      const len = buffer.readUInt32BE(0);
      if (len > MAX_MESSAGE_SIZE) {
        diag(`message size ${len} exceeds maximum`);
        socket.destroy();
        return;
      }
      if (buffer.length < 4 + len) break;
      const msg = buffer.subarray(4, 4 + len);
      buffer = buffer.subarray(4 + len);
      try {
        const event = JSON.parse(msg.toString("utf-8"));
        const reply = await handler.handleEvent(event);
        if (reply !== null) socket.write(encodeMessage(reply));
      } catch (e) {
        diag(`error processing message: ${e}`);
      }
    }
  });
  socket.on("error", () => {});
  socket.on("close", () => liveHandlers.delete(handler));
}

// ---- Python runner connection loop (--python) -----------------------------------------------------

function pythonConnection(socket: net.Socket): void {
  const handler = new Handler();
  liveHandlers.add(handler);
  let buffer = Buffer.alloc(0);
  let busy = false;
  let closed = false;
  let check: ReturnType<typeof setTimeout> | null = null;
  const close = (why: string) => {
    if (closed) return;
    closed = true;
    diag(`python runner: ${why}; closing the connection`);
    record({ conn: handler.id, event_type: "connection_closed", id: "", reason: why, cache: handler.requests.size, total_cache: 0 });
    socket.end();
  };
  // read_message(): read(4) then read(n) of what is buffered right now.
  const pump = async () => {
    if (busy || closed) return;
    busy = true;
    try {
      while (!closed && buffer.length >= 4) {
        const len = buffer.readUInt32BE(0);
        if (buffer.length < 4 + len) {
          // Give bytes that are already in the kernel buffer a moment to be read (they would be
          // in asyncio's buffer too); anything later than that is a split frame.
          if (check === null) check = setTimeout(() => {
            check = null;
            if (!closed && buffer.length >= 4 && buffer.length < 4 + buffer.readUInt32BE(0)) close(`Incomplete message (${buffer.length - 4} of ${buffer.readUInt32BE(0)} bytes)`);
          }, 2);
          return;
        }
        const msg = buffer.subarray(4, 4 + len);
        buffer = buffer.subarray(4 + len);
        let event: Json;
        try {
          event = JSON.parse(msg.toString("utf-8"));
        } catch (e) {
          return close(`invalid JSON: ${e}`);
        }
        const reply = await handler.handleEvent(event);
        if (reply !== null && !closed) socket.write(encodeMessage(reply));
      }
    } finally {
      busy = false;
    }
  };
  socket.on("data", (data: Buffer) => {
    buffer = Buffer.concat([buffer, data]);
    if (check !== null) {
      clearTimeout(check);
      check = null;
    }
    void pump();
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    closed = true;
    liveHandlers.delete(handler);
  });
}

// ---- main ------------------------------------------------------------------------------------------

if (existsSync(socketPath)) unlinkSync(socketPath);
mkdirSync(dirname(socketPath), { recursive: true });
const server = net.createServer((s) => (python ? pythonConnection(s) : tsConnection(s)));
server.listen(socketPath, () => {
  chmodSync(socketPath, 0o660);
  process.stdout.write(`ready ${socketPath}\n`);
});
const stop = () => {
  server.close();
  try {
    if (existsSync(socketPath)) unlinkSync(socketPath);
  } catch {}
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
