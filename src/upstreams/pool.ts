// An upstream pool: its targets, their health (active checks + passive ejection) and the
// load-balancing policy. Selection is O(targets) with no allocation on the hot path.
import type { LbPolicy, TargetConfig, UpstreamConfig } from "../config/types.ts";

export interface Target {
  readonly config: TargetConfig;
  readonly address: string; // host:port
  readonly baseUrl: string; // http(s)://host:port
  readonly weight: number;
  /** Active health check verdict (true until a check says otherwise). */
  healthy: boolean;
  /** Passive ejection: consecutive failures and the time the ejection ends. */
  failures: number;
  ejectedUntil: number;
  active: number; // requests in flight
  /** connection-pool max-connections: the most `active` may reach (0 = no limit; src/upstreams/slots.ts). */
  readonly maxConnections: number;
  /** Requests waiting for a slot (slots.ts owns it). */
  waiters?: unknown[];
  currentWeight: number; // smooth weighted round robin state
  consecutiveOk: number;
  consecutiveFail: number;
}

export interface SelectInput {
  clientIp: string;
  hashKey: string;
  exclude?: Target[];
}

export interface Pool {
  readonly id: string;
  readonly config: UpstreamConfig;
  readonly targets: Target[];
  select(input: SelectInput): Target | undefined;
  /** Report an exchange outcome for passive ejection. */
  report(target: Target, ok: boolean): void;
  healthyCount(): number;
}

function fnv1a(s: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** Rendezvous (highest random weight) hashing: stable under target add/remove, weight-aware. */
function rendezvous(candidates: Target[], key: string): Target {
  let best = candidates[0]!;
  let bestScore = -Infinity;
  for (const t of candidates) {
    const h = fnv1a(t.address, fnv1a(key)) / 0x100000000;
    const score = -t.weight / Math.log(h === 0 ? Number.MIN_VALUE : h);
    if (score > bestScore) {
      bestScore = score;
      best = t;
    }
  }
  return best;
}

/** Worker processes sharing each target's max-connections (workers.ts): each takes floor(N / workers), at least 1. */
let connectionShare = 1;
export function shareUpstreamConnections(workers: number): void {
  connectionShare = Math.max(1, Math.floor(workers));
}

/** What one process may hold of a target's max-connections (0 = no limit). */
export function perProcessConnections(maxConnections: number): number {
  return maxConnections <= 0 ? 0 : Math.max(1, Math.floor(maxConnections / connectionShare));
}

export function createTarget(config: TargetConfig, tls: boolean, maxConnections = 0): Target {
  const host = config.host.includes(":") && !config.host.startsWith("[") ? `[${config.host}]` : config.host;
  return {
    config,
    address: config.address,
    baseUrl: `${tls ? "https" : "http"}://${host}:${config.port}`,
    weight: Math.max(1, config.weight),
    healthy: true,
    failures: 0,
    ejectedUntil: 0,
    active: 0,
    maxConnections,
    currentWeight: 0,
    consecutiveOk: 0,
    consecutiveFail: 0,
  };
}

export function createPool(config: UpstreamConfig, previous?: Pool): Pool {
  // Keep health state across reloads for targets that did not change.
  const old = new Map(previous?.targets.map((t) => [t.address, t]));
  const targets = config.targets.map((tc) => {
    const t = createTarget(tc, !!config.tls, perProcessConnections(config.pool.maxConnections));
    const prev = old.get(tc.address);
    if (prev) {
      t.healthy = prev.healthy;
      t.failures = prev.failures;
      t.ejectedUntil = prev.ejectedUntil;
      t.consecutiveOk = prev.consecutiveOk;
      t.consecutiveFail = prev.consecutiveFail;
    }
    return t;
  });
  const policy: LbPolicy = config.loadBalancing;
  const threshold = config.passiveFailureThreshold;
  const ejectMs = config.passiveEjectMs;
  const scratch: Target[] = [];

  function available(now: number, exclude?: Target[]): Target[] {
    scratch.length = 0;
    for (const t of targets) {
      if (!t.healthy || t.ejectedUntil > now) continue;
      if (exclude && exclude.includes(t)) continue;
      scratch.push(t);
    }
    if (scratch.length === 0 && !config.healthCheck) {
      // No active checks to bring a target back: rather than failing everything, try the
      // passively ejected ones (panic mode, as Envoy does).
      for (const t of targets) if (!exclude || !exclude.includes(t)) scratch.push(t);
    }
    return scratch;
  }

  function smoothWeighted(c: Target[]): Target {
    let total = 0;
    let best = c[0]!;
    for (const t of c) {
      t.currentWeight += t.weight;
      total += t.weight;
      if (t.currentWeight > best.currentWeight) best = t;
    }
    best.currentWeight -= total;
    return best;
  }

  function leastConnections(c: Target[]): Target {
    let best = c[0]!;
    let bestLoad = best.active / best.weight;
    let ties = 1;
    for (let i = 1; i < c.length; i++) {
      const t = c[i]!;
      const load = t.active / t.weight;
      if (load < bestLoad) {
        best = t;
        bestLoad = load;
        ties = 1;
      } else if (load === bestLoad && Math.random() * ++ties < 1) {
        best = t; // reservoir sampling among ties keeps idle targets evenly used
      }
    }
    return best;
  }

  function weightedRandom(c: Target[]): Target {
    let total = 0;
    for (const t of c) total += t.weight;
    let r = Math.random() * total;
    for (const t of c) {
      r -= t.weight;
      if (r < 0) return t;
    }
    return c[c.length - 1]!;
  }

  return {
    id: config.id,
    config,
    targets,
    select(input) {
      const c = available(Date.now(), input.exclude);
      if (c.length === 0) return undefined;
      if (c.length === 1) return c[0];
      switch (policy) {
        case "round_robin":
        case "weighted":
          return smoothWeighted(c);
        case "least_connections":
          return leastConnections(c);
        case "random":
          return weightedRandom(c);
        case "ip_hash":
          return rendezvous(c, input.clientIp);
        case "consistent_hash":
          return rendezvous(c, input.hashKey);
      }
    },
    report(target, ok) {
      if (ok) {
        target.failures = 0;
        return;
      }
      if (threshold <= 0) return;
      if (++target.failures >= threshold) {
        target.ejectedUntil = Date.now() + ejectMs;
        target.failures = 0;
      }
    },
    healthyCount() {
      const now = Date.now();
      let n = 0;
      for (const t of targets) if (t.healthy && t.ejectedUntil <= now) n++;
      return n;
    },
  };
}
