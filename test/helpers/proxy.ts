// Start the compiled binary (dist/sentinel) as a child process with a config written to a temp
// dir; wait for its "sentinel started" log line (listeners may use port 0).
import { mkdtempSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

export const ROOT = join(import.meta.dir, "..", "..");
export const BINARY = join(ROOT, "dist", "sentinel");

export interface ProxyProcess {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  dir: string;
  configPath: string;
  /** Listener URLs in config order, e.g. http://127.0.0.1:41234 */
  urls: string[];
  url: string;
  metricsUrl?: string;
  logs: Array<Record<string, unknown>>;
  stdout: string[];
  waitForLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  rss(): number;
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

export function tempDir(prefix = "sentinel-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Poll `fn` every `everyMs` until it returns something truthy (returned); throw after `timeoutMs`. */
export async function waitFor<T>(fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000, what = "condition", everyMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as T;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(everyMs);
  }
}

export function readRss(pid: number): number {
  const status = require("node:fs").readFileSync(`/proc/${pid}/status`, "utf8") as string;
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

export async function startProxy(config: string, opts: { dir?: string; env?: Record<string, string>; expectFail?: boolean } = {}): Promise<ProxyProcess> {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} missing: run npm run build`);
  const dir = opts.dir ?? tempDir();
  const configPath = join(dir, "sentinel.kdl");
  writeFileSync(configPath, config);
  const proc = Bun.spawn([BINARY, "-c", configPath], {
    cwd: dir,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir, SENTINEL_LOG_LEVEL: "debug", ...opts.env },
  });
  const logs: Array<Record<string, unknown>> = [];
  const stdout: string[] = [];
  const waiters: Array<() => void> = [];
  const pump = async (stream: ReadableStream<Uint8Array>, sink: (line: string) => void) => {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of stream) {
      buf += dec.decode(chunk, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        sink(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    }
    if (buf) sink(buf);
  };
  void pump(proc.stderr, (line) => {
    try {
      logs.push(JSON.parse(line));
    } catch {
      logs.push({ raw: line });
    }
    for (const w of waiters.splice(0)) w();
  });
  void pump(proc.stdout, (line) => stdout.push(line));

  const waitForLog = async (pred: (l: Record<string, unknown>) => boolean, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = logs.find(pred);
      if (hit) return hit;
      if (proc.exitCode !== null) throw new Error(`proxy exited with ${proc.exitCode}: ${JSON.stringify(logs.slice(-5))}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for log line; last logs: ${JSON.stringify(logs.slice(-5))}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 100));
        waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  };

  const result: ProxyProcess = {
    proc,
    dir,
    configPath,
    urls: [],
    url: "",
    logs,
    stdout,
    waitForLog,
    rss: () => readRss(proc.pid),
    async stop(signal = "SIGTERM", timeoutMs = 15_000) {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill(signal);
      const t = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
      const code = await proc.exited;
      clearTimeout(t);
      return code;
    },
  };
  if (opts.expectFail) return result;
  const started = await waitForLog((l) => l.msg === "sentinel started");
  result.urls = started.listeners as string[];
  result.url = result.urls[0]!;
  result.metricsUrl = (started.metrics as string | null) ?? undefined;
  return result;
}

/** Run the binary to completion (validate, --version…). */
export function runBinary(args: string[], cwd?: string): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync([BINARY, ...args], { cwd: cwd ?? tempDir(), env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } });
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}
