// Active upstream health checks (config.md §9.2): http (status) or tcp (connect), with
// healthy/unhealthy thresholds. One timer per pool; probes of a pool run in parallel.
import type { Pool, Target } from "./pool.ts";
import { log } from "../observability/log.ts";
import { tlsOptions } from "./forward.ts";

async function probeHttp(pool: Pool, t: Target, signal: AbortSignal): Promise<boolean> {
  const hc = pool.config.healthCheck!;
  const headers: Record<string, string> = { "user-agent": "sentinel-health-check" };
  if (hc.host) headers.host = hc.host;
  const res = await fetch(t.baseUrl + hc.path, {
    signal,
    headers,
    redirect: "manual",
    decompress: false,
    tls: tlsOptions(pool), // CA, SNI, client certificate, as for the proxied requests
  } as RequestInit);
  await res.body?.cancel().catch(() => {});
  return res.status === hc.expectedStatus;
}

function probeTcp(t: Target, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    Bun.connect({
      hostname: t.config.host,
      port: t.config.port,
      socket: {
        open(s) {
          s.end();
          finish(true);
        },
        data() {},
        error() {
          finish(false);
        },
        connectError() {
          finish(false);
        },
      },
    }).catch(() => finish(false));
  });
}

async function probe(pool: Pool, t: Target): Promise<boolean> {
  const hc = pool.config.healthCheck!;
  if (hc.type === "tcp") return probeTcp(t, hc.timeoutMs);
  try {
    return await probeHttp(pool, t, AbortSignal.timeout(hc.timeoutMs));
  } catch {
    return false;
  }
}

function record(pool: Pool, t: Target, ok: boolean, onChange?: (t: Target) => void): void {
  const hc = pool.config.healthCheck!;
  if (ok) {
    t.consecutiveFail = 0;
    t.consecutiveOk++;
    if (!t.healthy && t.consecutiveOk >= hc.healthyThreshold) {
      t.healthy = true;
      t.ejectedUntil = 0;
      log("info", "upstream target healthy", { upstream: pool.id, target: t.address });
      onChange?.(t);
    }
  } else {
    t.consecutiveOk = 0;
    t.consecutiveFail++;
    if (t.healthy && t.consecutiveFail >= hc.unhealthyThreshold) {
      t.healthy = false;
      log("warn", "upstream target unhealthy", { upstream: pool.id, target: t.address });
      onChange?.(t);
    }
  }
}

/** Start checking; returns a stop function. */
export function startHealthChecks(pool: Pool, onChange?: (t: Target) => void): () => void {
  const hc = pool.config.healthCheck;
  if (!hc) return () => {};
  let stopped = false;
  let running = false;
  const tick = async () => {
    if (running || stopped) return;
    running = true;
    try {
      await Promise.all(
        pool.targets.map(async (t) => {
          const ok = await probe(pool, t);
          if (!stopped) record(pool, t, ok, onChange);
        }),
      );
    } finally {
      running = false;
    }
  };
  const timer = setInterval(tick, hc.intervalMs);
  queueMicrotask(tick);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
