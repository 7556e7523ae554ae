// An agent (and a probe client) built directly on @grpc/grpc-js + @grpc/proto-loader, loading
// proto/zentinel/agent/v2/agent_v2.proto at run time. Not our SDK, not Connect: it is the
// independent peer for interop tests. Run under Node:
//
//   node test/helpers/grpcjs-agent.mjs --listen 127.0.0.1:PORT --mode MODE [--jitter-ms N] [--log FILE]
//       serves ProcessStream and ProcessEvent (and an idle ControlStream); prints "LISTENING <port>".
//       allow         Allow every event (request headers get a response header op x-grpcjs: 1)
//       allow-with-mutations
//                     as allow, plus request header ops set x-grpcjs-agent: 1 and remove x-strip-me
//                     on request headers, x-request-tag echoed as a response header op, and
//                     x-grpcjs-saw-status on response headers; request header x-decision: block
//                     → Block 403 "blocked by header" with block header x-blocked-by: grpcjs
//       block         Block 403 every event (body "grpcjs block")
//       header-block  Block 403 iff request header x-decision is "block"; the request header
//                     x-request-tag is echoed as a response header op (set x-request-tag)
//       hang          answer the handshake and pings, never an event
//       delay:MS      as allow, each answer MS milliseconds late
//       --jitter-ms N answers each event after a random 0..N ms delay (answers come back out of order)
//       --log FILE    appends one JSON line per received event: {t, type, id}
//
//   node test/helpers/grpcjs-agent.mjs --probe 127.0.0.1:PORT
//       a grpc-js CLIENT against an agent server (e.g. sdk/grpc-server.ts): unary ping, unary
//       request_headers, then a ProcessStream with a handshake and three events. Prints one JSON
//       object with what came back and exits 0.
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { appendFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = dirname(fileURLToPath(import.meta.url));
const protoPath = join(here, "..", "..", "proto", "zentinel", "agent", "v2", "agent_v2.proto");
const def = protoLoader.loadSync(protoPath, { keepCase: true, longs: String, defaults: true, oneofs: true });
const pkg = grpc.loadPackageDefinition(def);
const Service = pkg.zentinel.agent.v2.AgentServiceV2;

function arg(name) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const mode = arg("--mode") ?? "allow";
const jitter = Number(arg("--jitter-ms") ?? 0);
const logFile = arg("--log");
const fixedDelay = mode.startsWith("delay:") ? Number(mode.slice(6)) || 0 : 0;

function record(msg) {
  if (!logFile || msg.message === "handshake" || msg.message === "ping") return;
  const line = { t: Date.now(), type: msg.message, id: correlationIdOf(msg) };
  if (msg.message === "request_headers") line.headers = Object.fromEntries(msg.request_headers.headers.map((h) => [h.name, h.value]));
  appendFileSync(logFile, JSON.stringify(line) + "\n");
}

function capabilities() {
  return {
    protocol_version: 2,
    agent_id: "grpcjs-agent",
    name: "grpc-js interop agent",
    version: "1.0.0",
    supported_events: [1, 2, 3, 4, 5],
    features: { streaming_body: true, concurrent_requests: 100 },
    limits: { max_body_size: "10485760", max_concurrency: 100, preferred_chunk_size: "65536" },
    health_config: { report_interval_ms: 10000 },
  };
}

function correlationIdOf(msg) {
  const kind = msg.message;
  if (kind === "request_headers") return msg.request_headers.metadata?.correlation_id ?? "";
  return msg[kind]?.correlation_id ?? "";
}

function header(headers, name) {
  const h = (headers ?? []).find((x) => x.name.toLowerCase() === name);
  return h ? h.value : undefined;
}

function decide(msg) {
  const kind = msg.message;
  const response = { correlation_id: correlationIdOf(msg), request_headers: [], response_headers: [], needs_more: false };
  if (mode === "block") {
    response.block = { status: 403, body: "grpcjs block", headers: [] };
  } else if (mode === "header-block" && kind === "request_headers") {
    const hs = msg.request_headers.headers;
    if (header(hs, "x-decision") === "block") response.block = { status: 403, body: "blocked by header", headers: [] };
    else response.allow = {};
    const tag = header(hs, "x-request-tag");
    if (tag !== undefined) response.response_headers.push({ set: { name: "x-request-tag", value: tag } });
  } else if (mode === "allow-with-mutations" && kind === "request_headers" && header(msg.request_headers.headers, "x-decision") === "block") {
    response.block = { status: 403, body: "blocked by header", headers: [{ name: "x-blocked-by", value: "grpcjs" }] };
  } else {
    response.allow = {};
    if (kind === "request_headers") response.response_headers.push({ set: { name: "x-grpcjs", value: "1" } });
    if (mode === "allow-with-mutations" && kind === "request_headers") {
      response.request_headers.push({ set: { name: "X-Grpcjs-Agent", value: "1" } }, { remove: "x-strip-me" });
      const tag = header(msg.request_headers.headers, "x-request-tag");
      if (tag !== undefined) response.response_headers.push({ set: { name: "x-request-tag", value: tag } });
    }
    if (mode === "allow-with-mutations" && kind === "response_headers") {
      response.response_headers.push({ set: { name: "x-grpcjs-saw-status", value: String(msg.response_headers.status_code) } });
    }
    if (kind === "request_body_chunk" || kind === "response_body_chunk") {
      const n = msg[kind].data.length;
      response.audit = { tags: [], rule_ids: [], reason_codes: [], custom: { bytes: String(n), quoted: JSON.stringify("rust-style") } };
    }
  }
  return { response };
}

function pong(ping) {
  return { pong: { sequence: ping.sequence, ping_timestamp_ms: ping.timestamp_ms, timestamp_ms: String(Date.now()) } };
}

function serve(address) {
  const server = new grpc.Server({ "grpc.max_receive_message_length": 4 * 1024 * 1024 });
  server.addService(Service.service, {
    ProcessStream(call) {
      let outstanding = 0;
      let ended = false;
      const maybeEnd = () => {
        if (ended && outstanding === 0) call.end();
      };
      call.on("data", (msg) => {
        const kind = msg.message;
        if (kind === "handshake") {
          call.write({ handshake: { protocol_version: 2, capabilities: capabilities(), success: true } });
        } else if (kind === "ping") {
          call.write(pong(msg.ping));
        } else if (kind === "cancel" || kind === "configure") {
          // no answer (as Rust agents)
        } else {
          record(msg);
          if (mode === "hang") return;
          outstanding++;
          const answer = decide(msg);
          const send = () => {
            outstanding--;
            if (!call.cancelled) call.write(answer);
            maybeEnd();
          };
          if (jitter > 0 || fixedDelay > 0) setTimeout(send, fixedDelay + Math.floor(Math.random() * jitter));
          else send();
        }
      });
      call.on("end", () => {
        ended = true;
        maybeEnd();
      });
      call.on("error", () => {});
    },
    ProcessEvent(call, callback) {
      const msg = call.request;
      const kind = msg.message;
      if (kind === "handshake") callback(null, { handshake: { protocol_version: 2, capabilities: capabilities(), success: true } });
      else if (kind === "ping") callback(null, pong(msg.ping));
      else callback(null, decide(msg));
    },
    ControlStream(call) {
      call.on("data", () => {});
      call.on("end", () => call.end());
      call.on("error", () => {});
    },
  });
  server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      console.error(err);
      process.exit(2);
    }
    process.stdout.write(`LISTENING ${port}\n`);
  });
  const stop = () => server.tryShutdown(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

function requestHeaders(id, headers) {
  return {
    request_headers: {
      metadata: {
        correlation_id: id,
        request_id: "rid-" + id,
        client_ip: "127.0.0.1",
        client_port: 4242,
        protocol: "HTTP/1.1",
        timestamp_ms: String(Date.now()),
      },
      method: "GET",
      uri: "/probe/" + id,
      http_version: "HTTP/1.1",
      headers: Object.entries(headers).map(([name, value]) => ({ name, value })),
    },
  };
}

async function probe(address) {
  const client = new Service(address, grpc.credentials.createInsecure());
  const unary = (msg) =>
    new Promise((resolve, reject) => client.ProcessEvent(msg, (err, res) => (err ? reject(err) : resolve(res))));
  const result = {};
  result.unaryPong = (await unary({ ping: { sequence: "7", timestamp_ms: "1000" } })).pong;
  result.unaryAnswer = (await unary(requestHeaders("u1", { "x-probe": "unary" }))).response;

  const call = client.ProcessStream();
  const answers = [];
  const done = new Promise((resolve, reject) => {
    call.on("data", (msg) => {
      if (msg.message === "handshake") {
        result.handshake = msg.handshake;
        call.write(requestHeaders("s1", { "x-probe": "stream" }));
        call.write(requestHeaders("s2", { "x-decision": "block" }));
        call.write({ request_body_chunk: { correlation_id: "s3", chunk_index: 0, data: Buffer.alloc(100_000, 120), is_last: true } });
        call.write({ ping: { sequence: "9", timestamp_ms: "5" } });
      } else if (msg.message === "response") {
        answers.push(msg.response);
      } else if (msg.message === "pong") {
        result.streamPong = msg.pong;
      }
      if (answers.length === 3 && result.streamPong) call.end();
    });
    call.on("end", resolve);
    call.on("error", reject);
  });
  call.write({ handshake: { supported_versions: [2, 1], proxy_id: "grpcjs-probe", proxy_version: "0", config_json: '{"probe":true}' } });
  await done;
  answers.sort((a, b) => a.correlation_id.localeCompare(b.correlation_id));
  result.streamAnswers = answers;
  process.stdout.write(JSON.stringify(result) + "\n");
  client.close();
}

const probeAddr = arg("--probe");
if (probeAddr) {
  probe(probeAddr).then(
    () => process.exit(0),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
} else {
  serve(arg("--listen") ?? "127.0.0.1:0");
}
