// Labelled prom-client series for the request path, without prom-client's per-call work.
//
// A prom-client child (`metric.labels(...)`) re-validates its labels and rebuilds their hash
// string on every observe()/inc() (~0.3 µs each, two to five per request). These children find
// their series' entry in the metric's table once and then update it in place, exactly as
// prom-client's own observe()/inc() would (same fields, same bucket rule), so the exposition,
// the worker aggregation (getMetricsAsJSON) and reset()/remove()/zero() are prom-client's.
// Whenever the entry is missing (first use, after reset() or remove()) or the value is not a
// plain finite number, the call goes through prom-client itself.
//
// Relies on prom-client 15's internal table (`hashMap`: labels hash -> entry); the test
// src/observability/fast-series.test.ts compares the output against prom-client's own children.
import type { Counter, Histogram } from "prom-client";

type Labels = Record<string, string>;

interface HistogramEntry {
  labels: Labels;
  bucketValues: Record<number, number>;
  sum: number;
  count: number;
}

interface CounterEntry {
  labels: Labels;
  value: number;
}

interface Internals<E> {
  hashMap: Record<string, E>;
  upperBounds?: number[];
  bucketExemplars?: unknown;
  enableExemplars?: boolean;
}

/** The table key of the entry with exactly these labels, or undefined. */
function findKey<E extends { labels: Labels }>(table: Record<string, E>, labels: Labels): string | undefined {
  const names = Object.keys(labels);
  for (const key in table) {
    const l = table[key]!.labels;
    if (Object.keys(l).length !== names.length) continue;
    let same = true;
    for (const n of names) {
      if (l[n] !== labels[n]) {
        same = false;
        break;
      }
    }
    if (same) return key;
  }
  return undefined;
}

export interface FastHistogramChild {
  observe(value: number): void;
}

export function fastHistogramChild(metric: Histogram<string>, labels: Labels): FastHistogramChild {
  const m = metric as unknown as Internals<HistogramEntry>;
  const slow = metric.labels(labels);
  let key: string | undefined;
  return {
    observe(value: number): void {
      const e = key === undefined ? undefined : m.hashMap[key];
      if (e === undefined || typeof value !== "number" || !Number.isFinite(value) || m.enableExemplars) {
        slow.observe(value);
        key ??= findKey(m.hashMap, labels);
        return;
      }
      const bounds = m.upperBounds!;
      for (let i = 0; i < bounds.length; i++) {
        const b = bounds[i]!;
        if (value <= b) {
          e.bucketValues[b]! += 1;
          break;
        }
      }
      e.sum += value;
      e.count += 1;
    },
  };
}

export interface FastCounterChild {
  inc(): void;
}

export function fastCounterChild(metric: Counter<string>, labels: Labels): FastCounterChild {
  const m = metric as unknown as Internals<CounterEntry>;
  const slow = metric.labels(labels);
  let key: string | undefined;
  return {
    inc(): void {
      const e = key === undefined ? undefined : m.hashMap[key];
      if (e === undefined || m.enableExemplars) {
        slow.inc();
        key ??= findKey(m.hashMap, labels);
        return;
      }
      e.value += 1;
    },
  };
}
