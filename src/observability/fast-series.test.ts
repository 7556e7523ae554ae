// fast-series children against prom-client's own children: the same observations must give the
// same exposition text and the same getMetricsAsJSON (what the worker aggregation reads), also
// across reset(), remove() and zero(), for values on, between and beyond the bucket bounds.
import { describe, expect, test } from "bun:test";
import client from "prom-client";
import { fastCounterChild, fastHistogramChild } from "./fast-series.ts";

function pair() {
  const make = () => {
    const registry = new client.Registry();
    const h = new client.Histogram({ name: "t_seconds", help: "h", labelNames: ["route", "x"], buckets: [0.001, 0.01, 0.1, 1], registers: [registry] });
    const c = new client.Counter({ name: "t_total", help: "c", labelNames: ["route", "x"], registers: [registry] });
    return { registry, h, c };
  };
  return { ref: make(), fast: make() };
}

async function same(a: client.Registry, b: client.Registry): Promise<void> {
  expect(await b.metrics()).toBe(await a.metrics());
  expect(await b.getMetricsAsJSON()).toEqual(await a.getMetricsAsJSON());
}

const VALUES = [0, 0.0005, 0.001, 0.0010001, 0.05, 0.1, 0.99, 1, 1.5, 1e9, 0.01];

describe("fast-series", () => {
  test("histogram and counter children match prom-client's", async () => {
    const { ref, fast } = pair();
    const labels = { route: "r1", x: "a" };
    const rh = ref.h.labels(labels);
    const fh = fastHistogramChild(fast.h, labels);
    const rc = ref.c.labels(labels);
    const fc = fastCounterChild(fast.c, labels);
    await same(ref.registry, fast.registry); // nothing observed yet: no series on either side
    for (const v of VALUES) {
      rh.observe(v);
      fh.observe(v);
      rc.inc();
      fc.inc();
    }
    // a second series on the same metrics, and prom-client's own calls mixed in
    ref.h.observe({ route: "r2", x: "b" }, 0.2);
    fast.h.observe({ route: "r2", x: "b" }, 0.2);
    const f2 = fastHistogramChild(fast.h, { route: "r2", x: "b" });
    ref.h.observe({ route: "r2", x: "b" }, 3);
    f2.observe(3);
    await same(ref.registry, fast.registry);
  });

  test("after reset(), remove() and zero() the children keep counting like prom-client's", async () => {
    const { ref, fast } = pair();
    const labels = { route: "r", x: "y" };
    const rh = ref.h.labels(labels);
    const fh = fastHistogramChild(fast.h, labels);
    const rc = ref.c.labels(labels);
    const fc = fastCounterChild(fast.c, labels);
    const both = (v: number) => {
      rh.observe(v);
      fh.observe(v);
      rc.inc();
      fc.inc();
    };
    both(0.5);
    both(0.002);
    ref.h.reset();
    fast.h.reset();
    ref.c.reset();
    fast.c.reset();
    both(0.3);
    await same(ref.registry, fast.registry);
    ref.h.remove(labels);
    fast.h.remove(labels);
    ref.c.remove(labels);
    fast.c.remove(labels);
    await same(ref.registry, fast.registry);
    both(0.004);
    ref.h.zero(labels);
    fast.h.zero(labels);
    both(0.04);
    await same(ref.registry, fast.registry);
  });

  test("a non-finite value is refused exactly as prom-client refuses it", () => {
    const { fast } = pair();
    const fh = fastHistogramChild(fast.h, { route: "r", x: "y" });
    fh.observe(0.1);
    expect(() => fh.observe(Number.NaN)).toThrow(TypeError);
    expect(() => fh.observe(Number.POSITIVE_INFINITY)).toThrow(TypeError);
  });
});
