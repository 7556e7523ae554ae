// `npm run build:release` with the network off: three binaries from the pinned @oven/bun-*
// runtimes, SHA256SUMS that match, the right architecture and C library for each, and a smoke
// run (--version, validate, one proxied request, SIGTERM) of the one this machine can execute.
//
// The runtimes are fetched first, with the network on (`--fetch-only`: a no-op once they are in
// node_modules or the runtime cache); the build itself then runs under `unshare -n` (a network
// namespace with no interfaces up) and with an empty Bun download cache, so neither a download
// nor a runtime Bun cached earlier can be what makes it work.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const OUT = join(ROOT, "dist", "release");
const VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;
const BUN_VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).dependencies.bun as string;

/** A prefix that runs a command with no network, or undefined when namespaces are not allowed here. */
function offlinePrefix(): string[] | undefined {
  for (const prefix of [["unshare", "-n"], ["unshare", "-r", "-n"]]) {
    const p = Bun.spawnSync([...prefix, "true"], { stdout: "pipe", stderr: "pipe" });
    if (p.exitCode === 0) return prefix;
  }
  return undefined;
}
const OFFLINE = offlinePrefix();

const EXPECT: Record<string, { machine: number; interp: string }> = {
  "linux-x64": { machine: 62, interp: "/lib64/ld-linux-x86-64.so.2" },
  "linux-arm64": { machine: 183, interp: "/lib/ld-linux-aarch64.so.1" },
  "linux-x64-musl": { machine: 62, interp: "/lib/ld-musl-x86_64.so.1" },
};

/** ELF e_machine and the PT_INTERP path of a 64-bit little-endian ELF file. */
function elfInfo(path: string): { machine: number; interp?: string } {
  const fd = openSync(path, "r");
  try {
    const head = Buffer.alloc(64);
    readSync(fd, head, 0, 64, 0);
    expect(head.subarray(0, 4).toString("latin1")).toBe("\x7fELF");
    expect(head[4]).toBe(2); // ELFCLASS64
    const machine = head.readUInt16LE(18);
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) {
      const o = i * phentsize;
      if (ph.readUInt32LE(o) !== 3) continue; // PT_INTERP
      const off = Number(ph.readBigUInt64LE(o + 8));
      const size = Number(ph.readBigUInt64LE(o + 32));
      const s = Buffer.alloc(size);
      readSync(fd, s, 0, size, off);
      return { machine, interp: s.toString("latin1").replace(/\0+$/, "") };
    }
    return { machine };
  } finally {
    closeSync(fd);
  }
}

function sha256(path: string): string {
  const h = new Bun.CryptoHasher("sha256");
  h.update(readFileSync(path));
  return h.digest("hex");
}

describe.skipIf(!OFFLINE)("npm run build:release (offline)", () => {
  let build: { code: number; stdout: string; stderr: string };
  const temps: string[] = [];
  afterAll(() => {
    for (const d of temps) rmSync(d, { recursive: true, force: true });
  });

  beforeAll(async () => {
    // Network on: make sure the three runtimes are local (node_modules or the runtime cache).
    const prefetch = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "build-release.ts"), "--fetch-only"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    if (prefetch.exitCode !== 0) throw new Error(`build-release --fetch-only failed:\n${prefetch.stdout}\n${prefetch.stderr}`);

    // Network off: the real command.
    const emptyBunCache = mkdtempSync(join(tmpdir(), "sentinel-empty-bun-cache-"));
    temps.push(emptyBunCache);
    const proc = Bun.spawn([...OFFLINE!, "npm", "run", "--silent", "build:release"], {
      cwd: ROOT,
      stdout: "pipe",
      stderr: "pipe",
      env: {
        ...process.env,
        BUN_INSTALL_CACHE_DIR: emptyBunCache,
        npm_config_update_notifier: "false",
        npm_config_offline: "true",
      },
    });
    const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    build = { code, stdout, stderr };
  }, 180_000);

  test("exits 0 with no network, and says which binary it smoke-ran", () => {
    expect(build.code, `${build.stdout}\n${build.stderr}`).toBe(0);
    expect(build.stdout).toContain(`sentinel-${VERSION}-linux-x64 `);
    expect(build.stdout).toContain("(runs here: --version ok)");
    expect(build.stdout).toContain(`bun ${BUN_VERSION} runtimes`);
  });

  test("SHA256SUMS lists exactly the three binaries, and every sum matches", () => {
    const lines = readFileSync(join(OUT, "SHA256SUMS"), "utf8").trim().split("\n");
    const names = lines.map((l) => l.split(/\s+/)[1]);
    expect(names).toEqual(Object.keys(EXPECT).map((t) => `sentinel-${VERSION}-${t}`));
    for (const l of lines) {
      const [sum, name] = l.split(/\s+/) as [string, string];
      expect(l).toMatch(/^[0-9a-f]{64} {2}\S+$/); // the `sha256sum -c` format
      expect(sha256(join(OUT, name))).toBe(sum);
    }
  });

  for (const [target, want] of Object.entries(EXPECT)) {
    test(`${target}: ELF machine ${want.machine}, interpreter ${want.interp}, the application embedded`, () => {
      const file = join(OUT, `sentinel-${VERSION}-${target}`);
      const info = elfInfo(file);
      expect(info.machine).toBe(want.machine);
      expect(info.interp).toBe(want.interp);
      expect(statSync(file).mode & 0o111).toBe(0o111);
      // Larger than a bare runtime (~100-107 MB) and carrying our code.
      expect(statSync(file).size).toBeGreaterThan(104_000_000);
      expect(readFileSync(file).includes("security-first reverse proxy with external agents")).toBe(true);
    });
  }

  // arm64 and musl cannot run natively on this x64 glibc machine; their headers are checked above.
  // Opt-in (about 20 s of emulation): SENTINEL_TEST_QEMU=1 with Debian's qemu-user-static and
  // libc6-arm64-cross runs the arm64 binary. There is no musl libstdc++ in Debian to run the other.
  const qemu = Bun.which("qemu-aarch64-static");
  test.skipIf(!(process.env.SENTINEL_TEST_QEMU === "1" && qemu && existsSync("/usr/aarch64-linux-gnu/lib/libc.so.6")))(
    "linux-arm64 under qemu-user (opt-in): --version and validate",
    () => {
      const bin = join(OUT, `sentinel-${VERSION}-linux-arm64`);
      const run = (args: string[]) => Bun.spawnSync([qemu!, "-L", "/usr/aarch64-linux-gnu", bin, ...args], { stdout: "pipe", stderr: "pipe", env: { PATH: "/usr/bin:/bin" } });
      expect(run(["--version"]).stdout.toString().trim()).toBe(`sentinel ${VERSION}`);
      const v = run(["validate", "-c", join(ROOT, "examples", "deploy", "service", "sentinel.kdl")]);
      expect(v.exitCode, v.stderr.toString()).toBe(0);
    },
    120_000,
  );

  test("linux-x64 smoke: --version, validate, one proxied request, SIGTERM → exit 0", async () => {
    const bin = join(OUT, `sentinel-${VERSION}-linux-x64`);
    const env = { PATH: "/usr/bin:/bin", NODE_ENV: "production" };
    const version = Bun.spawnSync([bin, "--version"], { env, stdout: "pipe" });
    expect(version.stdout.toString().trim()).toBe(`sentinel ${VERSION}`);

    const upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: (req) => new Response(`upstream saw ${new URL(req.url).pathname}`) });
    const dir = mkdtempSync(join(tmpdir(), "sentinel-release-smoke-"));
    temps.push(dir);
    const config = join(dir, "sentinel.kdl");
    writeFileSync(
      config,
      `system { graceful-shutdown-timeout-secs 2; }
listeners { listener "main" { address "127.0.0.1:0"; }; }
upstreams { upstream "app" { target "127.0.0.1:${upstream.port}"; }; }
routes {
  route "health" { priority "high"; matches { path "/health"; }; builtin-handler "health"; }
  route "all" { priority "low"; matches { path-prefix "/"; }; upstream "app"; }
}
`,
    );
    const validate = Bun.spawnSync([bin, "validate", "-c", config], { env, stdout: "pipe", stderr: "pipe" });
    expect(validate.exitCode, validate.stderr.toString()).toBe(0);

    const proc = Bun.spawn([bin, "-c", config], { cwd: dir, env, stdin: "ignore", stdout: "ignore", stderr: "pipe" });
    try {
      const started = await waitForStart(proc.stderr);
      const url = (started.listeners as string[])[0]!;
      const res = await fetch(`${url}/hello`);
      expect(res.status).toBe(200);
      expect(await res.text()).toBe("upstream saw /hello");
      proc.kill("SIGTERM");
      expect(await proc.exited).toBe(0);
    } finally {
      proc.kill("SIGKILL");
      upstream.stop(true);
    }
  }, 30_000);
});

if (!OFFLINE) test.skip("npm run build:release offline: skipped, `unshare -n` cannot create a network namespace here (CI runs as root)", () => {});

/** Reads the proxy's stderr to the end (so the pipe never fills) and returns its "sentinel started" log line. */
async function waitForStart(stderr: ReadableStream<Uint8Array>, timeoutMs = 10_000): Promise<Record<string, unknown>> {
  let buf = "";
  let found: ((line: Record<string, unknown>) => void) | undefined;
  const started = new Promise<Record<string, unknown>>((resolve) => (found = resolve));
  void (async () => {
    const dec = new TextDecoder();
    for await (const chunk of stderr) {
      buf += dec.decode(chunk, { stream: true });
      const line = buf.split("\n").find((l) => l.includes('"sentinel started"'));
      if (line && found) {
        found(JSON.parse(line));
        found = undefined;
      }
      if (!found) buf = buf.slice(-4096);
    }
  })();
  const timeout = Bun.sleep(timeoutMs).then(() => undefined);
  const line = await Promise.race([started, timeout]);
  if (!line) throw new Error(`no "sentinel started" line; stderr so far:\n${buf}`);
  return line;
}
