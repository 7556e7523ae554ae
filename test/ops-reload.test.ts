// Hot reload through the compiled binary: SIGHUP under steady load (route moved, agent added,
// agent removed, agent replaced, no-op) with zero failed requests; broken configs rejected with
// their location while the old config keeps serving; auto-reload of an included file
// (including a file caught half-written), and of a config behind symbolic links swapped the way a
// Kubernetes ConfigMap update does; restart-only changes reported, not applied.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startProxy, tempDir, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { agentTransportKdl, startAgent, type AgentProcess } from "./helpers/agents.ts";
import { scrape, startLoad, value } from "./ops-helpers.ts";

let u1: Upstream;
let u2: Upstream;
beforeAll(() => {
  u1 = startUpstream("u1");
  u2 = startUpstream("u2");
});
afterAll(async () => {
  await u1.stop();
  await u2.stop();
});

const METRICS = `observability { metrics { address "127.0.0.1:0" } }`;

function count(proxy: ProxyProcess, msg: string): number {
  return proxy.logs.filter((l) => l.msg === msg).length;
}

async function sighup(proxy: ProxyProcess, expect: "config reloaded" | "config reload failed; the running configuration stays in force"): Promise<Record<string, unknown>> {
  const before = count(proxy, expect);
  proxy.proc.kill("SIGHUP");
  await waitFor(() => count(proxy, expect) > before, 15_000, `"${expect}" after SIGHUP`);
  return proxy.logs.filter((l) => l.msg === expect)[before]!;
}

async function get(url: string): Promise<{ status: number; body: string; headers: Headers }> {
  const r = await fetch(url);
  return { status: r.status, body: await r.text(), headers: r.headers };
}

describe("SIGHUP five times under steady load", () => {
  let a: AgentProcess;
  let b: AgentProcess;
  let proxy: ProxyProcess;
  beforeAll(async () => {
    [a, b] = await Promise.all([startAgent("sdk", "uds"), startAgent("sdk", "grpc")]);
  });
  afterAll(async () => {
    await proxy?.stop("SIGKILL");
    await Promise.all([a.kill(), b.kill()]);
  });

  // Agent "a" also sees response headers: a request that started before "a" was removed still
  // calls it after its (slow) upstream answered, so "a" must not be closed before that.
  const agentA = () => `agent "a" type="auth" { ${agentTransportKdl(a)}; events "request_headers" "response_headers"; timeout-ms 2000; failure-mode "closed"; max-concurrent-calls 1000; config { gen 1 } }`;
  // (a config block makes the SDK agent log a "configure" event per handshake, i.e. per connection)
  const agentB = (timeout = 2000) => `agent "b" type="auth" { ${agentTransportKdl(b)}; events "request_headers"; timeout-ms ${timeout}; failure-mode "closed"; max-concurrent-calls 1000; config { gen 1 } }`;
  const cfg = (o: { api: string; web: string; agents: string[]; apiFilters: string; webFilters: string; comment?: string }) => `
// ${o.comment ?? "config"}
system { graceful-shutdown-timeout-secs 5 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "u1" { target "${u1.address}" }
  upstream "u2" { target "${u2.address}" }
}
agents {
${o.agents.join("\n")}
}
filters {
${o.agents.some((x) => x.includes('"a"')) ? `filter "fa" { type "agent"; agent "a" }` : ""}
${o.agents.some((x) => x.includes('"b"')) ? `filter "fb" { type "agent"; agent "b" }` : ""}
}
routes {
  route "api" { matches { path-prefix "/api" }; upstream "${o.api}"${o.apiFilters ? `; filters ${o.apiFilters}` : ""} }
  route "web" { matches { path-prefix "/web" }; upstream "${o.web}"${o.webFilters ? `; filters ${o.webFilters}` : ""} }
}
${METRICS}
`;

  test("zero failed requests, and each change takes effect", async () => {
    proxy = await startProxy(cfg({ api: "u1", web: "u1", agents: [agentA()], apiFilters: `"fa"`, webFilters: "" }));
    await waitFor(async () => (await get(`${proxy.url}/api/x`)).status === 200, 10_000, "agent a connected");
    const eventsA = () => a.events("request_headers").length;
    const eventsB = () => b.events("request_headers").length;
    const handshakesB = () => b.events("configure").length;
    const m0 = await scrape(proxy.metricsUrl!);

    const load = startLoad(
      12,
      (i) => ({ url: i % 4 === 1 ? `${proxy.url}/api/slow?ms=40` : `${proxy.url}/${i % 2 ? "api" : "web"}/item-${i % 50}` }),
      (res, body) => (res.status === 200 && /^(ok|slow) u[12]$/.test(body) ? undefined : `status ${res.status} body ${body.slice(0, 80)}`),
    );
    try {
      await Bun.sleep(1000);

      // 1. route "api" moves to upstream u2.
      writeFileSync(proxy.configPath, cfg({ api: "u2", web: "u1", agents: [agentA()], apiFilters: `"fa"`, webFilters: "" }));
      let r = await sighup(proxy, "config reloaded");
      expect((r.changes as any).routes.changed).toEqual(["api"]);
      expect((await get(`${proxy.url}/api/check`)).body).toBe("ok u2");
      expect((await get(`${proxy.url}/web/check`)).body).toBe("ok u1");
      await Bun.sleep(700);

      // 2. agent "b" added (gRPC), on route "web".
      const b0 = eventsB();
      writeFileSync(proxy.configPath, cfg({ api: "u2", web: "u1", agents: [agentA(), agentB()], apiFilters: `"fa"`, webFilters: `"fb"` }));
      r = await sighup(proxy, "config reloaded");
      expect((r.changes as any).agents.added).toEqual(["b"]);
      const web = await get(`${proxy.url}/web/check`);
      expect(web.status).toBe(200);
      expect(web.headers.get("x-agent-resp")).toBe("1");
      await waitFor(() => eventsB() > b0, 5000, "agent b sees requests");
      await Bun.sleep(700);

      // 3. agent "a" removed (and its filter): /api no longer consults it.
      writeFileSync(proxy.configPath, cfg({ api: "u2", web: "u1", agents: [agentB()], apiFilters: "", webFilters: `"fb"` }));
      r = await sighup(proxy, "config reloaded");
      expect((r.changes as any).agents.removed).toEqual(["a"]);
      const api = await get(`${proxy.url}/api/check`);
      expect(api.status).toBe(200);
      expect(api.headers.get("x-agent-resp")).toBeNull();
      await proxy.waitForLog((l) => l.msg === "agent closed" && l.agent === "a", 10_000);
      const a1 = eventsA();
      await Bun.sleep(700);
      expect(eventsA()).toBe(a1); // nothing reaches the removed agent any more

      // 4. agent "b" changed (timeout) and so replaced; route "web" moves to u2.
      const hb = handshakesB();
      writeFileSync(proxy.configPath, cfg({ api: "u2", web: "u2", agents: [agentB(1500)], apiFilters: "", webFilters: `"fb"` }));
      r = await sighup(proxy, "config reloaded");
      expect((r.changes as any).agents.changed).toEqual(["b"]);
      expect((await get(`${proxy.url}/web/check`)).body).toBe("ok u2");
      await waitFor(() => handshakesB() > hb, 5000, "replacement agent b handshake");
      await Bun.sleep(700);

      // 5. nothing but a comment changed: everything is reused, no new agent connection.
      const hb2 = handshakesB();
      writeFileSync(proxy.configPath, cfg({ api: "u2", web: "u2", agents: [agentB(1500)], apiFilters: "", webFilters: `"fb"`, comment: "touched" }));
      r = await sighup(proxy, "config reloaded");
      const ch = r.changes as Record<string, { added: string[]; removed: string[]; changed: string[] }>;
      for (const k of ["routes", "agents", "upstreams", "filters"]) expect([...ch[k]!.added, ...ch[k]!.removed, ...ch[k]!.changed]).toEqual([]);
      await Bun.sleep(700);
      expect(handshakesB()).toBe(hb2);
      expect((await get(`${proxy.url}/web/check`)).headers.get("x-agent-resp")).toBe("1");
    } finally {
      const st = await load.stop();
      console.log(`reload under load: ${st.ok} ok, ${st.failed} failed, ${st.rps.toFixed(0)} req/s over ${(st.elapsedMs / 1000).toFixed(1)} s`);
      expect(st.failures).toEqual([]);
      expect(st.failed).toBe(0);
      expect(st.rps).toBeGreaterThan(200); // "several hundred"; typically 1,000–3,000 here
    }
    const m1 = await scrape(proxy.metricsUrl!);
    expect(value(m1, "sentinel_config_reloads_total", { result: "success" }) - value(m0, "sentinel_config_reloads_total", { result: "success" })).toBe(5);
    expect(value(m1, "sentinel_config_reloads_total", { result: "failure" })).toBe(0);
    expect(proxy.proc.exitCode).toBeNull();
  }, 60_000);
});

describe("a broken config on reload", () => {
  let proxy: ProxyProcess;
  afterAll(() => proxy?.stop("SIGKILL"));
  const cfg = (upstream: string, extraRoute = "") => `system { graceful-shutdown-timeout-secs 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "u1" { target "${u1.address}" }
  upstream "u2" { target "${u2.address}" }
}
routes {
  route "all" { priority "low"; upstream "${upstream}" }
${extraRoute}
}
${METRICS}
`;

  test("syntax error, unknown upstream, truncated file: old config serves, error logged with FILE:LINE:COL, failure counter moves", async () => {
    proxy = await startProxy(cfg("u1"));
    const failures = async () => value(await scrape(proxy.metricsUrl!), "sentinel_config_reloads_total", { result: "failure" });
    expect(await failures()).toBe(0);
    const lastSuccess0 = value(await scrape(proxy.metricsUrl!), "sentinel_config_last_reload_success_timestamp_seconds");
    const file = proxy.configPath;
    const located = (re: RegExp) => (l: Record<string, unknown>) => l.msg === "config reload rejected" && typeof l.diagnostic === "string" && re.test(l.diagnostic);
    const esc = file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

    // 1. syntax error
    writeFileSync(file, cfg("u2").replace('route "all" {', 'route "all" {{'));
    let r = await sighup(proxy, "config reload failed; the running configuration stays in force");
    expect((r.errors as string[])[0]).toMatch(new RegExp(`^${esc}:\\d+:\\d+: `));
    await proxy.waitForLog(located(new RegExp(`^${esc}:\\d+:\\d+: `)));
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u1");
    expect(await failures()).toBe(1);

    // 2. unknown upstream, reported at the route's line
    writeFileSync(file, cfg("u2", `  route "bad" { matches { path-prefix "/bad" }; upstream "nope" }`));
    r = await sighup(proxy, "config reload failed; the running configuration stays in force");
    const line = cfg("u2", `  route "bad" { matches { path-prefix "/bad" }; upstream "nope" }`).split("\n").findIndex((l) => l.includes('"nope"')) + 1;
    expect((r.errors as string[]).some((e) => e.startsWith(`${file}:${line}:`) && e.includes("nope"))).toBe(true);
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u1");
    expect((await get(`${proxy.url}/bad`)).body).toBe("ok u1"); // the route was not added
    expect(await failures()).toBe(2);

    // 3. a file truncated mid-write (a valid config cut in the middle of the routes block)
    const full = cfg("u2");
    writeFileSync(file, full.slice(0, full.indexOf('upstream "u2" }', full.indexOf("routes")) + 5));
    r = await sighup(proxy, "config reload failed; the running configuration stays in force");
    expect((r.errors as string[])[0]).toMatch(new RegExp(`^${esc}:\\d+:\\d+: `));
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u1");
    expect(await failures()).toBe(3);
    expect(proxy.proc.exitCode).toBeNull();
    const m = await scrape(proxy.metricsUrl!);
    expect(value(m, "sentinel_config_last_reload_success_timestamp_seconds")).toBe(lastSuccess0);

    // …and once the file is whole again, it applies.
    writeFileSync(file, full);
    await sighup(proxy, "config reloaded");
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u2");
    const m2 = await scrape(proxy.metricsUrl!);
    expect(value(m2, "sentinel_config_reloads_total", { result: "failure" })).toBe(3);
    expect(value(m2, "sentinel_config_reloads_total", { result: "success" })).toBe(1);
    expect(value(m2, "sentinel_config_last_reload_success_timestamp_seconds")).toBeGreaterThan(lastSuccess0);
  }, 30_000);

  test("restart-only changes (listener address, system) are reported and not applied; the rest is", async () => {
    const oldUrl = proxy.url;
    writeFileSync(
      proxy.configPath,
      cfg("u1")
        .replace('address "127.0.0.1:0"', 'address "127.0.0.1:1"')
        .replace("graceful-shutdown-timeout-secs 2", "graceful-shutdown-timeout-secs 9"),
    );
    const r = await sighup(proxy, "config reloaded");
    expect(r.restart_required).toEqual(["listeners", "system"]);
    const warn = await proxy.waitForLog((l) => l.msg === "config changes need a restart and were not applied");
    expect(warn.level).toBe("warn");
    expect(warn.sections).toEqual(["listeners", "system"]);
    expect((await get(`${oldUrl}/x`)).body).toBe("ok u1"); // still on the old port, new routes applied
    expect(value(await scrape(proxy.metricsUrl!), "sentinel_config_restart_pending")).toBe(1);
  });
});

describe("auto-reload", () => {
  let proxy: ProxyProcess;
  afterAll(() => proxy?.stop("SIGKILL"));

  test("a change to an included file is applied without a signal; a half-written one is rejected until complete", async () => {
    const dir = tempDir();
    const routes = (up: string, extra = "") => `routes {\n  route "all" { priority "low"; upstream "${up}" }\n${extra}}\n`;
    writeFileSync(join(dir, "routes.kdl"), routes("u1"));
    mkdirSync(join(dir, "conf.d"));
    writeFileSync(join(dir, "conf.d", "base.kdl"), `routes { route "base" { matches { path-prefix "/base" }; upstream "u1" } }\n`);
    proxy = await startProxy(
      `system { auto-reload #true; graceful-shutdown-timeout-secs 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "u1" { target "${u1.address}" }
  upstream "u2" { target "${u2.address}" }
}
include "routes.kdl"
include "conf.d/*.kdl"
${METRICS}
`,
      { dir },
    );
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u1");
    const reloaded = () => proxy.logs.filter((l) => l.msg === "config reloaded" && l.trigger === "file change").length;
    const failed = () => proxy.logs.filter((l) => l.msg === "config reload failed; the running configuration stays in force" && l.trigger === "file change").length;

    writeFileSync(join(dir, "routes.kdl"), routes("u2"));
    await waitFor(() => reloaded() >= 1, 10_000, "auto-reload after the include changed");
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u2");

    // Half of the file now, the rest later: the half is rejected (with its location), the old config serves.
    const next = routes("u1", `  route "new" { matches { path-prefix "/new" }; upstream "u2" }\n`);
    const cut = next.indexOf('route "new"') + 12;
    writeFileSync(join(dir, "routes.kdl"), next.slice(0, cut));
    await waitFor(() => failed() >= 1, 10_000, "rejected half-written include");
    const rejected = proxy.logs.find((l) => l.msg === "config reload rejected" && String(l.diagnostic).includes("routes.kdl:"));
    expect(String(rejected?.diagnostic)).toMatch(/routes\.kdl:\d+:\d+: /);
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u2");
    writeFileSync(join(dir, "routes.kdl"), next);
    await waitFor(() => reloaded() >= 2, 10_000, "auto-reload once the include is whole");
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u1");
    expect((await get(`${proxy.url}/new/y`)).body).toBe("ok u2");

    // One save = one reload (debounced), even when written in several steps.
    const before = reloaded();
    const text = routes("u2");
    writeFileSync(join(dir, "routes.kdl"), text.slice(0, 10));
    writeFileSync(join(dir, "routes.kdl"), text);
    await waitFor(() => reloaded() > before, 10_000, "debounced reload");
    await Bun.sleep(600);
    expect(reloaded()).toBe(before + 1);

    // A new file matched by an include glob is picked up too.
    expect((await get(`${proxy.url}/more/z`)).body).toBe("ok u2"); // the catch-all, for now
    writeFileSync(join(dir, "conf.d", "more.kdl"), `routes { route "more" { matches { path-prefix "/more" }; upstream "u1" } }\n`);
    await waitFor(() => reloaded() >= before + 2, 10_000, "auto-reload after a new included file");
    expect((await get(`${proxy.url}/more/z`)).body).toBe("ok u1");
    const m = await scrape(proxy.metricsUrl!);
    expect(value(m, "sentinel_config_reloads_total", { result: "success" })).toBe(4);
    expect(value(m, "sentinel_config_reloads_total", { result: "failure" })).toBe(1);
  }, 30_000);
});

describe("auto-reload through symbolic links", () => {
  let proxy: ProxyProcess;
  afterAll(() => proxy?.stop("SIGKILL"));

  test("a Kubernetes ConfigMap update (the ..data symlink swapped by rename) is applied, again and again; so is an edit of a symlink's target", async () => {
    // The ConfigMap volume layout: sentinel.kdl -> ..data/sentinel.kdl, ..data -> v1/.
    const dir = tempDir();
    const sh = (cmd: string) => {
      const r = Bun.spawnSync(["sh", "-ec", cmd], { cwd: dir });
      if (r.exitCode !== 0) throw new Error(`${cmd}: ${r.stderr.toString()}`);
    };
    const cfg = (up: string) => `system { auto-reload #true; graceful-shutdown-timeout-secs 2 }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams {
  upstream "u1" { target "${u1.address}" }
  upstream "u2" { target "${u2.address}" }
}
routes { route "all" { priority "low"; upstream "${up}" } }
`;
    sh("mkdir v1 && ln -s v1 ..data && ln -s ..data/sentinel.kdl sentinel.kdl");
    const kubeletUpdate = (version: string, up: string, old: string) => {
      // What the kubelet does: a new version directory, ..data switched atomically, the old one removed.
      mkdirSync(join(dir, version));
      writeFileSync(join(dir, version, "sentinel.kdl"), cfg(up));
      sh(`ln -s ${version} ..data_tmp && mv -T ..data_tmp ..data && rm -rf ${old}`);
    };
    proxy = await startProxy(cfg("u1"), { dir }); // written through the links, into v1/
    const reloaded = () => proxy.logs.filter((l) => l.msg === "config reloaded" && l.trigger === "file change").length;
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u1");

    kubeletUpdate("v2", "u2", "v1");
    await waitFor(() => reloaded() >= 1, 10_000, "auto-reload after ..data moved to v2");
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u2");

    // The watch follows the links as they are now, not as they were at start.
    kubeletUpdate("v3", "u1", "v2");
    await waitFor(() => reloaded() >= 2, 10_000, "auto-reload after ..data moved to v3");
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u1");

    // An edit in place of the file the links lead to (no event in the link's own directory).
    writeFileSync(join(dir, "v3", "sentinel.kdl"), cfg("u2"));
    await waitFor(() => reloaded() >= 3, 10_000, "auto-reload after the link target was edited");
    expect((await get(`${proxy.url}/x`)).body).toBe("ok u2");
    expect(proxy.logs.filter((l) => l.msg === "config reload failed; the running configuration stays in force")).toEqual([]);
  }, 30_000);
});
