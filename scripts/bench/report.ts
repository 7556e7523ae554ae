// Aggregation (medians of per-round figures and per-round ratios), target checks and the
// Markdown / console renderings of a benchmark run.

export interface RunRow {
  round: number;
  system: string;
  kind: string; // get | get64k | post16k | fixed5k
  profile: string; // t1c50 | t2c100 | c10@5000
  rps: number;
  p50: number;
  p75: number;
  p90: number;
  p99: number;
  p999?: number;
  errors: number;
  non2xx: number;
  requests: number;
  proxyCpuUs: number | null; // proxy CPU µs per request
  agentCpuUs: number | null;
  upstreamCpuUs: number;
  generatorCpuUs: number;
  foreignCores: number; // CPU used by other tenants during the run, in cores
  load1: number;
  at: string;
  /** Fixed-rate runs: mean number of other requests in flight when a request started. */
  inFlight?: number;
}

export interface Summary {
  system: string;
  label: string;
  kind: string;
  profile: string;
  rounds: number;
  rps: number;
  xDirect: number | null;
  xNginx: number | null;
  p50: number;
  p90: number;
  p99: number;
  p999?: number;
  errors: number;
  proxyCpuUs: number | null;
  cpuXNginx: number | null;
  agentCpuUs: number | null;
  peakRssMb: number | null;
}

export const median = (xs: number[]): number => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
};

export function summarize(rows: RunRow[], labels: Map<string, string>, peakRss: Map<string, number>): Summary[] {
  const groups = new Map<string, RunRow[]>();
  for (const r of rows) {
    const k = `${r.system}|${r.kind}|${r.profile}`;
    const g = groups.get(k);
    if (g) g.push(r);
    else groups.set(k, [r]);
  }
  const find = (system: string, r: RunRow) => rows.find((x) => x.system === system && x.kind === r.kind && x.profile === r.profile && x.round === r.round);
  const out: Summary[] = [];
  for (const [k, g] of groups) {
    const [system, kind, profile] = k.split("|") as [string, string, string];
    const ratio = (ref: string, f: (r: RunRow) => number | null) =>
      median(
        g.map((r) => {
          const o = find(ref, r);
          const a = f(r);
          const b = o ? f(o) : null;
          return a !== null && b !== null && b > 0 ? a / b : NaN;
        }),
      );
    const nz = (x: number) => (Number.isFinite(x) ? x : null);
    out.push({
      system,
      label: labels.get(system) ?? system,
      kind,
      profile,
      rounds: g.length,
      rps: median(g.map((r) => r.rps)),
      xDirect: system === "direct" ? 1 : nz(ratio("direct", (r) => r.rps)),
      xNginx: nz(ratio("nginx", (r) => r.rps)),
      p50: median(g.map((r) => r.p50)),
      p90: median(g.map((r) => r.p90)),
      p99: median(g.map((r) => r.p99)),
      p999: g[0]!.p999 !== undefined ? median(g.map((r) => r.p999 ?? NaN)) : undefined,
      errors: g.reduce((s, r) => s + r.errors + r.non2xx, 0),
      proxyCpuUs: nz(median(g.map((r) => r.proxyCpuUs ?? NaN))),
      cpuXNginx: system === "direct" ? null : nz(ratio("nginx", (r) => r.proxyCpuUs)),
      agentCpuUs: nz(median(g.map((r) => r.agentCpuUs ?? NaN))),
      peakRssMb: peakRss.has(system) ? peakRss.get(system)! / 1048576 : null,
    });
  }
  return out;
}

/** Median over rounds of (a / b) for two systems' figure in the same round. */
export function pairedRatio(rows: RunRow[], a: string, b: string, kind: string, profile: string, f: (r: RunRow) => number | null): number {
  const xs: number[] = [];
  for (const ra of rows) {
    if (ra.system !== a || ra.kind !== kind || ra.profile !== profile) continue;
    const rb = rows.find((x) => x.system === b && x.kind === kind && x.profile === profile && x.round === ra.round);
    const va = f(ra);
    const vb = rb ? f(rb) : null;
    if (va !== null && vb !== null && vb > 0) xs.push(va / vb);
  }
  return median(xs);
}

/** Median over rounds of (a − b). */
export function pairedDelta(rows: RunRow[], a: string, b: string, kind: string, profile: string, f: (r: RunRow) => number | null): number {
  const xs: number[] = [];
  for (const ra of rows) {
    if (ra.system !== a || ra.kind !== kind || ra.profile !== profile) continue;
    const rb = rows.find((x) => x.system === b && x.kind === kind && x.profile === profile && x.round === ra.round);
    const va = f(ra);
    const vb = rb ? f(rb) : null;
    if (va !== null && vb !== null) xs.push(va - vb);
  }
  return median(xs);
}

export interface Target {
  name: string;
  bar: string;
  value: string;
  pass: boolean | null; // null = not measured
}

const f0 = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? "–" : Math.round(x).toLocaleString("en-US"));
const f1 = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(1));
const f2 = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(2));
const f3 = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(3));
export const fmt = { f0, f1, f2, f3 };

export function summaryTable(s: Summary[], fixed = false): string {
  const head = fixed
    ? "| system | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | proxy CPU µs/req | ×nginx CPU | agent CPU µs/req |\n|---|---|---|---|---|---|---|---|---|---|\n"
    : "| system | req/s | ×direct | ×nginx | p50 ms | p90 ms | p99 ms | errors | proxy CPU µs/req | ×nginx CPU | agent CPU µs/req | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  return (
    head +
    s
      .map((r) =>
        fixed
          ? `| ${r.label} | ${f0(r.rps)} | ${f3(r.p50)} | ${f3(r.p90)} | ${f3(r.p99)} | ${f3(r.p999)} | ${r.errors} | ${f1(r.proxyCpuUs)} | ${f2(r.cpuXNginx)} | ${f1(r.agentCpuUs)} |`
          : `| ${r.label} | ${f0(r.rps)} | ${f2(r.xDirect)} | ${f2(r.xNginx)} | ${f2(r.p50)} | ${f2(r.p90)} | ${f2(r.p99)} | ${r.errors} | ${f1(r.proxyCpuUs)} | ${f2(r.cpuXNginx)} | ${f1(r.agentCpuUs)} | ${f0(r.peakRssMb)} |`,
      )
      .join("\n") +
    "\n"
  );
}

export function targetsTable(t: Target[]): string {
  return (
    "| target | bar | reached | |\n|---|---|---|---|\n" +
    t.map((x) => `| ${x.name} | ${x.bar} | ${x.value} | ${x.pass === null ? (x.value === "–" ? "not measured" : "") : x.pass ? "met" : "**missed**"} |`).join("\n") +
    "\n"
  );
}

export function rawTable(rows: RunRow[], labels: Map<string, string>): string {
  return (
    "| round | system | load | req/s | p50 ms | p90 ms | p99 ms | errors | non-2xx | proxy CPU µs/req | agent CPU µs/req | upstream CPU µs/req | generator CPU µs/req | foreign cores | load1 | at |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" +
    rows
      .map(
        (r) =>
          `| ${r.round} | ${labels.get(r.system) ?? r.system} | ${r.kind} ${r.profile} | ${f0(r.rps)} | ${f3(r.p50)} | ${f3(r.p90)} | ${f3(r.p99)} | ${r.errors} | ${r.non2xx} | ${f1(r.proxyCpuUs)} | ${f1(r.agentCpuUs)} | ${f1(r.upstreamCpuUs)} | ${f1(r.generatorCpuUs)} | ${f2(r.foreignCores)} | ${f2(r.load1)} | ${r.at} |`,
      )
      .join("\n") +
    "\n"
  );
}

/** Plain-text table for the console. */
export function consoleTable(s: Summary[]): string {
  const cols = ["system", "req/s", "×direct", "×nginx", "p50", "p99", "err", "CPUµs/req", "×ngxCPU", "agentµs"];
  const rows = s.map((r) => [r.label, f0(r.rps), f2(r.xDirect), f2(r.xNginx), f2(r.p50), f2(r.p99), String(r.errors), f1(r.proxyCpuUs), f2(r.cpuXNginx), f1(r.agentCpuUs)]);
  const w = cols.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((v, i) => (i === 0 ? v.padEnd(w[i]!) : v.padStart(w[i]!))).join("  ");
  return [line(cols), ...rows.map(line)].join("\n");
}
