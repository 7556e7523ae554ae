// The README's first command: `npm run demo -- --check` builds the binary, starts the example
// upstream, the auth agent (UDS), the WAF agent (gRPC) and the proxy, sends the three example
// requests, checks the agent metrics and stops everything. It uses fixed ports.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { connect } from "node:net";

const ROOT = join(import.meta.dir, "..");
const PORTS = [8080, 9090, 3000, 50051];

function portInUse(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

test("bun scripts/demo.ts --check: every example request and the agent metrics are ok, exit 0", async () => {
  // Another demo (or a leftover process) on the fixed ports would make this fail for the wrong reason.
  const deadline = Date.now() + 20_000;
  for (;;) {
    const busy: number[] = [];
    for (const p of PORTS) if (await portInUse(p)) busy.push(p);
    if (busy.length === 0) break;
    if (Date.now() > deadline) throw new Error(`the demo's fixed ports are busy: ${busy.join(", ")}`);
    await Bun.sleep(250);
  }

  const proc = Bun.spawn([process.execPath, join(ROOT, "scripts", "demo.ts"), "--check"], {
    cwd: ROOT,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const killer = setTimeout(() => proc.kill("SIGKILL"), 50_000);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(killer);
  const context = `exit ${code}\nstdout:\n${stdout}\nstderr:\n${stderr.slice(-2000)}`;

  const ok = stdout.split("\n").filter((l) => l.startsWith("ok "));
  expect(stdout, context).not.toContain("FAIL");
  expect(ok.map((l) => l.replace(/\s+/g, " ")), context).toEqual([
    "ok allowed (valid API key): 200",
    "ok refused by the auth agent (no key): 401",
    "ok blocked by the WAF agent (SQL injection): 403",
    "ok metrics show both agents healthy",
  ]);
  expect(code, context).toBe(0);

  // Everything it started is gone again.
  for (const p of PORTS) expect(await portInUse(p), `port ${p} still open after the demo`).toBe(false);
}, 60_000);
