// Start-up of the compiled binary as an operator sees it on stderr: the configured log level
// holds from the moment the config is read (the "worker-threads 0" notice included), and a
// SENTINEL_LOG_LEVEL that names no level is reported once instead of silently ignored.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { startProxy, tempDir, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

let up: Upstream;
const running: ProxyProcess[] = [];
beforeAll(() => {
  up = startUpstream("u");
});
afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  await up.stop();
});

const WORKER_NOTICE = /^worker-threads 0 runs one process/;

const config = (logging: string) => `system { worker-threads 0 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
routes { route "all" { priority "low"; upstream "u" } }
observability { logging { ${logging} } }
`;

/** Start with `logging`; stderr may hide "sentinel started", so the error-log file (info) says when. */
async function startQuiet(logging: string): Promise<ProxyProcess> {
  const dir = tempDir();
  const file = join(dir, "ops.jsonl");
  const p = await startProxy(config(`${logging}; error-log { file "ops.jsonl"; level "info" }`), { dir, expectFail: true });
  running.push(p);
  await waitFor(() => p.proc.exitCode !== null || (existsSync(file) && readFileSync(file, "utf8").includes('"sentinel started"')), 10_000, "sentinel started (error log)");
  expect(p.proc.exitCode).toBeNull();
  return p;
}

describe("operational log level at start-up", () => {
  // The notice is only given where there is more than one CPU.
  test.skipIf(availableParallelism() < 2)('logging { level "warn" } silences the worker-threads 0 notice (SENTINEL_LOG_LEVEL=debug notwithstanding); level "info" shows it', async () => {
    const quiet = await startQuiet(`level "warn"`);
    const loud = await startQuiet(`level "info"`);
    await waitFor(() => loud.logs.some((l) => WORKER_NOTICE.test(String(l.msg))), 5000, "the notice at level info");
    expect(quiet.logs.filter((l) => WORKER_NOTICE.test(String(l.msg)))).toEqual([]);
    expect(quiet.logs.filter((l) => l.level === "info" || l.level === "debug")).toEqual([]);
    for (const p of [quiet, loud]) expect(await p.stop()).toBe(0);
  }, 30_000);

  test("SENTINEL_LOG_LEVEL=bogus: one warning naming the valid levels, then info as by default; it keeps running", async () => {
    const p = await startProxy(config(`level "info"`), { env: { SENTINEL_LOG_LEVEL: "bogus" } });
    running.push(p);
    const warnings = p.logs.filter((l) => String(l.msg).includes("SENTINEL_LOG_LEVEL"));
    expect(warnings.length).toBe(1);
    expect(warnings[0]!.level).toBe("warn");
    expect(String(warnings[0]!.msg)).toContain('"bogus"');
    expect(String(warnings[0]!.msg)).toContain("debug, info, warn, error");
    expect((await fetch(`${p.url}/x`)).status).toBe(200);
    expect(await p.stop()).toBe(0);
  }, 20_000);

  test("SENTINEL_LOG_LEVEL=WARNING (any case, as the config accepts it) is a level: no warning", async () => {
    const p = await startProxy(config(`level "info"`), { env: { SENTINEL_LOG_LEVEL: "WARNING" } });
    running.push(p);
    expect(p.logs.filter((l) => String(l.msg).includes("SENTINEL_LOG_LEVEL"))).toEqual([]);
    expect(await p.stop()).toBe(0);
  }, 20_000);
});
