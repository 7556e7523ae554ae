// `npm run demo`: build the binary, then start (as separate processes, the way a supervisor
// would) the example upstream, the auth agent on a Unix socket, the WAF agent on gRPC and
// dist/sentinel -c examples/demo.kdl. Prints what to try; Ctrl-C stops everything.
//   --check   run the three example requests, verify them, stop, exit 0/1 (used by the tests)
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";

const root = join(import.meta.dir, "..");
const check = process.argv.includes("--check");
const bun = process.execPath;
const children: Subprocess[] = [];

function say(line: string): void {
  process.stdout.write(line + "\n");
}

async function startChild(name: string, cmd: string[], readyPattern: RegExp, timeoutMs = 15_000): Promise<void> {
  const proc = Bun.spawn(cmd, { cwd: root, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  children.push(proc);
  const deadline = Date.now() + timeoutMs;
  const dec = new TextDecoder();
  let seen = "";
  const watch = async (stream: ReadableStream<Uint8Array>, echo: boolean) => {
    for await (const chunk of stream) {
      const text = dec.decode(chunk);
      seen += text;
      if (echo && !check) for (const l of text.split("\n").filter(Boolean)) process.stdout.write(`[${name}] ${l}\n`);
    }
  };
  void watch(proc.stdout, false);
  void watch(proc.stderr, name === "sentinel");
  while (!readyPattern.test(seen)) {
    if (proc.exitCode !== null) throw new Error(`${name} exited (${proc.exitCode}): ${seen.slice(-500)}`);
    if (Date.now() > deadline) throw new Error(`${name} did not start in time: ${seen.slice(-500)}`);
    await Bun.sleep(50);
  }
}

async function stopAll(): Promise<void> {
  for (const c of children.reverse()) c.kill("SIGTERM");
  await Promise.all(children.map((c) => c.exited));
}

async function main(): Promise<number> {
  say("building dist/sentinel …");
  const build = Bun.spawnSync([bun, join(root, "scripts/build.ts")], { cwd: root, stdout: "ignore", stderr: "inherit" });
  if (build.exitCode !== 0) return 1;
  mkdirSync("/tmp/sentinel-demo", { recursive: true });

  await startChild("upstream", [bun, "examples/upstream.ts", "--port", "3000"], /READY/);
  await startChild("auth-agent", [bun, "examples/agents/auth-agent.ts", "--socket", "/tmp/sentinel-demo/auth.sock"], /READY/);
  await startChild("waf-agent", [bun, "examples/agents/waf-agent.ts", "--grpc", "127.0.0.1:50051"], /READY|gRPC on/);
  await startChild("sentinel", [join(root, "dist/sentinel"), "-c", "examples/demo.kdl"], /sentinel started/);

  const tries: Array<{ what: string; cmd: string; expect: number; headers: Record<string, string>; path: string }> = [
    { what: "allowed (valid API key)", cmd: `curl -i -H 'x-api-key: demo-key' http://127.0.0.1:8080/api/hello`, expect: 200, headers: { "x-api-key": "demo-key" }, path: "/api/hello" },
    { what: "refused by the auth agent (no key)", cmd: `curl -i http://127.0.0.1:8080/api/hello`, expect: 401, headers: {}, path: "/api/hello" },
    { what: "blocked by the WAF agent (SQL injection)", cmd: `curl -i -H 'x-api-key: demo-key' "http://127.0.0.1:8080/api/search?q=1'%20OR%201=1"`, expect: 403, headers: { "x-api-key": "demo-key" }, path: "/api/search?q=1'%20OR%201=1" },
  ];
  say("");
  say("Sentinel demo is running: proxy http://127.0.0.1:8080, metrics http://127.0.0.1:9090/metrics");
  say("Try:");
  for (const t of tries) say(`  ${t.cmd}\n      → ${t.expect}, ${t.what}`);
  say(`  curl http://127.0.0.1:9090/metrics | grep sentinel_agent`);

  if (!check) {
    say("\nCtrl-C stops everything.");
    await new Promise<void>((resolve) => {
      process.on("SIGINT", resolve);
      process.on("SIGTERM", resolve);
    });
    await stopAll();
    return 0;
  }

  let ok = true;
  // Agents connect in the background; give them a moment to be reachable.
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const r = await fetch("http://127.0.0.1:8080/api/hello", { headers: { "x-api-key": "demo-key" } }).catch(() => undefined);
    if (r?.status === 200) break;
    await Bun.sleep(100);
  }
  for (const t of tries) {
    const res = await fetch(`http://127.0.0.1:8080${t.path}`, { headers: t.headers });
    const good = res.status === t.expect;
    ok &&= good;
    say(`${good ? "ok  " : "FAIL"} ${t.what}: ${res.status}`);
  }
  const metrics = await (await fetch("http://127.0.0.1:9090/metrics")).text();
  const hasAgentMetrics = metrics.includes('sentinel_agent_health{agent="auth"} 1') && metrics.includes('sentinel_agent_health{agent="waf"} 1');
  say(`${hasAgentMetrics ? "ok  " : "FAIL"} metrics show both agents healthy`);
  ok &&= hasAgentMetrics;
  await stopAll();
  return ok ? 0 : 1;
}

main()
  .then((code) => process.exit(code))
  .catch(async (err) => {
    process.stderr.write(`demo failed: ${(err as Error).message}\n`);
    await stopAll();
    process.exit(1);
  });
