// Metrics of several worker processes merged into one exposition (src/proxy/workers.ts).
// Each worker hands over `registry.getMetricsAsJSON()`; series with the same name and labels are
// combined with the metric's `aggregator`: counters and histograms add up, gauges say how
// (`min` for health and readiness, `max` for circuit state and event-loop lag, `sum` by default).
// A few of prom-client's own process gauges are combined by name instead (AGGREGATOR_BY_NAME).
// Counters and histograms of workers that have exited are kept by the supervisor (retainCounters)
// and passed in as one more "process", so that the aggregate never goes down when a worker
// restarts, as prometheus_client's multiprocess mode does it.
import client from "./prom.ts";
// @ts-expect-error: no type declarations for the subpath
import { aggregators } from "prom-client/lib/metricAggregators.js";

export interface MetricJSON {
  name: string;
  type?: string;
  aggregator?: string;
  [k: string]: unknown;
}

type AggregatorFn = (metrics: MetricJSON[]) => (MetricJSON & { values: unknown[] }) | undefined;
const AGGREGATORS = aggregators as Record<string, AggregatorFn>;

const START_TIME = "sentinel_process_start_time_seconds";

/**
 * prom-client's process gauges whose own aggregator does not fit: the start time says "omit"
 * (it would be missing; the supervisor passes its own, the earliest, see startTimeMetric), and
 * the fd limit says nothing (sum), but N workers with a limit of L each do not have N×L.
 */
const AGGREGATOR_BY_NAME: Record<string, string> = {
  [START_TIME]: "min",
  sentinel_process_max_fds: "min",
};

/** Metrics grouped by name, in first-seen order. */
function byName(perProcess: MetricJSON[][]): Map<string, MetricJSON[]> {
  const out = new Map<string, MetricJSON[]>();
  for (const metrics of perProcess) {
    for (const m of metrics) {
      const list = out.get(m.name);
      if (list) list.push(m);
      else out.set(m.name, [m]);
    }
  }
  return out;
}

/** One registry whose exposition is the aggregate of `perProcess`. */
export function aggregateMetrics(perProcess: MetricJSON[][]): InstanceType<typeof client.Registry> {
  const out = new client.Registry();
  for (const [name, metrics] of byName(perProcess)) {
    const fn = AGGREGATORS[AGGREGATOR_BY_NAME[name] ?? metrics[0]!.aggregator ?? "sum"] ?? AGGREGATORS.sum!;
    const merged = fn(metrics);
    if (merged) out.registerMetric(Object.assign({ get: () => merged }, merged) as never);
  }
  return out;
}

/** Only what must never go down: counters and histograms (a dead worker's gauges mean nothing). */
function monotonic(metrics: MetricJSON[]): MetricJSON[] {
  return metrics.filter((m) => m.type === "counter" || m.type === "histogram");
}

/**
 * `kept` plus the counters and histograms (buckets, sum, count) of `last`, the last registry
 * scraped from a worker that has exited, series by series. The result stays as small as one
 * registry's counters however many workers have come and gone.
 */
export function retainCounters(kept: MetricJSON[], last: MetricJSON[]): MetricJSON[] {
  const out: MetricJSON[] = [];
  for (const metrics of byName([kept, monotonic(last)]).values()) {
    const merged = AGGREGATORS.sum!(metrics);
    if (merged) out.push(merged);
  }
  return out;
}

/** The supervisor's start time as a registry of its own (the aggregate takes the earliest). */
export function startTimeMetric(seconds: number): MetricJSON[] {
  return [{ name: START_TIME, help: "Start time of the process since unix epoch in seconds.", type: "gauge", aggregator: "min", values: [{ value: seconds, labels: {} }] }];
}
