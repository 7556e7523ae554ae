// Logs through the compiled binary: JSON access lines and audit lines with their fields;
// combined format on stdout; structured operational logs at the configured level and the
// error-log file; rotation by rename + SIGHUP; a stuck log destination never blocks requests
// (bounded buffer, drops counted); RSS stays flat while logging to a file under load.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { constants, existsSync, openSync, closeSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readRss, startProxy, tempDir, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { agentTransportKdl, startAgent, type AgentProcess } from "./helpers/agents.ts";
import { scrape, startLoad, value } from "./ops-helpers.ts";
import { rawRequest } from "./helpers/raw.ts";

let up: Upstream;
beforeAll(() => {
  up = startUpstream("u");
});
afterAll(() => up.stop());

const lines = (file: string) => (existsSync(file) ? readFileSync(file, "utf8").split("\n").filter(Boolean) : []);
const jsonLines = (file: string) => lines(file).map((l) => JSON.parse(l) as Record<string, any>);

describe("access and audit logs", () => {
  let agent: AgentProcess;
  let proxy: ProxyProcess;
  let dir: string;
  beforeAll(async () => {
    agent = await startAgent("sdk", "uds");
    dir = tempDir();
    proxy = await startProxy(
      `
system { graceful-shutdown-timeout-secs 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "u" { target "${up.address}" }
  upstream "dead" { target "127.0.0.1:9" }
}
agents { agent "sdk" type="auth" { ${agentTransportKdl(agent)}; events "request_headers"; timeout-ms 2000; failure-mode "closed" } }
filters { filter "sdk" { type "agent"; agent "sdk" } }
routes {
  route "guarded" { matches { path-prefix "/guarded" }; upstream "u"; filters "sdk" }
  route "app" { matches { path-prefix "/app" }; upstream "u" }
  route "dead" { matches { path-prefix "/dead" }; upstream "dead" }
}
observability {
  logging {
    access-log { file "logs-access.jsonl"; format "json" }
    audit-log { file "logs-audit.jsonl" }
  }
  metrics { address "127.0.0.1:0" }
}
`,
      { dir },
    );
    await waitFor(async () => (await fetch(`${proxy.url}/guarded/x`)).status === 200, 10_000, "agent connected");
  }, 20_000);
  afterAll(async () => {
    await proxy?.stop("SIGKILL");
    await agent?.kill();
  });

  test("one JSON access line per request with the listed fields; an audit line per block/redirect/challenge", async () => {
    const access = join(dir, "logs-access.jsonl");
    const audit = join(dir, "logs-audit.jsonl");
    const post = await fetch(`${proxy.url}/app/./a//b/../echo?secret=1`, { method: "POST", body: "hello" });
    expect(await post.text()).toBe("hello");
    const trace = post.headers.get("x-correlation-id")!;
    const decisions: Record<string, number> = {};
    for (const want of ["allow", "block", "redirect", "challenge"]) {
      const r = await fetch(`${proxy.url}/guarded/${want}`, { headers: { "x-want": want }, redirect: "manual" });
      await r.text();
      decisions[want] = r.status;
    }
    expect(decisions).toEqual({ allow: 200, block: 451, redirect: 307, challenge: 403 });
    const mine = (l: Record<string, any>) => l.path === "/app/a/echo" || /^\/guarded\/(allow|block|redirect|challenge)$/.test(l.path);
    await waitFor(() => jsonLines(access).filter(mine).length >= 5 && jsonLines(audit).filter(mine).length >= 3, 3000, "log lines flushed");
    const got = jsonLines(access).filter(mine);
    expect(got.length).toBe(5);
    const echo = got.find((l) => l.trace_id === trace)!;
    expect(echo).toMatchObject({
      client_ip: "127.0.0.1",
      method: "POST",
      path: "/app/a/echo", // normalised, no query string
      route: "app",
      upstream: "u",
      target: up.address,
      status: 200,
      bytes_in: 5,
      bytes_out: 5,
      agents: [],
      error: null,
    });
    expect(new Date(echo.time).toISOString()).toBe(echo.time);
    expect(echo.duration_ms).toBeGreaterThan(0);
    for (const l of got) for (const k of ["time", "trace_id", "client_ip", "method", "path", "route", "upstream", "target", "status", "bytes_in", "bytes_out", "duration_ms", "agents"]) expect(l).toHaveProperty(k);
    const blocked = got.find((l) => l.path === "/guarded/block")!;
    expect(blocked.status).toBe(451);
    expect(blocked.target).toBeNull(); // never reached the upstream
    expect(blocked.agents).toHaveLength(1);
    expect(blocked.agents[0]).toMatchObject({ agent: "sdk", decision: "block", ruleIds: ["T-1"], tags: ["test"] });
    expect(blocked.agents[0].latencyMs).toBeGreaterThan(0);
    expect(got.find((l) => l.path === "/guarded/allow")!.agents[0]).toMatchObject({ agent: "sdk", decision: "allow" });

    const aud = jsonLines(audit).filter(mine); // (requests refused while the agent was still connecting are audited as error:connect)
    expect(aud.map((l) => l.decision).sort()).toEqual(["block", "challenge", "redirect"]);
    const b = aud.find((l) => l.decision === "block")!;
    expect(b).toMatchObject({ agent: "sdk", rule_ids: ["T-1"], tags: ["test"], route: "guarded", path: "/guarded/block", status: 451, method: "GET", client_ip: "127.0.0.1" });
    expect(b.trace_id).toBe(blocked.trace_id);
    expect(typeof b.latency_ms).toBe("number");
  });

  test("requests refused before routing get an access line with the raw path and the reason; a failed exchange names its target", async () => {
    const access = join(dir, "logs-access.jsonl");
    const raw = async (bytes: string) => (await rawRequest(proxy.url, bytes)).status;
    expect(await raw("TRACE /refused/trace HTTP/1.1\r\nHost: t\r\n\r\n")).toBe(405);
    expect(await raw("GET /refused/a%2fb?secret=1 HTTP/1.1\r\nHost: t\r\n\r\n")).toBe(400);
    expect(await raw("GET /refused/host HTTP/1.1\r\nHost: a b\r\n\r\n")).toBe(400);
    expect(await raw(`GET /refused/long${"x".repeat(9000)} HTTP/1.1\r\nHost: t\r\n\r\n`)).toBe(414);
    // A failed exchange keeps the target it tried in its line.
    const dead = await fetch(`${proxy.url}/dead/x`);
    expect(dead.status).toBe(502);
    const refused = (l: Record<string, any>) => String(l.path).startsWith("/refused/");
    await waitFor(() => jsonLines(access).filter(refused).length >= 4, 3000, "refused lines flushed");
    const got = jsonLines(access).filter(refused);
    expect(got.map((l) => l.status).sort()).toEqual([400, 400, 405, 414]);
    for (const l of got) {
      expect(l.route).toBeNull();
      expect(l.target).toBeNull();
      expect(l.client_ip).toBe("127.0.0.1");
      expect(String(l.error)).toStartWith("refused: ");
      expect(typeof l.trace_id).toBe("string");
      expect(l.path).not.toContain("secret"); // no query, as for served requests
    }
    expect(got.find((l) => l.status === 405)!.error).toContain("TRACE");
    expect(got.find((l) => l.path === "/refused/a%2fb")!.error).toContain("encoded slash");
    expect(got.find((l) => l.status === 414)!.path.length).toBeLessThanOrEqual(1025);
    await waitFor(() => jsonLines(access).some((l) => l.path === "/dead/x"), 3000, "the 502's line");
    expect(jsonLines(access).find((l) => l.path === "/dead/x")).toMatchObject({ status: 502, route: "dead", target: "127.0.0.1:9" });
    // …and a warn line in the operational log, at most one per target and second.
    for (let i = 0; i < 5; i++) expect((await fetch(`${proxy.url}/dead/again`)).status).toBe(502);
    const failed = proxy.logs.filter((l) => l.msg === "upstream request failed");
    expect(failed.length).toBeGreaterThanOrEqual(1);
    expect(failed.length).toBeLessThanOrEqual(2);
    expect(failed[0]).toMatchObject({ level: "warn", status: 502, target: "127.0.0.1:9", upstream: "dead", route: "dead" });
    expect(String(failed[0]!.error)).toContain("127.0.0.1:9");
  });

  test("rotation: rename the file and SIGHUP; new lines go to a new file, none are lost", async () => {
    const access = join(dir, "logs-access.jsonl");
    for (let i = 0; i < 10; i++) await (await fetch(`${proxy.url}/app/before-${i}`)).text();
    await waitFor(() => lines(access).filter((l) => l.includes("/app/before-")).length === 10, 3000, "lines before rotation");
    renameSync(access, access + ".1");
    for (let i = 0; i < 10; i++) await (await fetch(`${proxy.url}/app/between-${i}`)).text(); // still the old (renamed) file
    proxy.proc.kill("SIGHUP");
    await proxy.waitForLog((l) => l.msg === "config reloaded");
    for (let i = 0; i < 10; i++) await (await fetch(`${proxy.url}/app/after-${i}`)).text();
    await waitFor(() => lines(access).length === 10, 3000, "lines in the new file");
    expect(lines(access).every((l) => l.includes("/app/after-"))).toBe(true);
    const old = lines(access + ".1");
    expect(old.filter((l) => l.includes("/app/between-")).length).toBe(10);
  });

  test("audit-log log-waf-events: an allow that reports rule ids (detection only) is audited only when it is on", async () => {
    const access = join(dir, "logs-access.jsonl");
    const audit = join(dir, "logs-audit.jsonl");
    const detect = async (path: string) => {
      const r = await fetch(`${proxy.url}${path}`, { headers: { "x-want": "detect" } });
      expect(r.status).toBe(200);
      await r.text();
    };
    await detect("/guarded/detect-off");
    await waitFor(() => jsonLines(access).some((l) => l.path === "/guarded/detect-off"), 3000, "access line");
    // The access line carries the rules either way; the audit log has no line while the setting is off.
    expect(jsonLines(access).find((l) => l.path === "/guarded/detect-off")!.agents[0]).toMatchObject({ decision: "allow", ruleIds: ["D-1"], tags: ["detect-only"] });
    const reloads = () => proxy.logs.filter((l) => l.msg === "config reloaded").length;
    const before = reloads();
    const cfg = join(dir, "sentinel.kdl");
    writeFileSync(cfg, readFileSync(cfg, "utf8").replace('audit-log { file "logs-audit.jsonl" }', 'audit-log { file "logs-audit.jsonl"; log-waf-events #true }'));
    proxy.proc.kill("SIGHUP");
    await waitFor(() => reloads() > before, 5000, "reload");
    await detect("/guarded/detect-on");
    await (await fetch(`${proxy.url}/guarded/plain-allow`)).text();
    await waitFor(() => jsonLines(audit).some((l) => l.path === "/guarded/detect-on"), 3000, "audit line of the detection");
    await waitFor(() => jsonLines(access).some((l) => l.path === "/guarded/plain-allow"), 3000, "access line of the plain allow");
    expect(jsonLines(audit).find((l) => l.path === "/guarded/detect-on")).toMatchObject({ agent: "sdk", decision: "allow", rule_ids: ["D-1"], tags: ["detect-only"], status: 200 });
    expect(jsonLines(audit).some((l) => l.path === "/guarded/detect-off" || l.path === "/guarded/plain-allow")).toBe(false);
  });
});

describe("combined format, operational logs and levels", () => {
  test("combined access lines on stdout; JSON operational lines on stderr at the configured level; error-log file", async () => {
    const dir = tempDir();
    const cfg = (level: string, extra = "") => `
system { graceful-shutdown-timeout-secs 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
routes { route "app" { matches { path-prefix "/app" }; upstream "u" } }
observability {
  logging {
    level "${level}"
    access-log { format "combined" }
    ${extra}
  }
}
`;
    const proxy = await startProxy(cfg("info"), { dir });
    try {
      await (await fetch(`${proxy.url}/app/x%20y`, { headers: { "user-agent": 'curl/8 "quoted"', referer: "http://r.example/" } })).text();
      await waitFor(() => proxy.stdout.length >= 1, 3000, "combined line on stdout");
      expect(proxy.stdout[0]).toMatch(
        /^127\.0\.0\.1 - - \[\d{2}\/[A-Z][a-z]{2}\/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "GET \/app\/x%20y HTTP\/1\.1" 200 4 "http:\/\/r\.example\/" "curl\/8 \\"quoted\\""$/,
      );
      // Every operational line is JSON with time, level and msg.
      for (const l of proxy.logs) {
        expect(l.raw).toBeUndefined();
        expect(typeof l.time).toBe("string");
        expect(["debug", "info", "warn", "error"]).toContain(l.level as string);
        expect(typeof l.msg).toBe("string");
      }
      expect(proxy.logs.some((l) => l.level === "info" && l.msg === "sentinel started")).toBe(true);

      // Level "error" on stderr; warnings and errors also go to the error-log file.
      writeFileSync(proxy.configPath, cfg("error", `error-log { file "errors.jsonl"; level "warn" }`));
      proxy.proc.kill("SIGHUP");
      const errorLog = join(dir, "errors.jsonl");
      await waitFor(() => existsSync(errorLog), 5000, "error log opened");
      await Bun.sleep(300);
      const mark = proxy.logs.length;
      // A warning (restart-only change) and an error (invalid config).
      writeFileSync(proxy.configPath, cfg("error", `error-log { file "errors.jsonl"; level "warn" }`).replace("graceful-shutdown-timeout-secs 2", "graceful-shutdown-timeout-secs 3"));
      proxy.proc.kill("SIGHUP");
      await waitFor(() => jsonLines(errorLog).some((l) => l.msg === "config changes need a restart and were not applied"), 5000, "warning in the error log");
      writeFileSync(proxy.configPath, cfg("error", `error-log { file "errors.jsonl"; level "warn" }`) + "\nbogus {");
      proxy.proc.kill("SIGHUP");
      await proxy.waitForLog((l) => l.msg === "config reload failed; the running configuration stays in force");
      await waitFor(() => jsonLines(errorLog).some((l) => l.level === "error"), 5000, "error in the error log");
      const after = proxy.logs.slice(mark);
      expect(after.some((l) => l.level === "error" && l.msg === "config reload rejected" && /sentinel\.kdl:\d+:\d+: /.test(String(l.diagnostic)))).toBe(true);
      expect(after.filter((l) => l.level !== "error")).toEqual([]); // info and warn suppressed on stderr
      expect(jsonLines(errorLog).every((l) => l.level === "warn" || l.level === "error")).toBe(true);
    } finally {
      await proxy.stop("SIGKILL");
    }
  }, 20_000);
});

describe("log destination that stops draining", () => {
  test("requests keep flowing, lines beyond the bounded buffer are dropped and counted; shutdown still exits 0", async () => {
    const dir = tempDir();
    const fifo = join(dir, "stuck.log");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK); // a reader that never reads
    try {
      const proxy = await startProxy(
        `
system { graceful-shutdown-timeout-secs 5 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
routes { route "app" { matches { path-prefix "/app" }; upstream "u" } }
observability {
  logging { access-log { file "stuck.log" } }
  metrics { address "127.0.0.1:0" }
}
`,
        { dir },
      );
      // Lines are dropped only once the buffer holds its maximum (1 MiB): the drop counter moving
      // while requests keep succeeding quickly is the evidence that nothing piles up.
      const load = startLoad(16, (i) => ({ url: `${proxy.url}/app/${"x".repeat(500)}/${i}` }));
      const dropped = async () => value(await scrape(proxy.metricsUrl!), "sentinel_log_lines_dropped_total", { log: "access" });
      await waitFor(async () => (await dropped()) > 1000, 30_000, "drops counted");
      const rss1 = proxy.rss();
      const d1 = await dropped();
      await waitFor(async () => (await dropped()) > d1 + 3000, 30_000, "3,000 more drops");
      const rss2 = proxy.rss();
      const t0 = performance.now();
      expect((await fetch(`${proxy.url}/app/probe`)).status).toBe(200);
      expect(performance.now() - t0).toBeLessThan(1000);
      const st = await load.stop();
      expect(st.failed).toBe(0);
      console.log(`stuck log: RSS ${(rss1 / 1048576).toFixed(1)} MB -> ${(rss2 / 1048576).toFixed(1)} MB while 3,000 more lines were dropped; ${st.rps.toFixed(0)} req/s`);
      const t1 = Date.now();
      expect(await proxy.stop("SIGTERM")).toBe(0);
      expect(Date.now() - t1).toBeLessThan(5000);
    } finally {
      closeSync(reader);
    }
  }, 45_000);
});

describe("RSS while logging to a file under load (short soak; npm run soak:logs runs 10 minutes)", () => {
  test("RSS growth after warm-up stays small, and every request has its line", async () => {
    const dir = tempDir();
    const proxy = await startProxy(
      `
system { graceful-shutdown-timeout-secs 5 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
routes { route "app" { matches { path-prefix "/app" }; upstream "u" } }
observability {
  logging {
    access-log { file "soak-access.jsonl" }
    audit-log { file "soak-audit.jsonl" }
  }
}
`,
      { dir },
    );
    const WARMUP_MS = 5_000;
    const MEASURE_MS = 20_000;
    const load = startLoad(8, (i) => ({ url: `${proxy.url}/app/soak/${i}?q=${i % 97}` }));
    await Bun.sleep(WARMUP_MS);
    const samples: number[] = [];
    const t0 = Date.now();
    while (Date.now() - t0 < MEASURE_MS) {
      samples.push(readRss(proxy.proc.pid));
      await Bun.sleep(1000);
    }
    const st = await load.stop();
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const start = median(samples.slice(0, 3));
    const end = median(samples.slice(-3));
    const mb = (x: number) => (x / 1048576).toFixed(1);
    console.log(
      `soak (short): ${st.ok} requests at ${st.rps.toFixed(0)} req/s; RSS after warm-up ${mb(start)} MB, end ${mb(end)} MB, max ${mb(Math.max(...samples))} MB (growth ${mb(end - start)} MB)`,
    );
    expect(st.failed).toBe(0);
    expect(end - start).toBeLessThan(12 * 1024 * 1024);
    expect(await proxy.stop("SIGTERM")).toBe(0);
    // Flushed on shutdown: one line per request, nothing dropped.
    expect(lines(join(dir, "soak-access.jsonl")).length).toBe(st.ok);
  }, 60_000);
});
