// Process metrics (RSS, open fds, CPU, event loop lag), all prefixed sentinel_.
import client from "prom-client";
import { registry } from "./metrics.ts";

let started = false;
const lag = new client.Gauge({
  name: "sentinel_event_loop_lag_seconds",
  help: "Delay of a 500 ms timer beyond its deadline, sampled continuously",
  registers: [registry],
});

export function collectProcessMetrics(): () => void {
  if (!started) {
    started = true;
    client.collectDefaultMetrics({ register: registry, prefix: "sentinel_" });
  }
  let expected = performance.now() + 500;
  const timer = setInterval(() => {
    const now = performance.now();
    lag.set(Math.max(0, now - expected) / 1000);
    expected = now + 500;
  }, 500);
  (timer as { unref?: () => void }).unref?.();
  return () => clearInterval(timer);
}
