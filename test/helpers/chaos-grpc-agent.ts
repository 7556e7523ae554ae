// A deliberately misbehaving gRPC agent for tests (run as a child process under Bun).
//
//   bun test/helpers/chaos-grpc-agent.ts --listen 127.0.0.1:PORT --mode MODE [--log FILE]
//
// PORT may be 0; the bound port is printed on stdout as "LISTENING <port>".
// Every message received on ProcessStream / ProcessEvent is appended to --log FILE as one JSON
// line ({"rpc":"stream"|"unary","type":…,"correlationId":…,…}; body data as base64).
//
// Modes:
//   allow              handshake ok; Allow every event; answer pings
//   block:<status>     Block every event with <status> (body "chaos block")
//   delay:<ms>         Allow every event after <ms>
//   hang               handshake ok; never answer events; answer pings
//   nopong             like allow, but never answer pings
//   crash-after-read   handshake ok; the process exits (code 1) after reading the first event
//   wrong-id           answer every event with correlation id "<id>-wrong" and a Block 418
//   flood              like allow, plus 50 unsolicited Block answers with random ids around
//                      every real answer, and a burst every 5 ms while a stream is open
//   mutate:<json>      Allow with request header ops <json>, e.g.
//                      mutate:[{"op":"set","name":"x-a","value":"1"},{"op":"remove","name":"x-b"}]
//   header-block       request_headers: Block 403 iff request header x-decision is "block";
//                      the request header x-request-tag is echoed as a response header op
//                      (set x-request-tag); other events: Allow
//   no-handshake       never answers the handshake; sends an empty-id Allow as soon as the
//                      stream opens and answers events with Allow (before / without a handshake)
//   reject-handshake   answers the handshake with success:false and keeps the stream open
//   mute               reads everything, never sends anything (handshake timeout)
import * as http2 from "node:http2";
import { appendFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import type { HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AgentServiceV2, type AgentToProxy, type ProxyToAgent } from "../../src/gen/zentinel/agent/v2/agent_v2_pb.ts";
import {
  correlationIdOf,
  eventFromProto,
  handshakeResponseToProto,
  replyToProto,
  responseEnvelope,
} from "../../src/agents/grpc/map.ts";
import { PushQueue } from "../../src/agents/grpc/queue.ts";
import { allowReply, type AgentReply, type HeaderOp } from "../../src/agents/types.ts";
import { pong } from "./agent-wire.ts";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const listen = arg("--listen") ?? "127.0.0.1:0";
const modeArg = arg("--mode") ?? "allow";
const logFile = arg("--log");
const [mode, ...rest] = modeArg.split(":");
const modeParam = rest.join(":");

function record(rpc: string, msg: ProxyToAgent): void {
  if (!logFile) return;
  const m = msg.message;
  const line: Record<string, unknown> = { rpc, type: m.case ?? "empty", correlationId: correlationIdOf(msg), at: Date.now() };
  if (m.case === "handshake") {
    line.configJson = m.value.configJson;
    line.supportedVersions = m.value.supportedVersions;
    line.proxyId = m.value.proxyId;
    line.proxyVersion = m.value.proxyVersion;
  } else if (m.case === "ping") {
    line.sequence = Number(m.value.sequence);
  } else {
    const ev = eventFromProto(msg);
    if (ev) {
      const copy: Record<string, unknown> = { ...ev };
      if ("data" in ev) copy.data = Buffer.from(ev.data).toString("base64");
      line.event = copy;
    }
  }
  appendFileSync(logFile, JSON.stringify(line) + "\n");
}

const info = { agentId: "chaos", name: `chaos-${mode}`, version: "0.0.1" };

function answer(reply: AgentReply): AgentToProxy {
  return responseEnvelope(replyToProto(reply));
}

function randomId(): string {
  return "flood-" + Math.random().toString(36).slice(2);
}

function floodAnswers(n: number): AgentToProxy[] {
  const out: AgentToProxy[] = [];
  for (let i = 0; i < n; i++) {
    const r = allowReply(randomId());
    r.decision = { kind: "block", status: 599, body: "flood", headers: null };
    out.push(answer(r));
  }
  return out;
}

/** The answer for one event message, or null for no answer. */
async function decide(msg: ProxyToAgent): Promise<AgentToProxy | null> {
  const id = correlationIdOf(msg);
  const reply = allowReply(id);
  switch (mode) {
    case "allow":
    case "nopong":
    case "flood":
    case "no-handshake":
      return answer(reply);
    case "block":
      reply.decision = { kind: "block", status: Number(modeParam) || 403, body: "chaos block", headers: null };
      return answer(reply);
    case "delay":
      await Bun.sleep(Number(modeParam) || 0);
      return answer(reply);
    case "hang":
      return null;
    case "wrong-id":
      reply.correlationId = `${id}-wrong`;
      reply.decision = { kind: "block", status: 418, body: "wrong id", headers: null };
      return answer(reply);
    case "mutate":
      reply.requestHeaders = JSON.parse(modeParam || "[]") as HeaderOp[];
      return answer(reply);
    case "header-block": {
      const ev = eventFromProto(msg);
      if (ev?.type === "request_headers") {
        if (ev.headers["x-decision"]?.[0] === "block") {
          reply.decision = { kind: "block", status: 403, body: "blocked by header", headers: null };
        }
        const tag = ev.headers["x-request-tag"]?.[0];
        if (tag !== undefined) reply.responseHeaders = [{ op: "set", name: "x-request-tag", value: tag }];
      }
      return answer(reply);
    }
    default:
      return answer(reply);
  }
}

function processStream(requests: AsyncIterable<ProxyToAgent>, ctx: HandlerContext): AsyncIterable<AgentToProxy> {
  const out = new PushQueue<AgentToProxy>();
  let floodTimer: ReturnType<typeof setInterval> | undefined;
  ctx.signal.addEventListener("abort", () => {
    clearInterval(floodTimer);
    out.clear();
  });
  if (mode === "no-handshake") out.push(answer(allowReply("")));
  if (mode === "flood") {
    floodTimer = setInterval(() => {
      for (const a of floodAnswers(20)) out.push(a);
    }, 5);
  }
  (async () => {
    let events = 0;
    try {
      for await (const msg of requests) {
        record("stream", msg);
        const m = msg.message;
        if (m.case === "handshake") {
          if (mode === "no-handshake" || mode === "mute") continue;
          if (mode === "reject-handshake") {
            out.push(handshakeResponseToProto(info, [1, 2, 3, 4, 5], false, "chaos says no"));
            continue;
          }
          out.push(handshakeResponseToProto(info, [1, 2, 3, 4, 5], true));
          continue;
        }
        if (m.case === "ping") {
          if (mode !== "nopong") out.push(pong(m.value));
          continue;
        }
        if (m.case === "cancel" || m.case === undefined || mode === "mute") continue;
        events++;
        if (mode === "crash-after-read" && events === 1) process.exit(1);
        void decide(msg).then((a) => {
          if (a === null) return;
          if (mode === "flood") for (const f of floodAnswers(25)) out.push(f);
          out.push(a);
          if (mode === "flood") for (const f of floodAnswers(25)) out.push(f);
        });
      }
    } catch {
      // peer reset
    } finally {
      clearInterval(floodTimer);
      // hang mode: keep the stream open until the proxy cancels it
      if (mode !== "hang" && mode !== "mute") setTimeout(() => out.end(), mode.startsWith("delay") ? Number(modeParam) + 50 : 50);
    }
  })();
  return out;
}

async function processEvent(msg: ProxyToAgent): Promise<AgentToProxy> {
  record("unary", msg);
  const m = msg.message;
  if (m.case === "handshake") return handshakeResponseToProto(info, [1, 2, 3, 4, 5], mode !== "reject-handshake");
  if (m.case === "ping") {
    if (mode === "nopong") await new Promise(() => {});
    return pong(m.value);
  }
  if (mode === "crash-after-read") process.exit(1);
  const a = await decide(msg);
  if (a === null) await new Promise(() => {});
  return a!;
}

const m = /^(.*):(\d+)$/.exec(listen);
if (!m) throw new Error(`--listen HOST:PORT, got ${listen}`);
const server = http2.createServer(
  {},
  connectNodeAdapter({
    routes: (router) =>
      router.service(AgentServiceV2, {
        processStream: (reqs, ctx) => processStream(reqs, ctx),
        processEvent: (req) => processEvent(req),
        async *controlStream() {},
      }),
  }),
);
server.on("session", (s) => s.on("error", () => {}));
server.listen(Number(m[2]), m[1] || "127.0.0.1", () => {
  process.stdout.write(`LISTENING ${(server.address() as AddressInfo).port}\n`);
});
const stop = () => {
  server.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
