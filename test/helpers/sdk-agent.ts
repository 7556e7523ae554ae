// A programmable agent built on our SDK, run as a real process over UDS or gRPC:
//   bun test/helpers/sdk-agent.ts (--socket PATH | --grpc HOST:PORT) [--log FILE]
// Prints "READY <address>" on stdout. Each received event is appended to --log as a JSON line.
// What it answers to request headers is chosen by the request header `x-want`:
//   block | redirect | challenge | redirect-bad | mutate-crlf | mutate-host | detect (allow with
//   audit rule ids) | (default) allow
// plus `x-delay-ms: N` to answer late. Request bodies containing "EVIL" are blocked (403);
// "REPLACE" in a body is replaced by "REPLACED". Response headers get `x-agent-saw-status`.
import { appendFileSync } from "node:fs";
import { serveUds } from "../../sdk/uds-server.ts";
import { serveGrpc } from "../../sdk/grpc-server.ts";
import { allow, block, challenge, redirect, removeHeader, setHeader } from "../../sdk/reply.ts";
import type { AgentHandler } from "../../sdk/types.ts";

const arg = (n: string) => {
  const i = process.argv.indexOf(n);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const logFile = arg("--log");
const record = (type: string, id: string, extra: Record<string, unknown> = {}) => {
  if (logFile) appendFileSync(logFile, JSON.stringify({ t: Date.now(), type, id, ...extra }) + "\n");
};
const first = (h: Record<string, string[]>, name: string) => h[name]?.[0];

const handler: AgentHandler = {
  info: { agentId: "sdk-test-agent", name: "sdk-test-agent", version: "1.0.0" },
  supportedEvents: [1, 2, 3, 4, 5, 8],
  onConfigure(config) {
    record("configure", "", { config });
  },
  async onRequestHeaders(e) {
    record("request_headers", e.correlationId, { uri: e.uri, tag: first(e.headers, "x-request-tag"), ctor: first(e.headers, "constructor") ?? null });
    const delay = Number(first(e.headers, "x-delay-ms") ?? 0);
    if (delay > 0) await Bun.sleep(delay);
    switch (first(e.headers, "x-want")) {
      case "block":
        return block(451, "blocked by test agent", { "x-blocked-by": "sdk-agent" }, { audit: { ruleIds: ["T-1"], tags: ["test"] } });
      case "redirect":
        return redirect("https://login.example/?r=1", 307);
      case "challenge":
        return challenge("captcha", { "site-key": "abc" });
      case "redirect-bad":
        return redirect("javascript:alert(1)");
      case "mutate-crlf":
        return allow({ requestHeaders: [setHeader("x-bad", "v\r\nx-injected: 1")] });
      case "detect":
        return allow({ audit: { ruleIds: ["D-1"], tags: ["detect-only"] } });
      case "mutate-host":
        return allow({ requestHeaders: [setHeader("Host", "evil.example")] });
    }
    const tag = first(e.headers, "x-request-tag");
    return allow({
      requestHeaders: [setHeader("X-Agent-User", "alice"), removeHeader("x-strip-me")],
      responseHeaders: tag ? [setHeader("x-request-tag", tag), setHeader("x-agent-resp", "1")] : [setHeader("x-agent-resp", "1")],
    });
  },
  onRequestBodyChunk(e) {
    const text = new TextDecoder().decode(e.data);
    record("request_body_chunk", e.correlationId, { bytes: e.data.byteLength, last: e.isLast });
    if (text.includes("EVIL")) return block(403, "evil body");
    if (text.includes("REPLACE")) return allow({ requestBodyMutation: { data: new TextEncoder().encode(text.replaceAll("REPLACE", "REPLACED")), chunkIndex: e.chunkIndex } });
    return allow();
  },
  onResponseHeaders(e) {
    record("response_headers", e.correlationId, { status: e.status });
    return allow({ responseHeaders: [setHeader("x-agent-saw-status", String(e.status))] });
  },
  onResponseBodyChunk(e) {
    record("response_body_chunk", e.correlationId, { bytes: e.data.byteLength });
    return allow();
  },
  onRequestComplete(e) {
    record("request_complete", e.correlationId, { status: e.status });
  },
};

const socket = arg("--socket");
const grpc = arg("--grpc");
const server = socket ? await serveUds(socket, handler) : await serveGrpc(grpc ?? "127.0.0.1:0", handler);
process.stdout.write(`READY ${socket ?? `127.0.0.1:${server.port}`}\n`);
const stop = () => void server.close().then(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
