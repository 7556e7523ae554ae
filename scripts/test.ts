// Runs `bun test` and ends with the plain line "N passed, N failed" (derived from bun's own summary).
// Exit code is non-zero on any failure, on a missing summary, or when bun itself fails.
import { spawn } from "node:child_process";

const bun = process.execPath;
// bunfig.toml's [test] timeout is not applied by Bun 1.4.5; pass it on the command line.
const args = ["test", "--timeout", "60000", ...process.argv.slice(2)];
const child = spawn(bun, args, { stdio: ["ignore", "inherit", "pipe"], env: { ...process.env, NODE_ENV: "production" } });
let tail = "";
child.stderr.on("data", (chunk: Buffer) => {
  process.stderr.write(chunk);
  tail = (tail + chunk.toString("utf8")).slice(-8192);
});
child.on("close", (code) => {
  const pass = /^\s*(\d+) pass\s*$/m.exec(tail);
  const fail = /^\s*(\d+) fail\s*$/m.exec(tail);
  const passed = pass ? Number(pass[1]) : 0;
  const failed = fail ? Number(fail[1]) : 0;
  const broken = !pass && !fail;
  process.stdout.write(`\n${passed} passed, ${broken ? 1 : failed} failed\n`);
  process.exit(code !== 0 || failed > 0 || broken ? 1 : 0);
});
