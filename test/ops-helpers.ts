// Shared by the test/ops-*.test.ts files: a strict Prometheus text-format parser and a load
// generator that records every failure.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Scrape {
  contentType: string;
  types: Map<string, string>;
  helps: Map<string, string>;
  samples: Sample[];
  text: string;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"(,|$)/y;

/** Parse Prometheus text exposition format 0.0.4; throws on any malformed line. */
export function parseProm(text: string): Omit<Scrape, "contentType" | "text"> {
  const types = new Map<string, string>();
  const helps = new Map<string, string>();
  const samples: Sample[] = [];
  const lines = text.split("\n");
  for (const [i, line] of lines.entries()) {
    if (line === "") continue;
    if (line.startsWith("# HELP ") || line.startsWith("# TYPE ")) {
      const rest = line.slice(7);
      const sp = rest.indexOf(" ");
      const name = sp < 0 ? rest : rest.slice(0, sp);
      if (!NAME.test(name)) throw new Error(`line ${i + 1}: bad metric name in ${JSON.stringify(line)}`);
      const arg = sp < 0 ? "" : rest.slice(sp + 1);
      if (line.startsWith("# TYPE ")) {
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(arg)) throw new Error(`line ${i + 1}: bad type ${arg}`);
        if (types.has(name)) throw new Error(`line ${i + 1}: duplicate TYPE for ${name}`);
        types.set(name, arg);
      } else helps.set(name, arg);
      continue;
    }
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$/.exec(line);
    if (!m) throw new Error(`line ${i + 1}: malformed sample ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    if (m[3]) {
      LABEL.lastIndex = 0;
      let pos = 0;
      while (pos < m[3].length) {
        LABEL.lastIndex = pos;
        const lm = LABEL.exec(m[3]);
        if (!lm) throw new Error(`line ${i + 1}: malformed labels ${JSON.stringify(m[3])}`);
        labels[lm[1]!] = lm[2]!.replace(/\\n/g, "\n").replace(/\\(["\\])/g, "$1");
        pos = LABEL.lastIndex;
      }
    }
    // Values as Go's strconv.ParseFloat reads them (Prometheus): NaN and Inf in any case.
    const raw = m[4]!.toLowerCase();
    const v = raw === "+inf" || raw === "inf" ? Infinity : raw === "-inf" ? -Infinity : raw === "nan" ? NaN : Number(m[4]);
    if (Number.isNaN(v) && raw !== "nan") throw new Error(`line ${i + 1}: bad value ${m[4]}`);
    samples.push({ name: m[1]!, labels, value: v });
  }
  // Every sample belongs to a declared family.
  for (const s of samples) {
    const base = s.name.replace(/_(bucket|sum|count)$/, "");
    if (!types.has(s.name) && !types.has(base)) throw new Error(`sample ${s.name} has no TYPE line`);
  }
  return { types, helps, samples };
}

export async function scrape(url: string): Promise<Scrape> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`scrape ${url}: ${res.status}`);
  const text = await res.text();
  return { contentType: res.headers.get("content-type") ?? "", text, ...parseProm(text) };
}

/** Sum of the samples named `name` whose labels include `labels`. */
export function value(s: Scrape, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  let found = false;
  for (const x of s.samples) {
    if (x.name !== name) continue;
    if (Object.entries(labels).some(([k, v]) => x.labels[k] !== v)) continue;
    sum += x.value;
    found = true;
  }
  return found ? sum : NaN;
}

export function series(s: Scrape, name: string): Sample[] {
  return s.samples.filter((x) => x.name === name);
}

export interface LoadStats {
  ok: number;
  failed: number;
  failures: string[];
  elapsedMs: number;
  rps: number;
}

/**
 * Keep `concurrency` requests in flight until stopped. `check` judges each response (return an
 * error text, or undefined when fine); any exception is a failure too.
 */
export function startLoad(
  concurrency: number,
  next: (i: number) => { url: string; init?: RequestInit },
  check: (res: Response, body: string, url: string) => string | undefined = (r) => (r.status === 200 ? undefined : `status ${r.status}`),
): { stop(): Promise<LoadStats>; stats(): LoadStats } {
  let running = true;
  let n = 0;
  const st: LoadStats = { ok: 0, failed: 0, failures: [], elapsedMs: 0, rps: 0 };
  const t0 = performance.now();
  const fail = (msg: string) => {
    st.failed++;
    if (st.failures.length < 20) st.failures.push(msg);
  };
  const worker = async () => {
    while (running) {
      const { url, init } = next(n++);
      try {
        const res = await fetch(url, init);
        const body = await res.text();
        const err = check(res, body, url);
        if (err) fail(`${url}: ${err}`);
        else st.ok++;
      } catch (e) {
        fail(`${url}: ${(e as Error)?.message ?? e}`);
      }
    }
  };
  const workers = Array.from({ length: concurrency }, worker);
  const snapshot = () => {
    st.elapsedMs = performance.now() - t0;
    st.rps = ((st.ok + st.failed) * 1000) / Math.max(1, st.elapsedMs);
    return { ...st, failures: [...st.failures] };
  };
  return {
    stats: snapshot,
    async stop() {
      running = false;
      await Promise.all(workers);
      return snapshot();
    },
  };
}
