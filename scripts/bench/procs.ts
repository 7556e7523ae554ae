// Process plumbing for the benchmark: start/stop children by PID, wait for ports, read CPU time
// and memory of whole process trees from /proc (the steadiest figures on a shared machine).
import { readFileSync, readdirSync, existsSync } from "node:fs";
import type { Subprocess } from "bun";

export const CLK_TCK = (() => {
  try {
    const r = Bun.spawnSync(["getconf", "CLK_TCK"]);
    const n = Number(r.stdout.toString().trim());
    return n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

export interface Child {
  name: string;
  proc: Subprocess;
  pid: number;
  /** Last lines of stdout+stderr, for error reports. */
  tail: string[];
  /** Resolves with the first stdout line matching `READY` (or never). */
  ready: Promise<string>;
  exited: Promise<number | null>;
}

const children = new Set<Child>();

/** Spawn a child with piped output kept as a short tail; `READY …` on stdout resolves `ready`. */
export function spawnChild(name: string, cmd: string[], opts: { cwd?: string; env?: Record<string, string | undefined> } = {}): Child {
  const proc = Bun.spawn(cmd, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const tail: string[] = [];
  let readyResolve!: (line: string) => void;
  const ready = new Promise<string>((r) => (readyResolve = r));
  const pump = async (stream: ReadableStream<Uint8Array>, isStdout: boolean) => {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of stream) {
        buf += dec.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          tail.push(line);
          if (tail.length > 40) tail.shift();
          // The example agents print "READY <address>" (echo, auth) or "waf-agent: UDS on <path>".
          if (isStdout && (line.startsWith("READY") || / (UDS|gRPC) on /.test(line))) readyResolve(line);
        }
      }
    } catch {
      /* child gone */
    }
  };
  void pump(proc.stdout as ReadableStream<Uint8Array>, true);
  void pump(proc.stderr as ReadableStream<Uint8Array>, false);
  const child: Child = { name, proc, pid: proc.pid, tail, ready, exited: proc.exited.then((c) => c) };
  children.add(child);
  void child.exited.then(() => children.delete(child));
  return child;
}

/** SIGTERM, then SIGKILL after `graceMs`; by PID only. */
export async function stopChild(c: Child, graceMs = 3000): Promise<void> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  try {
    c.proc.kill("SIGTERM");
  } catch {
    /* gone */
  }
  const done = await Promise.race([c.exited.then(() => true), Bun.sleep(graceMs).then(() => false)]);
  if (!done) {
    for (const pid of descendants(c.pid)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* gone */
      }
    }
    try {
      c.proc.kill("SIGKILL");
    } catch {
      /* gone */
    }
    await c.exited;
  }
}

export async function stopAll(): Promise<void> {
  await Promise.all([...children].map((c) => stopChild(c)));
}

/** Children (recursively) of `pid`, including `pid` itself. */
export function descendants(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    const p = out[i]!;
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      continue;
    }
    for (const t of tasks) {
      try {
        const kids = readFileSync(`/proc/${p}/task/${t}/children`, "utf8").trim();
        if (kids) for (const k of kids.split(/\s+/)) out.push(Number(k));
      } catch {
        /* raced with exit */
      }
    }
  }
  return out;
}

/** utime+stime of one process (all its threads), in seconds; 0 if gone. */
export function processCpuSeconds(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    // fields after ")": state(3) ppid(4) … utime(14) stime(15) → indexes 11, 12 here
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** CPU seconds of a process tree, keyed by pid (so exits between samples can be handled). */
export function treeCpu(rootPids: number[]): Map<number, number> {
  const m = new Map<number, number>();
  for (const root of rootPids) for (const pid of descendants(root)) m.set(pid, processCpuSeconds(pid));
  return m;
}

/** CPU seconds used between two tree samples (processes present in both, or new ones). */
export function cpuDelta(before: Map<number, number>, after: Map<number, number>): number {
  let d = 0;
  for (const [pid, v] of after) d += v - (before.get(pid) ?? 0);
  return Math.max(0, d);
}

function statusField(pid: number, field: string): number {
  try {
    const s = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(s);
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Sum of VmRSS over a process tree, bytes. */
export function treeRss(rootPid: number): number {
  let n = 0;
  for (const pid of descendants(rootPid)) n += statusField(pid, "VmRSS");
  return n;
}

/** Sum of VmHWM (peak RSS) over a process tree, bytes. */
export function treePeakRss(rootPid: number): number {
  let n = 0;
  for (const pid of descendants(rootPid)) n += statusField(pid, "VmHWM");
  return n;
}

/** Busy and total jiffies of the whole machine (/proc/stat "cpu" line). */
export function machineJiffies(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

export function loadAverage(): [number, number, number] {
  const v = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).map(Number);
  return [v[0]!, v[1]!, v[2]!];
}

/** Resolve once a TCP connect to host:port succeeds (polled every `everyMs`). */
export async function waitForPort(port: number, timeoutMs = 10_000, everyMs = 5, host = "127.0.0.1"): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      Bun.connect({
        hostname: host,
        port,
        socket: {
          open(s) {
            s.end();
            resolve(true);
          },
          data() {},
          error() {
            resolve(false);
          },
          connectError() {
            resolve(false);
          },
        },
      }).catch(() => resolve(false));
    });
    if (ok) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`port ${port} not listening after ${timeoutMs} ms`);
    await Bun.sleep(everyMs);
  }
}

/** A free TCP port below the ephemeral range (bound and released to check). */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    try {
      const l = Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } });
      l.stop(true);
      return port;
    } catch {
      /* in use */
    }
  }
  throw new Error("no free port found");
}

export function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(":").concat(["/usr/sbin", "/sbin", "/usr/local/sbin"])) {
    const p = `${dir}/${cmd}`;
    if (existsSync(p)) return p;
  }
  return null;
}

export function firstLine(cmd: string[]): string {
  try {
    const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
    const s = (r.stdout.toString() + r.stderr.toString()).trim();
    return s.split("\n")[0] ?? "";
  } catch {
    return "";
  }
}
