// `npm run bench` — sentinel side by side with nginx and HAProxy on this machine.
//
//   npm run bench                 full run (3 rounds, 10 s per measurement, ~20 min); writes
//                                 docs/benchmarks.md and docs/benchmarks.json
//   npm run bench -- --quick      smoke run (< 2 min); writes .tmp/bench/bench-quick.json only
//
// Options: --rounds N, --duration S, --warmup S, --systems id,id (see scripts/bench/systems.ts),
// --json PATH, --md PATH (also for --quick), --no-md, --binary PATH (skip the build),
// --max-foreign CORES (wait until other tenants use less; default 0.5, quick: no wait), --keep,
// --without wrk,h2load,nginx,haproxy (behave as if those were not installed: tests the fallbacks).
//
// Method (research/peers.md §3, §6): one Bun upstream (13-byte body, /big = 64 KiB) shared by all
// systems; every system is started once, then measured in interleaved rounds (order reversed
// every other round) with a discarded warm-up before each measurement; ratios against the direct
// upstream and against nginx are computed within a round, then the median over rounds is
// reported. Proxy CPU per request comes from /proc (utime+stime of the proxy's whole process
// tree), which moves far less than req/s on a shared machine. Latency without saturation comes
// from a fixed-rate run (h2load --h1, 10 connections, 5,000 req/s in total, per-request log).
import { mkdirSync, readFileSync, writeFileSync, existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { cpus, totalmem, tmpdir } from "node:os";
import { saturate, fixedRate, type Profile, type RequestKind, type LoadResult, type Generators } from "./bench/load.ts";
import { SYSTEMS, startSystem, stopSystem, checkSystem, toolPaths, type Running, type Env, type SystemDef } from "./bench/systems.ts";
import {
  treeCpu,
  cpuDelta,
  machineJiffies,
  loadAverage,
  treeRss,
  treePeakRss,
  spawnChild,
  stopAll,
  stopChild,
  waitForPort,
  freePort,
  firstLine,
  CLK_TCK,
  type Child,
} from "./bench/procs.ts";
import { summarize, summaryTable, targetsTable, rawTable, consoleTable, pairedRatio, pairedDelta, median, fmt, type RunRow, type Target } from "./bench/report.ts";

const ROOT = join(import.meta.dir, "..");
const argv = process.argv.slice(2);
const flag = (n: string) => argv.includes(n);
const opt = (n: string) => {
  const i = argv.indexOf(n);
  return i >= 0 ? argv[i + 1] : undefined;
};

const QUICK = flag("--quick");
const ROUNDS = Number(opt("--rounds") ?? (QUICK ? 2 : 3));
// wrk takes whole seconds.
const DURATION = Math.max(1, Math.round(Number(opt("--duration") ?? (QUICK ? 2 : 10))));
const WARMUP = Math.max(1, Math.round(Number(opt("--warmup") ?? (QUICK ? 1 : 2))));
const FIXED_SECONDS = QUICK ? 2 : 10;
const FIXED_RATE = 5000;
const FIXED_CLIENTS = 10;
const FIXED_PROFILE = `c${FIXED_CLIENTS}@${FIXED_RATE}`;
const MAX_FOREIGN = Number(opt("--max-foreign") ?? 0.5);
const QUIET_WAIT_S = QUICK ? 0 : 30;
const JSON_OUT = opt("--json") ?? (QUICK ? join(ROOT, ".tmp", "bench", "bench-quick.json") : join(ROOT, "docs", "benchmarks.json"));
const MD_OUT = flag("--no-md") ? null : (opt("--md") ?? (QUICK ? null : join(ROOT, "docs", "benchmarks.md")));
const ONLY = opt("--systems")?.split(",");

/** Configs, sockets, logs and the binary of this run; removed at the end (also on failure) unless --keep. */
const WORK = join(tmpdir(), `sentinel-bench-${process.pid}`);

const PROFILES: Profile[] = QUICK ? [{ id: "t1c50", threads: 1, connections: 50 }] : [{ id: "t1c50", threads: 1, connections: 50 }, { id: "t2c100", threads: 2, connections: 100 }];

const log = (s: string) => process.stdout.write(s + "\n");
const loud = (s: string) => process.stdout.write(`\n${"!".repeat(78)}\n!! ${s.split("\n").join("\n!! ")}\n${"!".repeat(78)}\n\n`);

function sh(cmd: string[]): string {
  return firstLine(cmd);
}

function machine(): Record<string, string | number> {
  const os = existsSync("/etc/os-release") ? (/PRETTY_NAME="([^"]+)"/.exec(readFileSync("/etc/os-release", "utf8"))?.[1] ?? "") : "";
  return {
    cpu: cpus()[0]?.model ?? "?",
    cores: cpus().length,
    memory_gib: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: sh(["uname", "-r"]),
    os,
    clk_tck: CLK_TCK,
  };
}

interface Measurement {
  system: string;
  kind: RequestKind;
  profile: Profile;
}

async function main(): Promise<number> {
  const tools = toolPaths();
  for (const t of (opt("--without") ?? "").split(",").filter(Boolean)) if (t in tools) tools[t as keyof typeof tools] = null;
  const notes: string[] = [];
  if (!tools.wrk) {
    const n = "wrk is not installed: using the built-in Bun load generator (scripts/bench/loadgen.ts), which costs more CPU per request and\nshares the cores with the systems under test; its numbers are NOT comparable with wrk's. Install: apt-get install -y wrk";
    loud(n);
    notes.push(n.replace(/\n/g, " "));
  }
  if (!tools.h2load) {
    const n = "h2load is not installed: the fixed-rate latency run uses the built-in generator (1 ms pacing granularity).\nInstall: apt-get install -y nghttp2-client";
    loud(n);
    notes.push(n.replace(/\n/g, " "));
  }
  if (!tools.nginx || !tools.haproxy) {
    const n = `${[!tools.nginx && "nginx", !tools.haproxy && "haproxy"].filter(Boolean).join(" and ")} not installed: skipped, and ratios against nginx are not available.\nInstall: apt-get install -y nginx-light haproxy`;
    loud(n);
    notes.push(n.replace(/\n/g, " "));
  }

  mkdirSync(WORK, { recursive: true });
  const work = WORK;
  const bun = process.execPath;

  // 1. The binary under test, built from this checkout (not dist/, which others may rebuild).
  let sentinel = opt("--binary");
  if (!sentinel) {
    mkdirSync(join(work, "bin"), { recursive: true });
    sentinel = join(work, "bin", "sentinel");
    log(`building ${sentinel} …`);
    const b = Bun.spawnSync([bun, join(ROOT, "scripts", "build.ts")], { cwd: ROOT, env: { ...process.env, SENTINEL_OUTFILE: sentinel }, stdout: "pipe", stderr: "pipe" });
    if (b.exitCode !== 0) {
      process.stderr.write(b.stdout.toString() + b.stderr.toString());
      throw new Error("build failed");
    }
  }

  const gitRev = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]);
  const dirty = Bun.spawnSync(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).stdout.toString().trim() !== "";
  const versions: Record<string, string> = {
    sentinel: `${sh([sentinel, "--version"])} (git ${gitRev}${dirty ? ", uncommitted changes" : ""})`,
    bun: `bun ${Bun.version} (${Bun.revision.slice(0, 9)})`,
    wrk: tools.wrk ? sh([tools.wrk, "-v"]).split(" [")[0]! : "not installed",
    h2load: tools.h2load ? sh([tools.h2load, "--version"]) : "not installed",
    nginx: tools.nginx ? sh([tools.nginx, "-v"]) : "not installed",
    haproxy: tools.haproxy ? sh([tools.haproxy, "-v"]).split(" - ")[0]! : "not installed",
  };

  // 2. The upstream.
  const upstreamPort = await freePort();
  const upstream = spawnChild("upstream", [bun, join(ROOT, "scripts", "bench", "upstream.ts"), "--port", String(upstreamPort)], { env: { ...process.env, NODE_ENV: "production" } });
  await waitForPort(upstreamPort, 10_000);
  const env: Env = { root: ROOT, work, bun, sentinel, upstreamPort, nginx: tools.nginx, haproxy: tools.haproxy };
  const gen: Generators = { wrk: tools.wrk, h2load: tools.h2load, bun, loadgen: join(ROOT, "scripts", "bench", "loadgen.ts"), workDir: work };

  // 3. Systems.
  const defs = SYSTEMS.filter((s) => (ONLY ? ONLY.includes(s.id) || s.id === "direct" || s.id === "nginx" : QUICK ? s.quick : true)).filter(
    (s) => (s.kind !== "nginx" || tools.nginx) && (s.kind !== "haproxy" || tools.haproxy),
  );
  const running = new Map<string, Running>();
  const labels = new Map(SYSTEMS.map((s) => [s.id, s.label]));
  for (const d of defs) {
    const r = await startSystem(d, env);
    const chk = await checkSystem(r);
    if (!chk.ok) throw new Error(`${d.label} does not answer correctly through port ${r.port}: ${chk.detail}\n${r.main?.tail.join("\n") ?? ""}`);
    running.set(d.id, r);
    log(`started ${d.label.padEnd(42)} port ${r.port}  (listening after ${r.startMs.toFixed(0)} ms)`);
  }
  await Bun.sleep(1000);
  for (const r of running.values()) if (r.main) r.idleRssStart = treeRss(r.main.pid);

  // 4. Start-to-listening: fresh starts of sentinel without agents.
  const startTimes: number[] = [];
  if (running.has("sentinel")) {
    for (let i = 0; i < (QUICK ? 3 : 7); i++) {
      const r = await startSystem(SYSTEMS.find((s) => s.id === "sentinel")!, { ...env, work: join(work, "startup") });
      startTimes.push(r.startMs);
      await stopSystem(r);
    }
    log(`start to listening (sentinel, ${startTimes.length} starts): median ${median(startTimes).toFixed(1)} ms, min ${Math.min(...startTimes).toFixed(1)} ms`);
  }

  // 5. The measurement plan.
  const plan: Measurement[] = [];
  const has = (id: string) => running.has(id);
  const getSystems = defs.filter((d) => d.id !== "sentinel_body").map((d) => d.id);
  for (const p of PROFILES) for (const s of getSystems) plan.push({ system: s, kind: "get", profile: p });
  const t1 = PROFILES[0]!;
  // Quick mode keeps only what the smoke check needs: the body paths of sentinel itself.
  for (const s of (QUICK ? ["sentinel"] : ["direct", "nginx", "haproxy", "sentinel"]).filter(has)) plan.push({ system: s, kind: "get64k", profile: t1 });
  for (const s of (QUICK ? ["sentinel", "sentinel_body"] : ["direct", "nginx", "sentinel", "sentinel_body"]).filter(has)) plan.push({ system: s, kind: "post16k", profile: t1 });

  const ourPids = () => [upstream.pid, ...[...running.values()].flatMap((r) => [...(r.main ? [r.main.pid] : []), ...r.agents.map((a) => a.pid)])];

  async function waitQuiet(): Promise<number> {
    const t0 = Date.now();
    for (;;) {
      const c0 = treeCpu(ourPids());
      const j0 = machineJiffies();
      await Bun.sleep(500);
      const c1 = treeCpu(ourPids());
      const j1 = machineJiffies();
      const foreign = Math.max(0, (j1.busy - j0.busy) / CLK_TCK - cpuDelta(c0, c1)) / 0.5;
      if (foreign <= MAX_FOREIGN || Date.now() - t0 > QUIET_WAIT_S * 1000) return foreign;
    }
  }

  async function measure(m: { system: string; kind: string; profile: string }, round: number, run: () => Promise<LoadResult>): Promise<RunRow> {
    const r = running.get(m.system)!;
    const proxyPids = r.main ? [r.main.pid] : [];
    const agentPids = r.agents.map((a) => a.pid);
    const all0 = treeCpu(ourPids());
    const p0 = treeCpu(proxyPids);
    const a0 = treeCpu(agentPids);
    const u0 = treeCpu([upstream.pid]);
    const j0 = machineJiffies();
    const res = await run();
    const j1 = machineJiffies();
    const p1 = treeCpu(proxyPids);
    const a1 = treeCpu(agentPids);
    const u1 = treeCpu([upstream.pid]);
    const all1 = treeCpu(ourPids());
    const n = Math.max(1, res.requests);
    const ours = cpuDelta(all0, all1) + res.generatorCpu;
    const wall = res.seconds > 0 ? res.seconds : DURATION;
    const row: RunRow = {
      round,
      system: m.system,
      kind: m.kind,
      profile: m.profile,
      rps: res.rps,
      p50: res.p50,
      p75: res.p75,
      p90: res.p90,
      p99: res.p99,
      p999: res.p999,
      errors: res.errors,
      non2xx: res.non2xx,
      requests: res.requests,
      proxyCpuUs: r.main ? (cpuDelta(p0, p1) / n) * 1e6 : null,
      agentCpuUs: r.agents.length ? (cpuDelta(a0, a1) / n) * 1e6 : null,
      upstreamCpuUs: (cpuDelta(u0, u1) / n) * 1e6,
      generatorCpuUs: (res.generatorCpu / n) * 1e6,
      foreignCores: Math.max(0, (j1.busy - j0.busy) / CLK_TCK - ours) / wall,
      load1: loadAverage()[0],
      at: new Date().toISOString().slice(11, 19),
      ...(res.inFlight !== undefined ? { inFlight: res.inFlight } : {}),
    };
    commands.add(res.command.replace(/127\.0\.0\.1:\d+/, "127.0.0.1:$PORT"));
    return row;
  }

  const commands = new Set<string>();
  const rows: RunRow[] = [];
  const loadStart = loadAverage();
  const t0 = Date.now();
  const total = plan.length * ROUNDS;
  let done = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    const order = round % 2 === 1 ? plan : [...plan].reverse();
    for (const m of order) {
      const r = running.get(m.system)!;
      const foreignBefore = await waitQuiet();
      await saturate(gen, r.port, m.profile, WARMUP, m.kind);
      const row = await measure({ system: m.system, kind: m.kind, profile: m.profile.id }, round, () => saturate(gen, r.port, m.profile, DURATION, m.kind));
      rows.push(row);
      done++;
      log(
        `[${String(done).padStart(3)}/${total}] r${round} ${labels.get(m.system)!.padEnd(40)} ${m.kind.padEnd(7)} ${m.profile.id.padEnd(6)} ${fmt.f0(row.rps).padStart(8)} req/s  p50 ${fmt.f2(row.p50)} p99 ${fmt.f2(row.p99)} ms  proxy ${fmt.f1(row.proxyCpuUs)} µs/req${row.agentCpuUs !== null ? `  agent ${fmt.f1(row.agentCpuUs)}` : ""}  err ${row.errors + row.non2xx}  foreign ${fmt.f2(Math.max(foreignBefore, row.foreignCores))}`,
      );
    }
  }

  // 6. Fixed-rate latency (no saturation): h2load's own way (its connections fire together, see
  // fixedRate in scripts/bench/load.ts), then the same rate with the connections' arrivals spread.
  const fixedSystems = ["direct", "nginx", "haproxy", "sentinel", "sentinel_uds", "sentinel_grpc"].filter(has).filter((s) => !QUICK || !["haproxy", "sentinel_grpc"].includes(s));
  const fixedRounds = QUICK ? 1 : 2;
  for (let round = 1; round <= fixedRounds; round++) {
    const order = round % 2 === 1 ? fixedSystems : [...fixedSystems].reverse();
    for (const s of order) {
      await waitQuiet();
      const r = running.get(s)!;
      for (const [kind, spread] of [["fixed5k", false], ["fixed5ks", true]] as const) {
        if (spread && !gen.h2load) continue; // the fallback generator paces one schedule already
        const row = await measure({ system: s, kind, profile: FIXED_PROFILE }, round, () => fixedRate(gen, r.port, FIXED_RATE, FIXED_CLIENTS, FIXED_SECONDS, `${s}-${round}${spread ? "-spread" : ""}`, spread));
        rows.push(row);
        log(
          `fixed ${FIXED_RATE}/s ${spread ? "spread" : "h2load"} r${round} ${labels.get(s)!.padEnd(40)} p50 ${fmt.f3(row.p50)} p90 ${fmt.f3(row.p90)} p99 ${fmt.f3(row.p99)} ms  proxy ${fmt.f1(row.proxyCpuUs)} µs/req  err ${row.errors + row.non2xx}  in flight at start ${fmt.f2(row.inFlight ?? NaN)}`,
        );
      }
    }
  }
  const loadEnd = loadAverage();
  const minutes = (Date.now() - t0) / 60000;

  // 7. Memory after load, then stop everything.
  await Bun.sleep(2000);
  const peakRss = new Map<string, number>();
  const idleAfter = new Map<string, number>();
  for (const [id, r] of running) {
    if (!r.main) continue;
    peakRss.set(id, treePeakRss(r.main.pid));
    idleAfter.set(id, treeRss(r.main.pid));
  }
  for (const r of running.values()) await stopSystem(r);
  await stopChild(upstream);

  // 8. Summaries and targets.
  const summaries = summarize(rows, labels, peakRss);
  const order = (id: string) => SYSTEMS.findIndex((s) => s.id === id);
  const pick = (kind: string, profile: string) => summaries.filter((s) => s.kind === kind && s.profile === profile).sort((a, b) => order(a.system) - order(b.system));
  const main1 = pick("get", "t1c50");
  const fixed = pick("fixed5k", FIXED_PROFILE);
  const fixedSpread = pick("fixed5ks", FIXED_PROFILE);
  const get = (arr: typeof main1, id: string) => arr.find((s) => s.system === id);

  const targets: Target[] = [];
  const hasNginx = has("nginx");
  const fx = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : "–");
  const tp = (name: string, bar: string, value: number, ok: (v: number) => boolean, unit: string, digits = 2) =>
    targets.push({ name, bar, value: Number.isFinite(value) ? `${fx(value, digits)}${unit}` : "–", pass: Number.isFinite(value) && bar !== "(informative)" ? ok(value) : null });
  const T1 = "t1c50";
  if (has("sentinel")) {
    tp("sentinel, no agents: req/s vs nginx (wrk -t1 -c50)", "≥ 0.80×", hasNginx ? pairedRatio(rows, "sentinel", "nginx", "get", T1, (r) => r.rps) : NaN, (v) => v >= 0.8, "×");
    tp("sentinel, no agents: proxy CPU per request vs nginx", "≤ 1.30×", hasNginx ? pairedRatio(rows, "sentinel", "nginx", "get", T1, (r) => r.proxyCpuUs) : NaN, (v) => v <= 1.3, "×");
    tp("sentinel, no agents: p99 vs nginx at 5,000 req/s", "≤ 1.50×", hasNginx ? pairedRatio(rows, "sentinel", "nginx", "fixed5k", FIXED_PROFILE, (r) => r.p99) : NaN, (v) => v <= 1.5, "×");
    if (fixedSpread.length)
      tp("sentinel, no agents: p99 vs nginx at 5,000 req/s, arrivals spread", "(informative)", hasNginx ? pairedRatio(rows, "sentinel", "nginx", "fixed5ks", FIXED_PROFILE, (r) => r.p99) : NaN, () => true, "×");
    tp("sentinel, no agents: p99 vs nginx at saturation (wrk -t1 -c50)", "≤ 1.50× (informative)", hasNginx ? pairedRatio(rows, "sentinel", "nginx", "get", T1, (r) => r.p99) : NaN, (v) => v <= 1.5, "×");
  }
  if (has("sentinel_uds")) {
    tp("+ one UDS allow-agent: req/s vs sentinel without agents", "≥ 0.85×", pairedRatio(rows, "sentinel_uds", "sentinel", "get", T1, (r) => r.rps), (v) => v >= 0.85, "×");
    tp("+ one UDS allow-agent: added proxy CPU per request", "≤ 10 µs", pairedDelta(rows, "sentinel_uds", "sentinel", "get", T1, (r) => r.proxyCpuUs), (v) => v <= 10, " µs", 1);
    tp("+ one UDS allow-agent: added p50 at 5,000 req/s", "≤ 0.15 ms", pairedDelta(rows, "sentinel_uds", "sentinel", "fixed5k", FIXED_PROFILE, (r) => r.p50), (v) => v <= 0.15, " ms", 3);
    if (fixedSpread.length)
      tp("+ one UDS allow-agent: added p50 at 5,000 req/s, arrivals spread", "(informative)", pairedDelta(rows, "sentinel_uds", "sentinel", "fixed5ks", FIXED_PROFILE, (r) => r.p50), () => true, " ms", 3);
  }
  if (has("sentinel_grpc")) tp("+ one gRPC allow-agent: req/s vs sentinel without agents", "≥ 0.60×", pairedRatio(rows, "sentinel_grpc", "sentinel", "get", T1, (r) => r.rps), (v) => v >= 0.6, "×");
  // The logic-free reference proxies (scripts/bench/floor.ts): what the runtime itself allows.
  for (const [id, what] of [
    ["floor_fetch", "reference Bun.serve + fetch (naive)"],
    ["floor_serve", "reference Bun.serve + Bun.connect, no logic"],
    ["floor_raw", "reference Bun.listen + Bun.connect, no logic"],
    ["floor_rawreq", "reference Bun.listen + Bun.connect + web Request/Response objects"],
  ] as const) {
    if (!has(id) || !hasNginx) continue;
    tp(`${what}: req/s vs nginx`, "(informative)", pairedRatio(rows, id, "nginx", "get", T1, (r) => r.rps), () => true, "×");
    tp(`${what}: proxy CPU per request vs nginx`, "(informative)", pairedRatio(rows, id, "nginx", "get", T1, (r) => r.proxyCpuUs), () => true, "×");
  }
  if (has("floor_rawreq") && has("floor_raw"))
    tp("web Request/Response objects on a Bun.listen front end: proxy CPU per request they add", "(informative)", pairedDelta(rows, "floor_rawreq", "floor_raw", "get", T1, (r) => r.proxyCpuUs), () => true, " µs", 1);
  if (has("sentinel") && has("floor_serve"))
    tp("sentinel, no agents: proxy CPU per request above the Bun.serve floor", "(informative)", pairedDelta(rows, "sentinel", "floor_serve", "get", T1, (r) => r.proxyCpuUs), () => true, " µs", 1);
  const idleRss = running.get("sentinel")?.idleRssStart ?? NaN;
  if (has("sentinel")) {
    tp("idle RSS (sentinel, no agents, 1 s after start)", "≤ 70 MB", idleRss / 1048576, (v) => v <= 70, " MB", 1);
    tp("start to listening (median of fresh starts)", "≤ 100 ms", median(startTimes), (v) => v <= 100, " ms", 1);
  }
  const scaling: Record<string, number> = {};
  if (has("sentinel_w2")) for (const p of PROFILES) scaling[p.id] = pairedRatio(rows, "sentinel_w2", "sentinel", "get", p.id, (r) => r.rps);

  // 9. Output.
  log("\n== wrk -t1 -c50, GET 13 bytes (medians over rounds; ratios per round) ==");
  log(consoleTable(main1));
  for (const p of PROFILES.slice(1)) {
    log(`\n== wrk ${p.id}, GET 13 bytes ==`);
    log(consoleTable(pick("get", p.id)));
  }
  log("\n== GET 64 KiB (t1c50) ==");
  log(consoleTable(pick("get64k", T1)));
  log("\n== POST 16 KiB (t1c50) ==");
  log(consoleTable(pick("post16k", T1)));
  log(`\n== fixed rate ${FIXED_RATE} req/s, ${FIXED_CLIENTS} connections ==`);
  log(consoleTable(fixed));
  if (fixedSpread.length) {
    log(`\n== fixed rate ${FIXED_RATE} req/s, ${FIXED_CLIENTS} connections, arrivals spread ==`);
    log(consoleTable(fixedSpread));
  }
  log("\n== targets ==");
  for (const t of targets) log(`${t.pass === null ? (t.value === "–" ? "  ?  " : " info") : t.pass ? " met " : "MISS "} ${t.name}: ${t.value} (bar ${t.bar})`);
  for (const [p, v] of Object.entries(scaling)) log(`scaling 1 → 2 workers (${p}): ${fx(v)}×`);
  const load1 = rows.map((r) => r.load1).sort((a, b) => a - b);
  const during = { min: load1[0] ?? NaN, median: median(load1), max: load1[load1.length - 1] ?? NaN, foreign_cores_median: median(rows.map((r) => r.foreignCores)) };
  log(`\nload average: start ${loadStart.join(" ")}, end ${loadEnd.join(" ")}; 1-min load during the runs ${fx(during.min)}–${fx(during.max)} (median ${fx(during.median)}); other tenants' CPU median ${fx(during.foreign_cores_median)} cores; ${minutes.toFixed(1)} min`);

  const result = {
    date: new Date().toISOString(),
    mode: QUICK ? "quick" : "full",
    machine: machine(),
    versions,
    notes,
    settings: { rounds: ROUNDS, duration_s: DURATION, warmup_s: WARMUP, profiles: PROFILES.map((p) => p.id), fixed: { rate: FIXED_RATE, clients: FIXED_CLIENTS, seconds: FIXED_SECONDS, rounds: fixedRounds } },
    load_average: { start: loadStart, end: loadEnd, during },
    commands: [...commands],
    start_ms: startTimes,
    idle_rss_mb: Object.fromEntries([...running].filter(([, r]) => r.main).map(([id, r]) => [id, { start: r.idleRssStart / 1048576, after_load: (idleAfter.get(id) ?? 0) / 1048576 }])),
    scaling,
    targets,
    summaries,
    rows,
    configs: Object.fromEntries([...running].filter(([, r]) => r.configText).map(([id, r]) => [id, r.configText.replaceAll(work, "$WORK")])),
  };
  mkdirSync(join(JSON_OUT, ".."), { recursive: true });
  writeFileSync(JSON_OUT, JSON.stringify(result, null, 2) + "\n");
  log(`wrote ${JSON_OUT}`);
  if (MD_OUT) {
    writeFileSync(MD_OUT, markdown(result, { main1, t2: PROFILES.slice(1).map((p) => [p.id, pick("get", p.id)] as const), big: pick("get64k", T1), post: pick("post16k", T1), fixed, fixedSpread, labels, rows, idleAfter, running, minutes }));
    log(`wrote ${MD_OUT}`);
  }
  return 0;
}

/** Median over a fixed-rate kind's runs of the mean number of requests a request started behind. */
function inFlightAt(rows: RunRow[], kind: string): string {
  const v = median(rows.filter((r) => r.kind === kind && r.inFlight !== undefined).map((r) => r.inFlight!));
  return Number.isFinite(v) ? v.toFixed(2) : "(not measured)";
}

type Result = {
  date: string;
  mode: string;
  machine: Record<string, string | number>;
  versions: Record<string, string>;
  notes: string[];
  settings: { rounds: number; duration_s: number; warmup_s: number; profiles: string[]; fixed: { rate: number; clients: number; seconds: number; rounds: number } };
  load_average: { start: number[]; end: number[]; during: { min: number; median: number; max: number; foreign_cores_median: number } };
  commands: string[];
  start_ms: number[];
  scaling: Record<string, number>;
  targets: Target[];
  configs: Record<string, string>;
};

function markdown(
  r: Result,
  x: {
    main1: ReturnType<typeof summarize>;
    t2: ReadonlyArray<readonly [string, ReturnType<typeof summarize>]>;
    big: ReturnType<typeof summarize>;
    post: ReturnType<typeof summarize>;
    fixed: ReturnType<typeof summarize>;
    fixedSpread: ReturnType<typeof summarize>;
    labels: Map<string, string>;
    rows: RunRow[];
    idleAfter: Map<string, number>;
    running: Map<string, Running>;
    minutes: number;
  },
): string {
  const m = r.machine;
  const mem = [...x.running]
    .filter(([, v]) => v.main)
    .map(([id, v]) => `| ${x.labels.get(id)} | ${(v.idleRssStart / 1048576).toFixed(1)} | ${((x.idleAfter.get(id) ?? 0) / 1048576).toFixed(1)} | ${v.startMs.toFixed(0)} |`)
    .join("\n");
  const scaling = Object.entries(r.scaling)
    .map(([p, v]) => `| ${p} | ${Number.isFinite(v) ? v.toFixed(2) + "×" : "–"} |`)
    .join("\n");
  const existing = MD_OUT && existsSync(MD_OUT) ? readFileSync(MD_OUT, "utf8") : "";
  const notesStart = existing.indexOf("<!-- notes:begin -->");
  const notesEnd = existing.indexOf("<!-- notes:end -->");
  const handNotes = notesStart >= 0 && notesEnd > notesStart ? existing.slice(notesStart, notesEnd + "<!-- notes:end -->".length) : "<!-- notes:begin -->\n<!-- notes:end -->";
  return `# Benchmarks

Generated by \`npm run bench\` (scripts/bench.ts) on ${r.date.slice(0, 16).replace("T", " ")} UTC; ${r.mode} run, ${x.minutes.toFixed(1)} min.
Everything below the notes is rewritten by the next run; the notes between the markers are kept.

${handNotes}

**Machine**: ${m.cpu}, ${m.cores} cores, ${m.memory_gib} GiB, ${m.os}, kernel ${m.kernel}. Shared with other sessions running
their own test suites: load average ${r.load_average.start.join(" ")} at the start and ${r.load_average.end.join(" ")} at the end of the run,
1-minute load ${r.load_average.during.min.toFixed(2)}–${r.load_average.during.max.toFixed(2)} (median ${r.load_average.during.median.toFixed(2)}) during the measurements; other tenants used a median
${r.load_average.during.foreign_cores_median.toFixed(2)} cores while we measured (the "foreign cores" column of the raw table, per measurement).

**Versions**: ${Object.entries(r.versions)
    .map(([k, v]) => `${k}: ${v}`)
    .join("; ")}.
${r.notes.length ? "\n**Notes**: " + r.notes.join(" ") + "\n" : ""}
**Method**: one Bun upstream (\`scripts/bench/upstream.ts\`, 13-byte body; \`/big\` 64 KiB) behind every proxy; each system
started once, then ${r.settings.rounds} interleaved rounds (order reversed every other round), each measurement ${r.settings.duration_s} s after a
discarded ${r.settings.warmup_s} s warm-up. Figures are medians over rounds; ratios (×direct, ×nginx) are computed within each round, then
the median is taken. **Proxy CPU µs/req** is utime+stime of the proxy's whole process tree from /proc divided by the requests
served; agent CPU is the agent processes' (separate). Latency without saturation: ${r.settings.fixed.clients} connections at ${r.settings.fixed.rate.toLocaleString("en-US")} req/s
in total for ${r.settings.fixed.seconds} s (h2load per-request log), ${r.settings.fixed.rounds} rounds. Agents are the example agents built with the SDK
(\`examples/agents/echo-agent.ts\`, allow + one header mutation; \`waf-agent.ts\` for the body), each in its own process,
\`failure-mode "closed"\` (so an agent problem would show as errors).

## wrk -t1 -c50, GET (13-byte body)

${summaryTable(x.main1)}
${x.t2.map(([p, s]) => `## wrk ${p.replace("t", "-t").replace("c", " -c")}, GET (13-byte body)\n\n${summaryTable(s)}`).join("\n")}
## GET, 64 KiB body (wrk -t1 -c50)

${summaryTable(x.big)}
## POST, 16 KiB request body (wrk -t1 -c50)

The agent system runs the WAF example agent on \`request_headers\` + \`request_body\` (the whole 16 KiB body in one chunk).

${summaryTable(x.post)}
## Latency at a fixed ${r.settings.fixed.rate.toLocaleString("en-US")} req/s (not saturated)

h2load --h1 -c${r.settings.fixed.clients} --rps: h2load paces a connection with a 10 ms timer (5 requests back to back per tick at 500 req/s),
and its connections open together, so every 10 ms all of them send at once: a request started with ${inFlightAt(x.rows, "fixed5k")} others in
flight (median over runs of the mean), and its latency includes that queueing.

${summaryTable(x.fixed, true)}
${
  x.fixedSpread.length
    ? `
## Latency at a fixed ${r.settings.fixed.rate.toLocaleString("en-US")} req/s, arrivals spread

The same h2load and rate, but its connections open 1 ms apart (\`-r 1 --rate-period 1ms\`, \`-n\` for the same duration
plus 1 s whose requests are dropped as warm-up), so their 10 ms ticks fire 1 ms apart: a request started with
${inFlightAt(x.rows, "fixed5ks")} others in flight. This is closer to "no saturation"; the targets are judged on the table above (how the
issue's reference figures were taken), and these figures are reported beside them.

${summaryTable(x.fixedSpread, true)}
`
    : ""
}## Targets

${targetsTable(r.targets)}
${scaling ? `## Scaling with worker processes (\`system { worker-threads 2 }\`, reusePort)\n\nreq/s of 2 workers ÷ 1 worker, same round:\n\n| load | factor |\n|---|---|\n${scaling}\n` : ""}
## Memory and start-up

Start to listening over ${r.start_ms.length} fresh starts (sentinel, no agents): median ${median(r.start_ms).toFixed(1)} ms (${r.start_ms.map((v) => v.toFixed(0)).join(", ")}).

| system | RSS 1 s after start, MB | RSS 2 s after the load, MB | start to listening, ms |
|---|---|---|---|
${mem}

## Exact commands

\`\`\`
npm run bench${r.mode === "quick" ? " -- --quick" : ""}
${r.commands.join("\n")}
\`\`\`

<details><summary>Generated configurations</summary>

${Object.entries(r.configs)
  .map(([id, c]) => `**${x.labels.get(id)}**\n\n\`\`\`\n${c}\`\`\``)
  .join("\n\n")}

</details>

<details><summary>Raw rows (every measurement)</summary>

${rawTable(x.rows, x.labels)}
</details>
`;
}

process.on("SIGINT", () => {
  void cleanup().then(() => process.exit(130));
});

const cleanup = async () => {
  await stopAll();
  if (!flag("--keep")) rmSync(WORK, { recursive: true, force: true });
};

main()
  .then(async (code) => {
    await cleanup();
    process.exit(code);
  })
  .catch(async (err) => {
    process.stderr.write(`bench failed: ${(err as Error)?.stack ?? err}\n`);
    await cleanup();
    process.exit(1);
  });

export type { SystemDef, Child };
