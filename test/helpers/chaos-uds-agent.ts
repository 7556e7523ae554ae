// A raw-protocol UDS agent (v2 framing, spec §2) that misbehaves on demand, for tests.
// It uses no code from src/ so that a codec bug cannot hide on both sides.
//
//   bun test/helpers/chaos-uds-agent.ts --socket PATH --mode MODE [--log FILE]
//
// Prints "ready" on stdout once listening. Every event it receives (0x10–0x17) is appended to
// --log FILE as one JSON line {t, type, id, mode, event}. `kill -USR1 <pid>` re-reads the mode
// from "<log>.mode" (or "<socket>.mode" without --log).
//
// Modes (answers are full Rust-shaped AgentResponses with audit.custom.correlation_id):
//   allow                 answer Allow
//   block:<status>        answer Block <status>
//   delay:<ms>            answer Allow after <ms>; delay:<min>-<max> picks a random delay per event
//   hang                  handshake ok, never answer events, but answer pings
//   nopong                answer events, never answer pings
//   crash-after-read      exit(1) on the first event
//   malformed             answer with garbage JSON in a 0x20 frame
//   oversize              answer with a frame header LEN = 16 MiB + 2 (then 10 bytes)
//   zero-len              answer with a LEN = 0 frame header
//   truncate              answer with half a frame, then close the connection
//   wrong-id              answer Allow naming another correlation id (<id>-wrong)
//   unknown-id            send an Allow for a random unknown id, then the right answer
//   dup-id                answer twice
//   unknown-type          answer with a frame of unknown type 0x7e
//   bad-decision          answer {"decision":"maybe"} (valid JSON, invalid AgentResponse)
//   out-of-order          hold answers and release them in pairs, reversed
//   flood                 answer correctly, and meanwhile send ~10k/s unsolicited 0x20 frames
//                         with random ids, plus health/metrics/pong noise
//   mutate:<json>         Allow with header ops: a JSON array (request_headers) or an object
//                         {"request_headers":[…],"response_headers":[…]}
//   header-block:<name>   Block 403 iff request header <name> is "block", else Allow; both echo
//                         the request's own x-request-tag as response header op (and block header)
//   handshake-fail        answer the handshake with success:false, then close
//   no-handshake          never answer the handshake (silence)
//   handshake-delay:<ms>  answer the handshake after <ms>, then behave like allow
import { appendFileSync, existsSync, lstatSync, readFileSync, unlinkSync } from "node:fs";
import { flush, frame, handshakeJson, readFrames, write } from "./agent-wire.ts";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const socketPath = arg("socket") ?? "/tmp/sentinel-chaos.sock";
let mode = arg("mode") ?? "allow";
const logFile = arg("log");
const modeFile = `${logFile ?? socketPath}.mode`;

process.on("SIGUSR1", () => {
  try {
    mode = readFileSync(modeFile, "utf8").trim();
    process.stderr.write(`chaos agent: mode -> ${mode}\n`);
  } catch (e) {
    process.stderr.write(`chaos agent: cannot read ${modeFile}: ${e}\n`);
  }
});

function answer(id: string, decision: unknown = "allow", extra: Record<string, unknown> = {}): Buffer {
  return frame(
    0x20,
    JSON.stringify({
      version: 2,
      decision,
      request_headers: [],
      response_headers: [],
      routing_metadata: {},
      audit: { tags: [], rule_ids: [], confidence: null, reason_codes: [], custom: { correlation_id: id } },
      needs_more: false,
      request_body_mutation: null,
      response_body_mutation: null,
      websocket_decision: null,
      ...extra,
    }),
  );
}

const handshakeOk = handshakeJson("chaos", "Chaos agent", 100);

const EVENT_NAMES: Record<number, string> = {
  0x10: "request_headers",
  0x11: "request_body_chunk",
  0x12: "response_headers",
  0x13: "response_body_chunk",
  0x14: "request_complete",
  0x15: "websocket_frame",
  0x16: "guardrail_inspect",
  0x17: "configure",
};

interface Conn {
  buf: Buffer;
  handshaken: boolean;
  held: Buffer[];
  backlog: Buffer[];
  flood: ReturnType<typeof setInterval> | null;
  closed: boolean;
}
type Sock = import("bun").Socket<Conn>;

const rid = () => `unknown-${Math.random().toString(36).slice(2)}`;

function onEvent(s: Sock, type: number, obj: any): void {
  const id: string = obj?.metadata?.correlation_id ?? obj?.correlation_id ?? "";
  const m = mode;
  if (logFile) {
    appendFileSync(logFile, JSON.stringify({ t: Date.now(), type: EVENT_NAMES[type], id, mode: m, event: obj }) + "\n");
  }
  const [name, ...rest] = m.split(":");
  const param = rest.join(":");
  switch (name) {
    case "allow":
    case "nopong":
    case "flood":
    case "handshake-delay":
      return write(s, answer(id));
    case "block":
      return write(s, answer(id, { block: { status: Number(param) || 403, body: "blocked by chaos agent", headers: null } }));
    case "delay": {
      const [a, b] = param.split("-").map(Number);
      const ms = b === undefined ? a! : a! + Math.random() * (b - a!);
      setTimeout(() => write(s, answer(id)), ms);
      return;
    }
    case "hang":
      return;
    case "crash-after-read":
      process.exit(1);
    case "malformed":
      return write(s, frame(0x20, '{"version":2,"decision":"allow",'));
    case "oversize": {
      const b = Buffer.alloc(15);
      b.writeUInt32BE(16 * 1024 * 1024 + 2, 0);
      b[4] = 0x20;
      return write(s, b);
    }
    case "zero-len":
      return write(s, Buffer.alloc(4));
    case "truncate": {
      const f = answer(id);
      write(s, f.subarray(0, f.length >> 1));
      setTimeout(() => s.end(), 20);
      return;
    }
    case "wrong-id":
      return write(s, answer(`${id}-wrong`));
    case "unknown-id":
      write(s, answer(rid()));
      return write(s, answer(id));
    case "dup-id":
      write(s, answer(id));
      return write(s, answer(id));
    case "unknown-type":
      return write(s, frame(0x7e, "{}"));
    case "bad-decision":
      return write(s, frame(0x20, JSON.stringify({ version: 2, decision: "maybe", audit: { custom: { correlation_id: id } } })));
    case "out-of-order": {
      const c = s.data;
      c.held.push(answer(id));
      if (c.held.length >= 2) {
        const held = c.held.splice(0).reverse();
        for (const h of held) write(s, h);
      }
      return;
    }
    case "mutate": {
      const ops = JSON.parse(param);
      const extra = Array.isArray(ops) ? { request_headers: ops } : ops;
      return write(s, answer(id, "allow", extra));
    }
    case "header-block": {
      if (type !== 0x10) return write(s, answer(id));
      const headers = obj.headers ?? {};
      const v = headers[param.toLowerCase()]?.[0];
      const tag = headers["x-request-tag"]?.[0] ?? "";
      const echo = { response_headers: [{ set: { name: "x-request-tag", value: tag } }] };
      if (v === "block") {
        return write(s, answer(id, { block: { status: 403, body: `blocked ${tag}`, headers: { "x-request-tag": tag } } }, echo));
      }
      return write(s, answer(id, "allow", echo));
    }
    default:
      process.stderr.write(`chaos agent: unknown mode ${m}, answering allow\n`);
      return write(s, answer(id));
  }
}

function startFlood(s: Sock): void {
  const c = s.data;
  c.flood = setInterval(() => {
    if (c.closed) return;
    if (c.backlog.length > 0) return; // do not grow memory without bound if the proxy is slow
    const parts: Buffer[] = [];
    for (let i = 0; i < 50; i++) parts.push(answer(rid()));
    parts.push(frame(0x30, JSON.stringify({ agent_id: "chaos", state: 1, timestamp_ms: Date.now() })));
    parts.push(frame(0x42, JSON.stringify({ sequence: 999999, timestamp_ms: 0 })));
    parts.push(frame(0x31, JSON.stringify({ agent_id: "chaos", timestamp_ms: Date.now(), interval_ms: 5, counters: [], gauges: [], histograms: [] })));
    write(s, Buffer.concat(parts));
  }, 5);
}

function onFrame(s: Sock, type: number, payload: Buffer): void {
  const c = s.data;
  const m = mode;
  if (!c.handshaken) {
    if (type !== 0x01) {
      s.end();
      return;
    }
    if (m === "no-handshake") return;
    if (m === "handshake-fail") {
      write(s, frame(0x02, JSON.stringify({ ...JSON.parse(handshakeOk), success: false, protocol_version: 0, error: "chaos says no" })));
      setTimeout(() => s.end(), 10);
      return;
    }
    const done = () => {
      c.handshaken = true;
      write(s, frame(0x02, handshakeOk));
      if (mode === "flood") startFlood(s);
    };
    if (m.startsWith("handshake-delay:")) setTimeout(done, Number(m.split(":")[1]));
    else done();
    return;
  }
  if (type === 0x41) {
    if (mode !== "nopong") write(s, frame(0x42, payload));
    return;
  }
  if (type >= 0x10 && type <= 0x17) {
    let obj: unknown;
    try {
      obj = JSON.parse(payload.toString("utf8"));
    } catch {
      obj = null;
    }
    onEvent(s, type, obj);
  }
}

if (existsSync(socketPath) && lstatSync(socketPath).isSocket()) unlinkSync(socketPath);

Bun.listen<Conn>({
  unix: socketPath,
  socket: {
    open(s) {
      s.data = { buf: Buffer.alloc(0), handshaken: false, held: [], backlog: [], flood: null, closed: false };
    },
    data(s, chunk) {
      readFrames(s.data, chunk, (type, payload) => onFrame(s, type, payload));
    },
    drain(s) {
      flush(s);
    },
    close(s) {
      s.data.closed = true;
      if (s.data.flood) clearInterval(s.data.flood);
    },
  },
});

process.stdout.write("ready\n");
