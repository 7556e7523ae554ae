// `npm run bench -- --quick` end to end (systems that are not installed are skipped, a missing
// wrk/h2load falls back to the built-in generator), and the fallback generator on its own.
import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const BUN = process.execPath;

describe("benchmark", () => {
  test("the fallback load generator measures a closed-loop and a fixed-rate run", async () => {
    const server = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("Hello, World!") });
    try {
      const run = async (extra: string[]) => {
        const p = Bun.spawn([BUN, join(ROOT, "scripts", "bench", "loadgen.ts"), "--url", `http://127.0.0.1:${server.port}/`, "-c", "4", "-d", "1", ...extra], { stdout: "pipe", stderr: "pipe" });
        const out = await new Response(p.stdout).text();
        expect(await p.exited).toBe(0);
        return JSON.parse(out.trim().split("\n").pop()!) as { requests: number; rps: number; errors: number; non2xx: number; latency_us: Record<string, number> };
      };
      const closed = await run([]);
      expect(closed.requests).toBeGreaterThan(100);
      expect(closed.errors + closed.non2xx).toBe(0);
      expect(closed.latency_us.p99).toBeGreaterThan(0);
      const fixed = await run(["--rps", "500"]);
      expect(fixed.rps).toBeGreaterThan(350);
      expect(fixed.rps).toBeLessThan(650);
    } finally {
      server.stop(true);
    }
  }, 20_000);

  test(
    "npm run bench -- --quick completes and writes its JSON",
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "sentinel-bench-test-"));
      const json = join(dir, "quick.json");
      const binary = join(ROOT, "dist", "sentinel");
      const args = [BUN, join(ROOT, "scripts", "bench.ts"), "--quick", "--json", json, "--no-md", ...(existsSync(binary) ? ["--binary", binary] : [])];
      const p = Bun.spawn(args, { cwd: ROOT, stdout: "pipe", stderr: "pipe", env: { ...process.env } });
      const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
      const code = await p.exited;
      if (code !== 0) console.error(out.slice(-4000), err.slice(-4000));
      expect(code).toBe(0);
      const r = JSON.parse(readFileSync(json, "utf8"));
      rmSync(dir, { recursive: true, force: true });
      expect(r.mode).toBe("quick");
      expect(r.rows.length).toBeGreaterThan(5);
      const systems = new Set(r.rows.map((x: { system: string }) => x.system));
      for (const s of ["direct", "sentinel", "sentinel_uds", "sentinel_grpc", "sentinel_body"]) expect(systems.has(s)).toBe(true);
      for (const row of r.rows) expect(row.rps).toBeGreaterThan(0);
      // The proxy answered every request correctly under load (agents fail closed: an agent
      // problem would show here as non-2xx).
      for (const row of r.rows.filter((x: { system: string }) => x.system.startsWith("sentinel"))) expect(row.errors + row.non2xx).toBe(0);
      // With h2load, the fixed rate also runs with the connections' pacing spread, which must
      // really leave fewer requests in flight when each one starts than h2load's own way.
      const inFlight = (kind: string) =>
        r.rows.filter((x: { kind: string; inFlight?: number }) => x.kind === kind && x.inFlight !== undefined).map((x: { inFlight: number }) => x.inFlight);
      if (inFlight("fixed5ks").length > 0) {
        expect(inFlight("fixed5k").length).toBeGreaterThan(0);
        expect(Math.max(...inFlight("fixed5ks"))).toBeLessThan(Math.min(...inFlight("fixed5k")));
      }
      expect(r.targets.length).toBeGreaterThan(5);
      expect(out).toContain("== targets ==");
    },
    150_000,
  );
});
