// Microbenchmark of the proxy's gRPC agent hop: how much CPU the proxy process spends per
// request_headers call through its own gRPC agent transport (src/agents/grpc/client.ts).
//
//   node_modules/.bin/bun scripts/bench/grpc-hop.ts [--n 20000] [--inflight 50] [--warmup 2000]
//                                                   [--agent echo|grpcjs] [--runs 1] [--gap tick|none]
//
// Starts the example echo agent in gRPC mode (examples/agents/echo-agent.ts, or the @grpc/grpc-js
// interop agent under Node with --agent grpcjs) as a child process, connects one transport, and
// drives N calls with `inflight` outstanding at any time. With --gap tick (default) each worker
// starts its next call in a later macrotask, as a new HTTP request would arrive, so calls are not
// artificially batched into one write; --gap none issues it at once from the answer's microtask. Reports, for this process only
// (process.cpuUsage(): user + system), CPU µs per call and calls/s. The agent's own CPU is not
// counted (it runs in its own process), but it shares the machine, so calls/s depends on it too.
// With --runs N > 1 a last line gives the medians (the numbers vary run to run on a busy host).
import { join } from "node:path";
import { createGrpcTransport } from "../../src/agents/grpc/client.ts";
import type { AgentEvent, AgentTransport } from "../../src/agents/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";

const ROOT = join(import.meta.dir, "..", "..");

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
}

const N = Number(arg("n", "20000"));
const INFLIGHT = Number(arg("inflight", "50"));
const WARMUP = Number(arg("warmup", "2000"));
const RUNS = Number(arg("runs", "1"));
const AGENT = arg("agent", "echo");
/** "tick": each next call starts in a later macrotask (like a new HTTP request would); "none": at once. */
const GAP = arg("gap", "tick");

async function startAgent(): Promise<{ port: number; proc: ReturnType<typeof Bun.spawn> }> {
  const cmd =
    AGENT === "grpcjs"
      ? [Bun.which("node") ?? "node", join(ROOT, "test/helpers/grpcjs-agent.mjs"), "--listen", "127.0.0.1:0", "--mode", "allow"]
      : [process.execPath, join(ROOT, "examples/agents/echo-agent.ts"), "--grpc", "127.0.0.1:0"];
  const proc = Bun.spawn(cmd, { cwd: ROOT, stdout: "pipe", stderr: "inherit", stdin: "ignore" });
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  let text = "";
  const deadline = performance.now() + 15_000;
  let m: RegExpExecArray | null = null;
  while (!(m = /(?:READY \S*:|LISTENING )(\d+)/.exec(text))) {
    if (performance.now() > deadline) throw new Error(`agent did not start: ${text}`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`agent exited: ${text}`);
    text += dec.decode(value);
  }
  reader.releaseLock();
  void (proc.stdout as ReadableStream<Uint8Array>).pipeTo(new WritableStream()).catch(() => {});
  return { port: Number(m[1]), proc };
}

function event(i: number): AgentEvent {
  return requestHeadersEvent(`bench-${i}`, {
    metadata: { clientPort: 40000 + (i % 20000), serverName: "bench.local", routeId: "bench", upstreamId: "app" },
    uri: "/bench?i=" + i,
    headers: { host: ["bench.local"], "user-agent": ["grpc-hop/1"], accept: ["*/*"] },
  });
}

async function drive(t: AgentTransport, n: number, base: number): Promise<void> {
  let next = 0;
  let failed = 0;
  const signal = new AbortController().signal;
  const worker = async (): Promise<void> => {
    while (next < n) {
      if (GAP === "tick") await new Promise<void>((r) => setImmediate(r));
      if (next >= n) break;
      const i = base + next++;
      try {
        const r = await t.call(event(i), signal);
        if (r.requestHeaders.length === 0 && AGENT === "echo") failed++;
      } catch {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(INFLIGHT, n) }, worker));
  if (failed > 0) throw new Error(`${failed} of ${n} calls failed`);
}

async function main(): Promise<void> {
  const agent = await startAgent();
  const t = createGrpcTransport({
    endpoint: `http://127.0.0.1:${agent.port}`,
    connectTimeoutMs: 5000,
    connections: 1,
    proxyVersion: "bench",
    log: () => {},
  });
  try {
    t.start();
    const end = performance.now() + 10_000;
    while (!t.isConnected()) {
      if (performance.now() > end) throw new Error("no handshake with the agent");
      await Bun.sleep(10);
    }
    await drive(t, WARMUP, 0);
    Bun.gc(true);
    const results: { cpu: number; rate: number }[] = [];
    for (let r = 0; r < RUNS; r++) {
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      await drive(t, N, WARMUP + r * N);
      const ms = performance.now() - t0;
      const cpu = process.cpuUsage(cpu0);
      const usPerCall = (cpu.user + cpu.system) / N;
      results.push({ cpu: usPerCall, rate: (N * 1000) / ms });
      console.log(
        JSON.stringify({
          agent: AGENT,
          n: N,
          inflight: INFLIGHT,
          gap: GAP,
          cpu_us_per_call: Number(usPerCall.toFixed(1)),
          user_us_per_call: Number((cpu.user / N).toFixed(1)),
          sys_us_per_call: Number((cpu.system / N).toFixed(1)),
          calls_per_s: Math.round((N * 1000) / ms),
          wall_ms: Math.round(ms),
        }),
      );
    }
    if (RUNS > 1) {
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
      console.log(
        JSON.stringify({
          summary: "median",
          agent: AGENT,
          runs: RUNS,
          inflight: INFLIGHT,
          cpu_us_per_call: Number(median(results.map((r) => r.cpu)).toFixed(1)),
          calls_per_s: Math.round(median(results.map((r) => r.rate))),
        }),
      );
    }
  } finally {
    await t.close();
    agent.proc.kill();
    await agent.proc.exited;
  }
}

await main();
