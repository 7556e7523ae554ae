// `npm run soak:logs`: does RSS stay flat while the compiled binary logs every request to a file?
//
//   bun scripts/soak-logs.ts [--minutes 10] [--rps 500] [--concurrency 8] [--max-growth-mb 16]
//
// Starts a local upstream and dist/sentinel (access + audit log to files in a temp dir), drives
// paced load for the given time, rotates the access log every minute (rename + SIGHUP, as
// logrotate does; also keeps the disk use small), samples the proxy's RSS every 5 s and prints it
// at start (after a 30 s warm-up), middle and end. Checks at the end: no failed request, one
// log line per request (after the SIGTERM flush), and RSS end − start under --max-growth-mb.
// Exit 0 when all hold, 1 otherwise. This is a soak check, not a benchmark: keep --rps modest.
import { existsSync, readFileSync, renameSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { readRss, startProxy, tempDir, waitFor } from "../test/helpers/proxy.ts";
import { startUpstream } from "../test/helpers/upstream.ts";

const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};
const MINUTES = arg("minutes", 10);
const RPS = arg("rps", 500);
const CONCURRENCY = arg("concurrency", 8);
const MAX_GROWTH_MB = arg("max-growth-mb", 16);
const WARMUP_MS = Math.min(30_000, MINUTES * 60_000 * 0.1);
const ROTATE_MS = Math.min(60_000, MINUTES * 60_000 / 3);

const mb = (b: number) => (b / 1048576).toFixed(1);
const countLines = (file: string) => {
  if (!existsSync(file)) return 0;
  const buf = readFileSync(file);
  let n = 0;
  for (let i = 0; i < buf.length; i++) if (buf[i] === 10) n++;
  return n;
};

const up = startUpstream("soak");
const dir = tempDir("sentinel-soak-");
const access = join(dir, "access.jsonl");
const proxy = await startProxy(
  `
system { graceful-shutdown-timeout-secs 10 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
routes { route "app" { priority "low"; upstream "u" } }
observability {
  logging {
    level "info"
    access-log { file "access.jsonl"; format "json" }
    audit-log { file "audit.jsonl" }
  }
}
`,
  { dir },
);
console.log(`soak: ${MINUTES} min at ~${RPS} req/s (${CONCURRENCY} connections), proxy pid ${proxy.proc.pid}, logs in ${dir}`);

let running = true;
let ok = 0;
let failed = 0;
const interval = (CONCURRENCY * 1000) / RPS;
const worker = async (w: number) => {
  let i = w;
  while (running) {
    const t0 = performance.now();
    try {
      const r = await fetch(`${proxy.url}/soak/item-${i % 1000}?n=${i}`);
      await r.arrayBuffer();
      if (r.status === 200) ok++;
      else failed++;
    } catch {
      failed++;
    }
    i += CONCURRENCY;
    const left = interval - (performance.now() - t0);
    if (left > 0) await Bun.sleep(left);
  }
};
const workers = Array.from({ length: CONCURRENCY }, (_, w) => worker(w));

let logged = 0; // lines in rotated-away files
const samples: Array<{ t: number; rss: number }> = [];
const t0 = Date.now();
const end = t0 + MINUTES * 60_000;
let nextRotate = t0 + ROTATE_MS;
let reloads = 0;
while (Date.now() < end) {
  await Bun.sleep(5_000);
  const t = Date.now() - t0;
  const rss = readRss(proxy.proc.pid);
  samples.push({ t, rss });
  if (Date.now() >= nextRotate) {
    nextRotate += ROTATE_MS;
    renameSync(access, access + ".old");
    const before = proxy.logs.filter((l) => l.msg === "config reloaded").length;
    proxy.proc.kill("SIGHUP");
    await waitFor(() => proxy.logs.filter((l) => l.msg === "config reloaded").length > before, 10_000, "reload after SIGHUP");
    await Bun.sleep(1_000); // the old sink flushes and closes after the swap
    logged += countLines(access + ".old");
    unlinkSync(access + ".old");
    reloads++;
  }
  if (t % 60_000 < 5_000) console.log(`  ${(t / 60_000).toFixed(1)} min: RSS ${mb(rss)} MB, ${ok} ok, ${failed} failed`);
}
running = false;
await Promise.all(workers);
const code = await proxy.stop("SIGTERM", 20_000);
logged += countLines(access);
await up.stop();

const after = samples.filter((s) => s.t >= WARMUP_MS);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const start = median(after.slice(0, 3).map((s) => s.rss));
const middle = median(after.slice(Math.floor(after.length / 2) - 1, Math.floor(after.length / 2) + 2).map((s) => s.rss));
const last = median(after.slice(-3).map((s) => s.rss));
const max = Math.max(...samples.map((s) => s.rss));
console.log(`requests: ${ok} ok, ${failed} failed (${(ok / (MINUTES * 60)).toFixed(0)} req/s); log lines ${logged}; rotations ${reloads}; proxy exit ${code}`);
console.log(`RSS after ${WARMUP_MS / 1000} s warm-up: start ${mb(start)} MB, middle ${mb(middle)} MB, end ${mb(last)} MB, max ${mb(max)} MB, growth ${mb(last - start)} MB`);
const problems: string[] = [];
if (failed > 0) problems.push(`${failed} failed requests`);
if (logged !== ok) problems.push(`${logged} log lines for ${ok} requests`);
if (code !== 0) problems.push(`proxy exit code ${code}`);
if (last - start > MAX_GROWTH_MB * 1048576) problems.push(`RSS grew ${mb(last - start)} MB (limit ${MAX_GROWTH_MB} MB)`);
console.log(problems.length === 0 ? "soak: OK" : `soak: FAILED: ${problems.join("; ")}`);
process.exit(problems.length === 0 ? 0 : 1);
