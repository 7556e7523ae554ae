// The benchmark's reference proxies (scripts/bench/floor.ts) relay a GET correctly in every
// mode; otherwise their rows in docs/benchmarks.md would measure something broken.
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("Hello, World!", { headers: { "content-type": "text/plain" } }) });
afterAll(() => upstream.stop(true));

function freePort(): number {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}

for (const mode of ["fetch", "serve", "raw", "rawreq"]) {
  test(`floor.ts --mode ${mode}: relays GET with status and body; several requests on one connection`, async () => {
    const port = freePort();
    const proc = Bun.spawn([process.execPath, join(ROOT, "scripts", "bench", "floor.ts"), "--mode", mode, "--port", String(port), "--upstream", String(upstream.port)], {
      stdout: "pipe",
      stderr: "inherit",
    });
    try {
      const reader = proc.stdout.getReader();
      let out = "";
      while (!out.includes("READY")) {
        const { done, value } = await reader.read();
        if (done) throw new Error(`floor.ts --mode ${mode} exited before READY`);
        out += new TextDecoder().decode(value);
      }
      for (let i = 0; i < 3; i++) {
        const r = await fetch(`http://127.0.0.1:${port}/x?i=${i}`);
        expect(r.status).toBe(200);
        expect(await r.text()).toBe("Hello, World!");
      }
    } finally {
      proc.kill();
      await proc.exited;
    }
  });
}

test("floor.ts refuses an unknown mode (exit 2) instead of measuring another one", async () => {
  const proc = Bun.spawn([process.execPath, join(ROOT, "scripts", "bench", "floor.ts"), "--mode", "rawreqq", "--port", String(freePort()), "--upstream", String(upstream.port)], {
    stdout: "pipe",
    stderr: "pipe",
  });
  expect(await proc.exited).toBe(2);
  expect(await new Response(proc.stderr).text()).toContain("unknown --mode");
});
