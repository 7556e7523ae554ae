// The scratch image without Docker (no engine runs on these machines): assemble the same root
// the Dockerfile copies into FROM scratch (`build-release.ts --rootfs`: dist/sentinel plus the
// shared libraries ldd lists, nothing else), add the config, and run the binary inside it with
// `unshare`: new mount, pid and user namespaces, /proc mounted, nothing else. It runs as uid
// 65532 inside the namespace (the image's USER) and, when the test runs as root, as the
// unprivileged host uid 65532 too. No network namespace is created, so an upstream on
// 127.0.0.1 outside is reachable, like a port published by a container.
// It is PID 1 there, so SIGTERM reaches it only because it handles the signal (the kernel drops
// unhandled signals to a namespace's init): exit 0 proves the drain-and-exit path.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import type { Server, Subprocess } from "bun";

const ROOT = join(import.meta.dir, "..");
const BINARY = join(ROOT, "dist", "sentinel");
const UID = 65532;

const isRoot = process.getuid?.() === 0;
const unshareBin = Bun.which("unshare");
const setprivBin = Bun.which("setpriv");

/** The command prefix that runs a program inside `root` as described above. */
function sandbox(root: string): string[] {
  const ns = [unshareBin!, `--map-user=${UID}`, `--map-group=${UID}`, "--mount", "--pid", "--fork", "--mount-proc", `--root=${root}`];
  // As root: first drop to an unprivileged host uid, so nothing inside runs with host privileges.
  return isRoot ? [setprivBin!, `--reuid=${UID}`, `--regid=${UID}`, "--clear-groups", ...ns] : ns;
}

function canSandbox(): boolean {
  if (!unshareBin || (isRoot && !setprivBin) || !existsSync(BINARY)) return false;
  const dir = mkdtempSync(join(tmpdir(), "sentinel-ns-probe-"));
  try {
    chmodSync(dir, 0o755);
    mkdirSync(join(dir, "proc"));
    const p = Bun.spawnSync([...sandbox(dir).slice(0, -1), "true"], { stdout: "pipe", stderr: "pipe" });
    return p.exitCode === 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
const CAN = canSandbox();

/** Absolute library paths from `ldd`, independently of build-release.ts. */
function lddPaths(binary: string): string[] {
  const out = Bun.spawnSync(["ldd", binary], { stdout: "pipe", env: { LC_ALL: "C", PATH: "/usr/bin:/bin" } }).stdout.toString();
  return [...out.matchAll(/(?:=>\s*|^\s*)(\/\S+)\s+\(0x/gm)].map((m) => m[1]!);
}

function walk(dir: string, base = dir): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p, base));
    else out.push("/" + relative(base, p));
  }
  return out;
}

describe.skipIf(!CAN)("minimal root (FROM scratch stand-in) under unshare", () => {
  let work: string;
  let root: string;
  let upstream: Server<undefined>;
  let proc: Subprocess<"ignore", "ignore", "pipe">;
  const lines: string[] = [];
  let started: Record<string, unknown>;
  let pid1 = 0; // host pid of the proxy (PID 1 inside)

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "sentinel-rootfs-"));
    chmodSync(work, 0o755);
    root = join(work, "root");
    const asm = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "build-release.ts"), "--rootfs", root, "--binary", BINARY], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    if (asm.exitCode !== 0) throw new Error(`--rootfs failed: ${asm.stderr}`);

    upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: (req) => new Response(`upstream saw ${new URL(req.url).pathname}`) });
  });

  afterAll(() => {
    if (proc && proc.exitCode === null) proc.kill("SIGKILL");
    if (pid1) {
      try {
        process.kill(pid1, "SIGKILL");
      } catch {
        // already gone
      }
    }
    upstream?.stop(true);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("the root holds /sentinel and exactly the libraries ldd lists, nothing else", () => {
    const libs = lddPaths(BINARY);
    expect(libs.length).toBeGreaterThan(0);
    expect(libs.some((l) => /\/ld-linux[^/]*\.so/.test(l))).toBe(true); // the dynamic loader
    expect(walk(root).sort()).toEqual(["/sentinel", ...libs].sort());
    expect(statSync(join(root, "sentinel")).size).toBe(statSync(BINARY).size);
  });

  test("the image's own config (examples/deploy/container.kdl) validates inside the root", () => {
    mkdirSync(join(root, "etc", "sentinel"), { recursive: true });
    copyFileSync(join(ROOT, "examples", "deploy", "container.kdl"), join(root, "etc", "sentinel", "container.kdl"));
    mkdirSync(join(root, "proc"), { recursive: true }); // the mount point the container runtime provides
    chmodSync(join(root, "etc"), 0o755);
    chmodSync(join(root, "etc", "sentinel"), 0o755);
    chmodSync(join(root, "etc", "sentinel", "container.kdl"), 0o644);
    const p = Bun.spawnSync([...sandbox(root), "/sentinel", "validate", "-c", "/etc/sentinel/container.kdl"], { env: {}, stdout: "pipe", stderr: "pipe" });
    expect(p.exitCode, p.stderr.toString()).toBe(0);
    expect(p.stdout.toString()).toContain("configuration is valid");
  });

  test("runs as PID 1, uid 65532, no capabilities, chrooted to the minimal root", async () => {
    writeFileSync(
      join(root, "etc", "sentinel", "sentinel.kdl"),
      `// written by test/ship-rootfs.test.ts
system { graceful-shutdown-timeout-secs 3; }
listeners { listener "main" { address "127.0.0.1:0"; }; }
upstreams { upstream "app" { target "127.0.0.1:${upstream.port}"; }; }
routes {
  route "health" { priority "critical"; matches { path "/health"; }; builtin-handler "health"; }
  route "status" { priority "critical"; matches { path "/status"; }; builtin-handler "status"; }
  route "all" { priority "low"; matches { path-prefix "/"; }; upstream "app"; }
}
`,
    );
    chmodSync(join(root, "etc", "sentinel", "sentinel.kdl"), 0o644);
    // The Dockerfile's environment, and nothing else (env -i).
    proc = Bun.spawn([...sandbox(root), "/sentinel", "-c", "/etc/sentinel/sentinel.kdl"], {
      env: { NODE_ENV: "production", BUN_CONFIG_MAX_HTTP_REQUESTS: "1024" },
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
    });
    started = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no "sentinel started" line:\n${lines.join("\n")}`)), 10_000);
      void (async () => {
        let buf = "";
        const dec = new TextDecoder();
        for await (const chunk of proc.stderr) {
          buf += dec.decode(chunk, { stream: true });
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            lines.push(line);
            if (line.includes('"sentinel started"')) {
              clearTimeout(t);
              resolve(JSON.parse(line));
            }
          }
        }
        clearTimeout(t);
        reject(new Error(`exited before starting (${await proc.exited}):\n${lines.join("\n")}`));
      })();
    });
    expect(started.pid).toBe(1);

    // The proxy is the only child of unshare (setpriv execs unshare, keeping the pid).
    const children = readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, "utf8").trim().split(/\s+/).map(Number);
    expect(children.length).toBe(1);
    pid1 = children[0]!;
    const status = readFileSync(`/proc/${pid1}/status`, "utf8");
    expect(/^NSpid:\s+\d+\s+1$/m.test(status)).toBe(true);
    expect(/^CapEff:\s+0+$/m.test(status)).toBe(true);
    if (isRoot) expect(status).toMatch(new RegExp(`^Uid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}$`, "m"));
    const uidMap = readFileSync(`/proc/${pid1}/uid_map`, "utf8").trim().split(/\s+/);
    expect(uidMap[0]).toBe(String(UID)); // uid inside the namespace
    expect(uidMap[2]).toBe("1"); // and the only one mapped
    expect(readlinkSync(`/proc/${pid1}/root`)).toBe(root);
  }, 20_000);

  test("proxies a request to an upstream outside the namespaces; /health and /status answer", async () => {
    const url = (started.listeners as string[])[0]!;
    const res = await fetch(`${url}/hello`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("upstream saw /hello");
    expect((await fetch(`${url}/health`)).status).toBe(200);
    const st = await fetch(`${url}/status`);
    expect(st.status).toBe(200);
    expect(await st.json()).toMatchObject({ status: "ready" });
  });

  test("SIGTERM to PID 1 (what `docker stop` sends): drains and exits 0", async () => {
    process.kill(pid1, "SIGTERM");
    const code = await Promise.race([proc.exited, Bun.sleep(8_000).then(() => "timeout" as const)]);
    expect(code).toBe(0);
    expect(lines.some((l) => l.includes('"signal received"') && l.includes("SIGTERM"))).toBe(true);
    expect(lines.some((l) => l.includes('"sentinel stopped"'))).toBe(true);
    pid1 = 0;
  }, 15_000);
});

if (!CAN) {
  test.skip(
    `minimal root under unshare: skipped (${!existsSync(BINARY) ? "dist/sentinel missing: run npm run build" : !unshareBin ? "no unshare" : "this machine does not allow user+mount+pid namespaces"}; CI runs as root where it does)`,
    () => {},
  );
}
