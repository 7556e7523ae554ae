// Graceful shutdown of a real @grpc/grpc-js agent (Node) with our gRPC client: the agent calls
// server.tryShutdown() (what a Kubernetes rolling restart triggers: GOAWAY NO_ERROR, then it
// waits for every session to end) while calls are in flight, and a new server takes over the same
// port. The in-flight calls must still get the old server's answers, the old server's tryShutdown
// callback must fire (we half-close the old stream once its calls are answered, so the agent can
// end it), and later calls must reach the new server.
import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { createGrpcTransport } from "../../src/agents/grpc/client.ts";
import type { AgentEvent, AgentTransport } from "../../src/agents/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { waitFor as poll } from "../helpers/proxy.ts";
import { never } from "../helpers/agents.ts";

const root = join(import.meta.dir, "..", "..");
const nodeBin = Bun.which("node");

// A grpc-js agent. Each server generation answers request_headers with a response header op
// x-gen: <generation>, after SLOW_MS for uri /slow. It ends the stream when the proxy has
// half-closed it and nothing is outstanding (like the SDK agents). On the stdin line "restart" it
// calls tryShutdown() on the current server and binds a new one on the same port (the listening
// socket is closed at once by tryShutdown; the old connections stay), printing NEW_LISTENING and,
// when the old server's tryShutdown callback fires, OLD_SHUTDOWN <ms>.
const SERVER = `
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { createInterface } from "node:readline";
const def = protoLoader.loadSync("proto/zentinel/agent/v2/agent_v2.proto", { keepCase: true, longs: String, defaults: true, oneofs: true });
const Service = grpc.loadPackageDefinition(def).zentinel.agent.v2.AgentServiceV2;
const SLOW_MS = Number(process.env.SLOW_MS || 600);
function make(gen) {
  const server = new grpc.Server();
  server.addService(Service.service, {
    processStream(call) {
      let outstanding = 0;
      let ended = false;
      const maybeEnd = () => { if (ended && outstanding === 0) call.end(); };
      call.on("data", (msg) => {
        if (msg.message === "handshake") {
          call.write({ handshake: { protocol_version: 2, success: true, capabilities: { protocol_version: 2, agent_id: "gen-" + gen, name: "grpc-js goaway", version: "1" } } });
        } else if (msg.message === "ping") {
          call.write({ pong: { sequence: msg.ping.sequence, ping_timestamp_ms: msg.ping.timestamp_ms, timestamp_ms: String(Date.now()) } });
        } else if (msg.message === "request_headers") {
          const e = msg.request_headers;
          outstanding++;
          setTimeout(() => {
            outstanding--;
            if (!call.cancelled) call.write({ response: { correlation_id: e.metadata.correlation_id, allow: {}, response_headers: [{ set: { name: "x-gen", value: String(gen) } }] } });
            maybeEnd();
          }, e.uri === "/slow" ? SLOW_MS : 0);
        }
      });
      call.on("end", () => { ended = true; maybeEnd(); });
      call.on("error", () => {});
    },
    processEvent(_call, cb) { cb({ code: grpc.status.UNIMPLEMENTED }); },
    controlStream(call) { call.on("error", () => {}); },
  });
  return server;
}
let gen = 1;
let current = make(gen);
let port = 0;
current.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => {
  if (err) { console.error(err); process.exit(1); }
  port = p;
  console.log("LISTENING " + p);
});
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() !== "restart") return;
  const old = current;
  const t0 = Date.now();
  current = make(++gen);
  old.tryShutdown((err) => console.log("OLD_SHUTDOWN " + (Date.now() - t0) + (err ? " " + err.message : "")));
  current.bindAsync("127.0.0.1:" + port, grpc.ServerCredentials.createInsecure(), (err) => {
    console.log(err ? "BIND_ERROR " + err.message : "NEW_LISTENING");
  });
});
`;

const cleanup: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

interface Agent {
  port: number;
  out: () => string;
  restart: () => void;
}

async function startAgent(): Promise<Agent> {
  // Evaluated with the repository as cwd, so "@grpc/grpc-js" resolves from its node_modules.
  const proc = Bun.spawn([nodeBin!, "--input-type=module", "-e", SERVER], { cwd: root, stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  cleanup.push(async () => {
    proc.kill();
    await proc.exited;
  });
  let text = "";
  void (async () => {
    const dec = new TextDecoder();
    for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) text += dec.decode(chunk);
  })();
  await waitFor(() => /LISTENING (\d+)/.test(text), 15_000, "grpc-js agent start");
  return {
    port: Number(/LISTENING (\d+)/.exec(text)![1]),
    out: () => text,
    restart: () => {
      proc.stdin.write("restart\n");
      proc.stdin.flush();
    },
  };
}

const waitFor = (cond: () => boolean, ms: number, what: string) => poll(cond, ms, what, 10);

function ev(id: string, uri: string): AgentEvent {
  return requestHeadersEvent(id, { uri });
}

const gen = (r: { responseHeaders: { op: string; name?: string; value?: string }[] }) => r.responseHeaders.find((h) => h.name === "x-gen")?.value;

describe.skipIf(!nodeBin)("graceful GOAWAY from a @grpc/grpc-js agent (tryShutdown)", () => {
  test("in-flight calls are answered by the old server, its tryShutdown completes, later calls reach the new server", async () => {
    const agent = await startAgent();
    const logs: { level: string; msg: string }[] = [];
    const t: AgentTransport = createGrpcTransport({
      endpoint: `http://127.0.0.1:${agent.port}`,
      connectTimeoutMs: 3000,
      connections: 1,
      proxyVersion: "test",
      log: (level, msg) => logs.push({ level, msg }),
    });
    cleanup.push(() => t.close());
    const connectivity: boolean[] = [];
    t.onConnectivity((c) => connectivity.push(c));
    t.start();
    await waitFor(() => t.isConnected(), 8000, "handshake");
    expect(t.capabilities?.agentId).toBe("gen-1");
    expect(gen(await t.call(ev("warm", "/"), never()))).toBe("1");
    await Bun.sleep(1100); // the stream is stable: the replacement is opened at once on GOAWAY

    const inflight = Array.from({ length: 20 }, (_, i) => t.call(ev(`slow-${i}`, "/slow"), never()));
    await Bun.sleep(150); // the events are on the wire; their answers come 600 ms after arrival
    const restartedAt = performance.now();
    agent.restart();

    const replies = await Promise.all(inflight); // none fails
    replies.forEach((r, i) => {
      expect(r.correlationId).toBe(`slow-${i}`);
      expect(gen(r)).toBe("1");
    });
    await waitFor(() => /OLD_SHUTDOWN/.test(agent.out()), 5000, "the old server's tryShutdown callback");
    expect(performance.now() - restartedAt).toBeLessThan(5000);
    expect(agent.out()).not.toContain("BIND_ERROR");

    await waitFor(() => t.isConnected(), 8000, "connected to the new server");
    expect(t.capabilities?.agentId).toBe("gen-2");
    for (let i = 0; i < 5; i++) expect(gen(await t.call(ev(`after-${i}`, "/"), never()))).toBe("2");
    // A graceful restart is not a disconnect for the listeners, and nothing was logged at warn
    // (unless the new server was not yet listening when we first reconnected: then the
    // replacement failed once and the normal reconnect took over).
    if (connectivity.length > 1) expect(connectivity).toEqual([true, false, true]);
    else {
      expect(connectivity).toEqual([true]);
      expect(logs.filter((l) => l.level === "warn" || l.level === "error")).toEqual([]);
    }
    expect(logs.some((l) => l.msg === "grpc agent stream closed after GOAWAY")).toBe(true);
  });
});
