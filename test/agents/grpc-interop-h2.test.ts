// Our HTTP/2 gRPC client (src/agents/grpc/h2/ via client.ts) against a real @grpc/grpc-js server
// under Node (nghttp2 + OpenSSL), for what grpc-interop.test.ts does not cover: TLS with ALPN h2,
// a server that would compress (gzip enabled) but must not since we accept only identity, a
// status error with a percent-encoded UTF-8 message, and RESOURCE_EXHAUSTED from the server's
// receive limit (a protocol error that ends the stream; the transport reconnects).
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AgentEvent, AgentTransport, TransportOptions } from "../../src/agents/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";
import { waitFor as poll } from "../helpers/proxy.ts";
import { grpcTransport, rejection, never } from "../helpers/agents.ts";

const root = join(import.meta.dir, "..", "..");
const nodeBin = Bun.which("node");
const openssl = Bun.which("openssl");

// A grpc-js agent: handshake, pong, and per request_headers uri:
//   /fail -> the stream ends with PERMISSION_DENIED "nope ✓ 100%"; anything else -> Allow with
//   a response header op x-grpcjs-uri. Options from env: TLS_CERT/TLS_KEY (PEM paths), MAX_RECV.
const SERVER = `
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { readFileSync } from "node:fs";
const def = protoLoader.loadSync("proto/zentinel/agent/v2/agent_v2.proto", { keepCase: true, longs: String, defaults: true, oneofs: true });
const Service = grpc.loadPackageDefinition(def).zentinel.agent.v2.AgentServiceV2;
const server = new grpc.Server({
  "grpc.max_receive_message_length": Number(process.env.MAX_RECV || 4194304),
  "grpc.default_compression_algorithm": 2,
  "grpc.default_compression_level": 2,
});
server.addService(Service.service, {
  processStream(call) {
    call.on("data", (msg) => {
      if (msg.message === "handshake") {
        call.write({ handshake: { protocol_version: 2, success: true, capabilities: { protocol_version: 2, agent_id: "grpcjs-h2", name: "grpc-js h2 interop", version: "1" } } });
      } else if (msg.message === "ping") {
        call.write({ pong: { sequence: msg.ping.sequence, ping_timestamp_ms: msg.ping.timestamp_ms, timestamp_ms: String(Date.now()) } });
      } else if (msg.message === "request_headers") {
        const e = msg.request_headers;
        if (e.uri === "/fail") {
          call.emit("error", { code: grpc.status.PERMISSION_DENIED, details: "nope ✓ 100%" });
          return;
        }
        call.write({ response: { correlation_id: e.metadata.correlation_id, allow: {}, response_headers: [{ set: { name: "x-grpcjs-uri", value: e.uri } }] } });
      } else if (msg.message === "request_body_chunk") {
        call.write({ response: { correlation_id: msg.request_body_chunk.correlation_id, allow: {} } });
      }
    });
    call.on("end", () => call.end());
    call.on("error", () => {});
  },
  processEvent(_call, cb) { cb({ code: grpc.status.UNIMPLEMENTED }); },
  controlStream(call) { call.on("error", () => {}); },
});
const creds = process.env.TLS_CERT
  ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: readFileSync(process.env.TLS_CERT), private_key: readFileSync(process.env.TLS_KEY) }], false)
  : grpc.ServerCredentials.createInsecure();
server.bindAsync("127.0.0.1:0", creds, (err, port) => {
  if (err) { console.error(err); process.exit(1); }
  console.log("LISTENING " + port);
});
`;

let dir = "";
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sentinel-grpcjs-h2-"));
  if (!openssl) return;
  const run = (args: string[]) => {
    const r = spawnSync(openssl, args, { cwd: dir, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
  };
  run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=h2-test-ca"]);
  run(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
  writeFileSync(join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  run(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "server.ext"]);
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const cleanup: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function startServer(env: Record<string, string> = {}): Promise<number> {
  // Evaluated with the repository as cwd, so "@grpc/grpc-js" resolves from its node_modules.
  const proc = Bun.spawn([nodeBin!, "--input-type=module", "-e", SERVER], { cwd: root, env: { ...process.env, ...env }, stdout: "pipe", stderr: "inherit" });
  cleanup.push(async () => {
    proc.kill();
    await proc.exited;
  });
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  let text = "";
  const deadline = performance.now() + 15_000;
  while (!/LISTENING (\d+)/.test(text)) {
    if (performance.now() > deadline) throw new Error(`grpc-js server did not start: ${text}`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`grpc-js server exited: ${text}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return Number(/LISTENING (\d+)/.exec(text)![1]);
}

function transport(endpoint: string, extra: Partial<TransportOptions> = {}) {
  const r = grpcTransport(endpoint, cleanup, { connectTimeoutMs: 3000, proxyVersion: "test", ...extra });
  r.t.start();
  return r;
}

const waitFor = (cond: () => boolean, ms = 8000, what = "condition") => poll(cond, ms, what, 10);

function ev(id: string, uri = "/"): AgentEvent {
  return requestHeadersEvent(id, { uri, headers: { "x-long": ["v".repeat(3000)] } });
}

describe.skipIf(!nodeBin)("our HTTP/2 gRPC client against @grpc/grpc-js", () => {
  test("cleartext: answers arrive uncompressed although the server has gzip enabled; 200 concurrent calls; ping", async () => {
    const port = await startServer();
    const { t } = transport(`http://127.0.0.1:${port}`);
    await waitFor(() => t.isConnected(), 8000, "handshake");
    expect(t.capabilities).toMatchObject({ agentId: "grpcjs-h2", name: "grpc-js h2 interop", version: "1" });
    const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => t.call(ev(`c${i}`, `/p/${i}`), never())));
    replies.forEach((r, i) => expect(r.responseHeaders).toEqual([{ op: "set", name: "x-grpcjs-uri", value: `/p/${i}` }]));
    await t.ping(2000);
  });

  test("a status error ends the stream: pending calls fail closed, the UTF-8 message is decoded, the transport reconnects", async () => {
    const port = await startServer();
    const { t, logs } = transport(`http://127.0.0.1:${port}`);
    await waitFor(() => t.isConnected(), 8000, "handshake");
    const err = await rejection(t.call(ev("f1", "/fail"), never()));
    expect(err.kind).toBe("closed");
    expect(err.message).toContain("nope ✓ 100%");
    expect(logs.some((l) => l.msg === "grpc agent stream closed" && String(l.fields?.reason).includes("permission_denied"))).toBe(true);
    await waitFor(() => t.isConnected(), 8000, "reconnect");
    expect((await t.call(ev("ok"), never())).responseHeaders[0]).toMatchObject({ value: "/" });
  });

  test("the server's receive limit (RESOURCE_EXHAUSTED) is a protocol error for what was in flight", async () => {
    const port = await startServer({ MAX_RECV: String(64 * 1024) });
    const { t } = transport(`http://127.0.0.1:${port}`);
    await waitFor(() => t.isConnected(), 8000, "handshake");
    const data = new Uint8Array(200 * 1024).fill(66);
    const err = await rejection(
      t.call({ type: "request_body_chunk", correlationId: "big", data, isLast: true, totalSize: data.length, chunkIndex: 0, bytesTransferred: data.length }, never()),
    );
    expect(err.kind).toBe("protocol");
    await waitFor(() => t.isConnected(), 8000, "reconnect");
    expect((await t.call(ev("small"), never())).correlationId).toBe("small");
  });

  test.skipIf(!openssl)("TLS with ALPN h2: verified against the CA, refused without it, accepted when insecure", async () => {
    const port = await startServer({ TLS_CERT: join(dir, "server.pem"), TLS_KEY: join(dir, "server.key") });
    const ok = transport(`https://127.0.0.1:${port}`, { tls: { caCert: join(dir, "ca.pem"), insecure: false } });
    await waitFor(() => ok.t.isConnected(), 8000, "TLS handshake");
    const r = await ok.t.call(ev("tls-1", "/tls"), never());
    expect(r.responseHeaders).toEqual([{ op: "set", name: "x-grpcjs-uri", value: "/tls" }]);

    const strict = transport(`https://127.0.0.1:${port}`, { tls: { insecure: false } });
    await Bun.sleep(500);
    expect(strict.t.isConnected()).toBe(false);
    expect(strict.logs.some((l) => /verify|certificate/i.test(String(l.fields?.reason)))).toBe(true);

    const loose = transport(`https://127.0.0.1:${port}`, { tls: { insecure: true } });
    await waitFor(() => loose.t.isConnected(), 8000, "insecure TLS handshake");
  });
});
