import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { selfSignedCert } from "../../test/helpers/tls.ts";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { nodePos, parseKdl } from "./kdl.ts";
import { compileRustRegex, hasNestedQuantifier, kdlToJson, loadConfig, parseHostPort, parseSize, suggest } from "./load.ts";
import { formatDiagnostic, type AgentConfig, type LoadResult, type MatchCondition, type RouteConfig, type SentinelConfig } from "./types.ts";

/** A real certificate and key: TLS files are parsed at load (src/config/pem.ts). */
const PEM = (() => {
  const f = selfSignedCert();
  return { cert: readFileSync(f.cert, "utf8"), key: readFileSync(f.key, "utf8") };
})();

const REPO = resolve(import.meta.dir, "../..");
const EXAMPLES = resolve(REPO, "../shared/examples");

let dir = "";
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sentinel-config-test-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, text: string): string {
  const p = join(dir, name);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, text);
  return p;
}

interface Run {
  r: LoadResult;
  path: string;
  errors: string[];
  warnings: string[];
  cfg: SentinelConfig;
}

/** Diagnostics as "relative/file.kdl:LINE:COL: message" (the temp dir stripped). */
function strip(r: LoadResult, severity: "error" | "warning"): string[] {
  return r.diagnostics
    .filter((d) => d.severity === severity)
    .map((d) => formatDiagnostic(d).split(dir + "/").join("").replace(/^([^ ]+: )warning: /, "$1"));
}

function load(text: string, name = "main.kdl"): Run {
  const path = write(name, text);
  const r = loadConfig(path);
  return { r, path, errors: strip(r, "error"), warnings: strip(r, "warning"), cfg: r.partial! };
}

// Lines 1-4; a test's own text starts on line 5.
const BASE = `system { worker-threads 0; }
listeners {
  listener "http" { address "127.0.0.1:8080"; }
}
`;

function route(r: Run, id: string): RouteConfig {
  const x = r.cfg.routes.find((x) => x.id === id);
  if (!x) throw new Error(`no route ${id}`);
  return x;
}

// ───────────────────────────── KDL layer ─────────────────────────────

describe("kdl: parsing with locations", () => {
  test("every node (nested, after /- and ;) gets its own line:col", () => {
    const res = parseKdl('a 1\n  b {\n    c "x"; d #true\n  }\n/- e 1\n(t)f x=1 { /- g; h }\n');
    expect(res.errors).toEqual([]);
    const dump = (ns: NonNullable<typeof res.nodes>): unknown[] =>
      ns.map((n) => [n.name, `${nodePos(n).line}:${nodePos(n).col}`, dump(n.children)]);
    expect(dump(res.nodes!)).toEqual([
      ["a", "1:1", []],
      ["b", "2:3", [["c", "3:5", []], ["d", "3:12", []]]],
      ["f", "6:1", [["h", "6:18", []]]],
    ]);
  });

  test("the chevrotain hook really runs: positions differ per node and parsing stays correct", () => {
    const res = parseKdl("x\n\n\n   y 1 2 k=#false\n");
    const [x, y] = res.nodes!;
    expect(nodePos(x!)).toEqual({ line: 1, col: 1 });
    expect(nodePos(y!)).toEqual({ line: 4, col: 4 });
    expect(y!.values).toEqual([1, 2]);
    expect(y!.properties).toEqual({ k: false });
  });

  test("parser errors are located", () => {
    expect(parseKdl("a {").errors).toEqual([{ line: 1, col: 4, message: "KDL syntax error: unexpected end of input" }]);
    expect(parseKdl('node\n  child "a" {\n  }\n}').errors).toEqual([{ line: 4, col: 1, message: 'KDL syntax error: unexpected "}"' }]);
    expect(parseKdl('a "open').errors[0]).toMatchObject({ line: 1, col: 3 });
  });

  test("lexer errors are located", () => {
    const e = parseKdl('ok 1\na [1 2]').errors;
    expect(e[0]).toEqual({ line: 2, col: 3, message: 'KDL syntax error: unexpected character "["' });
  });

  test("KDL v1 bare keywords are errors with the v2 spelling", () => {
    expect(parseKdl("staging true").errors).toEqual([
      { line: 1, col: 13, message: 'KDL syntax error: bare "true" is not a valid value in KDL v2; write #true' },
    ]);
  });
});

// ───────────────────────────── helpers ─────────────────────────────

describe("helpers", () => {
  test("parseSize", () => {
    expect(parseSize("10MB")).toBe(10 * 1024 * 1024);
    expect(parseSize("1MiB")).toBe(1048576);
    expect(parseSize("512KB")).toBe(524288);
    expect(parseSize("512kb")).toBe(524288);
    expect(parseSize("1GiB")).toBe(1024 ** 3);
    expect(parseSize("2G")).toBe(2 * 1024 ** 3);
    expect(parseSize("100")).toBe(100);
    expect(parseSize("100B")).toBe(100);
    expect(parseSize(4096)).toBe(4096);
    expect(parseSize("1.5MB")).toBe(1572864);
    for (const bad of ["", "MB", "10XB", "10 M B", "-1", "10ib", 1.5, true, null]) expect(parseSize(bad as never)).toBeUndefined();
    // Past 2^53 bytes a size is not exact and no limit in practice: refused, not silently huge.
    expect(parseSize("8191TB")).toBe(8191 * 1024 ** 4);
    for (const huge of ["99999999999999999999GB", "9999999999999999999999", 2 ** 60]) expect(parseSize(huge as never)).toBeUndefined();
  });

  test("parseHostPort", () => {
    expect(parseHostPort("0.0.0.0:8080", { allowName: false, allowPortZero: false })).toEqual({ host: "0.0.0.0", port: 8080 });
    expect(parseHostPort("[::1]:443", { allowName: false, allowPortZero: false })).toEqual({ host: "::1", port: 443 });
    expect(parseHostPort("api.internal:3000", { allowName: true, allowPortZero: false })).toEqual({ host: "api.internal", port: 3000 });
    expect(parseHostPort("api.internal:3000", { allowName: false, allowPortZero: false })).toBeUndefined();
    expect(parseHostPort("1.2.3.4", { allowName: true, allowPortZero: false })).toBeUndefined();
    expect(parseHostPort("1.2.3.4:0", { allowName: true, allowPortZero: false })).toBeUndefined();
    expect(parseHostPort("1.2.3.4:0", { allowName: true, allowPortZero: true })).toEqual({ host: "1.2.3.4", port: 0 });
    expect(parseHostPort("1.2.3.4:65536", { allowName: true, allowPortZero: false })).toBeUndefined();
    expect(parseHostPort("256.1.1.1:80", { allowName: false, allowPortZero: false })).toBeUndefined();
    expect(parseHostPort("::1:80", { allowName: true, allowPortZero: false })).toBeUndefined();
    expect(parseHostPort("http://x:80", { allowName: true, allowPortZero: false })).toBeUndefined();
  });

  test("compileRustRegex translates the trivial differences and rejects the rest", () => {
    const ok = (s: string) => {
      const r = compileRustRegex(s);
      if ("error" in r) throw new Error(r.error);
      return r.regex;
    };
    expect(ok("^/u/\\d+$").test("/u/42")).toBe(true);
    expect(ok("(?P<id>\\d+)").exec("/x/7")!.groups!.id).toBe("7");
    expect(ok("(?i)^/API").test("/api/x")).toBe(true);
    expect(ok("\\A/a\\z").test("/a")).toBe(true);
    expect(ok("^/[[:digit:]]+$").test("/123")).toBe(true);
    expect(ok("\\p{L}+").test("é")).toBe(true);
    expect(compileRustRegex("(unclosed")).toHaveProperty("error");
    expect(compileRustRegex("a(?=b)")).toEqual({ error: "look-around assertions are not part of Rust regex syntax" });
    expect(compileRustRegex("(a)\\1")).toEqual({ error: "backreferences are not part of Rust regex syntax" });
    expect(compileRustRegex("(?x)a")).toHaveProperty("error");
  });

  test("hasNestedQuantifier flags patterns that backtrack catastrophically in JS", () => {
    for (const bad of ["(a+)+$", "^/(\\w*)*x", "(x|y+){2,}", "((ab)*c)+"]) expect(hasNestedQuantifier(bad)).toBe(true);
    for (const ok of ["^/u/\\d+$", "(js|css|woff2?)$", "/assets/.*\\.[a-f0-9]{8,}\\.(js|css)$", "\\(a+\\)+", "[(a+)]+", "(ab)+"]) expect(hasNestedQuantifier(ok)).toBe(false);
  });

  test("suggest", () => {
    expect(suggest("timout-ms", ["timeout-ms", "events"])).toBe(" (did you mean 'timeout-ms'?)");
    expect(suggest("match", ["matches", "upstream"])).toBe(" (did you mean 'matches'?)");
    expect(suggest("zzzz", ["matches", "upstream"])).toBe("");
  });

  test("kdlToJson (agent config {})", () => {
    const nodes = parseKdl('rules-path "/etc/waf"\nparanoia-level 2\nenabled\nlist "a" "b"\nnested { x 1; y #null }\nrule "r1"\nrule "r2"\nobj a=1 { b 2 }').nodes!;
    expect(kdlToJson(nodes)).toEqual({
      "rules-path": "/etc/waf",
      "paranoia-level": 2,
      enabled: true,
      list: ["a", "b"],
      nested: { x: 1, y: null },
      rule: ["r1", "r2"],
      obj: { a: 1, b: 2 },
    });
  });
});

// ───────────────────────────── whole-file behaviour ─────────────────────────────

describe("loading", () => {
  test("minimal config loads with documented defaults", () => {
    const r = load(BASE);
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual([]);
    const c = r.r.config!;
    expect(c).toBeDefined();
    expect(c.file).toBe(r.path);
    expect(c.files).toEqual([r.path]);
    expect(c.schemaVersion).toBe("1.0");
    expect(c.system).toEqual({
      workerThreads: 0,
      maxConnections: 10000,
      gracefulShutdownTimeoutMs: 30000,
      traceIdFormat: "tinyflake",
      autoReload: false,
      routeCacheSize: 1000,
      headerTimeoutMs: 10000,
      idleTimeoutMs: 60000,
    });
    expect(c.listeners).toEqual([
      {
        id: "http",
        address: "127.0.0.1:8080",
        host: "127.0.0.1",
        port: 8080,
        protocol: "http",
        requestTimeoutMs: 60000,
        keepaliveTimeoutMs: 75000,
        defaultRoute: undefined,
        tls: undefined,
        loc: { file: r.path, line: 3, col: 3 },
      },
    ]);
    expect(c.limits).toEqual({ maxHeaderSize: 8192, maxHeaderCount: 100, maxBodySize: 10485760, maxUriLength: 8192 });
    expect(c.observability).toEqual({ logging: { level: "info", errorLog: { enabled: true, level: "warn" } } });
    expect(c.routes).toEqual([]);
    expect(c.upstreams.size).toBe(0);
  });

  test("missing file, wrong extension, JSON", () => {
    const missing = loadConfig(join(dir, "nope.kdl"));
    expect(missing.config).toBeUndefined();
    expect(missing.diagnostics.map(formatDiagnostic)).toEqual([`${join(dir, "nope.kdl")}:1:1: cannot read config file '${join(dir, "nope.kdl")}': no such file`]);
    expect(load(BASE, "x.yaml").errors).toEqual(["x.yaml:1:1: unsupported config file extension '.yaml' for 'x.yaml': expected .kdl"]);
    expect(load("{}", "x.json").errors).toEqual(["x.json:1:1: not supported yet: JSON config files (use KDL)"]);
    // no extension is KDL
    expect(load(BASE, "sentinel-noext").errors).toEqual([]);
  });

  test("syntax errors are reported as FILE:LINE:COL and nothing else", () => {
    const r = load(`${BASE}routes {\n  route "x" {\n    websocket true\n  }\n}\n`);
    expect(r.errors).toEqual(['main.kdl:7:19: KDL syntax error: bare "true" is not a valid value in KDL v2; write #true']);
    expect(r.r.config).toBeUndefined();
  });

  test("missing system and listeners", () => {
    expect(load(`routes {}\n`).errors).toEqual([
      "main.kdl:1:1: Missing required 'system' configuration block, e.g. system { worker-threads 0 }",
      'main.kdl:1:1: Missing required \'listeners\' configuration block, e.g. listeners { listener "http" { address "0.0.0.0:8080" } }',
    ]);
    expect(load(`system {}\nlisteners {}\n`).errors).toEqual(["main.kdl:1:1: 'listeners' must define at least one listener"]);
  });

  test("unknown top-level block, with suggestion and the valid list", () => {
    const r = load(`${BASE}upstream "x" {}\nnamespaces {}\n`);
    expect(r.errors[0]).toStartWith("main.kdl:5:1: Unknown top-level configuration block: 'upstream' (did you mean 'upstreams'?). Valid blocks: schema-version, version, include, system,");
    expect(r.errors[1]).toStartWith("main.kdl:6:1: Unknown top-level configuration block: 'namespaces' (did you mean 'namespace'?)");
  });

  test("schema-version: current, newer (warning), older, malformed; version alias", () => {
    expect(load(`schema-version "1.0"\n${BASE}`).cfg.schemaVersion).toBe("1.0");
    const newer = load(`version "1.3"\n${BASE}`);
    expect(newer.errors).toEqual([]);
    expect(newer.warnings).toEqual(["main.kdl:1:1: version: schema version 1.3 is newer than supported (1.0); unknown settings will be reported"]);
    expect(load(`schema-version "0.9"\n${BASE}`).errors).toEqual(["main.kdl:1:1: schema-version: schema version 0.9 is older than the oldest supported version 1.0"]);
    expect(load(`schema-version "v1"\n${BASE}`).errors).toEqual(['main.kdl:1:1: schema-version: invalid schema version "v1"; expected "major.minor", e.g. "1.0"']);
    expect(load(`schema-version 1.0\n${BASE}`).cfg.schemaVersion).toBe("1.0");
  });

  test("collects all errors, not just the first", () => {
    const r = load(`system { worker-threads -1; }
listeners {
  listener "a" { address "nope"; }
  listener "b" { address "127.0.0.1:1"; protocol "quic"; }
}
routes {
  route "r" { matches { path "/x"; }; upstream "missing"; }
}
`);
    expect(r.errors).toEqual([
      "main.kdl:1:10: system: 'worker-threads' must be between 0 and 1024, got -1",
      'main.kdl:3:18: listener \'a\': invalid address "nope"; expected IP:PORT such as "0.0.0.0:8080" or "[::1]:8080"',
      "main.kdl:4:41: Invalid protocol 'quic' for listener 'b'. Valid protocols: http, https, h2, h3",
      "main.kdl:7:39: Route 'r' references upstream 'missing' which doesn't exist. Available upstreams: (none)",
    ]);
  });

  test("unknown nested keys get did-you-mean suggestions everywhere", () => {
    const r = load(`${BASE}routes {
  route "r" {
    matchs { path "/"; }
    upstream "u"
    policies { timout-secs 5; }
  }
}
upstreams {
  upstream "u" {
    target "127.0.0.1:1"
    helth-check {}
    timeouts { conect 1; }
  }
}
agents {
  agent "a" {
    unix-socket "${dir}/a.sock"
    failure-mode "open"
    timout-ms 5
    circuit-breaker { recovery-timeout-secs 5; }
  }
}
observability { metric {}; logging { levl "info"; }; }
`);
    expect(r.errors).toEqual([
      "main.kdl:6:3: Route 'r' has no match conditions; add a 'matches' block or set priority \"low\" for catch-all routes",
      "main.kdl:7:5: route 'r': unknown key 'matchs' (did you mean 'matches'?)",
      "main.kdl:9:16: route 'r' policies: unknown key 'timout-secs' (did you mean 'timeout-secs'?)",
      "main.kdl:15:5: upstream 'u': unknown key 'helth-check' (did you mean 'health-check'?)",
      "main.kdl:16:16: upstream 'u' timeouts: unknown key 'conect' (did you mean 'connect'?)",
      "main.kdl:23:5: agent 'a': unknown key 'timout-ms' (did you mean 'timeout-ms'?)",
      "main.kdl:24:23: agent 'a' circuit-breaker: unknown key 'recovery-timeout-secs'",
      "main.kdl:27:17: observability: unknown key 'metric' (did you mean 'metrics'?)",
      "main.kdl:27:38: observability logging: unknown key 'levl' (did you mean 'level'?)",
    ]);
  });

  test("a key given twice is an error, also across spellings", () => {
    const r = load(`${BASE}upstreams {
  upstream "u" {
    target "127.0.0.1:1"
    timeouts { connect 1; connect-secs 2; }
  }
}
limits { max-body-size 1; max-body-size-bytes 2; }
`);
    expect(r.errors).toEqual([
      "main.kdl:8:27: upstream 'u' timeouts: 'connect-secs' is set more than once (first at main.kdl:8:16)",
      "main.kdl:11:27: limits: 'max-body-size-bytes' is set more than once (first at main.kdl:11:10)",
    ]);
  });

  test("the example sentinel.kdl loads with zero diagnostics", () => {
    const r = loadConfig(join(REPO, "examples/sentinel.kdl"));
    expect(r.diagnostics.map(formatDiagnostic)).toEqual([]);
    const c = r.config!;
    expect(c.listeners[0]).toMatchObject({ address: "127.0.0.1:8080", protocol: "http" });
    expect(c.upstreams.get("backend")!.targets).toEqual([{ address: "127.0.0.1:3000", host: "127.0.0.1", port: 3000, weight: 1 }]);
    expect(c.routes.find((r) => r.id === "health")!.builtinHandler).toBe("health");
    expect(c.observability.metrics).toEqual({ enabled: true, address: "127.0.0.1:9090", host: "127.0.0.1", port: 9090, path: "/metrics" });
  });
});

// ───────────────────────────── system ─────────────────────────────

describe("system", () => {
  test("all keys", () => {
    const r = load(`system {
  worker-threads 4
  max-connections 500
  graceful-shutdown-timeout-secs 5
  daemon #false
  pid-file "/run/s.pid"
  trace-id-format "uuid4"
  auto-reload #true
  route-cache-size 10
  header-timeout-secs 3
  idle-timeout-secs 20
}
listeners { listener "l" { address "127.0.0.1:1"; }; }
`);
    expect(r.errors).toEqual([]);
    expect(r.cfg.system).toEqual({
      workerThreads: 4,
      maxConnections: 500,
      gracefulShutdownTimeoutMs: 5000,
      traceIdFormat: "uuid",
      autoReload: true,
      routeCacheSize: 10,
      pidFile: "/run/s.pid",
      headerTimeoutMs: 3000,
      idleTimeoutMs: 20000,
    });
    // Parsed (and validated) but without effect: each is warned at its node.
    expect(r.warnings.map((w) => w.split(": ")[0])).toEqual(["main.kdl:3:3", "main.kdl:9:3", "main.kdl:10:3"]);
  });

  test("server alias, repeated system (last wins, warned), workers alias", () => {
    const r = load(`server { worker-threads 2; }
system { workers 3; }
listeners { listener "l" { address "127.0.0.1:1"; }; }
`);
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual([
      "main.kdl:1:1: 'server' is a deprecated alias of 'system'; rename it to 'system'",
      "main.kdl:2:1: 'system' block overrides the one at main.kdl:1:1 (last one wins)",
      "main.kdl:2:10: system: 'workers' is not a Zentinel key; read as 'worker-threads' (rename it)",
    ]);
    expect(r.cfg.system.workerThreads).toBe(3);
  });

  test("invalid values", () => {
    const r = load(`system {
  route-cache-size 0
  trace-id-format "snowflake"
  daemon #true
  user "nobody"
  auto-reload "yes"
  graceful-shutdown-timeout-secs 1.5
}
listeners { listener "l" { address "127.0.0.1:1"; }; }
`);
    expect(r.errors).toEqual([
      "main.kdl:2:3: system: route-cache-size must be > 0",
      'main.kdl:3:3: system: invalid trace-id-format "snowflake"; valid values: tinyflake, uuid, uuid4, uuidv4',
      "main.kdl:4:3: not supported yet: system daemon #true (run under a process supervisor)",
      "main.kdl:5:3: not supported yet: system user",
      "main.kdl:6:3: system: 'auto-reload' expects #true or #false, got string \"yes\"",
      "main.kdl:7:3: system: 'graceful-shutdown-timeout-secs' expects an integer, got number 1.5",
    ]);
  });
});

describe("settings accepted without effect are warned at their node, never silently ignored", () => {
  test("system max-connections, route-cache-size, header-timeout-secs", () => {
    const r = load(`system {
  max-connections 10000
  route-cache-size 1000
  header-timeout-secs 30
  idle-timeout-secs 20
}
listeners { listener "l" { address "127.0.0.1:1"; }; }
`);
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual([
      "main.kdl:2:3: system: max-connections has no effect: no connection limit is enforced (Bun.serve has no accept hook); bound agent load with each agent's max-concurrent-calls and connections with OS limits (ulimit -n, firewall)",
      "main.kdl:3:3: system: route-cache-size has no effect: routes are compiled once at load and matched without a cache",
      "main.kdl:4:3: system: header-timeout-secs has no effect: Bun closes a connection whose request head is incomplete after its own fixed 10 s, which this value can neither shorten nor lengthen",
    ]);
    expect(r.cfg.system).toMatchObject({ maxConnections: 10000, routeCacheSize: 1000, headerTimeoutMs: 30000, idleTimeoutMs: 20000 });
  });

  test("an invalid value is still an error, not a warning", () => {
    const r = load(`system {
  max-connections 0
  header-timeout-secs "x"
}
listeners { listener "l" { address "127.0.0.1:1"; }; }
`);
    expect(r.errors.map((e) => e.split(": ")[0])).toEqual(["main.kdl:2:3", "main.kdl:3:3"]);
    expect(r.warnings).toEqual([]);
  });

  test("upstream timeouts write / write-secs (both spellings) set the write timeout, without a warning", () => {
    const r = load(
      BASE +
        `upstreams {
  upstream "a" { target "127.0.0.1:1"; timeouts { connect 2; request 3; read 4; write 5; }; }
  upstream "b" { target "127.0.0.1:2"; timeouts { write-secs 6; }; }
  upstream "c" { target "127.0.0.1:3"; }
}
routes { route "a" { priority "low"; upstream "a"; }; route "b" { priority "low"; upstream "b"; }; route "c" { priority "low"; upstream "c"; }; }
`,
    );
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual([]);
    expect([...r.cfg.upstreams.values()].map((u) => u.writeTimeoutMs)).toEqual([5000, 6000, 30000]);
  });

  test("upstream timeouts write on a TLS upstream is warned: fetch() shows no write progress", () => {
    const r = load(BASE + `upstreams { upstream "t" { target "127.0.0.1:1"; tls { insecure-skip-verify #true; }; timeouts { write 5; }; }; }\nroutes { route "t" { priority "low"; upstream "t"; }; }\n`);
    expect(r.errors).toEqual([]);
    expect(r.warnings.filter((w) => w.includes("write"))).toEqual([
      "main.kdl:5:98: upstream 't' timeouts: 'write' has no effect on a TLS upstream: the write timeout applies to plain-HTTP upstreams; here an upload that stalls is bounded by the request timeout",
    ]);
  });

  test("logging buffer-size (access, error, audit), audit-log log-waf-events, error-log without a file", () => {
    const r = load(
      BASE +
        `observability {
  logging {
    access-log { file "a.log"; buffer-size 8192; }
    error-log { level "warn"; buffer-size 8192; }
    audit-log { file "au.log"; buffer-size 8192; log-waf-events #true; }
  }
}
`,
    );
    expect(r.errors).toEqual([]);
    expect(r.cfg.observability.logging.accessLog?.bufferSize).toBe(8192);
    expect(r.cfg.observability.logging.errorLog?.bufferSize).toBe(8192);
    expect(r.cfg.observability.logging.auditLog?.bufferSize).toBe(8192);
    expect(r.cfg.observability.logging.auditLog?.wafEvents).toBe(true);
    expect(r.warnings).toEqual([
      `main.kdl:8:5: observability logging error-log without 'file' writes nothing: operational lines already go to stderr, and the error log is only a copy of them into a file; add file "…" (or remove the block)`,
    ]);
  });

  test("logging buffer-size is 1 byte to 1 MiB (the log's pending bound); outside that, a located error", () => {
    const r = load(BASE + `observability { logging { access-log { buffer-size 0; }; audit-log { buffer-size 1048577; }; }; }\n`);
    expect(r.errors.map((e) => e.split(": ").slice(0, 2).join(": "))).toEqual([
      "main.kdl:5:40: observability logging access-log",
      "main.kdl:5:70: observability logging audit-log",
    ]);
    expect(load(BASE + `observability { logging { access-log { buffer-size 1; }; audit-log { buffer-size 1048576; }; }; }\n`).errors).toEqual([]);
  });

  test("log-waf-events #false is taken without a warning; an error-log with a file, or disabled, is not warned", () => {
    const r = load(
      BASE +
        `observability {
  logging {
    error-log { file "e.log"; }
    audit-log { log-waf-events #false; }
  }
}
`,
    );
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual([]);
    expect(r.cfg.observability.logging.auditLog?.wafEvents).toBe(false);
    const off = load(BASE + `observability { logging { error-log { enabled #false; }; }; }\n`);
    expect(off.errors).toEqual([]);
    expect(off.warnings).toEqual([]);
  });

  test("zentinel.kdl still loads its settings, with each of these warned at its line", () => {
    const r = loadConfig(join(EXAMPLES, "zentinel.kdl"));
    const w = r.diagnostics.filter((d) => d.severity === "warning").map((d) => formatDiagnostic(d).replace(EXAMPLES + "/", ""));
    for (const [at, what] of [
      ["zentinel.kdl:7:5:", "max-connections has no effect"],
    ])
      expect(w.some((x) => x.startsWith(at) && x.includes(what))).toBe(true);
  });
});

// ───────────────────────────── listeners ─────────────────────────────

describe("listeners", () => {
  test("https with tls files, timeouts, default-route", () => {
    const cert = write("tls/cert.pem", PEM.cert);
    const key = write("tls/key.pem", PEM.key);
    const ca = write("tls/ca.pem", PEM.cert);
    const r = load(`system {}
listeners {
  listener "https" {
    address "[::1]:8443"
    protocol "https"
    request-timeout-secs 10
    keepalive-timeout-secs 5
    default-route "fallback"
    tls {
      cert-file "tls/cert.pem"
      key-file "${key}"
      ca-file "tls/ca.pem"
      min-version "TLS1.2"
      max-version "1.3"
      session-resumption #true
    }
  }
}
routes { route "fallback" { priority "low"; builtin-handler "not-found"; }; }
`);
    expect(r.errors).toEqual([]);
    expect(r.cfg.listeners[0]).toEqual({
      id: "https",
      address: "[::1]:8443",
      host: "::1",
      port: 8443,
      protocol: "https",
      requestTimeoutMs: 10000,
      keepaliveTimeoutMs: 5000,
      defaultRoute: "fallback",
      tls: { certFile: cert, keyFile: key, caFile: ca },
      loc: { file: r.path, line: 3, col: 3 },
    });
    // ca-file alone verifies nobody (client-auth is off): said, not silently ignored.
    expect(r.warnings.some((w: string) => w.includes("ca-file has no effect without client-auth #true"))).toBe(true);
  });

  test("trusted-proxies (ours): addresses and CIDRs, IPv4 and IPv6; anything else is a located error", () => {
    const ok = load(`system {}
listeners { listener "lb" { address "0.0.0.0:8080"; trusted-proxies "10.0.0.0/8" "192.0.2.7" "fd00::/8" "::1"; }; }
routes { route "r" { priority "low"; builtin-handler "not-found"; }; }
`);
    expect(ok.errors).toEqual([]);
    expect(ok.cfg.listeners[0]!.trustedProxies).toEqual(["10.0.0.0/8", "192.0.2.7", "fd00::/8", "::1"]);
    const bad = load(`system {}
listeners {
  listener "a" { address "0.0.0.0:8080"; trusted-proxies "10.0.0.0/33" "lb.internal" 10; }
  listener "b" { address "0.0.0.0:8081"; trusted-proxies; }
}
routes { route "r" { priority "low"; builtin-handler "not-found"; }; }
`);
    expect(bad.errors).toEqual([
      `main.kdl:3:42: listener 'a': trusted-proxies: "10.0.0.0/33" is not an IP address or CIDR such as "10.0.0.0/8", "192.0.2.7" or "fd00::/8"`,
      `main.kdl:3:42: listener 'a': trusted-proxies: "lb.internal" is not an IP address or CIDR such as "10.0.0.0/8", "192.0.2.7" or "fd00::/8"`,
      `main.kdl:3:42: listener 'a': trusted-proxies: 10 is not an IP address or CIDR such as "10.0.0.0/8", "192.0.2.7" or "fd00::/8"`,
      `main.kdl:4:42: listener 'b': 'trusted-proxies' needs at least one address or CIDR, e.g. trusted-proxies "10.0.0.0/8" "::1"`,
    ]);
  });

  test("listener errors", () => {
    const r = load(`system {}
listeners {
  listener "a" address="0.0.0.0:443" { protocol "http"; }
  listener "b" { address "localhost:80"; }
  listener "c" { address "127.0.0.1:81"; protocol "h2"; }
  listener "d" { address "127.0.0.1:82"; tls { cert-file "/nonexistent/c.pem"; key-file "/nonexistent/k.pem"; }; }
  listener "e" { address "127.0.0.1:83"; protocol "https"; }
  listener "f" { address "127.0.0.1:84"; protocol "https"; tls { key-file "/nonexistent/k.pem"; }; }
  listener "g" { address "127.0.0.1:84"; keepalive-max-requests 10; max-concurrent-streams 10; default-route "nope"; }
  listener "g" { address "127.0.0.1:85"; }
  listener { address "127.0.0.1:86"; }
  listener "h" { address "127.0.0.1:87"; protocol "https"; tls { cert-file "/nonexistent/c.pem"; key-file "/nonexistent/k.pem"; min-version "1.3"; cipher-suites { - "x"; }; client-auth #true; acme {}; }; }
}
`);
    expect(r.errors).toEqual([
      'main.kdl:3:3: Listener \'a\' requires an \'address\' field (found property address="0.0.0.0:443"; write it as a child node: address "0.0.0.0:443")',
      'main.kdl:4:18: listener \'b\': invalid address "localhost:80"; expected IP:PORT such as "0.0.0.0:8080" or "[::1]:8080" (use 127.0.0.1 instead of localhost)',
      'main.kdl:5:42: not supported yet: listener protocol "h2"',
      'main.kdl:6:42: listener \'d\': has a tls block but protocol is not set (defaults to "http"); set protocol "https" or the port serves plain HTTP',
      "main.kdl:6:48: listener 'd' tls: cert-file '/nonexistent/c.pem' does not exist",
      "main.kdl:6:80: listener 'd' tls: key-file '/nonexistent/k.pem' does not exist",
      'main.kdl:7:42: listener \'e\': protocol "https" requires a tls block with cert-file and key-file',
      "main.kdl:8:60: listener 'f' tls: requires either 'cert-file' and 'key-file', or an 'acme' block (missing cert-file)",
      "main.kdl:8:66: listener 'f' tls: key-file '/nonexistent/k.pem' does not exist",
      `main.kdl:9:3: Duplicate listener address '127.0.0.1:84' (also used by listener 'f' at main.kdl:8:3)`,
      "main.kdl:9:42: not supported yet: listener keepalive-max-requests",
      "main.kdl:9:96: Listener 'g' references default-route 'nope' which doesn't exist",
      `main.kdl:10:3: Duplicate listener ID 'g' found (first defined at main.kdl:9:3); listener IDs must be unique across all config files`,
      'main.kdl:11:3: Listener requires an ID as its first argument, e.g. listener "my-listener" { ... }',
      "main.kdl:12:66: listener 'h' tls: cert-file '/nonexistent/c.pem' does not exist",
      "main.kdl:12:98: listener 'h' tls: key-file '/nonexistent/k.pem' does not exist",
      'main.kdl:12:129: not supported yet: listener tls min-version "1.3"',
      "main.kdl:12:148: not supported yet: listener tls cipher-suites",
      "main.kdl:12:174: listener 'h' tls: client-auth #true needs ca-file, the CA bundle that client certificates must chain to",
      "main.kdl:12:193: not supported yet: listener tls acme",
    ]);
    expect(r.warnings).toContain("main.kdl:9:69: listener 'g': max-concurrent-streams has no effect (HTTP/2 is not served); ignored");
  });
});

// ───────────────────────────── routes ─────────────────────────────

describe("routes", () => {
  const UP = `upstreams { upstream "u" { target "127.0.0.1:9"; }; }\n`;

  test("matches of every kind are compiled for the hot path", () => {
    const r = load(`${BASE}${UP}routes {
  route "r" {
    matches {
      path "/exact"
      path-prefix "/api"
      path-regex "^/u/(?P<id>\\\\d+)$"
      host "API.Example.com"
      host "*.example.org"
      header "X-Tenant" "acme"
      header "X-Present"
      header name="X-Named" value="v"
      method "get" "Post"
      query-param "debug"
      query-param "mode" "full"
    }
    upstream "u"
  }
}
`);
    expect(r.errors).toEqual([]);
    const m = route(r, "r").matches;
    const regex = m.find((x): x is Extract<MatchCondition, { kind: "path-regex" }> => x.kind === "path-regex")!;
    expect(regex.regex).toBeInstanceOf(RegExp);
    expect(regex.regex.exec("/u/42")!.groups!.id).toBe("42");
    expect(m.map((x) => (x.kind === "path-regex" ? { ...x, regex: undefined } : x))).toEqual([
      { kind: "path", value: "/exact" },
      { kind: "path-prefix", value: "/api" },
      { kind: "path-regex", value: "^/u/(?P<id>\\d+)$", regex: undefined as never },
      { kind: "host", value: "api.example.com" },
      { kind: "host", value: "*.example.org" },
      { kind: "header", name: "x-tenant", value: "acme" },
      { kind: "header", name: "x-present" },
      { kind: "header", name: "x-named", value: "v" },
      { kind: "method", values: ["GET", "POST"] },
      { kind: "query-param", name: "debug" },
      { kind: "query-param", name: "mode", value: "full" },
    ]);
    expect(r.warnings).toEqual([]);
  });

  test("path-regex with nested quantifiers loads with a ReDoS warning", () => {
    const r = load(`${BASE}${UP}routes { route "r" { matches { path-regex "^/(a+)+$"; }; upstream "u"; }; }\n`);
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual([
      'main.kdl:6:32: route \'r\' matches: path-regex "^/(a+)+$" nests quantifiers; JavaScript regexes backtrack (Rust\'s do not), so a crafted path can make matching very slow. Simplify the pattern',
    ]);
  });

  test("priority: integers and names; defaults; everything a route holds", () => {
    const r = load(`${BASE}${UP}routes {
  route "a" { priority 7; matches { path "/a"; }; upstream "u"; }
  route "b" { priority "LOW"; upstream "u"; }
  route "c" { priority "normal"; matches { path "/c"; }; upstream "u"; }
  route "d" { priority "High"; matches { path "/d"; }; upstream "u"; }
  route "e" { priority "critical"; matches { path "/e"; }; builtin-handler "not_found"; }
  route "f" { matches { path "/f"; }; upstream "u"; }
}
`);
    expect(r.errors).toEqual([]);
    expect(r.cfg.routes.map((x) => [x.id, x.priority])).toEqual([
      ["a", 7],
      ["b", 10],
      ["c", 50],
      ["d", 100],
      ["e", 1000],
      ["f", 50],
    ]);
    expect(route(r, "e").builtinHandler).toBe("not-found");
    expect(route(r, "f")).toEqual({
      id: "f",
      priority: 50,
      matches: [{ kind: "path", value: "/f" }],
      upstream: "u",
      filters: [],
      requestHeaderOps: [],
      responseHeaderOps: [],
      retryPolicy: { maxAttempts: 1, backoffBaseMs: 100, backoffMaxMs: 2000, retryableStatusCodes: [] },
      websocket: false,
      loc: { file: r.path, line: 12, col: 3 },
    });
  });

  test("policies: header ops (rename → set → add → remove, lower-cased), timeout, body size, failure mode", () => {
    const r = load(`${BASE}${UP}routes {
  route "r" {
    matches { path-prefix "/"; }
    upstream "u"
    policies {
      request-headers {
        remove "Cookie" "X-Debug"
        set { "Host" "api.example.com"; X-A "1"; }
        add { X-B "2"; }
        rename { X-Old "X-New"; }
      }
      response-headers { set { X-Frame-Options "DENY"; }; remove "Server"; }
      timeout-secs 30
      max-body-size "10MB"
      failure-mode "fail-open"
    }
  }
}
`);
    expect(r.errors).toEqual([]);
    const x = route(r, "r");
    expect(x.requestHeaderOps).toEqual([
      { op: "rename", from: "x-old", to: "x-new" },
      { op: "set", name: "host", value: "api.example.com" },
      { op: "set", name: "x-a", value: "1" },
      { op: "add", name: "x-b", value: "2" },
      { op: "remove", name: "cookie" },
      { op: "remove", name: "x-debug" },
    ]);
    expect(x.responseHeaderOps).toEqual([
      { op: "set", name: "x-frame-options", value: "DENY" },
      { op: "remove", name: "server" },
    ]);
    expect(x.timeoutMs).toBe(30000);
    expect(x.maxBodySize).toBe(10 * 1024 * 1024);
    expect(x.failureMode).toBe("open");
  });

  test("max-body-size accepts bytes and 1MiB/512KB", () => {
    for (const [v, n] of [
      ["1048576", 1048576],
      ['"1MiB"', 1048576],
      ['"512KB"', 524288],
      ['"5MB"', 5242880],
    ] as const) {
      const r = load(`${BASE}${UP}routes { route "r" { matches { path "/"; }; upstream "u"; policies { max-body-size ${v}; }; }; }\n`);
      expect(r.errors).toEqual([]);
      expect(route(r, "r").maxBodySize).toBe(n);
    }
  });

  test("retry-policy: every key; block default 3 attempts; no block = 1", () => {
    const r = load(`${BASE}${UP}routes {
  route "a" {
    matches { path "/a"; }
    upstream "u"
    retry-policy {
      max-attempts 4
      timeout-ms 5000
      backoff-base-ms 50
      backoff-max-ms 1000
      retryable-status-codes 502 503 504
    }
  }
  route "b" { matches { path "/b"; }; upstream "u"; retry-policy { retryable-status-codes 503; }; }
}
`);
    expect(r.errors).toEqual([]);
    expect(route(r, "a").retryPolicy).toEqual({ maxAttempts: 4, timeoutMs: 5000, backoffBaseMs: 50, backoffMaxMs: 1000, retryableStatusCodes: [502, 503, 504] });
    expect(route(r, "b").retryPolicy).toEqual({ maxAttempts: 3, backoffBaseMs: 100, backoffMaxMs: 2000, retryableStatusCodes: [503] });
  });

  test("websocket: #true, block with enabled, block without enabled, #false", () => {
    const r = load(`${BASE}${UP}routes {
  route "a" { matches { path "/a"; }; upstream "u"; websocket #true; }
  route "b" { matches { path "/b"; }; upstream "u"; websocket { enabled #true; }; }
  route "c" { matches { path "/c"; }; upstream "u"; websocket { enabled #false; }; }
  route "d" { matches { path "/d"; }; upstream "u"; websocket #false; }
}
`);
    expect(r.errors).toEqual([]);
    expect(r.cfg.routes.map((x) => x.websocket)).toEqual([true, true, false, false]);
  });

  test("builtin handlers", () => {
    const names = ["status", "health", "metrics", "not-found", "not_found", "config", "upstreams"];
    const r = load(`${BASE}routes {\n${names.map((n, i) => `  route "r${i}" { matches { path "/${i}"; }; builtin-handler "${n}"; }`).join("\n")}\n}\n`);
    expect(r.errors).toEqual([]);
    expect(r.cfg.routes.map((x) => x.builtinHandler)).toEqual(["status", "health", "metrics", "not-found", "not-found", "config", "upstreams"]);
  });

  test("route errors", () => {
    const r = load(`${BASE}${UP}routes {
  route "a" { upstream "u"; }
  route "b" { priority "urgent"; matches { path "x"; path-regex "(?<=a)b"; path-regex "(" ; header "Bad Name"; method; }; upstream "u"; }
  route "c" { matches { path "/c"; }; upstream "uu"; filters "nope"; }
  route "d" { matches { path "/d"; }; builtin-handler "helth"; }
  route "e" { matches { path "/e"; }; builtin-handler "cache-stats"; }
  route "f" { matches { path "/f"; }; upstream "u"; builtin-handler "health"; }
  route "g" { matches { path "/g"; }; upstream "u"; retry-policy { max-attempts 0; backoff-base-ms 5000; }; policies { timeout-secs 0; max-body-size "lots"; failure-mode "maybe"; }; }
  route "h" { matches { path "/h"; }; upstream "u"; policies { request-headers { set { X-A "a\\r\\nInjected: 1"; }; }; }; }
  route "i" { matches { path "/i"; }; upstream "u"; websocket { enabled #true; max-message-size-bytes 10; }; circuit-breaker {}; cache {}; shadow {}; }
  route "a" { matches { path "/a"; }; upstream "u"; }
}
`);
    expect(r.errors).toEqual([
      "main.kdl:7:3: Route 'a' has no match conditions; add a 'matches' block or set priority \"low\" for catch-all routes",
      'main.kdl:8:15: route \'b\': invalid priority "urgent"; use an integer or low, normal, high, critical',
      "main.kdl:8:44: route 'b' matches: path \"x\" must start with '/'",
      'main.kdl:8:54: route \'b\' matches: invalid path-regex "(?<=a)b": look-around assertions are not part of Rust regex syntax',
      'main.kdl:8:76: route \'b\' matches: invalid path-regex "(": missing )',
      "main.kdl:8:93: route 'b' matches: invalid header name \"Bad Name\"",
      "main.kdl:8:112: route 'b' matches: 'method' needs at least one method, e.g. method \"GET\" \"POST\"",
      "main.kdl:9:39: Route 'c' references upstream 'uu' which doesn't exist (did you mean 'u'?). Available upstreams: u",
      "main.kdl:9:54: Route 'c' references filter 'nope' which doesn't exist. Available filters: (none)",
      "main.kdl:10:39: route 'd': unknown builtin-handler \"helth\" (did you mean 'health'?); valid: status, health, metrics, not-found, config, upstreams",
      'main.kdl:11:39: not supported yet: builtin-handler "cache-stats"',
      "main.kdl:12:53: route 'f': has both 'upstream' and 'builtin-handler'; use one",
      "main.kdl:13:68: route 'g' retry-policy: 'max-attempts' must be between 1 and 100, got 0",
      "main.kdl:13:84: route 'g' retry-policy: backoff-base-ms (5000) is larger than backoff-max-ms (2000)",
      "main.kdl:13:120: route 'g' policies: 'timeout-secs' must be >= 1, got 0",
      'main.kdl:13:136: route \'g\' policies: \'max-body-size\' expects a size such as 1048576, "512KB", "10MB" or "1GiB" (at most 8 PiB), got string "lots"',
      'main.kdl:13:158: route \'g\' policies: invalid failure-mode "maybe"; valid values: open, fail-open, fail_open, closed, fail-closed, fail_closed',
      "main.kdl:14:88: route 'h' policies request-headers set: value of 'X-A' contains CR, LF or NUL",
      "main.kdl:15:80: not supported yet: route websocket max-message-size-bytes",
      "main.kdl:15:110: not supported yet: route circuit-breaker",
      "main.kdl:15:130: not supported yet: route cache",
      "main.kdl:15:140: not supported yet: route shadow",
      `main.kdl:16:3: Duplicate route ID 'a' found (first defined at main.kdl:7:3); route IDs must be unique across all config files`,
    ]);
  });

  test("a catch-all with priority low needs no matches; a route without upstream warns", () => {
    const r = load(`${BASE}routes { route "any" { priority "low"; }; }\n`);
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual(["main.kdl:5:10: Route 'any' has no upstream and no builtin-handler; matching requests get 500"]);
  });
});

// ───────────────────────────── upstreams ─────────────────────────────

describe("upstreams", () => {
  const R = (id: string) => `routes { route "r-${id}" { matches { path "/${id}"; }; upstream "${id}"; }; }\n`;

  test("every target form of §9, weights, defaults", () => {
    const r = load(`${BASE}upstreams {
  upstream "a" {
    target "10.0.0.1:8080" weight=3
    target "10.0.0.2:8080"
    target { address "api.internal:80"; weight 2; }
    target address="[::1]:81" weight=4
    targets { target "h.example.com:82"; }
  }
  upstream "b" { address "127.0.0.1:3000"; }
}
${R("a")}${R("b")}`);
    expect(r.errors).toEqual([]);
    expect(r.cfg.upstreams.get("a")!.targets).toEqual([
      { address: "10.0.0.1:8080", host: "10.0.0.1", port: 8080, weight: 3 },
      { address: "10.0.0.2:8080", host: "10.0.0.2", port: 8080, weight: 1 },
      { address: "api.internal:80", host: "api.internal", port: 80, weight: 2 },
      { address: "[::1]:81", host: "::1", port: 81, weight: 4 },
      { address: "h.example.com:82", host: "h.example.com", port: 82, weight: 1 },
    ]);
    expect(r.cfg.upstreams.get("b")).toEqual({
      id: "b",
      targets: [{ address: "127.0.0.1:3000", host: "127.0.0.1", port: 3000, weight: 1 }],
      loadBalancing: "round_robin",
      passiveFailureThreshold: 5,
      passiveEjectMs: 30000,
      connectTimeoutMs: 10000,
      requestTimeoutMs: 60000,
      readTimeoutMs: 30000,
      writeTimeoutMs: 30000,
      pool: { maxConnections: 0, maxIdle: 20, idleTimeoutMs: 60000, maxLifetimeMs: 0 },
      loc: { file: r.path, line: 13, col: 3 },
    });
  });

  test("load-balancing names: both separators, aliases, case-insensitive", () => {
    const cases: Array<[string, string]> = [
      ["round_robin", "round_robin"],
      ["round-robin", "round_robin"],
      ["roundrobin", "round_robin"],
      ["weighted", "weighted"],
      ["weighted-round-robin", "weighted"],
      ["weighted_round_robin", "weighted"],
      ["least_connections", "least_connections"],
      ["least-connections", "least_connections"],
      ["LeastConnections", "least_connections"],
      ["random", "random"],
      ["ip_hash", "ip_hash"],
      ["ip-hash", "ip_hash"],
      ["iphash", "ip_hash"],
      ["consistent_hash", "consistent_hash"],
      ["consistent-hash", "consistent_hash"],
      ["consistenthash", "consistent_hash"],
    ];
    const r = load(
      `${BASE}upstreams {\n${cases.map(([n], i) => `  upstream "u${i}" { target "127.0.0.1:${i + 1}" weight=2; load-balancing "${n}"; }`).join("\n")}\n}\n${cases.map((_, i) => R(`u${i}`)).join("")}`,
    );
    expect(r.errors).toEqual([]);
    expect(cases.map((_, i) => r.cfg.upstreams.get(`u${i}`)!.loadBalancing)).toEqual(cases.map(([, p]) => p) as never);
  });

  test("health checks, timeouts (both spellings), pool, tls, circuit-breaker → passive ejection", () => {
    const ca = write("up/ca.pem", PEM.cert);
    const r = load(`${BASE}upstreams {
  upstream "a" {
    target "127.0.0.1:1"
    health-check {
      type "http" { path "/ready"; expected-status "204"; host "api.internal"; }
      interval-secs 3
      timeout-secs 2
      healthy-threshold 4
      unhealthy-threshold 5
    }
    timeouts { connect 1; request 2; read 3; write 4; }
    connection-pool { max-connections 7; max-idle 3; idle-timeout 9; max-lifetime 99; }
    tls { sni "api.internal"; ca-cert "up/ca.pem"; insecure-skip-verify #false; }
    circuit-breaker { failure-threshold 9; timeout-seconds 12; }
  }
  upstream "b" {
    target "127.0.0.1:2"
    health-check { type "http" { expected-status 503; }; }
    timeouts { connect-secs 5; request-secs 6; read-secs 7; write-secs 8; }
    connection-pool { idle-timeout-secs 11; max-lifetime-secs 300; }
  }
  upstream "c" { target "127.0.0.1:3"; health-check { interval-secs 1; }; }
}
${R("a")}${R("b")}${R("c")}`);
    expect(r.errors).toEqual([]);
    const a = r.cfg.upstreams.get("a")!;
    expect(a.healthCheck).toEqual({ type: "http", path: "/ready", expectedStatus: 204, host: "api.internal", intervalMs: 3000, timeoutMs: 2000, healthyThreshold: 4, unhealthyThreshold: 5 });
    expect([a.connectTimeoutMs, a.requestTimeoutMs, a.readTimeoutMs, a.writeTimeoutMs]).toEqual([1000, 2000, 3000, 4000]);
    expect(a.pool).toEqual({ maxConnections: 7, maxIdle: 3, idleTimeoutMs: 9000, maxLifetimeMs: 99000 });
    expect(r.warnings.filter((w: string) => w.includes("max-connections"))).toHaveLength(0); // enforced per target (slots.ts)
    expect(a.tls).toEqual({ sni: "api.internal", caCert: ca, insecureSkipVerify: false });
    expect([a.passiveFailureThreshold, a.passiveEjectMs]).toEqual([9, 12000]);
    const b = r.cfg.upstreams.get("b")!;
    expect(b.healthCheck).toMatchObject({ type: "http", path: "/health", expectedStatus: 503 });
    expect([b.connectTimeoutMs, b.requestTimeoutMs, b.readTimeoutMs, b.writeTimeoutMs]).toEqual([5000, 6000, 7000, 8000]);
    expect(b.pool).toEqual({ maxConnections: 0, maxIdle: 20, idleTimeoutMs: 11000, maxLifetimeMs: 300000 }); // no limit unless set
    expect(r.cfg.upstreams.get("c")!.healthCheck).toEqual({ type: "tcp", path: "/health", expectedStatus: 200, intervalMs: 1000, timeoutMs: 5000, healthyThreshold: 2, unhealthyThreshold: 3 });
  });

  test("upstream errors", () => {
    const r = load(`${BASE}upstreams {
  upstream "a" { server address="127.0.0.1:1"; }
  upstream "b" { target "127.0.0.1"; target "h:0"; target "x:1" weight=0; }
  upstream "c" { target "127.0.0.1:1"; load-balancing "p2c"; health-check { type "grpc"; }; http-version {}; }
  upstream "d" { target "127.0.0.1:1"; load-balancing "least-conn"; timeouts { connect 0; }; }
  upstream "e" { target "127.0.0.1:1"; health-check { type "udp"; }; tls { verify #false; client-cert "/nonexistent"; }; }
  upstream "f" { target "127.0.0.1:1"; load-balancing "sticky" { cookie-name "S"; }; circuit-breaker { half-open-max-requests 2; }; }
  upstream "a" { target "127.0.0.1:1"; }
}
`);
    expect(r.errors).toEqual([
      "main.kdl:6:18: upstream 'a': 'server' is not a target; write target \"HOST:PORT\"",
      'main.kdl:6:18: Upstream \'a\' requires at least one target, e.g. target "127.0.0.1:3000"',
      "main.kdl:7:18: Upstream 'b' target #1 has invalid address '127.0.0.1': expected HOST:PORT (an IP or hostname and a port 1-65535)",
      "main.kdl:7:38: Upstream 'b' target #2 has invalid address 'h:0': expected HOST:PORT (an IP or hostname and a port 1-65535)",
      "main.kdl:7:52: upstream 'b': weight must be between 1 and 1000000, got 0",
      'main.kdl:8:40: not supported yet: upstream load-balancing "p2c"',
      'main.kdl:8:77: not supported yet: upstream health-check type "grpc"',
      "main.kdl:8:93: not supported yet: upstream http-version",
      "main.kdl:9:40: upstream 'd': unknown load-balancing algorithm \"least-conn\" (did you mean 'least_connections'?); supported: round_robin, weighted, least_connections, random, ip_hash, consistent_hash ('-' and '_' are interchangeable)",
      "main.kdl:9:80: upstream 'd' timeouts: 'connect' must be > 0 (a zero timeout would fail every request)",
      "main.kdl:10:55: upstream 'e' health-check: unknown type \"udp\" (did you mean 'tcp'?); valid: http, tcp",
      "main.kdl:10:70: upstream 'e' tls: client-cert and client-key must be given together",
      "main.kdl:10:76: upstream 'e' tls: 'verify #false' is not supported; use insecure-skip-verify #true to disable verification explicitly",
      "main.kdl:10:91: upstream 'e' tls: client-cert '/nonexistent' does not exist",
      'main.kdl:11:40: not supported yet: upstream load-balancing "sticky"',
      "main.kdl:11:104: not supported yet: upstream circuit-breaker half-open-max-requests",
      `main.kdl:12:3: Duplicate upstream ID 'a' found (first defined at main.kdl:6:3); upstream IDs must be unique across all config files`,
    ]);
  });

  test("unused upstream warns", () => {
    const r = load(`${BASE}upstreams { upstream "lonely" { target "127.0.0.1:1"; }; }\n`);
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual(["main.kdl:5:13: Upstream 'lonely' is not used by any route"]);
  });
});

// ───────────────────────────── filters ─────────────────────────────

describe("filters", () => {
  const AG = (extra = "") => `agents { agent "a" type="auth" { unix-socket "${dir}/a.sock"; failure-mode "closed"; timeout-ms 100; events "request_headers" "request_body"; ${extra} }; }\n`;

  test("agent, headers and timeout filters", () => {
    const r = load(`${BASE}${AG()}filters {
  filter "auth" { type "agent"; agent "a"; failure-mode "open"; timeout-ms 100; inspect-body #true; }
  filter "auth2" { type "agent"; agent "a"; }
  filter "hdr" { type "headers"; phase "both"; set { X-A "1"; }; remove "Server"; rename { A "B"; }; }
  filter "to" { type "timeout"; request-timeout-secs 5; upstream-timeout-secs 6; connect-timeout-secs 7; }
}
`);
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual([]);
    const f = r.cfg.filters;
    expect(f.get("auth")).toEqual({ id: "auth", type: "agent", agent: "a", failureMode: "open", loc: { file: r.path, line: 7, col: 3 } });
    expect(f.get("auth2")).toEqual({ id: "auth2", type: "agent", agent: "a", loc: { file: r.path, line: 8, col: 3 } });
    expect(f.get("hdr")).toEqual({
      id: "hdr",
      type: "headers",
      phase: "both",
      ops: [
        { op: "rename", from: "a", to: "b" },
        { op: "set", name: "x-a", value: "1" },
        { op: "remove", name: "server" },
      ],
      loc: { file: r.path, line: 9, col: 3 },
    });
    expect(f.get("to")).toEqual({ id: "to", type: "timeout", requestTimeoutMs: 5000, upstreamTimeoutMs: 6000, connectTimeoutMs: 7000, loc: { file: r.path, line: 10, col: 3 } });
  });

  test("filter errors", () => {
    const r = load(`${BASE}${AG()}filters {
  filter "a" { agent "a"; }
  filter "b" { type "rate-limit"; max-rps 10; }
  filter "c" { type "ratelimit"; }
  filter "d" { type "agent"; }
  filter "e" { type "agent"; agent "nope"; }
  filter "f" { type "agent"; agent "a"; timeout-ms 50; phase "request"; max-body-bytes 10; }
  filter "g" { type "headers"; phase "sideways"; }
}
`);
    expect(r.errors).toEqual([
      "main.kdl:7:3: Filter 'a' requires a 'type'. Valid types: agent, headers, timeout, rate-limit, compress, cors, log, geo, redirect, url-rewrite",
      'main.kdl:8:16: not supported yet: filter type "rate-limit"',
      "main.kdl:9:16: Unknown filter type: 'ratelimit' (did you mean 'rate-limit'?). Valid types: agent, headers, timeout, rate-limit, compress, cors, log, geo, redirect, url-rewrite",
      "main.kdl:10:3: Filter 'd' of type \"agent\" requires an 'agent' field naming the agent",
      "main.kdl:11:30: Filter 'e' references agent 'nope' which doesn't exist. Available agents: a",
      'main.kdl:12:56: not supported yet: filter type "agent" phase (agents are called for the events they subscribe to)',
      "main.kdl:12:73: not supported yet: filter type \"agent\" max-body-bytes (use the agent's max-request-body-bytes)",
      'main.kdl:13:32: filter \'g\': invalid phase "sideways"; valid values: request, response, both',
    ]);
    expect(r.warnings).toEqual([
      "main.kdl:12:41: filter 'f': timeout-ms 50 is not applied; agent 'a' timeout-ms 100 applies (set it on the agent)",
      "main.kdl:13:3: filter 'g': headers filter has no rename/set/add/remove operations",
    ]);
  });

  test("inspect-body #true needs an agent subscribed to request_body", () => {
    const r = load(`${BASE}agents { agent "h" { unix-socket "${dir}/h.sock"; failure-mode "open"; }; }
filters { filter "f" { type "agent"; agent "h"; inspect-body #true; }; }
`);
    expect(r.errors).toEqual([
      "main.kdl:6:49: filter 'f': inspect-body #true, but agent 'h' does not subscribe to request_body; bodies are sent to agents per their 'events'",
    ]);
  });
});

// ───────────────────────────── agents ─────────────────────────────

describe("agents", () => {
  function agents(body: string): Run {
    return load(`${BASE}agents {\n${body}\n}\n`);
  }
  const A = (r: Run, id: string): AgentConfig => r.cfg.agents.get(id)!;

  test("websocket_frame and guardrail events are parsed but not supported yet", () => {
    const line = `  agent "g" { unix-socket "${dir}/g.sock"; failure-mode "open"; events "request_headers" "web-socket-frame" "guardrail"; }`;
    const r = agents(line);
    const at = `main.kdl:6:${line.indexOf("events") + 1}`;
    expect(r.errors).toEqual([`${at}: not supported yet: agent event "websocket_frame"`, `${at}: not supported yet: agent event "guardrail"`]);
  });

  test("§8.1 form with every knob, and defaults", () => {
    const r = agents(`  agent "waf" type="waf" {
    unix-socket path="${dir}/waf.sock"
    events "request-headers" "request_body" "response-headers" "response_body" "log"
    timeout-ms 100
    failure-mode "fail_open"
    circuit-breaker { failure-threshold 7; success-threshold 3; timeout-seconds 40; half-open-max-requests 2; }
    max-request-body-bytes 2048
    max-response-body-bytes 4096
    request-body-mode "stream"
    response-body-mode "hybrid:1000"
    chunk-timeout-ms 700
    max-concurrent-calls 9
    config { rules-path "/etc/waf"; paranoia-level 2; }
  }
  agent "plain" { unix-socket "${dir}/plain.sock"; failure-mode "closed"; }`);
    expect(r.errors).toEqual([]);
    expect(A(r, "waf")).toEqual({
      id: "waf",
      type: "waf",
      transport: { kind: "uds", address: `${dir}/waf.sock`, protocol: "auto" },
      events: ["request_headers", "request_body", "response_headers", "response_body", "request_complete"],
      timeoutMs: 100,
      connectTimeoutMs: 5000,
      failureMode: "open",
      failureModeExplicit: true,
      retry: { attempts: 0, backoffMs: 10 },
      healthCheck: { enabled: true, intervalMs: 10000, timeoutMs: 100, healthyThreshold: 2, unhealthyThreshold: 3 },
      circuitBreaker: { failureThreshold: 7, successThreshold: 3, timeoutMs: 40000, halfOpenMaxRequests: 2 },
      maxRequestBodyBytes: 2048,
      maxResponseBodyBytes: 4096,
      requestBodyMode: { kind: "stream" },
      responseBodyMode: { kind: "hybrid", thresholdBytes: 1000 },
      chunkTimeoutMs: 700,
      maxConcurrentCalls: 9,
      connections: 4,
      config: { "rules-path": "/etc/waf", "paranoia-level": 2 },
      loc: { file: r.path, line: 6, col: 3 },
    });
    expect(A(r, "plain")).toMatchObject({
      type: "plain",
      events: ["request_headers"],
      timeoutMs: 1000,
      circuitBreaker: { failureThreshold: 5, successThreshold: 2, timeoutMs: 30000, halfOpenMaxRequests: 1 },
      maxRequestBodyBytes: 1048576,
      maxResponseBodyBytes: 1048576,
      requestBodyMode: { kind: "buffer" },
      responseBodyMode: { kind: "buffer" },
      chunkTimeoutMs: 5000,
      maxConcurrentCalls: 100,
      connections: 4,
    });
    expect(A(r, "plain").config).toBeUndefined();
  });

  test("§8.2 seed-doc style: health-check, retry, connect-timeout-ms, grpc forms; our connections/protocol", () => {
    const r = agents(`  agent "auth" type="auth" {
    unix-socket "${dir}/auth.sock"
    timeout-ms 100
    failure-mode "closed"
    health-check { enabled #true; interval-ms 5000; timeout-ms 150; healthy-threshold 3; unhealthy-threshold 4; }
    circuit-breaker { failure-threshold 5; success-threshold 3; timeout-seconds 30; }
    retry { attempts 2; backoff-ms 20; }
    connect-timeout-ms 1000
    connections 8
    protocol "v1"
    request-body-mode "hybrid"
  }
  agent "waf" type="waf" { grpc "http://waf-service:50051"; timeout-ms 200; failure-mode "open"; }
  agent "g2" { grpc address="https://g2.internal:443" { ca-cert "${write("g/ca.pem", PEM.cert)}"; }; failure-mode "open"; }
  agent "g3" { grpc "http://g3:1" { tls; tls-insecure; }; failure-mode "open"; }`);
    expect(r.errors).toEqual([]);
    const auth = A(r, "auth");
    expect(auth.healthCheck).toEqual({ enabled: true, intervalMs: 5000, timeoutMs: 150, healthyThreshold: 3, unhealthyThreshold: 4 });
    expect(auth.retry).toEqual({ attempts: 2, backoffMs: 20 });
    expect(auth.connectTimeoutMs).toBe(1000);
    expect(auth.connections).toBe(8);
    expect(auth.transport).toEqual({ kind: "uds", address: `${dir}/auth.sock`, protocol: "v1" });
    expect(auth.requestBodyMode).toEqual({ kind: "hybrid", thresholdBytes: 65536 });
    expect(auth.circuitBreaker).toEqual({ failureThreshold: 5, successThreshold: 3, timeoutMs: 30000, halfOpenMaxRequests: 1 });
    expect(A(r, "waf").transport).toEqual({ kind: "grpc", address: "http://waf-service:50051", protocol: "auto" });
    expect(A(r, "g2").transport).toEqual({ kind: "grpc", address: "https://g2.internal:443", tls: { caCert: join(dir, "g/ca.pem"), insecure: false }, protocol: "auto" });
    expect(A(r, "g3").transport).toEqual({ kind: "grpc", address: "https://g3:1", tls: { insecure: true }, protocol: "auto" });
    expect(r.warnings).toEqual([
      "main.kdl:20:16: agent 'g3' grpc: TLS settings given with an http:// address; connecting with TLS to https://g3:1",
      "main.kdl:20:42: agent 'g3' grpc: tls-insecure disables certificate verification for this agent",
    ]);
  });

  test("§8.3 transport-block style and a type child", () => {
    const ca = write("t/ca.pem", PEM.cert);
    const r = agents(`  agent "waf-agent" {
    type "waf"
    transport { unix-socket "${dir}/waf-agent.sock"; }
    events "request-headers" "request-body"
    timeout-ms 50
  }
  agent "g" {
    type "custom"
    transport { grpc { address "localhost:50051"; tls { ca-cert "${ca}"; insecure-skip-verify #false; }; }; }
    failure-mode "open"
  }
  agent "h" { transport { http { url "http://localhost:8080/agent"; }; }; failure-mode "open"; }`);
    expect(r.errors).toEqual(["main.kdl:17:27: not supported yet: agent http transport"]);
    const w = A(r, "waf-agent");
    expect(w.type).toBe("waf");
    expect(w.transport).toEqual({ kind: "uds", address: `${dir}/waf-agent.sock`, protocol: "auto" });
    expect(w.events).toEqual(["request_headers", "request_body"]);
    // no explicit failure-mode: closed for waf, and a warning
    expect(w.failureMode).toBe("closed");
    expect(w.failureModeExplicit).toBe(false);
    expect(A(r, "g").transport).toEqual({ kind: "grpc", address: "https://localhost:50051", tls: { caCert: ca, insecure: false }, protocol: "auto" });
    expect(r.warnings).toEqual([
      'main.kdl:6:3: Agent \'waf-agent\' has no explicit failure-mode; using "closed" (default for type "waf"). Set failure-mode "closed" for security agents or "open" for observability agents',
      'main.kdl:14:17: agent \'g\' transport grpc: address without scheme; using "https://localhost:50051"',
    ]);
  });

  test("failure-mode defaults: closed for auth and waf, open otherwise; always a warning", () => {
    const r = agents(`  agent "a" type="auth" { unix-socket "${dir}/1.sock"; }
  agent "b" { type "waf"; unix-socket "${dir}/2.sock"; }
  agent "c" type="rate_limit" { unix-socket "${dir}/3.sock"; }
  agent "d" { unix-socket "${dir}/4.sock"; }`);
    expect(r.errors).toEqual([]);
    expect(["a", "b", "c", "d"].map((id) => [A(r, id).type, A(r, id).failureMode, A(r, id).failureModeExplicit])).toEqual([
      ["auth", "closed", false],
      ["waf", "closed", false],
      ["rate-limit", "open", false],
      ["d", "open", false],
    ]);
    expect(r.warnings.length).toBe(4);
    expect(r.warnings[2]).toBe(
      'main.kdl:8:3: Agent \'c\' has no explicit failure-mode; using "open" (default for type "rate-limit"). Set failure-mode "closed" for security agents or "open" for observability agents',
    );
  });

  test("agent errors", () => {
    const r = agents(`  agent "a" { events "request_headers"; failure-mode "open"; }
  agent "b" { unix-socket "/nonexistent-dir/b.sock"; failure-mode "sometimes"; events "request_headerz"; }
  agent "c" { unix-socket "${dir}/c.sock"; failure-mode "open"; timeout-ms 0; chunk-timeout-ms 0; max-request-body-bytes 0; }
  agent "d" { unix-socket "${dir}/d.sock"; failure-mode "open"; circuit-breaker { failure-threshold 0; }; request-body-mode "chunked"; }
  agent "e" { unix-socket "${dir}/e.sock"; grpc "http://x:1"; failure-mode "open"; }
  agent "f" type="auth" { type "waf"; unix-socket "${dir}/f.sock"; failure-mode "open"; }
  agent "g" { grpc "http://g:1"; protocol "v1"; failure-mode "open"; pool {}; }
  agent "a" { unix-socket "${dir}/a.sock"; failure-mode "open"; }`);
    expect(r.errors).toEqual([
      "main.kdl:6:3: Agent 'a' requires a transport (unix-socket, grpc, or http)",
      "main.kdl:7:54: agent 'b': Unknown failure mode \"sometimes\"; valid: open, closed",
      "main.kdl:7:80: Unknown agent event: 'request_headerz' (did you mean 'request_headers'?). Valid events: request_headers, request_body, response_headers, response_body, request_complete, log, websocket_frame, web_socket_frame, guardrail",
      "main.kdl:8:" + (59 + dir.length) + ": Agent 'c' has timeout-ms 0; it must be > 0",
      "main.kdl:8:" + (73 + dir.length) + ": Agent 'c' has chunk-timeout-ms 0; it must be > 0",
      "main.kdl:8:" + (93 + dir.length) + ": Agent 'c' has max-request-body-bytes 0; it must be > 0",
      "main.kdl:9:" + (77 + dir.length) + ": agent 'd' circuit-breaker: Implausible value for failure-threshold: 0 (must be a non-zero integer)",
      "main.kdl:9:" + (101 + dir.length) + ': agent \'d\': unknown body streaming mode "chunked" for request-body-mode; valid: buffer, stream, hybrid, hybrid:<bytes>',
      "main.kdl:10:" + (38 + dir.length) + ": agent 'e': more than one transport (first at main.kdl:10:15); give exactly one",
      'main.kdl:11:27: agent \'f\': type="auth" and child type "waf" disagree',
      'main.kdl:12:34: agent \'g\': protocol "v1" applies to unix-socket agents only (gRPC is always v2)',
      "main.kdl:12:70: not supported yet: agent pool (use 'connections N')",
      `main.kdl:13:3: Duplicate agent ID 'a' found (first defined at main.kdl:6:3); agent IDs must be unique across all config files`,
    ]);
  });

  test("replicated agents: several endpoints (values and endpoint children), DNS form, resolve-interval-secs", () => {
    const r = agents(`  agent "g" { grpc "http://127.0.0.2:50051" "http://127.0.0.3:50051" "127.0.0.4:50051"; failure-mode "closed"; }
  agent "gb" { grpc { endpoint "https://a.internal:1"; endpoint "https://b.internal:1"; tls-insecure; }; failure-mode "closed"; }
  agent "u" { unix-socket "${dir}/u1.sock" "${dir}/u2.sock"; failure-mode "closed"; }
  agent "ub" { transport { unix-socket { endpoint "${dir}/b1.sock"; endpoint "${dir}/b2.sock"; }; }; failure-mode "open"; }
  agent "d" { grpc "dns://agents.svc.cluster.local:50051"; resolve-interval-secs 10; failure-mode "closed"; }
  agent "d2" { grpc "dns://localhost:7000" { resolve-interval-secs 5; }; failure-mode "closed"; }
  agent "d3" { grpc "dns://localhost:7000"; failure-mode "closed"; }
  agent "one" { grpc "http://127.0.0.2:50051"; failure-mode "closed"; }`);
    expect(r.errors).toEqual([]);
    expect(A(r, "g").transport).toEqual({
      kind: "grpc",
      address: "http://127.0.0.2:50051",
      endpoints: ["http://127.0.0.2:50051", "http://127.0.0.3:50051", "http://127.0.0.4:50051"],
      protocol: "auto",
    });
    expect(A(r, "gb").transport).toEqual({
      kind: "grpc",
      address: "https://a.internal:1",
      endpoints: ["https://a.internal:1", "https://b.internal:1"],
      tls: { insecure: true },
      protocol: "auto",
    });
    expect(A(r, "u").transport).toEqual({ kind: "uds", address: `${dir}/u1.sock`, endpoints: [`${dir}/u1.sock`, `${dir}/u2.sock`], protocol: "auto" });
    expect(A(r, "ub").transport.endpoints).toEqual([`${dir}/b1.sock`, `${dir}/b2.sock`]);
    expect(A(r, "d").transport).toEqual({
      kind: "grpc",
      address: "dns://agents.svc.cluster.local:50051",
      dns: { name: "agents.svc.cluster.local", port: 50051, scheme: "http", resolveIntervalMs: 10_000 },
      protocol: "auto",
    });
    expect(A(r, "d2").transport.dns).toEqual({ name: "localhost", port: 7000, scheme: "http", resolveIntervalMs: 5000 });
    expect(A(r, "d3").transport.dns!.resolveIntervalMs).toBe(30_000);
    // A single endpoint keeps exactly today's shape.
    expect(A(r, "one").transport).toEqual({ kind: "grpc", address: "http://127.0.0.2:50051", protocol: "auto" });
    expect("endpoints" in A(r, "one").transport).toBe(false);
    expect(r.warnings.filter((w) => !w.includes("parent directory"))).toEqual([
      'main.kdl:6:15: agent \'g\' grpc: address without scheme; using "http://127.0.0.4:50051"',
      "main.kdl:7:89: agent 'gb' grpc: tls-insecure disables certificate verification for this agent",
    ]);
  });

  test("replicated agents: errors", () => {
    const many = Array.from({ length: 65 }, (_, i) => `"http://10.0.0.${i}:1"`).join(" ");
    const r = agents(`  agent "dup" { grpc "http://a:1" "http://a:1"; failure-mode "open"; }
  agent "mix" { grpc "http://a:1" "https://b:1"; failure-mode "open"; }
  agent "dnsplus" { grpc "dns://a:1" "http://b:1"; failure-mode "open"; }
  agent "badns" { grpc "dns://a"; failure-mode "open"; }
  agent "many" { grpc ${many}; failure-mode "open"; }
  agent "udup" { unix-socket "${dir}/x.sock" "${dir}/x.sock"; failure-mode "open"; }
  agent "ri" { grpc "http://a:1"; resolve-interval-secs 5; failure-mode "open"; }
  agent "ri2" { grpc "dns://a:1" { resolve-interval-secs 5; }; resolve-interval-secs 6; failure-mode "open"; }
  agent "ri3" { grpc "dns://a:1"; resolve-interval-secs 0; failure-mode "open"; }
  agent "two" { grpc "http://a:1"; grpc "http://b:1"; failure-mode "open"; }`);
    const strip = (e: string) => e.replace(/^main\.kdl:\d+:\d+: /, "");
    expect(r.errors.map(strip)).toEqual([
      `agent 'dup' grpc: endpoint "http://a:1" is listed twice`,
      "agent 'mix' grpc: endpoints mix http:// and https://; use one scheme for every endpoint of an agent",
      "agent 'dnsplus' grpc: a dns:// endpoint must be the agent's only endpoint",
      `agent 'badns' grpc: invalid DNS endpoint "dns://a"; expected "dns://NAME:PORT"`,
      "agent 'many' grpc: at most 64 endpoints per agent, got 65",
      "agent 'udup': unix-socket endpoint 'x.sock' is listed twice", // (the test's load() shortens paths under dir)
      "agent 'ri2': resolve-interval-secs is given twice (also at main.kdl:13:36)",
      "agent 'ri3': 'resolve-interval-secs' must be between 1 and 86400, got 0",
      `agent 'two': more than one transport (first at main.kdl:15:17); give exactly one; to replicate an agent, list every endpoint in one node, e.g. grpc "http://10.0.0.1:50051" "http://10.0.0.2:50051"`,
    ]);
    expect(r.warnings.map(strip)).toContain("agent 'ri': resolve-interval-secs applies to dns:// endpoints only; ignored");
  });

  test("both transport styles that agree only warn", () => {
    const r = agents(`  agent "a" { unix-socket "${dir}/a.sock"; transport { unix-socket "${dir}/a.sock"; }; failure-mode "open"; }`);
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual([`main.kdl:6:${50 + dir.length}: agent 'a': transport given in both styles (direct and transport {}); they agree`]);
  });
});

// ───────────────────────────── limits & observability & top-level ext ─────────────────────────────

describe("limits, observability, unsupported top-level blocks", () => {
  test("limits: both spellings, sizes, unsupported keys, zero", () => {
    const a = load(`${BASE}limits { max-header-size 4096; max-header-count 50; max-body-size "2MB"; max-uri-length 2048; }\n`);
    expect(a.errors).toEqual([]);
    expect(a.cfg.limits).toEqual({ maxHeaderSize: 4096, maxHeaderCount: 50, maxBodySize: 2097152, maxUriLength: 2048 });
    const b = load(`${BASE}limits { max-header-size-bytes 1000; max-body-size-bytes 5000; }\n`);
    expect(b.cfg.limits).toMatchObject({ maxHeaderSize: 1000, maxBodySize: 5000 });
    const c = load(`${BASE}limits {\n  max-header-count 0\n  max-connections-per-client 5\n  max-body-buffer-bytes 10\n}\n`);
    expect(c.errors).toEqual([
      "main.kdl:6:3: limits: max-header-count must be > 0",
      "main.kdl:7:3: not supported yet: limits max-connections-per-client",
      "main.kdl:8:3: not supported yet: limits max-body-buffer-bytes",
    ]);
  });

  test("observability: metrics and every log", () => {
    const r = load(`${BASE}observability {
  metrics { enabled #true; address "127.0.0.1:9191"; path "/m"; high-cardinality #false; }
  logging {
    level "DEBUG"
    format "json"
    timestamps #true
    access-log { enabled #true; file "logs/access.log"; format "combined"; buffer-size 8192; include-trace-id #true; }
    error-log { enabled #true; file "/var/log/e.log"; level "error"; }
    audit-log { enabled #true; file "/var/log/a.log"; log-blocked #true; log-agent-decisions #true; log-waf-events #true; }
  }
}
`);
    expect(r.errors).toEqual([]);
    expect(r.cfg.observability).toEqual({
      metrics: { enabled: true, address: "127.0.0.1:9191", host: "127.0.0.1", port: 9191, path: "/m" },
      logging: {
        level: "debug",
        accessLog: { enabled: true, file: join(dir, "logs/access.log"), format: "combined", bufferSize: 8192 },
        errorLog: { enabled: true, file: "/var/log/e.log", level: "error" },
        auditLog: { enabled: true, file: "/var/log/a.log", wafEvents: true },
      },
    });
  });

  test("observability errors and unsupported parts", () => {
    const r = load(`${BASE}observability {
  metrics { address "127.0.0.1:8080"; }
  logging { format "pretty"; file "/x.log"; access-log { format "xml"; sample-rate 0.5; }; }
  tracing { backend "otlp" { endpoint "http://localhost:4317"; }; }
}
`);
    expect(r.errors).toEqual([
      "main.kdl:6:3: observability metrics: address '127.0.0.1:8080' collides with listener 'http' (127.0.0.1:8080)",
      'main.kdl:7:13: not supported yet: observability logging format "pretty" (logs are JSON lines)',
      "main.kdl:7:30: not supported yet: observability logging file (operational logs go to stderr)",
      'main.kdl:7:58: observability logging access-log: invalid format "xml"; valid values: json, combined',
      "main.kdl:7:72: not supported yet: observability logging access-log sample-rate",
      "main.kdl:8:3: not supported yet: observability tracing",
    ]);
  });

  test("waf / cache / rate-limits / namespace are located not-supported errors; waf off only warns", () => {
    const r = load(`${BASE}waf { engine "coraza"; mode "detection"; }
cache { enabled #true; }
rate-limits { default-rps 10; }
namespace "team" {}
waf { mode "off"; }
`);
    expect(r.errors).toEqual([
      'main.kdl:5:24: not supported yet: waf mode "detection" (use a WAF agent, or mode "off")',
      "main.kdl:6:1: not supported yet: cache",
      "main.kdl:7:1: not supported yet: rate-limits",
      "main.kdl:8:1: not supported yet: namespace",
    ]);
    expect(r.warnings).toEqual(['main.kdl:9:1: waf block with mode "off" has no effect (WAF is done by agents)']);
    expect(load(`${BASE}waf { engine "coraza"; }\n`).errors).toEqual(['main.kdl:5:1: not supported yet: waf mode "prevention" (use a WAF agent, or mode "off")']);
  });

  test("repeated blocks: routes etc. merge; limits/observability last-wins with a warning", () => {
    const r = load(`${BASE}routes { route "a" { priority "low"; builtin-handler "status"; }; }
routes { route "b" { matches { path "/b"; }; builtin-handler "health"; }; }
limits { max-header-count 5; }
limits { max-header-count 6; }
`);
    expect(r.errors).toEqual([]);
    expect(r.cfg.routes.map((x) => x.id)).toEqual(["a", "b"]);
    expect(r.cfg.limits.maxHeaderCount).toBe(6);
    expect(r.warnings).toEqual([`main.kdl:8:1: 'limits' block overrides the one at main.kdl:7:1 (last one wins; settings are not merged)`]);
  });
});

// ───────────────────────────── includes ─────────────────────────────

describe("include", () => {
  test("glob relative to the including file, sorted, nested; files list; merge", () => {
    write("inc1/conf.d/20-routes.kdl", `routes { route "r2" { matches { path "/2"; }; upstream "u"; }; }\ninclude "nested/*.kdl"\n`);
    write("inc1/conf.d/10-upstreams.kdl", `upstreams { upstream "u" { target "127.0.0.1:1"; }; }\n`);
    write("inc1/conf.d/nested/x.kdl", `routes { route "r3" { matches { path "/3"; }; upstream "u"; }; }\n`);
    write("inc1/conf.d/ignored.txt", `garbage {`);
    const r = load(`${BASE}include "conf.d/*.kdl"\nroutes { route "r1" { matches { path "/1"; }; upstream "u"; }; }\n`, "inc1/main.kdl");
    expect(r.errors).toEqual([]);
    expect(r.cfg.files).toEqual([
      join(dir, "inc1/main.kdl"),
      join(dir, "inc1/conf.d/10-upstreams.kdl"),
      join(dir, "inc1/conf.d/20-routes.kdl"),
      join(dir, "inc1/conf.d/nested/x.kdl"),
    ]);
    expect(r.cfg.routes.map((x) => [x.id, x.loc.file])).toEqual([
      ["r2", join(dir, "inc1/conf.d/20-routes.kdl")],
      ["r3", join(dir, "inc1/conf.d/nested/x.kdl")],
      ["r1", join(dir, "inc1/main.kdl")],
    ]);
  });

  test("cycle is an error at the include; no match is a warning; duplicate ID across files names both places", () => {
    write("inc2/a.kdl", `include "b.kdl"\nupstreams { upstream "u" { target "127.0.0.1:1"; }; }\n`);
    write("inc2/b.kdl", `include "a.kdl"\n`);
    write("inc2/c.kdl", `routes {\n  route "dup" { matches { path "/x"; }; upstream "u"; }\n}\n`);
    const r = load(`${BASE}include "a.kdl"\ninclude "none/*.kdl"\ninclude "c.kdl"\nroutes { route "dup" { matches { path "/y"; }; upstream "u"; }; }\n`, "inc2/main.kdl");
    const main = join(dir, "inc2/main.kdl");
    expect(r.errors).toEqual([
      `inc2/main.kdl:8:10: Duplicate route ID 'dup' found (first defined at inc2/c.kdl:2:3); route IDs must be unique across all config files`,
      "inc2/b.kdl:1:1: Circular include detected: inc2/a.kdl -> inc2/b.kdl -> inc2/a.kdl",
    ]);
    expect(r.warnings).toEqual(['inc2/main.kdl:6:1: include pattern "none/*.kdl" matched no files']);
    expect(main).toBe(r.path);
  });

  test("syntax error in an included file is located in that file", () => {
    write("inc3/bad.kdl", `routes {\n  route "x" {\n`);
    const r = load(`${BASE}include "bad.kdl"\n`, "inc3/main.kdl");
    expect(r.errors).toEqual(["inc3/bad.kdl:3:1: KDL syntax error: unexpected end of input"]);
  });
});

// ───────────────────────────── the Zentinel sample configs ─────────────────────────────

type Group = "A" | "B" | "C" | "D";
const GROUPS: Record<string, Group> = {
  "basic.kdl": "A",
  "https-upstream.kdl": "A",
  "rate-limiting-per-route.kdl": "A",
  "distributed-rate-limit.kdl": "A",
  "cors-headers.kdl": "A",
  "http-caching.kdl": "A",
  "ai-guardrails.kdl": "A",
  "tracing.kdl": "A",
  "shadow-traffic.kdl": "A",
  "static-site.kdl": "B",
  "api-schema-validation.kdl": "B",
  "websocket.kdl": "B",
  "namespaces.kdl": "B",
  "api-gateway.kdl": "C",
  "mixed-services.kdl": "C",
  "load-balancer.kdl": "C",
  "multiple-upstreams-health-check.kdl": "C",
  "inference-routing.kdl": "C",
  "zentinel.kdl": "C",
  "acme-cloudflare.kdl": "D",
  "acme-zerossl.kdl": "D",
  "acme-p384.kdl": "D",
  "acme-san.kdl": "D",
};

/** Exactly which features each sample file needs that we have not built yet. */
const NOT_SUPPORTED: Record<string, string[]> = {
  "basic.kdl": [],
  "https-upstream.kdl": [],
  "rate-limiting-per-route.kdl": ['filter type "rate-limit"'],
  "distributed-rate-limit.kdl": ['filter type "rate-limit"'],
  "cors-headers.kdl": ['filter type "cors"', "route websocket max-message-size-bytes", "route websocket ping-interval-secs", "route websocket ping-timeout-secs"],
  "http-caching.kdl": ['builtin-handler "cache-purge"', 'builtin-handler "cache-stats"', "cache", "route cache", "route policies cache"],
  "ai-guardrails.kdl": ["limits max-body-buffer-bytes", "route inference", "route policies buffer-requests #true", "route policies buffer-responses #true"],
  "tracing.kdl": ["observability tracing"],
  "shadow-traffic.kdl": ["limits max-body-buffer-bytes", "route policies buffer-requests #true", "route shadow"],
  "static-site.kdl": ["cache", "route policies cache", "route policies rewrite-path"],
  "api-schema-validation.kdl": ["observability tracing", "route api-schema"],
  "websocket.kdl": ["route websocket max-connections-per-ip", "route websocket max-message-size-bytes", "route websocket ping-interval-secs", "route websocket ping-timeout-secs"],
  "namespaces.kdl": ['filter type "cors"', 'filter type "rate-limit"', "namespace"],
  "api-gateway.kdl": ["observability tracing"],
  "mixed-services.kdl": ["observability tracing", "route circuit-breaker", "route policies cache"],
  "load-balancer.kdl": ["route circuit-breaker"],
  "multiple-upstreams-health-check.kdl": ["route circuit-breaker"],
  "inference-routing.kdl": ["route circuit-breaker", "route fallback", "route inference", "route policies buffer-requests #true", 'upstream load-balancing "least_tokens_queued"'],
  "zentinel.kdl": [
    'filter type "compress"',
    'filter type "cors"',
    'filter type "rate-limit"',
    ...[
      "max-agent-body-bytes",
      "max-agent-queue-depth",
      "max-agent-response-bytes",
      "max-body-buffer-bytes",
      "max-body-inspection-bytes",
      "max-connections-per-client",
      "max-connections-per-route",
      "max-decompressed-size-bytes",
      "max-decompression-ratio",
      "max-header-name-bytes",
      "max-header-value-bytes",
      "max-idle-connections-per-upstream",
      "max-in-flight-requests",
      "max-in-flight-requests-per-worker",
      "max-queued-requests",
      "max-requests-per-second-global",
      "max-requests-per-second-per-client",
      "max-total-connections",
    ].map((k) => `limits ${k}`),
    "listener tls cipher-suites",
    "observability tracing",
    "route circuit-breaker",
    "route policies rate-limit",
    "route waf-enabled (use an agent filter)",
    'waf mode "prevention" (use a WAF agent, or mode "off")',
  ],
};

const NS = "not supported yet: ";
// Certificate files named by https listeners do not exist on a dev/CI host. They are host
// dependent (group B in the README; group C files name them too), so they are tolerated here.
const MISSING_HOST_FILE = /^listener '[^']+' tls: (cert|key|ca)-file '\/etc\/zentinel\/[^']+' does not exist$/;

describe("Zentinel sample configs (../shared/examples)", () => {
  const files = readdirSync(EXAMPLES).filter((f) => f.endsWith(".kdl")).sort();
  const results = new Map<string, LoadResult>();
  const get = (f: string): LoadResult => {
    let r = results.get(f);
    if (!r) {
      r = loadConfig(join(EXAMPLES, f));
      results.set(f, r);
    }
    return r;
  };
  const cfgOf = (f: string): SentinelConfig => get(f).partial!;
  const routeOf = (f: string, id: string) => cfgOf(f).routes.find((r) => r.id === id)!;

  test("every sample file has an expectation (the table covers the whole folder)", () => {
    expect(files).toEqual(Object.keys(GROUPS).sort());
  });

  for (const f of Object.keys(GROUPS).sort()) {
    const group = GROUPS[f]!;
    if (group === "D") continue;
    test(`${f} (group ${group}): loads, or fails only with located "not supported yet" errors`, () => {
      const r = get(f);
      const errors = r.diagnostics.filter((d) => d.severity === "error");
      for (const e of errors) {
        expect(e.loc.file).toBe(join(EXAMPLES, f));
        expect(e.loc.line).toBeGreaterThan(0);
        expect(e.loc.col).toBeGreaterThan(0);
        const ok = e.message.startsWith(NS) || (group !== "A" && MISSING_HOST_FILE.test(e.message));
        if (!ok) throw new Error(`unexpected error: ${formatDiagnostic(e)}`);
      }
      const features = [...new Set(errors.filter((e) => e.message.startsWith(NS)).map((e) => e.message.slice(NS.length)))].sort();
      expect(features).toEqual([...NOT_SUPPORTED[f]!].sort());
      if (errors.length === 0) expect(r.config).toBeDefined();
      else expect(r.config).toBeUndefined();
      expect(r.partial).toBeDefined();
    });
  }

  test("basic.kdl and https-upstream.kdl load completely", () => {
    expect(get("basic.kdl").config).toBeDefined();
    expect(get("https-upstream.kdl").config).toBeDefined();
    const c = cfgOf("basic.kdl");
    expect(routeOf("basic.kdl", "default")).toMatchObject({ priority: 10, upstream: "backend", timeoutMs: 30000, failureMode: "open" });
    expect(c.upstreams.get("backend")!.healthCheck).toEqual({ type: "http", path: "/health", expectedStatus: 200, intervalMs: 10000, timeoutMs: 5000, healthyThreshold: 2, unhealthyThreshold: 3 });
    expect(c.limits).toMatchObject({ maxHeaderSize: 8192, maxHeaderCount: 100, maxBodySize: 10485760 });
    expect(c.observability.metrics).toMatchObject({ enabled: true, address: "0.0.0.0:9090", path: "/metrics" });
    const h = cfgOf("https-upstream.kdl");
    expect(h.upstreams.get("external-api")!.tls).toEqual({ sni: "api.example.com", insecureSkipVerify: false });
    expect(routeOf("https-upstream.kdl", "api").requestHeaderOps).toEqual([{ op: "set", name: "host", value: "api.example.com" }]);
  });

  test("load-balancer.kdl: least-connections, ip-hash and weighted-round-robin are understood", () => {
    const c = cfgOf("load-balancer.kdl");
    expect(c.upstreams.get("app-least-conn")!.loadBalancing).toBe("least_connections");
    expect(c.upstreams.get("app-sticky")!.loadBalancing).toBe("ip_hash");
    const cluster = c.upstreams.get("app-cluster")!;
    expect(cluster.loadBalancing).toBe("weighted");
    expect(cluster.targets.map((t) => t.weight)).toEqual([100, 100, 100, 50, 50]);
    expect(cluster.pool).toMatchObject({ maxConnections: 100, maxIdle: 20, idleTimeoutMs: 60000 });
    expect([cluster.connectTimeoutMs, cluster.requestTimeoutMs, cluster.readTimeoutMs]).toEqual([5000, 30000, 30000]);
    expect(routeOf("load-balancer.kdl", "app").retryPolicy).toEqual({ maxAttempts: 3, timeoutMs: 10000, backoffBaseMs: 100, backoffMaxMs: 2000, retryableStatusCodes: [502, 503, 504] });
  });

  test("websocket.kdl: `websocket { enabled #true }` routes have WebSocket enabled", () => {
    for (const id of ["websocket", "socketio", "chat"]) expect(routeOf("websocket.kdl", id).websocket).toBe(true);
    expect(routeOf("websocket.kdl", "health").websocket).toBe(false);
    expect(cfgOf("websocket.kdl").upstreams.get("ws-backend")!.loadBalancing).toBe("ip_hash");
    expect(routeOf("cors-headers.kdl", "websocket").websocket).toBe(true);
  });

  test("multi-argument method means OR", () => {
    const m = (f: string, id: string) => routeOf(f, id).matches.find((x) => x.kind === "method");
    expect(m("api-gateway.kdl", "api-v2")).toEqual({ kind: "method", values: ["GET", "POST", "PUT", "DELETE", "PATCH"] });
    expect(m("cors-headers.kdl", "public-api")).toEqual({ kind: "method", values: ["GET", "POST", "PUT", "DELETE", "OPTIONS"] });
    expect(m("zentinel.kdl", "api-v1")).toEqual({ kind: "method", values: ["GET", "POST", "PUT", "DELETE"] });
  });

  test("api-gateway.kdl: agents (type child, grpc address=), filters, retry keys Zentinel rejects", () => {
    const c = cfgOf("api-gateway.kdl");
    expect(c.agents.get("auth")).toMatchObject({
      type: "auth",
      transport: { kind: "grpc", address: "http://localhost:50051", protocol: "auto" },
      events: ["request_headers"],
      timeoutMs: 100,
      failureMode: "closed",
      failureModeExplicit: true,
      circuitBreaker: { failureThreshold: 5, successThreshold: 2, timeoutMs: 30000, halfOpenMaxRequests: 1 },
    });
    expect(c.agents.get("ratelimit")).toMatchObject({ type: "rate-limit", failureMode: "open" });
    expect(c.filters.get("auth")).toMatchObject({ type: "agent", agent: "auth", failureMode: "closed" });
    const v2 = routeOf("api-gateway.kdl", "api-v2");
    expect(v2).toMatchObject({ priority: 100, upstream: "api-v2", filters: ["auth", "ratelimit"], timeoutMs: 30000, maxBodySize: 10485760, failureMode: "closed" });
    expect(v2.retryPolicy).toEqual({ maxAttempts: 3, timeoutMs: 5000, backoffBaseMs: 100, backoffMaxMs: 2000, retryableStatusCodes: [502, 503, 504] });
    expect(c.listeners.map((l) => [l.id, l.protocol])).toEqual([
      ["https", "https"],
      ["http", "http"],
    ]);
    expect(c.upstreams.get("api-v2")).toMatchObject({ connectTimeoutMs: 5000, requestTimeoutMs: 30000 });
    expect(c.observability.logging.accessLog).toEqual({ enabled: true, file: "/var/log/zentinel/api-gateway-access.log", format: "json" });
  });

  test("mixed-services.kdl and ai-guardrails.kdl: sizes, hyphenated LB, agents", () => {
    const m = cfgOf("mixed-services.kdl");
    expect(m.upstreams.get("user-service")!.loadBalancing).toBe("least_connections");
    expect(m.upstreams.get("auth-service")).toMatchObject({ connectTimeoutMs: 2000, requestTimeoutMs: 10000 });
    expect(routeOf("mixed-services.kdl", "user-service").maxBodySize).toBe(5 * 1024 * 1024);
    expect(routeOf("mixed-services.kdl", "product-service").retryPolicy.retryableStatusCodes).toEqual([502, 503, 504, 429]);
    expect(routeOf("ai-guardrails.kdl", "secure-chat").maxBodySize).toBe(512 * 1024);
    const g = cfgOf("ai-guardrails.kdl");
    expect(g.agents.get("content-moderator")).toMatchObject({ type: "guardrail", events: ["request_body", "response_body"], failureMode: "closed" });
    expect(g.observability.logging.auditLog).toEqual({ enabled: true, file: "/var/log/zentinel/guardrails-audit.log" });
  });

  test("zentinel.kdl: the reference config is understood apart from the unbuilt features", () => {
    const c = cfgOf("zentinel.kdl");
    expect(c.system).toMatchObject({ pidFile: "/var/run/zentinel.pid", maxConnections: 10000 });
    expect(c.listeners[0]).toMatchObject({ id: "http", defaultRoute: "fallback", keepaliveTimeoutMs: 75000 });
    const api = routeOf("zentinel.kdl", "api-v1");
    expect(api.matches.find((m) => m.kind === "host")).toEqual({ kind: "host", value: "api.example.com" });
    expect(api.requestHeaderOps).toEqual([
      { op: "set", name: "x-api-version", value: "v1" },
      { op: "remove", name: "cookie" },
    ]);
    expect(api.retryPolicy).toEqual({ maxAttempts: 3, timeoutMs: 5000, backoffBaseMs: 100, backoffMaxMs: 2000, retryableStatusCodes: [502, 503, 504] });
    const be = c.upstreams.get("api-backend")!;
    expect(be.healthCheck).toMatchObject({ type: "http", host: "api.internal" });
    expect(be.pool).toEqual({ maxConnections: 100, maxIdle: 20, idleTimeoutMs: 60000, maxLifetimeMs: 300000 });
    expect(be.writeTimeoutMs).toBe(30000);
    expect(c.upstreams.get("cdn-backend")!.healthCheck!.type).toBe("tcp");
    expect(c.agents.get("waf-agent")).toMatchObject({ type: "waf", events: ["request_headers", "request_body"], maxRequestBodyBytes: 1048576 });
    expect(c.agents.get("rate-limit-agent")!.type).toBe("rate-limit");
    expect(c.observability.logging).toEqual({
      level: "info",
      accessLog: { enabled: true, file: "/var/log/zentinel/access.log", format: "json", bufferSize: 8192 },
      errorLog: { enabled: true, file: "/var/log/zentinel/error.log", level: "warn", bufferSize: 8192 },
      auditLog: { enabled: true, file: "/var/log/zentinel/audit.log", bufferSize: 8192, wafEvents: true },
    });
    // the AND'ed double path is flagged
    expect(get("zentinel.kdl").diagnostics.map(formatDiagnostic)).toContain(
      `${join(EXAMPLES, "zentinel.kdl")}:177:9: warning: route 'health' matches: several different 'path' conditions are AND'ed, so this route can never match`,
    );
  });

  test("static-site.kdl: path-regex compiled once at load", () => {
    const m = routeOf("static-site.kdl", "immutable-assets").matches.find((x) => x.kind === "path-regex") as Extract<MatchCondition, { kind: "path-regex" }>;
    expect(m.regex.test("/assets/app.abcdef12.js")).toBe(true);
    expect(m.regex.test("/assets/app.js")).toBe(false);
  });

  test("shadow-traffic.kdl and http-caching.kdl: unbuilt features are located at their nodes", () => {
    const at = (f: string, msg: string) =>
      get(f)
        .diagnostics.filter((d) => d.message === msg)
        .map((d) => `${d.loc.line}:${d.loc.col}`);
    expect(at("shadow-traffic.kdl", "not supported yet: route shadow")[0]).toBe("107:9");
    expect(at("http-caching.kdl", "not supported yet: cache")).toEqual(["55:1"]);
    expect(routeOf("shadow-traffic.kdl", "api-with-shadow").upstream).toBe("production");
  });

  test("namespaces.kdl: global routes load; namespaces are not supported yet", () => {
    expect(routeOf("namespaces.kdl", "fallback")).toMatchObject({ priority: 10, builtinHandler: "not-found" });
  });

  test("group D: acme samples are rejected, naming the real problems", () => {
    const msgs = (f: string) =>
      get(f)
        .diagnostics.filter((d) => d.severity === "error")
        .map((d) => `${d.loc.line}:${d.loc.col}: ${d.message}`);
    for (const f of ["acme-cloudflare.kdl", "acme-zerossl.kdl", "acme-p384.kdl", "acme-san.kdl"]) expect(get(f).config).toBeUndefined();
    expect(msgs("acme-san.kdl")).toEqual(['18:29: KDL syntax error: bare "true" is not a valid value in KDL v2; write #true']);
    const cf = msgs("acme-cloudflare.kdl");
    expect(cf).toContain("1:1: Missing required 'system' configuration block, e.g. system { worker-threads 0 }");
    expect(cf).toContain('7:5: Listener \'https\' requires an \'address\' field (found property address="0.0.0.0:443"; write it as a child node: address "0.0.0.0:443")');
    expect(cf).toContain('44:9: Upstream \'backend\' requires at least one target, e.g. target "127.0.0.1:3000"');
    expect(cf).toContain("50:9: route 'default': unknown key 'match' (did you mean 'matches'?)");
    const zs = msgs("acme-zerossl.kdl");
    expect(zs).toContain("1:1: Missing required 'system' configuration block, e.g. system { worker-threads 0 }");
    expect(zs.some((m) => m.includes("Listener 'https' requires an 'address' field"))).toBe(true);
    expect(zs.some((m) => m.includes("Upstream 'backend' requires at least one target"))).toBe(true);
    const p = msgs("acme-p384.kdl");
    expect(p.some((m) => m.includes("Upstream 'backend' requires at least one target"))).toBe(true);
    expect(p.some((m) => m.includes("has a tls block but protocol is not set"))).toBe(true);
  });
});
