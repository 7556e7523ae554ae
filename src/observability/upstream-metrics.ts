// Upstream attempt metrics: duration and errors by (upstream, target). Observed through the
// forward module's attempt hook; the labelled children are cached per Target object, so an
// attempt costs a WeakMap lookup and an observe, never a label hash.
import type { Pool, Target } from "../upstreams/pool.ts";
import type { AttemptFailure } from "../upstreams/forward.ts";
import { upstreamDuration, upstreamErrors } from "./metrics.ts";
import { fastHistogramChild } from "./fast-series.ts";

type Kind = AttemptFailure | "status_5xx" | "max_connections";
const KINDS: Kind[] = ["connect", "timeout", "write_timeout", "error", "status_5xx", "max_connections"];

interface Series {
  key: string;
  dead: boolean;
  duration: { observe(v: number): void };
  errors: Record<Kind, { inc(): void }>;
}

const byTarget = new WeakMap<Target, Series>();
/** Live series by "upstream\0target" (one per pair, shared by the Target objects of successive pools). */
const known = new Map<string, Series & { upstream: string; target: string }>();

function seriesFor(pool: Pool, target: Target): Series {
  let s = byTarget.get(target);
  if (s) return s;
  const key = `${pool.id}\u0000${target.address}`;
  s = known.get(key);
  if (!s) {
    const labels = { upstream: pool.id, target: target.address };
    const errors = {} as Series["errors"];
    for (const k of KINDS) {
      errors[k] = upstreamErrors.labels({ ...labels, kind: k });
      upstreamErrors.inc({ ...labels, kind: k }, 0); // exported at 0 from the start
    }
    upstreamDuration.zero(labels);
    const created = { key, dead: false, duration: fastHistogramChild(upstreamDuration, labels), errors, ...labels };
    known.set(key, created);
    s = created;
  }
  byTarget.set(target, s);
  return s;
}

/** The forward module's attempt observer. */
export function observeUpstreamAttempt(pool: Pool, target: Target, seconds: number, failure: AttemptFailure | null, status: number): void {
  const s = seriesFor(pool, target);
  if (s.dead) return;
  s.duration.observe(seconds);
  if (failure !== null) s.errors[failure].inc();
  else if (status >= 500) s.errors.status_5xx.inc();
}

/** The forward module's observer of requests refused by a target's max-connections (no attempt was made). */
export function observeSlotRefused(pool: Pool, target: Target): void {
  const s = seriesFor(pool, target);
  if (!s.dead) s.errors.max_connections.inc();
}

/** Pre-create the series of every configured target (so errors start at 0) and drop the series of targets no longer configured. */
export function syncUpstreamSeries(pools: Iterable<Pool>): void {
  const keep = new Set<string>();
  for (const p of pools)
    for (const t of p.targets) {
      keep.add(seriesFor(p, t).key);
    }
  for (const [key, e] of known) {
    if (keep.has(key)) continue;
    e.dead = true; // stragglers on the old runtime must not resurrect the series
    upstreamDuration.remove({ upstream: e.upstream, target: e.target });
    for (const k of KINDS) upstreamErrors.remove({ upstream: e.upstream, target: e.target, kind: k });
    known.delete(key);
  }
}
