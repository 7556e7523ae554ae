// `npm run build:release`: cross-compile dist/sentinel for every release target, offline, plus
// SHA256SUMS.
//
//   bun scripts/build-release.ts [--targets linux-x64,linux-arm64,linux-x64-musl] [--out DIR]
//                                [--offline] [--fetch-only]
//   bun scripts/build-release.ts --rootfs DIR [--binary dist/sentinel]…
//
// Runtimes. `bun build --compile --target=X` normally downloads the Bun runtime for X at build
// time. Instead, each target is built with `--compile-executable-path` pointing at the runtime
// binary from the matching npm package `@oven/bun-<os>-<arch>[-musl]`, at exactly the version of
// the `bun` dependency in package.json. Where a runtime comes from, first match wins:
//   1. node_modules/@oven/bun-…: what `npm ci` installed for this machine (bun's optional deps;
//      npm only installs the one matching the host, the others fail its platform check);
//   2. the runtime cache: $SENTINEL_RUNTIME_CACHE, default node_modules/.cache/sentinel-bun-runtimes;
//   3. unless --offline: `npm pack @oven/bun-…@<version>` into the cache, checked against the
//      sha512 integrity that package-lock.json records for that package (bun lists every
//      platform package as an optional dependency, so the lock pins all of them), then unpacked.
// Once the cache holds the runtimes (`--fetch-only` fills it), the build needs no network.
//
// Output: DIR (default dist/release)/sentinel-<version>-<target> and DIR/SHA256SUMS (the
// `sha256sum -c` format). The binary that can run on this machine is smoke-run with --version.
//
// --rootfs DIR: assemble the minimal root filesystem of a scratch image: each --binary (default
// dist/sentinel) at DIR/<name>, plus exactly the shared libraries `ldd` lists for them (the
// dynamic loader included) at the same paths, and nothing else. The Dockerfile and
// test/ship-rootfs.test.ts both use this.
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { basename, dirname, join, resolve } from "node:path";
import { VERSION } from "../src/version.ts";

const root = join(import.meta.dir, "..");

export interface ReleaseTarget {
  /** Name used in file names: sentinel-<version>-<name>. */
  name: string;
  /** `bun build --target` value. */
  bunTarget: string;
  /** npm package holding the runtime (bin/bun). */
  pkg: string;
  arch: "x64" | "arm64";
  libc: "glibc" | "musl";
}

export const TARGETS: ReleaseTarget[] = [
  { name: "linux-x64", bunTarget: "bun-linux-x64", pkg: "@oven/bun-linux-x64", arch: "x64", libc: "glibc" },
  { name: "linux-arm64", bunTarget: "bun-linux-arm64", pkg: "@oven/bun-linux-aarch64", arch: "arm64", libc: "glibc" },
  { name: "linux-x64-musl", bunTarget: "bun-linux-x64-musl", pkg: "@oven/bun-linux-x64-musl", arch: "x64", libc: "musl" },
];

function fail(msg: string): never {
  process.stderr.write(`build-release: ${msg}\n`);
  process.exit(1);
}

function say(msg: string): void {
  process.stdout.write(msg + "\n");
}

/** The Bun version every runtime is pinned to: the `bun` dependency in package.json. */
export function bunVersion(): string {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  const v: string | undefined = pkg.dependencies?.bun ?? pkg.devDependencies?.bun;
  if (!v || !/^\d+\.\d+\.\d+$/.test(v)) fail(`package.json must pin "bun" to an exact version (found ${JSON.stringify(v)})`);
  return v;
}

export function runtimeCacheDir(): string {
  return resolve(process.env.SENTINEL_RUNTIME_CACHE || join(root, "node_modules", ".cache", "sentinel-bun-runtimes"));
}

function lockIntegrity(pkg: string, version: string): string {
  const lock = JSON.parse(readFileSync(join(root, "package-lock.json"), "utf8"));
  const entry = lock.packages?.[`node_modules/${pkg}`];
  if (!entry) fail(`package-lock.json has no entry for ${pkg}; run npm install so the lock lists bun's platform packages`);
  if (entry.version !== version) fail(`package-lock.json pins ${pkg}@${entry.version} but package.json has bun ${version}; run npm install`);
  if (typeof entry.integrity !== "string" || !entry.integrity.startsWith("sha512-")) fail(`package-lock.json has no sha512 integrity for ${pkg}`);
  return entry.integrity;
}

const cacheName = (pkg: string, version: string) => `${pkg.replace(/^@/, "").replace("/", "-")}-${version}`;

/** The runtime binary for `t` if it is available locally, without touching the network. */
export function localRuntime(t: ReleaseTarget, version: string): string | undefined {
  const installed = join(root, "node_modules", t.pkg);
  const versionOf = (dir: string): string | undefined => {
    try {
      return JSON.parse(readFileSync(join(dir, "package.json"), "utf8")).version;
    } catch {
      return undefined;
    }
  };
  if (versionOf(installed) === version) {
    if (existsSync(join(installed, "bin", "bun"))) return join(installed, "bin", "bun");
    // bun's postinstall moves the host package's bin/bun to node_modules/bun/bin/bun.exe.
    const moved = join(root, "node_modules", "bun", "bin", "bun.exe");
    if (t.name === hostTarget() && versionOf(join(root, "node_modules", "bun")) === version && existsSync(moved)) return moved;
  }
  const cached = join(runtimeCacheDir(), cacheName(t.pkg, version), "bin", "bun");
  return existsSync(cached) ? cached : undefined;
}

/** `npm pack` the runtime package into the cache, verify it against package-lock.json, unpack it. */
function fetchRuntime(t: ReleaseTarget, version: string): string {
  const integrity = lockIntegrity(t.pkg, version);
  const cache = runtimeCacheDir();
  mkdirSync(cache, { recursive: true });
  const spec = `${t.pkg}@${version}`;
  say(`fetching ${spec} (npm pack) …`);
  const pack = Bun.spawnSync(["npm", "pack", spec, "--pack-destination", cache, "--json", "--ignore-scripts", "--loglevel=error"], {
    cwd: cache,
    stdout: "pipe",
    stderr: "inherit",
  });
  if (pack.exitCode !== 0) fail(`npm pack ${spec} failed (exit ${pack.exitCode}); the registry must be reachable once to fill ${cache}`);
  const info = JSON.parse(pack.stdout.toString())[0] as { filename: string };
  const tgz = join(cache, basename(info.filename));
  const actual = "sha512-" + createHash("sha512").update(readFileSync(tgz)).digest("base64");
  if (actual !== integrity) {
    rmSync(tgz, { force: true });
    fail(`${spec}: integrity mismatch (package-lock.json ${integrity}, downloaded ${actual})`);
  }
  // Unpack into a temporary directory and rename, so an interrupted run never leaves a half-written runtime.
  const final = join(cache, cacheName(t.pkg, version));
  const tmp = `${final}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const tar = Bun.spawnSync(["tar", "-xzf", tgz, "-C", tmp, "--strip-components=1"], { stdout: "inherit", stderr: "inherit" });
  if (tar.exitCode !== 0) fail(`could not unpack ${tgz}`);
  chmodSync(join(tmp, "bin", "bun"), 0o755);
  rmSync(final, { recursive: true, force: true });
  renameSync(tmp, final);
  rmSync(tgz, { force: true });
  return join(final, "bin", "bun");
}

function hostTarget(): string | undefined {
  if (process.platform !== "linux") return undefined;
  // glibc hosts report a glibc version; musl hosts do not.
  const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime;
  const libc = glibc ? "" : "-musl";
  if (process.arch === "x64") return `linux-x64${libc}`;
  if (process.arch === "arm64") return `linux-arm64${libc}`;
  return undefined;
}

function sha256File(path: string): string {
  const h = new Bun.CryptoHasher("sha256");
  h.update(readFileSync(path));
  return h.digest("hex");
}

function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const v = process.argv[i + 1];
  if (v === undefined || v.startsWith("--")) fail(`--${name} needs a value`);
  return v;
}

function release(): void {
  const version = bunVersion();
  const offline = process.argv.includes("--offline");
  const fetchOnly = process.argv.includes("--fetch-only");
  const wanted = argValue("targets")?.split(",").map((s) => s.trim()).filter(Boolean);
  const targets = wanted ? wanted.map((n) => TARGETS.find((t) => t.name === n) ?? fail(`unknown target ${n} (known: ${TARGETS.map((t) => t.name).join(", ")})`)) : TARGETS;
  const out = resolve(argValue("out") ?? join(root, "dist", "release"));

  const runtimes = new Map<ReleaseTarget, string>();
  for (const t of targets) {
    let rt = localRuntime(t, version);
    if (!rt) {
      if (offline) fail(`no ${t.pkg}@${version} runtime in node_modules or ${runtimeCacheDir()}; run \`bun scripts/build-release.ts --fetch-only\` once with network access`);
      rt = fetchRuntime(t, version);
    }
    runtimes.set(t, rt);
  }
  if (fetchOnly) {
    for (const [t, rt] of runtimes) say(`${t.name}: ${rt}`);
    return;
  }

  mkdirSync(out, { recursive: true });
  const sums: string[] = [];
  const host = hostTarget();
  for (const t of targets) {
    const file = `sentinel-${VERSION}-${t.name}`;
    const outfile = join(out, file);
    const started = performance.now();
    // scripts/build.ts holds the compile flags; it passes these through to `bun build --compile`.
    const build = Bun.spawnSync([process.execPath, join(root, "scripts", "build.ts")], {
      cwd: root,
      env: { ...process.env, SENTINEL_TARGET: t.bunTarget, SENTINEL_EXECUTABLE_PATH: runtimes.get(t)!, SENTINEL_OUTFILE: outfile },
      stdout: "ignore",
      stderr: "inherit",
    });
    if (build.exitCode !== 0) fail(`build for ${t.name} failed`);
    chmodSync(outfile, 0o755);
    if (t.name === host) {
      const v = Bun.spawnSync([outfile, "--version"], { stdout: "pipe", stderr: "pipe", env: {} });
      const text = v.stdout.toString().trim();
      if (v.exitCode !== 0 || text !== `sentinel ${VERSION}`) fail(`${file} --version printed ${JSON.stringify(text)} (exit ${v.exitCode})`);
    }
    sums.push(`${sha256File(outfile)}  ${file}`);
    say(`${file}  ${(statSync(outfile).size / 1e6).toFixed(1)} MB  ${((performance.now() - started) / 1000).toFixed(1)} s${t.name === host ? "  (runs here: --version ok)" : ""}`);
  }
  writeFileSync(join(out, "SHA256SUMS"), sums.join("\n") + "\n");
  say(`${join(out, "SHA256SUMS")}: ${sums.length} binaries (bun ${version} runtimes)`);
}

/** Absolute paths of the shared libraries `ldd` lists for `binary`, the dynamic loader included. */
export function sharedLibraries(binary: string): string[] {
  const ldd = Bun.spawnSync(["ldd", binary], { stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C" } });
  const text = ldd.stdout.toString() + ldd.stderr.toString();
  if (/not a dynamic executable|statically linked/.test(text)) return [];
  if (ldd.exitCode !== 0) fail(`ldd ${binary} failed: ${text.trim()}`);
  const libs: string[] = [];
  for (const line of text.split("\n")) {
    if (/=>\s*not found/.test(line)) fail(`ldd ${binary}: ${line.trim()}`);
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(0x/.exec(line);
    if (m && !libs.includes(m[1]!)) libs.push(m[1]!);
  }
  return libs;
}

/**
 * The scratch image's root: each binary at /<its file name>, plus the shared libraries `ldd` lists
 * for them (symlinks resolved, at the paths ld.so looks for them), and nothing else.
 */
export function assembleRootfs(dir: string, binaries: string[]): string[] {
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755);
  const libs: string[] = [];
  for (const binary of binaries) {
    if (!existsSync(binary)) fail(`${binary} does not exist (run npm run build)`);
    const dest = join(dir, basename(binary));
    copyFileSync(binary, dest);
    chmodSync(dest, 0o755);
    for (const lib of sharedLibraries(binary)) if (!libs.includes(lib)) libs.push(lib);
  }
  for (const lib of libs) {
    const dest = join(dir, lib);
    mkdirSync(dirname(dest), { recursive: true });
    // Readable by any uid (the image runs as a non-root one), whatever the umask.
    for (let d = dirname(dest); d.startsWith(dir) && d !== dir; d = dirname(d)) chmodSync(d, 0o755);
    copyFileSync(lib, dest); // follows symlinks: the image gets the real file under the name ld.so looks for
    chmodSync(dest, 0o755);
  }
  return libs;
}

function argValues(name: string): string[] {
  const out: string[] = [];
  process.argv.forEach((a, i) => {
    if (a !== `--${name}`) return;
    const v = process.argv[i + 1];
    if (v === undefined || v.startsWith("--")) fail(`--${name} needs a value`);
    out.push(v);
  });
  return out;
}

if (import.meta.main) {
  const rootfs = argValue("rootfs");
  if (rootfs) {
    const given = argValues("binary");
    const binaries = (given.length ? given : [join(root, "dist", "sentinel")]).map((b) => resolve(b));
    const libs = assembleRootfs(resolve(rootfs), binaries);
    say(`${rootfs}: ${binaries.map((b) => "/" + basename(b)).join(", ")} + ${libs.length} shared libraries`);
    for (const l of libs) say(`  ${l}`);
  } else {
    release();
  }
}
