// The four prom-client classes the proxy uses, loaded from their own files: prom-client's index
// also loads the Pushgateway (node:http, node:https, zlib), the default-metrics collectors, the
// cluster aggregator and Summary (tdigest), which cost start-up time and idle memory for nothing.
import type PromClient from "prom-client";
// @ts-expect-error: no type declarations for the subpaths (the classes are the ones typed below)
import Registry from "prom-client/lib/registry.js";
// @ts-expect-error: see above
import Counter from "prom-client/lib/counter.js";
// @ts-expect-error: see above
import Gauge from "prom-client/lib/gauge.js";
// @ts-expect-error: see above
import Histogram from "prom-client/lib/histogram.js";

const client = { Registry, Counter, Gauge, Histogram } as Pick<typeof PromClient, "Registry" | "Counter" | "Gauge" | "Histogram">;
export default client;
