// Process metrics, all prefixed sentinel_: the prom-client default collectors that are
// meaningful on Bun (sentinel_process_resident_memory_bytes, sentinel_process_open_fds,
// sentinel_process_max_fds, sentinel_process_cpu_*_seconds_total, sentinel_process_start_time_seconds,
// sentinel_nodejs_heap_size_*_bytes, sentinel_nodejs_version_info), our own event loop lag, and
// sentinel_build_info. Left out: prom-client's event-loop-lag histogram (perf_hooks
// monitorEventLoopDelay is only partly implemented by Bun: it reports 0 and NaN), heap spaces,
// handles/requests/resources and GC (all zero or absent on Bun).
import client from "./prom.ts";
import { registry } from "./metrics.ts";
import { VERSION } from "../version.ts";

type Collector = (registry: InstanceType<typeof client.Registry>, config: { prefix: string }) => void;
// Static requires (the bundler must see them); these modules are what collectDefaultMetrics runs.
const DEFAULT_COLLECTORS: Collector[] = [
  require("prom-client/lib/metrics/processCpuTotal.js"),
  require("prom-client/lib/metrics/processStartTime.js"),
  require("prom-client/lib/metrics/osMemoryHeap.js"),
  require("prom-client/lib/metrics/processOpenFileDescriptors.js"),
  require("prom-client/lib/metrics/processMaxFileDescriptors.js"),
  require("prom-client/lib/metrics/heapSizeAndUsed.js"),
  require("prom-client/lib/metrics/version.js"),
];

let started = false;
const lag = new client.Gauge({
  name: "sentinel_event_loop_lag_seconds",
  aggregator: "max",
  help: "Delay of a 500 ms timer beyond its deadline (last sample)",
  registers: [registry],
});
const lagMax = new client.Gauge({
  name: "sentinel_event_loop_lag_max_seconds",
  aggregator: "max",
  help: "Largest event loop lag sampled since the previous scrape",
  registers: [registry],
  collect() {
    this.set(maxSinceScrape);
    maxSinceScrape = 0;
  },
});
void lagMax;
let maxSinceScrape = 0;
new client.Gauge({
  name: "sentinel_build_info",
  aggregator: "first",
  help: "Always 1; the version label is the running Sentinel version",
  labelNames: ["version"],
  registers: [registry],
}).labels(VERSION).set(1);

export function collectProcessMetrics(): () => void {
  if (!started) {
    started = true;
    for (const collector of DEFAULT_COLLECTORS) collector(registry, { prefix: "sentinel_" });
  }
  let expected = performance.now() + 500;
  const timer = setInterval(() => {
    const now = performance.now();
    const l = Math.max(0, now - expected) / 1000;
    lag.set(l);
    if (l > maxSinceScrape) maxSinceScrape = l;
    expected = now + 500;
  }, 500);
  (timer as { unref?: () => void }).unref?.();
  return () => clearInterval(timer);
}
