// Agents through the compiled binary, for both transports: real agent processes over real
// sockets, and a recording upstream as the oracle ("the upstream saw nothing").
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startProxy, waitFor, type ProxyProcess } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { agentProxyConfig, agentTransportKdl, hits, metric, startAgent, stopAll, timed, type AgentProcess, type Transport } from "./helpers/agents.ts";
import { tempDir } from "./helpers/proxy.ts";
import { upload } from "./helpers/raw.ts";
import { join } from "node:path";

for (const transport of ["uds", "grpc"] as Transport[]) {
  describe(`${transport}: decisions from an SDK agent`, () => {
    let up: Upstream;
    let agent: AgentProcess;
    let proxy: ProxyProcess;
    beforeAll(async () => {
      up = startUpstream("u");
      agent = await startAgent("sdk", transport);
      proxy = await startProxy(
        agentProxyConfig(
          up,
          `agent "sdk" type="auth" { ${agentTransportKdl(agent)}; events "request_headers" "request_body" "response_headers" "request_complete"; timeout-ms 2000; failure-mode "closed"; max-concurrent-calls 1000; config { mode "test"; level 2 } }`,
          `filter "sdk" { type "agent"; agent "sdk" }`,
          `route "sdk" { matches { path-prefix "/sdk" }; upstream "u"; filters "sdk" }`,
        ),
      );
      await waitFor(async () => (await fetch(`${proxy.url}/sdk/warm`)).status === 200, 10_000, "agent connected");
    });
    afterAll(() => stopAll(proxy, agent, up));

    test("the agent's config {} is delivered", async () => {
      const configure = agent.events("configure");
      expect(configure.length).toBeGreaterThan(0);
      expect(configure[0]!.config).toEqual({ mode: "test", level: 2 });
    });

    test("allow with header mutations reaches the upstream; response ops reach the client", async () => {
      const res = await fetch(`${proxy.url}/sdk/allow`, { headers: { "x-strip-me": "1", "x-agent-user": "forged" } });
      expect(res.status).toBe(200);
      const rec = up.requests.at(-1)!;
      expect(rec.headers["x-agent-user"]).toBe("alice");
      expect(rec.headers["x-strip-me"]).toBeUndefined();
      expect(res.headers.get("x-agent-resp")).toBe("1");
      expect(res.headers.get("x-agent-saw-status")).toBe("200");
    });

    test("block returns the agent's status, body and headers; the upstream saw nothing", async () => {
      const before = hits(up, "/sdk/blocked");
      const res = await timed(`${proxy.url}/sdk/blocked`, { headers: { "x-want": "block" } });
      expect(res.status).toBe(451);
      expect(res.body).toBe("blocked by test agent");
      expect(res.headers.get("x-blocked-by")).toBe("sdk-agent");
      expect(hits(up, "/sdk/blocked")).toBe(before);
    });

    test("a block reaches a client that is still uploading its body (lingering close, not a reset)", async () => {
      const before = hits(up, "/sdk/blocked-upload");
      const n = 8 * 1024 * 1024;
      const r = await upload(proxy.url, `POST /sdk/blocked-upload HTTP/1.1\r\nHost: t\r\nx-want: block\r\nContent-Length: ${n}\r\n\r\n`, { bodyBytes: n });
      expect(r.error).toBeUndefined();
      expect(r.sent).toBe(n);
      expect(r.status).toBe(451);
      expect(r.text).toContain("blocked by test agent");
      expect(r.text.toLowerCase()).toContain("\r\nconnection: close\r\n");
      expect(hits(up, "/sdk/blocked-upload")).toBe(before);
    });

    test("redirect is a real redirect", async () => {
      const res = await fetch(`${proxy.url}/sdk/r`, { headers: { "x-want": "redirect" }, redirect: "manual" });
      expect(res.status).toBe(307);
      expect(res.headers.get("location")).toBe("https://login.example/?r=1");
      expect(hits(up, "/sdk/r")).toBe(0);
    });

    test("challenge answers the documented response", async () => {
      const res = await fetch(`${proxy.url}/sdk/c`, { headers: { "x-want": "challenge" } });
      expect(res.status).toBe(403);
      expect(res.headers.get("x-sentinel-challenge")).toBe("captcha");
      expect(await res.json()).toEqual({ challenge: "captcha", params: { "site-key": "abc" } });
      expect(hits(up, "/sdk/c")).toBe(0);
    });

    for (const [bad, status] of [
      ["mutate-crlf", 503],
      ["mutate-host", 503],
      ["redirect-bad", 403], // a deny with an unsafe target stays a deny
    ] as const) {
      test(`a hostile reply (${bad}) is refused (${status}), nothing reaches the upstream, and the proxy keeps serving`, async () => {
        const before = hits(up, "/sdk/bad");
        const res = await fetch(`${proxy.url}/sdk/bad`, { headers: { "x-want": bad }, redirect: "manual" });
        expect(res.status).toBe(status);
        expect(res.headers.get("location")).toBeNull();
        expect(hits(up, "/sdk/bad")).toBe(before);
        expect(up.requests.some((r) => "x-injected" in r.headers)).toBe(false);
        expect((await fetch(`${proxy.url}/sdk/after`)).status).toBe(200);
      });
    }

    test("request bodies are inspected: a block stops the body, a mutation replaces it", async () => {
      const before = hits(up, "/sdk/body");
      const res = await fetch(`${proxy.url}/sdk/body/echo`, { method: "POST", body: "this is EVIL stuff" });
      expect(res.status).toBe(403);
      expect(hits(up, "/sdk/body")).toBe(before);
      const ok = await fetch(`${proxy.url}/sdk/body/echo`, { method: "POST", body: "please REPLACE me" });
      expect(ok.status).toBe(200);
      // Body mutations exist only in the JSON protocol: the gRPC AgentResponse has no field for
      // them (agent-protocol.md §6.4), so over gRPC the body passes unchanged.
      expect(await ok.text()).toBe(transport === "uds" ? "please REPLACED me" : "please REPLACE me");
    });

    test("a header named like an Object.prototype member (constructor) reaches the agent and the upstream", async () => {
      const res = await fetch(`${proxy.url}/sdk/proto-names`, { headers: new Headers([["x-request-tag", "ctor-1"], ["constructor", "c1"], ["__proto__", "p1"]]) });
      expect(res.status).toBe(200);
      const seen = agent.events("request_headers").find((e) => e.tag === "ctor-1")!;
      expect(seen.ctor).toBe("c1");
      const rec = up.requests.at(-1)!;
      expect(rec.headers["constructor"]).toBe("c1");
      // names with "_" are dropped, as nginx does by default (SECURITY.md); it breaks nothing
      expect(rec.rawHeaders.some(([n]) => n === "__proto__")).toBe(false);
    });

    test("request_complete is delivered to subscribed agents", async () => {
      const res = await fetch(`${proxy.url}/sdk/complete`, { headers: { "x-request-tag": "complete-1" } });
      expect(res.status).toBe(200);
      const id = agent.events("request_headers").find((e) => e.tag === "complete-1")!.id;
      await waitFor(() => agent.events("request_complete").some((e) => e.id === id), 5000, "request_complete");
    });

    test("500 concurrent requests with random agent delays: every request gets its own decision", async () => {
      const N = 500;
      const results = await Promise.all(
        Array.from({ length: N }, async (_, i) => {
          const res = await fetch(`${proxy.url}/sdk/many`, {
            headers: { "x-request-tag": `tag-${i}`, "x-delay-ms": String(Math.floor(Math.random() * 50)), "x-want": i % 2 ? "block" : "allow" },
          });
          await res.arrayBuffer();
          return { i, status: res.status, tag: res.headers.get("x-request-tag") };
        }),
      );
      for (const r of results) {
        if (r.i % 2) expect(r.status).toBe(451);
        else {
          expect(r.status).toBe(200);
          expect(r.tag).toBe(`tag-${r.i}`);
        }
      }
      const seen = up.requests.filter((r) => r.path === "/sdk/many").map((r) => Number(r.headers["x-request-tag"]!.slice(4)));
      expect(seen.length).toBe(N / 2);
      expect(seen.every((n) => n % 2 === 0)).toBe(true);
    }, 60_000);
  });

  describe(`${transport}: failure modes, reconnect, misbehaving agents`, () => {
    let up: Upstream;
    let agent: AgentProcess | undefined;
    let proxy: ProxyProcess;
    const dir = tempDir("sentinel-chaos-");
    // gRPC: reserve a port by starting and stopping a chaos agent; UDS: a socket path in dir.
    let endpointKdl = "";
    beforeAll(async () => {
      up = startUpstream("u");
      if (transport === "grpc") {
        const probe = await startAgent("chaos", "grpc", "allow", dir);
        endpointKdl = agentTransportKdl(probe);
        await probe.kill();
        agent = probe; // restart() reuses its port
      } else {
        endpointKdl = `unix-socket "${join(dir, "agent.sock")}"`;
      }
      proxy = await startProxy(
        agentProxyConfig(
          up,
          `agent "chaos" { ${endpointKdl}; timeout-ms 200; failure-mode "closed"; max-concurrent-calls 3; circuit-breaker { failure-threshold 1000; success-threshold 1; timeout-seconds 1; half-open-max-requests 1 } }`,
          `filter "closed" { type "agent"; agent "chaos"; failure-mode "closed" }
filter "open" { type "agent"; agent "chaos"; failure-mode "open" }`,
          `route "closed" { matches { path-prefix "/closed" }; upstream "u"; filters "closed" }
route "open" { matches { path-prefix "/open" }; upstream "u"; filters "open" }`,
        ),
      );
    });
    afterAll(() => stopAll(proxy, agent, up));

    async function useMode(mode: string): Promise<void> {
      if (!agent || transport === "uds") {
        await agent?.kill();
        agent = await startAgent("chaos", transport, mode, dir);
      } else await agent.restart(mode);
      await waitFor(async () => (mode === "allow" ? (await fetch(`${proxy.url}/closed/probe`)).status === 200 : true), 10_000, "agent reconnect");
    }

    async function burst(prefix: string, n: number) {
      return Promise.all(Array.from({ length: n }, (_, i) => timed(`${proxy.url}${prefix}/${i}`, i % 2 ? { method: "POST", body: "x".repeat(100) } : undefined)));
    }

    test("agent absent at start: fail-closed lets zero requests through; fail-open passes within timeout + 50 ms", async () => {
      if (transport === "grpc") await agent!.kill();
      const closed = await burst("/closed/absent", 20);
      expect(closed.every((r) => r.status === 503)).toBe(true);
      expect(hits(up, "/closed/absent")).toBe(0);
      const open = await burst("/open/absent", 20);
      expect(open.every((r) => r.status === 200 && r.ms < 250)).toBe(true);
    });

    test("the agent started later (same socket/port) is used without restarting the proxy", async () => {
      await useMode("allow");
      expect((await fetch(`${proxy.url}/closed/now`)).status).toBe(200);
      expect(agent!.events("request_headers").length).toBeGreaterThan(0);
    });

    test("hung agent: fail-closed answers 504 at the timeout with zero bypass; fail-open passes within timeout + 50 ms", async () => {
      await useMode("hang");
      await waitFor(async () => (await fetch(`${proxy.url}/closed/warm`)).status === 504, 10_000, "hang mode active");
      const closed = await burst("/closed/hung", 3);
      for (const r of closed) {
        expect(r.status).toBe(504);
        expect(r.ms).toBeGreaterThan(180);
        expect(r.ms).toBeLessThan(400);
      }
      expect(hits(up, "/closed/hung")).toBe(0);
      const open = await burst("/open/hung", 3);
      for (const r of open) {
        expect(r.status).toBe(200);
        expect(r.ms).toBeLessThan(250 + 50);
      }
    });

    test("overloaded agent: calls beyond max-concurrent-calls are answered at once by the failure mode", async () => {
      await useMode("delay:400");
      const closed = await burst("/closed/over", 8);
      const fast = closed.filter((r) => r.status === 503 && r.ms < 100);
      expect(fast.length).toBeGreaterThanOrEqual(5);
      expect(hits(up, "/closed/over")).toBe(0); // the admitted ones time out at 200 ms
      const open = await burst("/open/over", 8);
      expect(open.every((r) => r.status === 200 && r.ms < 300)).toBe(true);
    });

    test("agent killed mid-traffic: zero requests reach the upstream on the fail-closed route", async () => {
      await useMode("delay:50");
      const inflight = burst("/closed/killed", 3);
      await Bun.sleep(20);
      await agent!.kill();
      const after = await burst("/closed/killed-after", 20);
      await inflight;
      expect(after.every((r) => r.status >= 500)).toBe(true);
      expect(hits(up, "/closed/killed-after")).toBe(0);
      expect(hits(up, "/closed/killed")).toBe(0);
    });

    for (const mode of transport === "uds" ? ["malformed", "oversize", "wrong-id", "bad-decision", "unknown-type", "zero-len"] : ["wrong-id", "no-handshake"]) {
      test(`misbehaving agent (${mode}): fail-closed refuses, fail-open passes, the proxy keeps serving`, async () => {
        await useMode(mode);
        const closed = await burst(`/closed/${mode}`, 4);
        expect(closed.every((r) => r.status >= 500)).toBe(true);
        expect(hits(up, `/closed/${mode}`)).toBe(0);
        const open = await burst(`/open/${mode}`, 4);
        expect(open.every((r) => r.status === 200)).toBe(true);
      });
    }

    test("a well-behaved agent is used again after all of that", async () => {
      await useMode("allow");
      expect((await fetch(`${proxy.url}/closed/final`)).status).toBe(200);
    });
  });

  describe(`${transport}: circuit breaker and health`, () => {
    let up: Upstream;
    let agent: AgentProcess;
    let proxy: ProxyProcess;
    beforeAll(async () => {
      up = startUpstream("u");
      agent = await startAgent("chaos", transport, "hang");
      proxy = await startProxy(
        agentProxyConfig(
          up,
          `agent "cb" { ${agentTransportKdl(agent)}; timeout-ms 100; failure-mode "closed"
  circuit-breaker { failure-threshold 3; success-threshold 2; timeout-seconds 1; half-open-max-requests 1 }
  health-check { enabled #true; interval-ms 200; timeout-ms 100; healthy-threshold 1; unhealthy-threshold 2 } }`,
          `filter "cb" { type "agent"; agent "cb" }`,
          `route "cb" { matches { path-prefix "/cb" }; upstream "u"; filters "cb" }`,
        ),
      );
      await waitFor(async () => (await metric(proxy, "sentinel_agent_health", 'agent="cb"')) === 1, 10_000, "agent healthy");
    });
    afterAll(() => stopAll(proxy, agent, up));

    test("after failure-threshold failures the agent is not contacted until timeout-seconds pass; half-open admits one probe; success-threshold closes it", async () => {
      const events = () => agent.events("request_headers").length;
      const base = events();
      for (let i = 0; i < 3; i++) expect((await timed(`${proxy.url}/cb/fail`)).status).toBe(504);
      await waitFor(() => events() === base + 3, 2000, "three events seen");
      expect(await metric(proxy, "sentinel_agent_circuit_state", 'agent="cb"')).toBe(1);
      const open = await Promise.all(Array.from({ length: 10 }, () => timed(`${proxy.url}/cb/open`)));
      for (const r of open) {
        expect(r.status).toBe(503);
        expect(r.ms).toBeLessThan(50);
      }
      expect(events()).toBe(base + 3);
      expect(hits(up, "/cb/")).toBe(0);

      // The agent recovers (answering after 60 ms, so that concurrent probes overlap), but the
      // breaker stays open until timeout-seconds. half-open-max-requests bounds concurrent probes.
      await agent.restart("delay:60");
      await Bun.sleep(1100);
      const probes = await Promise.all(Array.from({ length: 10 }, () => timed(`${proxy.url}/cb/probe`)));
      const passed = probes.filter((r) => r.status === 200).length;
      expect(passed).toBe(1);
      expect(probes.filter((r) => r.status === 503).length).toBe(9);
      // one more success closes it (success-threshold 2)
      expect((await timed(`${proxy.url}/cb/second`)).status).toBe(200);
      expect(await metric(proxy, "sentinel_agent_circuit_state", 'agent="cb"')).toBe(0);
      const after = await Promise.all(Array.from({ length: 10 }, () => timed(`${proxy.url}/cb/closed`)));
      expect(after.every((r) => r.status === 200)).toBe(true);
    }, 30_000);

    test("health flips to 0 within interval × unhealthy-threshold + interval after a kill, and back to 1 after recovery", async () => {
      expect(await metric(proxy, "sentinel_agent_health", 'agent="cb"')).toBe(1);
      const t0 = Date.now();
      await agent.kill();
      await waitFor(async () => (await metric(proxy, "sentinel_agent_health", 'agent="cb"')) === 0, 3000, "health 0");
      expect(Date.now() - t0).toBeLessThan(200 * 2 + 200 + 150);
      await agent.restart("allow");
      await waitFor(async () => (await metric(proxy, "sentinel_agent_health", 'agent="cb"')) === 1, 5000, "health 1");
    });

    test("an agent that stops answering pings is marked unhealthy", async () => {
      await agent.restart("nopong");
      await waitFor(async () => (await metric(proxy, "sentinel_agent_health", 'agent="cb"')) === 0, 3000, "health 0 on nopong");
      await agent.restart("allow");
      await waitFor(async () => (await metric(proxy, "sentinel_agent_health", 'agent="cb"')) === 1, 5000, "health back");
    });
  });

  describe(`${transport}: answers the proxy may not apply`, () => {
    let up: Upstream;
    let agent: AgentProcess;
    let proxy: ProxyProcess;
    // A mutation of the hop-by-hop TE header, as each chaos agent takes it (wire JSON / model op).
    const forbidden = transport === "uds" ? [{ set: { name: "te", value: "x" } }] : [{ op: "set", name: "te", value: "x" }];
    beforeAll(async () => {
      up = startUpstream("u");
      agent = await startAgent("chaos", transport, `mutate:${JSON.stringify(forbidden)}`);
      const ep = agentTransportKdl(agent);
      proxy = await startProxy(
        agentProxyConfig(
          up,
          [
            `agent "cbm" { ${ep}; timeout-ms 2000; failure-mode "closed"; circuit-breaker { failure-threshold 3; success-threshold 1; timeout-seconds 60; half-open-max-requests 1 }`,
            `agent "st" { ${ep}; timeout-ms 2000; failure-mode "closed"`,
            `agent "op" { ${ep}; timeout-ms 2000; failure-mode "open"`,
          ]
            .map((a) => `${a}; health-check { enabled #true; interval-ms 200; timeout-ms 500; healthy-threshold 1; unhealthy-threshold 2 } }`)
            .join("\n"),
          `filter "cbm" { type "agent"; agent "cbm" }
  filter "st" { type "agent"; agent "st" }
  filter "op" { type "agent"; agent "op" }`,
          `route "cbm" { matches { path-prefix "/cbm" }; upstream "u"; filters "cbm" }
  route "st" { matches { path-prefix "/st" }; upstream "u"; filters "st" }
  route "op" { matches { path-prefix "/op" }; upstream "u"; filters "op" }`,
        ),
      );
      await healthy();
    });
    afterAll(() => stopAll(proxy, agent, up));
    const healthy = (agents = ["cbm", "st", "op"]) =>
      waitFor(async () => {
        for (const a of agents) if ((await metric(proxy, "sentinel_agent_health", `agent="${a}"`)) !== 1) return false;
        return true;
      }, 10_000, "agents connected and healthy");

    test("a forbidden mutation counts as an error, never as an allow, and does not trip the circuit breaker (request data could)", async () => {
      const events = () => agent.events("request_headers").length;
      expect((await timed(`${proxy.url}/op/x`)).status).toBe(200); // fail-open: the answer is ignored
      const base = events();
      for (let i = 0; i < 3; i++) expect((await timed(`${proxy.url}/cbm/x`)).status).toBe(503);
      await waitFor(() => events() === base + 3, 2000, "three events seen");
      expect(await metric(proxy, "sentinel_agent_calls_total", 'agent="cbm",decision="error"')).toBe(3);
      expect((await metric(proxy, "sentinel_agent_calls_total", 'agent="cbm",decision="allow"')) ?? 0).toBe(0);
      expect(await metric(proxy, "sentinel_agent_errors_total", 'agent="cbm",kind="protocol"')).toBe(3);
      // failure-threshold 3 reached, yet closed: the agent is still asked (and still refused).
      expect(await metric(proxy, "sentinel_agent_circuit_state", 'agent="cbm"')).toBe(0);
      expect((await timed(`${proxy.url}/cbm/x`)).status).toBe(503);
      await waitFor(() => events() === base + 4, 2000, "the fourth event seen");
      expect((await metric(proxy, "sentinel_agent_errors_total", 'agent="cbm",kind="circuit_open"')) ?? 0).toBe(0);
      expect(hits(up, "/cbm/")).toBe(0);
    });

    test("a block status outside 100-599 is an agent error: 503 when fail-closed, ignored when fail-open", async () => {
      await agent.restart("block:700");
      await waitFor(async () => (await metric(proxy, "sentinel_agent_health", 'agent="st"')) === 0, 5000, "the restart noticed");
      await healthy(["st", "op"]);
      const events = () => agent.events("request_headers").length;
      const base = events();
      const before = hits(up, "/op/");
      const count = async (a: string, series: string) => (await metric(proxy, `sentinel_agent_${series.split("{")[0]}`, `agent="${a}",${series.slice(series.indexOf("{") + 1)}`)) ?? 0;
      const opErrorsBefore = await count("op", 'errors_total{kind="protocol"');
      const closed = await timed(`${proxy.url}/st/x`);
      expect(closed.status).toBe(503);
      expect(closed.headers.get("retry-after")).toBe("1");
      expect((await timed(`${proxy.url}/op/x`)).status).toBe(200);
      expect(hits(up, "/op/")).toBe(before + 1);
      expect(hits(up, "/st/")).toBe(0);
      await waitFor(() => events() === base + 2, 2000, "both answered by the agent");
      for (const a of ["st", "op"]) expect(await count(a, 'calls_total{decision="block"')).toBe(0);
      expect(await count("st", 'calls_total{decision="error"')).toBe(1);
      expect(await count("st", 'errors_total{kind="protocol"')).toBe(1);
      expect(await count("op", 'errors_total{kind="protocol"')).toBe(opErrorsBefore + 1);
    }, 20_000);
  });
}
