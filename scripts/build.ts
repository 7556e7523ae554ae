// `npm run build`: compile src/cli.ts into the single executable dist/sentinel
// (bytecode, minified, no .env/bunfig.toml autoload at run time).
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const root = join(import.meta.dir, "..");
const out = join(root, "dist", "sentinel");
mkdirSync(join(root, "dist"), { recursive: true });
const args = [
  "build",
  "--compile",
  "--bytecode",
  "--minify",
  "--no-compile-autoload-dotenv",
  "--no-compile-autoload-bunfig",
  ...(process.env.SENTINEL_TARGET ? [`--target=${process.env.SENTINEL_TARGET}`] : []),
  ...(process.env.SENTINEL_EXECUTABLE_PATH ? [`--compile-executable-path=${process.env.SENTINEL_EXECUTABLE_PATH}`] : []),
  join(root, "src", "cli.ts"),
  "--outfile",
  process.env.SENTINEL_OUTFILE ?? out,
];
const proc = Bun.spawnSync([process.execPath, ...args], { cwd: root, stdout: "inherit", stderr: "inherit" });
if (proc.exitCode !== 0) {
  console.error("build failed");
  process.exit(proc.exitCode ?? 1);
}
