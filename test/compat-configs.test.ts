// Zentinel's sample configs (../shared/examples/, unmodified copies) through the compiled binary:
// `sentinel validate -c FILE` must give the outcome the README's expectation table names for the
// file's group, never a crash and never a silent ignore; the files that validate are also started
// and proxy a request. (src/config/load.test.ts checks what the parser understood of each file.)
//
// Group (README "Expectations for our compatibility test"):
//   A, C  exit 0, or exit 1 where every error is a located "not supported yet: <feature>" error
//         (C: Zentinel rejects them for its own parser bugs, we accept them). C files (and B) may
//         also name missing certificate/schema/root files: those paths exist only on a real host.
//   B     as A; errors may also name missing certificate, schema or root paths.
//   D     exit 1, and the errors name the real problems.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT, runBinary, startProxy, tempDir } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

setDefaultTimeout(30_000);

const EXAMPLES = join(ROOT, "..", "shared", "examples");
const README = readFileSync(join(EXAMPLES, "README.md"), "utf8");
const FILES = readdirSync(EXAMPLES)
  .filter((f) => f.endsWith(".kdl"))
  .sort();

/** Groups from the README's table: `| A. Zentinel loads them | basic, https-upstream, … |`. */
function readmeGroups(): Map<string, "A" | "B" | "C" | "D"> {
  const out = new Map<string, "A" | "B" | "C" | "D">();
  const section = README.slice(README.indexOf("## Expectations for our compatibility test"));
  for (const line of section.split("\n")) {
    const m = /^\|\s*([ABCD])\.[^|]*\|([^|]+)\|/.exec(line);
    if (!m) continue;
    for (const name of m[2]!.split(",").map((s) => s.trim().replace(/\.kdl$/, "")).filter(Boolean)) out.set(`${name}.kdl`, m[1] as "A" | "B" | "C" | "D");
  }
  return out;
}
const GROUPS = readmeGroups();

interface Diag {
  line: string;
  file: string;
  row: number;
  col: number;
  warning: boolean;
  message: string;
}

/** Every stderr line must be a located diagnostic or the final summary line: anything else (a stack trace, an unlocated message) is a failure. */
function diagnostics(stderr: string, file: string): { diags: Diag[]; stray: string[] } {
  const diags: Diag[] = [];
  const stray: string[] = [];
  for (const line of stderr.split("\n")) {
    if (line.trim() === "") continue;
    if (line === `sentinel: ${file}: configuration is invalid`) continue;
    const m = /^(.+?):(\d+):(\d+): (warning: )?(.*)$/.exec(line);
    if (!m || m[1] !== file) {
      stray.push(line);
      continue;
    }
    diags.push({ line, file: m[1]!, row: Number(m[2]), col: Number(m[3]), warning: m[4] !== undefined, message: m[5]! });
  }
  return { diags, stray };
}

const NOT_SUPPORTED = /^not supported yet: (.+)$/;
const MISSING_FILE = /\b(cert-file|key-file|ca-cert|ca-file|client-cert|client-key|schema-file|root|static root|directory)\b.* '[^']+' does not exist/;

const validated = new Map<string, ReturnType<typeof runBinary>>();
/** `sentinel validate -c FILE` (once per file per run). */
function validate(file: string): ReturnType<typeof runBinary> {
  let r = validated.get(file);
  if (!r) validated.set(file, (r = runBinary(["validate", "-c", join(EXAMPLES, file)])));
  return r;
}

describe("the README's expectation table covers every sample", () => {
  test("every .kdl file is in exactly one group, and every listed file exists", () => {
    expect(FILES.length).toBe(23);
    expect([...GROUPS.keys()].sort()).toEqual(FILES);
  });
});

describe("sentinel validate on every Zentinel sample", () => {
  for (const f of FILES) {
    const group = GROUPS.get(f);
    test(`${f} (group ${group}): ${group === "D" ? "rejected with errors naming the real problems" : "valid, or only located not-supported errors"}`, () => {
      const path = join(EXAMPLES, f);
      const src = readFileSync(path, "utf8").split("\n");
      const r = validate(f);
      const { diags, stray } = diagnostics(r.stderr, path);
      expect(stray).toEqual([]); // never a crash, never an unlocated message
      expect([0, 1]).toContain(r.code);
      const errors = diags.filter((d) => !d.warning);
      // Every diagnostic points into the file.
      for (const d of diags) {
        expect(d.row).toBeGreaterThanOrEqual(1);
        expect(d.row).toBeLessThanOrEqual(src.length);
        expect(d.col).toBeGreaterThanOrEqual(1);
      }
      if (group === "D") {
        expect(r.code).toBe(1);
        expect(errors.length).toBeGreaterThan(0);
        return;
      }
      if (r.code === 0) {
        expect(errors).toEqual([]);
        expect(r.stdout).toContain("configuration is valid");
        return;
      }
      expect(errors.length).toBeGreaterThan(0);
      for (const e of errors) {
        const ns = NOT_SUPPORTED.exec(e.message);
        if (ns) {
          // The location is the unsupported node itself: its name is part of the feature named.
          const node = /^[A-Za-z0-9_-]+/.exec(src[e.row - 1]!.slice(e.col - 1))?.[0];
          expect(node).toBeDefined();
          expect(ns[1]!.split(/[\s"()]+/)).toContain(node!);
          continue;
        }
        // Host-dependent paths (certificates, schemas, static roots) are allowed in B and C.
        if (group !== "A" && MISSING_FILE.test(e.message)) continue;
        throw new Error(`${f}: unexpected error for group ${group}: ${e.line}`);
      }
    });
  }

  // Group D: the real problems, by name and place.
  const D: Record<string, RegExp[]> = {
    "acme-cloudflare.kdl": [/:1:1: Missing required 'system' configuration block/, /Listener 'https' requires an 'address' field/, /Upstream 'backend' requires at least one target/],
    "acme-zerossl.kdl": [/:1:1: Missing required 'system' configuration block/, /Listener 'https' requires an 'address' field/, /Upstream 'backend' requires at least one target/],
    "acme-p384.kdl": [/Upstream 'backend' requires at least one target/, /route 'default': unknown key 'match'/],
    "acme-san.kdl": [/acme-san\.kdl:18:29: KDL syntax error/],
  };
  for (const [f, patterns] of Object.entries(D)) {
    test(`${f}: the errors name ${patterns.length === 1 ? "the problem" : "each problem"}`, () => {
      expect(GROUPS.get(f)).toBe("D");
      const r = validate(f);
      expect(r.code).toBe(1);
      for (const p of patterns) expect(r.stderr).toMatch(p);
    });
  }

  test("acme-san.kdl fails only on its KDL v1 syntax (`staging true`), at 18:29", () => {
    const path = join(EXAMPLES, "acme-san.kdl");
    const r = validate("acme-san.kdl");
    const { diags } = diagnostics(r.stderr, path);
    expect(diags.map((d) => `${d.row}:${d.col}`)).toEqual(["18:29"]);
    // 18:29 is just past the bare `true` (the README's position; kdljs and @bgotink/kdl agree).
    expect(readFileSync(path, "utf8").split("\n")[17]!.slice(0, 28).trim()).toBe("staging true");
  });
});

// ---- the samples that validate also start and proxy ---------------------------------------------

/**
 * A temp copy of a sample with ONLY addresses rewritten: listener and metrics `address` nodes to
 * 127.0.0.1:0 (the sample's 0.0.0.0:8080/9090 may be taken, and tests must not listen publicly),
 * and upstream `target` host:port to the test upstream. Nothing else in the file changes.
 */
function withTestAddresses(file: string, target: string): string {
  const text = readFileSync(join(EXAMPLES, file), "utf8");
  const out = text
    .replace(/^(\s*address\s+)"[^"]*"/gm, `$1"127.0.0.1:0"`)
    .replace(/^(\s*target\s+)"[^"]*"/gm, `$1"${target}"`);
  // Exactly those lines differ.
  const a = text.split("\n");
  const b = out.split("\n");
  expect(b.length).toBe(a.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) expect(b[i]).toMatch(/^\s*(address|target)\s+"/);
  return out;
}

function validatingSamples(): string[] {
  return FILES.filter((f) => validate(f).code === 0);
}

describe("samples that validate start and proxy a request", () => {
  test("basic.kdl and https-upstream.kdl are the samples that validate today (start scenarios exist for each)", () => {
    // When another sample starts to validate, give it a start scenario below.
    expect(validatingSamples()).toEqual(["basic.kdl", "https-upstream.kdl"]);
  });

  describe("basic.kdl", () => {
    let up: Upstream;
    beforeAll(() => {
      up = startUpstream("backend");
    });
    afterAll(async () => {
      await up?.stop();
    });

    test("starts (addresses rewritten) and proxies GET / to its upstream; metrics are served", async () => {
      const proxy = await startProxy(withTestAddresses("basic.kdl", up.address));
      try {
        const res = await fetch(`${proxy.url}/anything?x=1`);
        expect(res.status).toBe(200);
        expect(await res.text()).toBe("ok backend");
        expect(up.requests.at(-1)!.path).toBe("/anything?x=1");
        expect(proxy.metricsUrl).toBeDefined();
        const metrics = await fetch(proxy.metricsUrl!);
        expect(metrics.status).toBe(200);
      } finally {
        expect(await proxy.stop()).toBe(0);
      }
    });
  });

  const openssl = Bun.which("openssl");
  describe.skipIf(!openssl)("https-upstream.kdl", () => {
    // A local HTTPS backend with a certificate for api.example.com (the sample's `sni`), issued by
    // a throw-away CA that the proxy trusts through NODE_EXTRA_CA_CERTS.
    const dir = tempDir("sentinel-compat-tls-");
    let server: ReturnType<typeof Bun.serve> | undefined;
    const seen: Array<{ host: string | null; path: string }> = [];
    beforeAll(() => {
      const run = (args: string[]) => {
        const r = spawnSync(openssl!, args, { cwd: dir, encoding: "utf8" });
        if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
      };
      run(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=Sentinel test CA"]);
      run(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=api.example.com"]);
      writeFileSync(join(dir, "ext.cnf"), "subjectAltName=DNS:api.example.com\nbasicConstraints=CA:FALSE\n");
      run(["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem", "-days", "1", "-extfile", "ext.cnf"]);
      server = Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        tls: { cert: readFileSync(join(dir, "srv.pem"), "utf8"), key: readFileSync(join(dir, "srv.key"), "utf8") },
        fetch(req) {
          const url = new URL(req.url);
          if (url.pathname !== "/health") seen.push({ host: req.headers.get("host"), path: url.pathname + url.search });
          return new Response(url.pathname === "/health" ? "ok" : "tls backend");
        },
      });
    });
    afterAll(() => {
      server?.stop(true);
    });

    test("starts (addresses rewritten) and proxies /api/ over TLS with SNI api.example.com and the Host header it sets", async () => {
      const proxy = await startProxy(withTestAddresses("https-upstream.kdl", `127.0.0.1:${server!.port}`), {
        env: { NODE_EXTRA_CA_CERTS: join(dir, "ca.pem") },
      });
      try {
        const res = await fetch(`${proxy.url}/api/users?page=2`);
        expect(res.status).toBe(200);
        expect(await res.text()).toBe("tls backend");
        expect(seen.at(-1)).toEqual({ host: "api.example.com", path: "/api/users?page=2" });
        // Outside the route's path-prefix "/api/": no route.
        expect((await fetch(`${proxy.url}/other`)).status).toBe(404);
      } finally {
        expect(await proxy.stop()).toBe(0);
      }
    });

    test("the upstream certificate is verified: without the test CA the request fails (502), the backend is never asked", async () => {
      const before = seen.length;
      const proxy = await startProxy(withTestAddresses("https-upstream.kdl", `127.0.0.1:${server!.port}`));
      try {
        const res = await fetch(`${proxy.url}/api/users`);
        expect(res.status).toBe(502);
        expect(seen.length).toBe(before);
      } finally {
        await proxy.stop();
      }
    });
  });
});
