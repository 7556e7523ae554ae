// The worker aggregate (src/proxy/workers.ts): what a dead worker leaves behind, and the process
// gauges combined by name.
import { describe, expect, test } from "bun:test";
import client from "./prom.ts";
import { aggregateMetrics, retainCounters, startTimeMetric, type MetricJSON } from "./aggregate.ts";

/** A registry like a worker's, as JSON: a counter, a histogram, a gauge, the fd limit and start time. */
async function worker(requests: number, observed: number[], inFlight: number, startTime: number): Promise<MetricJSON[]> {
  const r = new client.Registry();
  new client.Counter({ name: "sentinel_requests_total", help: "h", labelNames: ["route"], registers: [r] }).labels("a").inc(requests);
  const h = new client.Histogram({ name: "sentinel_request_duration_seconds", help: "h", labelNames: ["route"], buckets: [0.1, 1], registers: [r] });
  for (const v of observed) h.labels("a").observe(v);
  new client.Gauge({ name: "sentinel_requests_in_flight", help: "h", registers: [r] }).set(inFlight);
  new client.Gauge({ name: "sentinel_process_max_fds", help: "h", registers: [r] }).set(20000);
  new client.Gauge({ name: "sentinel_process_start_time_seconds", help: "h", aggregator: "omit", registers: [r] }).set(startTime);
  return (await r.getMetricsAsJSON()) as unknown as MetricJSON[];
}

describe("aggregateMetrics", () => {
  test("a dead worker's counters and histograms stay (summed over every dead one); its gauges go", async () => {
    let kept: MetricJSON[] = [];
    kept = retainCounters(kept, await worker(30, [0.05, 0.5], 4, 1000));
    kept = retainCounters(kept, await worker(10, [2], 7, 1001));
    expect(kept.map((m) => m.name).sort()).toEqual(["sentinel_request_duration_seconds", "sentinel_requests_total"]);
    const text = await aggregateMetrics([await worker(5, [0.05], 1, 1002), kept, startTimeMetric(999)]).metrics();
    expect(text).toContain('sentinel_requests_total{route="a"} 45');
    expect(text).toContain('sentinel_request_duration_seconds_bucket{le="0.1",route="a"} 2');
    expect(text).toContain('sentinel_request_duration_seconds_bucket{le="1",route="a"} 3');
    expect(text).toContain('sentinel_request_duration_seconds_bucket{le="+Inf",route="a"} 4');
    expect(text).toContain('sentinel_request_duration_seconds_count{route="a"} 4');
    expect(text).toMatch(/^sentinel_requests_in_flight 1$/m);
    expect(text).toMatch(/^sentinel_process_max_fds 20000$/m);
    expect(text).toMatch(/^sentinel_process_start_time_seconds 999$/m);
  });

  test("without the supervisor's start time, the earliest worker's", async () => {
    const text = await aggregateMetrics([await worker(1, [], 0, 1005), await worker(1, [], 0, 1003)]).metrics();
    expect(text).toMatch(/^sentinel_process_start_time_seconds 1003$/m);
    expect(text).toMatch(/^sentinel_process_max_fds 20000$/m);
  });
});
