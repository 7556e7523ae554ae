// Example echo agent: marks traffic so you can see an agent was in the path.
//
//   bun examples/agents/echo-agent.ts [--socket PATH] [--grpc HOST:PORT]
//
// Serves UDS on --socket (default /tmp/sentinel-echo.sock), gRPC on --grpc, or both.
// Prints "READY <address>" per listener on stdout.
//   request_headers  → set request header  `x-echo-agent: 1`, set response header `x-echo-agent-seen: 1`
//   response_headers → set response header `x-echo-agent-seen: 1`
import { allow, setHeader } from "../../sdk/reply.ts";
import type { AgentHandler, RunningServer } from "../../sdk/types.ts";
import { serveUds } from "../../sdk/uds-server.ts";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

export const echoHandler: AgentHandler = {
  info: { agentId: "echo-agent", name: "Sentinel example echo agent", version: "0.1.0" },
  supportedEvents: [1, 3],
  onRequestHeaders() {
    return allow({ requestHeaders: [setHeader("x-echo-agent", "1")], responseHeaders: [setHeader("x-echo-agent-seen", "1")] });
  },
  onResponseHeaders() {
    return allow({ responseHeaders: [setHeader("x-echo-agent-seen", "1")] });
  },
};

async function main(): Promise<void> {
  const grpc = arg("grpc");
  const socket = arg("socket") ?? (grpc ? undefined : "/tmp/sentinel-echo.sock");
  const servers: RunningServer[] = [];
  const stop = async () => {
    await Promise.all(servers.map((s) => s.close()));
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  if (socket) {
    const s = await serveUds(socket, echoHandler);
    servers.push(s);
    process.stdout.write(`READY ${s.address}\n`);
  }
  if (grpc) {
    const { serveGrpc } = await import("../../sdk/grpc-server.ts");
    const s = await serveGrpc(grpc, echoHandler);
    servers.push(s);
    process.stdout.write(`READY ${s.address}\n`);
  }
}

if (import.meta.main) await main();
