// `npm run soak` — a long run of the compiled binary with injected faults (not part of npm test).
//
//   bun scripts/soak.ts [--requests 1000000] [--concurrency 48] [--faults 30] [--json FILE]
//
// Stack: the recording raw upstream (counting only), the catalog configuration, the auth agent
// over UDS (/admin, fail-closed) and the WAF agent over gRPC (/open, fail-open), dist/sentinel.
// Load: a fixed mix — GET/POST on /public, /admin with and without credentials, /open, odd
// methods/paths/hosts (to check that metric series stay bounded) — at a fixed concurrency.
// Faults, spread evenly over the run, one at a time, cycling through:
//   agent-kill        SIGKILL the auth agent, restart it 500 ms later, wait until /admin works
//   waf-hang          SIGSTOP the WAF agent for 1 s (fail-open: /open must keep answering 200)
//   upstream-restart  stop the upstream (every socket dropped), start it again 300 ms later
// plus client aborts (1 % of requests, aborted 0–40 ms after they start).
// Every failure is either explained by a fault whose window it overlaps (agent-kill: /admin
// 5xx; upstream-restart: 502/503/504 anywhere; client aborts: the abort) or counted as
// unexpected. RSS of the proxy is sampled at start, after warm-up, in the middle and at the end.
// Exit code 0 when: no unexpected error, every fault recovered, end RSS at most 10 % above the
// post-warm-up RSS, and metric series bounded: no label value taken from a request (path, host,
// id), and at most a handful of new label combinations after the first fault cycle (e.g. the
// first 5xx of an odd method on a route).
import { readRss } from "../test/helpers/proxy.ts";
import { startRawUpstream, type RawUpstream } from "../test/security/raw-upstream.ts";
import { catalogConfig, scrape, startHostileAgent, startProxy, tempDir, waitFor, type HostileAgent, type ProxyProcess } from "../test/security/harness.ts";

export interface SoakOptions {
  requests: number;
  concurrency: number;
  faults: number;
  /** Where the post-warm-up RSS is taken, as a fraction of the run (default 0.02, at least 5000 requests). */
  warmupFraction?: number;
  /** Allowed end-vs-warm RSS difference in percent (default 10). */
  rssTolerancePct?: number;
  log?: (line: string) => void;
}

export interface FaultRecord {
  kind: "agent-kill" | "waf-hang" | "upstream-restart";
  atRequest: number;
  start: number;
  end?: number;
  recoveredMs?: number;
  /** Failed requests explained by this fault. */
  explained: number;
}

export interface SoakReport {
  requests: number;
  seconds: number;
  rps: number;
  ok: Record<string, number>;
  explained: Record<string, number>;
  unexpected: Record<string, number>;
  unexpectedSamples: string[];
  clientAborts: { injected: number; aborted: number; completedFirst: number };
  faults: FaultRecord[];
  rss: { startMB: number; warmMB: number; middleMB: number; endMB: number; endVsWarmPct: number };
  metricSeries: { middle: number; end: number; added: string[]; fromRequests: string[] };
  passed: boolean;
  problems: string[];
}

type Kind = "public" | "post" | "bigpost" | "admin" | "admin-noauth" | "open" | "odd" | "abort";

function kindOf(i: number): Kind {
  const k = i % 100;
  if (k < 50) return "public";
  if (k < 60) return "post";
  if (k === 60) return "bigpost";
  if (k < 80) return "admin";
  if (k < 85) return "admin-noauth";
  if (k < 98) return "open";
  if (k === 98) return "odd";
  return "abort";
}

const EXPECTED: Record<Kind, number> = { public: 200, post: 200, bigpost: 200, admin: 200, "admin-noauth": 401, open: 200, odd: 200, abort: 200 };
const SMALL = new Uint8Array(4096).fill(0x61);
const BIG = new Uint8Array(64 * 1024).fill(0x62);
const ODD_METHODS = ["PATCH", "PUT", "DELETE", "OPTIONS", "PROPFIND"];

const mb = (b: number) => Math.round((b / 1024 / 1024) * 10) / 10;

export async function soak(opts: SoakOptions): Promise<SoakReport> {
  const log = opts.log ?? (() => {});
  const dir = tempDir("sentinel-soak-");
  let up: RawUpstream = await startRawUpstream({ record: false });
  const upPort = up.port;
  const A: HostileAgent = await startHostileAgent("uds", { dir, name: "auth", log: false });
  const W: HostileAgent = await startHostileAgent("grpc", { dir, name: "waf", mode: "allow", log: false });
  const proxy: ProxyProcess = await startProxy(catalogConfig({ upstream: up.address, auth: A.kdl(), waf: W.kdl(), agentConcurrency: 1000 }), { env: { SENTINEL_LOG_LEVEL: "info" } });
  const base = proxy.url;
  const good = { authorization: "Bearer good" };
  try {
    await waitFor(async () => (await fetch(`${base}/admin/warm`, { headers: good })).status === 200, 15_000, "auth agent ready");
    await waitFor(async () => (await fetch(`${base}/open/warm`)).status === 200, 15_000, "waf ready");

    const ok: Record<string, number> = {};
    const explained: Record<string, number> = {};
    const unexpected: Record<string, number> = {};
    const unexpectedSamples: string[] = [];
    const aborts = { injected: 0, aborted: 0, completedFirst: 0 };
    const faults: FaultRecord[] = [];
    const bump = (m: Record<string, number>, k: string) => (m[k] = (m[k] ?? 0) + 1);
    const rss = { start: readRss(proxy.proc.pid), warm: 0, middle: 0, end: 0 };
    /** Metric series after the first full cycle of fault kinds (every label combination seen), and at the end. */
    const series = { middle: 0, end: 0, added: [] as string[], fromRequests: [] as string[] };
    let middleSet = new Set<string>();
    const seriesNow = async () => (await scrape(proxy)).split("\n").filter((l) => l && !l.startsWith("#")).map((l) => l.slice(0, l.lastIndexOf(" ")));
    const countSeries = async () => {
      const now = await seriesNow();
      middleSet = new Set(now);
      return now.length;
    };

    // ---- faults ----------------------------------------------------------------------------
    let faultRunning: Promise<void> | null = null;
    const KINDS: FaultRecord["kind"][] = ["agent-kill", "waf-hang", "upstream-restart"];
    const faultEvery = Math.max(1, Math.floor(opts.requests / (opts.faults + 1)));
    let nextFault = faultEvery;

    async function adminWorks(): Promise<void> {
      // Closed breaker: several sequential successes in a row.
      let streak = 0;
      const deadline = Date.now() + 30_000;
      while (streak < 5) {
        if (Date.now() > deadline) throw new Error("auth agent did not recover within 30 s");
        const r = await fetch(`${base}/admin/probe`, { headers: good }).catch(() => null);
        if (r) await r.arrayBuffer();
        streak = r?.status === 200 ? streak + 1 : 0;
        if (streak < 5) await Bun.sleep(r?.status === 200 ? 5 : 50);
      }
    }
    async function publicWorks(): Promise<void> {
      let streak = 0;
      const deadline = Date.now() + 30_000;
      while (streak < 5) {
        if (Date.now() > deadline) throw new Error("upstream did not recover within 30 s");
        const r = await fetch(`${base}/public/probe`).catch(() => null);
        if (r) await r.arrayBuffer();
        streak = r?.status === 200 ? streak + 1 : 0;
        if (streak < 5) await Bun.sleep(20);
      }
    }

    async function inject(kind: FaultRecord["kind"], atRequest: number): Promise<void> {
      const f: FaultRecord = { kind, atRequest, start: performance.now(), explained: 0 };
      faults.push(f);
      log(`fault ${faults.length}: ${kind} at request ${atRequest}`);
      if (kind === "agent-kill") {
        await A.kill("SIGKILL");
        await Bun.sleep(500);
        await A.restart();
        await adminWorks();
      } else if (kind === "waf-hang") {
        W.proc.kill("SIGSTOP");
        await Bun.sleep(1000);
        W.proc.kill("SIGCONT");
      } else {
        await up.stop();
        await Bun.sleep(300);
        up = await startRawUpstream({ record: false, port: upPort });
        await publicWorks();
      }
      // Requests that started before the recovery finish within the agent/upstream timeouts.
      f.end = performance.now() + 500;
      f.recoveredMs = Math.round(performance.now() - f.start);
      if (faults.length === KINDS.length) series.middle = await countSeries();
    }

    function explain(kind: Kind, status: number, t0: number, t1: number): FaultRecord | undefined {
      for (const f of faults) {
        const end = f.end ?? Infinity;
        if (t1 < f.start || t0 > end) continue;
        if (f.kind === "agent-kill" && (kind === "admin" || kind === "admin-noauth") && (status === 503 || status === 504)) return f;
        if (f.kind === "upstream-restart" && (status === 502 || status === 503 || status === 504 || status === 0)) return f;
      }
      return undefined;
    }

    // ---- load ------------------------------------------------------------------------------
    let issued = 0;
    let done = 0;
    const warmAt = Math.min(Math.max(5000, Math.floor(opts.requests * (opts.warmupFraction ?? 0.02))), Math.floor(opts.requests / 2) - 1);
    const middleAt = Math.floor(opts.requests / 2);
    let sampling: Promise<void> | null = null;
    const started = performance.now();
    let lastReport = started;

    async function one(i: number): Promise<void> {
      const kind = kindOf(i);
      let url = `${base}/public/s${i % 64}`;
      const init: RequestInit & { headers: Record<string, string> } = { headers: {} };
      switch (kind) {
        case "post":
          url = `${base}/public/r/sha/p`;
          init.method = "POST";
          init.body = SMALL;
          break;
        case "bigpost":
          url = `${base}/public/up`;
          init.method = "POST";
          init.body = BIG;
          break;
        case "admin":
          url = `${base}/admin/x${i % 16}`;
          init.headers = { ...good };
          break;
        case "admin-noauth":
          url = `${base}/admin/x`;
          break;
        case "open":
          url = `${base}/open/y${i % 16}`;
          break;
        case "odd":
          url = `${base}/public/rand-${Math.random().toString(36).slice(2)}?q=${i}`;
          init.method = ODD_METHODS[i % ODD_METHODS.length];
          init.headers = { host: `h${i % 1000}.example` };
          break;
        case "abort":
          url = `${base}/public/r/slow:20/a`;
          break;
      }
      let ac: AbortController | undefined;
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (kind === "abort") {
        aborts.injected++;
        ac = new AbortController();
        init.signal = ac.signal;
        timer = setTimeout(() => ac!.abort(), Math.random() * 40);
      }
      const t0 = performance.now();
      let status = 0;
      let err = "";
      try {
        const res = await fetch(url, init);
        status = res.status;
        await res.arrayBuffer();
      } catch (e) {
        err = (e as Error)?.name ?? "error";
        if (!ac?.signal.aborted) status = 0;
      }
      clearTimeout(timer);
      const t1 = performance.now();
      if (kind === "abort") {
        if (ac!.signal.aborted && (err || status === 0 || status === 200)) {
          if (err) aborts.aborted++;
          else aborts.completedFirst++;
          bump(explained, "client-abort");
          return;
        }
        aborts.completedFirst++;
      }
      if (!err && status === EXPECTED[kind]) {
        bump(ok, `${kind}:${status}`);
        return;
      }
      const label = err ? `${kind}:${err}` : `${kind}:${status}`;
      const f = explain(kind, status, t0, t1);
      if (f) {
        f.explained++;
        bump(explained, `${f.kind} → ${label}`);
      } else {
        bump(unexpected, label);
        if (unexpectedSamples.length < 20) unexpectedSamples.push(`${label} ${init.method ?? "GET"} ${url} at ${Math.round(t0 - started)} ms`);
      }
    }

    // The load runs for `requests` requests, and on until every planned fault has been injected
    // and has recovered (a fast proxy may finish the count before the faults are through).
    const more = () => issued < opts.requests || faults.length < opts.faults || faultRunning !== null;
    async function worker(): Promise<void> {
      for (;;) {
        if (!more()) return;
        const i = issued++;
        await one(i);
        done++;
        if ((done >= nextFault || issued >= opts.requests) && !faultRunning && faults.length < opts.faults) {
          nextFault += faultEvery;
          const kind = KINDS[faults.length % KINDS.length]!;
          faultRunning = inject(kind, done).finally(() => (faultRunning = null));
        }
        if (done === warmAt || done === middleAt) {
          const which = done === warmAt ? "warm" : "middle";
          sampling = (async () => {
            rss[which] = readRss(proxy.proc.pid);
            log(`rss ${which}: ${mb(rss[which])} MB after ${done} requests`);
          })();
        }
        if (performance.now() - lastReport > 10_000) {
          lastReport = performance.now();
          const s = (lastReport - started) / 1000;
          log(`${done} requests in ${s.toFixed(0)} s (${Math.round(done / s)} req/s), rss ${mb(readRss(proxy.proc.pid))} MB, unexpected ${Object.values(unexpected).reduce((a, b) => a + b, 0)}`);
        }
      }
    }

    await Promise.all(Array.from({ length: opts.concurrency }, worker));
    const seconds = (performance.now() - started) / 1000;
    await faultRunning;
    await sampling;
    await Bun.sleep(1000);
    rss.end = readRss(proxy.proc.pid);
    const endSeries = await seriesNow();
    series.end = endSeries.length;
    if (series.middle) series.added = endSeries.filter((x) => !middleSet.has(x));
    // Label values that could only come from requests: the odd requests' random paths and hosts.
    series.fromRequests = endSeries.filter((x) => /rand-|\.example|\/public\/|\/admin\/|\/open\//.test(x));
    if (!rss.warm) rss.warm = rss.start;
    if (!rss.middle) rss.middle = rss.warm;

    const problems: string[] = [];
    const unexpectedTotal = Object.values(unexpected).reduce((a, b) => a + b, 0);
    if (unexpectedTotal > 0) problems.push(`${unexpectedTotal} unexpected errors`);
    for (const f of faults) if (f.recoveredMs === undefined) problems.push(`fault ${f.kind} at ${f.atRequest} did not recover`);
    if (faults.length < Math.min(opts.faults, 3)) problems.push(`only ${faults.length} faults injected`);
    const endVsWarmPct = Math.round(((rss.end - rss.warm) / rss.warm) * 1000) / 10;
    // Growth is what a leak looks like; an end RSS below the warm-up one is memory given back.
    if (endVsWarmPct > (opts.rssTolerancePct ?? 10)) problems.push(`end RSS ${mb(rss.end)} MB is ${endVsWarmPct}% off the post-warm-up ${mb(rss.warm)} MB`);
    if (series.fromRequests.length > 0) problems.push(`metric labels taken from requests: ${series.fromRequests.slice(0, 3).join("; ")}`);
    if (series.added.length > 10) problems.push(`metric series grew from ${series.middle} to ${series.end} after the first fault cycle`);
    return {
      requests: done,
      seconds: Math.round(seconds * 10) / 10,
      rps: Math.round(done / seconds),
      ok,
      explained,
      unexpected,
      unexpectedSamples,
      clientAborts: aborts,
      faults: faults.map((f) => ({ ...f, start: Math.round(f.start - started), end: f.end === undefined ? undefined : Math.round(f.end - started) })),
      rss: { startMB: mb(rss.start), warmMB: mb(rss.warm), middleMB: mb(rss.middle), endMB: mb(rss.end), endVsWarmPct },
      metricSeries: series,
      passed: problems.length === 0,
      problems,
    };
  } finally {
    await proxy.stop("SIGKILL");
    W.proc.kill("SIGCONT");
    await A.kill();
    await W.kill();
    await up.stop();
  }
}

if (import.meta.main) {
  const arg = (n: string, d: number) => {
    const i = process.argv.indexOf(`--${n}`);
    return i >= 0 ? Number(process.argv[i + 1]) : d;
  };
  const jsonIdx = process.argv.indexOf("--json");
  const report = await soak({
    requests: arg("requests", 1_000_000),
    concurrency: arg("concurrency", 48),
    faults: arg("faults", 30),
    log: (l) => console.log(`[soak] ${l}`),
  });
  const text = JSON.stringify(report, null, 2);
  console.log(text);
  if (jsonIdx >= 0) await Bun.write(process.argv[jsonIdx + 1]!, text);
  console.log(report.passed ? "SOAK PASSED" : `SOAK FAILED: ${report.problems.join("; ")}`);
  process.exit(report.passed ? 0 : 1);
}
