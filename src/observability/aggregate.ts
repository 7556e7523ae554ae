// Metrics of several worker processes merged into one exposition (src/proxy/workers.ts).
// Each worker hands over `registry.getMetricsAsJSON()`; series with the same name and labels are
// combined with the metric's `aggregator`: counters and histograms add up, gauges say how
// (`min` for health and readiness, `max` for circuit state and event-loop lag, `sum` by default).
import client from "./prom.ts";
// @ts-expect-error: no type declarations for the subpath
import { aggregators } from "prom-client/lib/metricAggregators.js";

interface MetricJSON {
  name: string;
  aggregator?: string;
  [k: string]: unknown;
}

type AggregatorFn = (metrics: MetricJSON[]) => (MetricJSON & { values: unknown[] }) | undefined;

/** One registry whose exposition is the aggregate of `perProcess`. */
export function aggregateMetrics(perProcess: MetricJSON[][]): InstanceType<typeof client.Registry> {
  const byName = new Map<string, MetricJSON[]>();
  for (const metrics of perProcess) {
    for (const m of metrics) {
      const list = byName.get(m.name);
      if (list) list.push(m);
      else byName.set(m.name, [m]);
    }
  }
  const out = new client.Registry();
  for (const metrics of byName.values()) {
    const fn = (aggregators as Record<string, AggregatorFn>)[metrics[0]!.aggregator ?? "sum"] ?? (aggregators as Record<string, AggregatorFn>).sum!;
    const merged = fn(metrics);
    if (merged) out.registerMetric(Object.assign({ get: () => merged }, merged) as never);
  }
  return out;
}
