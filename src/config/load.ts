// Configuration loader: KDL file(s) → validated, typed `SentinelConfig` (see ./types.ts).
//
// Authority: ../shared/spec/config.md. Summary of the policy implemented here:
//  - Zentinel syntax plus our documented extensions load (§19).
//  - A construct we parse but have not built is an ERROR "not supported yet: <feature>" at the
//    node's location (§19 item 7); never silently ignored.
//  - Unknown keys anywhere are errors, with "did you mean" when a known key is close.
//  - All problems are collected (no stop at the first one), each with FILE:LINE:COL.
//  - Everything the hot path needs (RegExp, lower-cased names, ms/bytes) is computed here once.

import { parseCidr } from "../proxy/client-ip.ts";
import { matchForm, normalizeRoutePath } from "../routing/normalize.ts";
import { existsSync, readFileSync, realpathSync, statSync } from "node:fs";
import { dirname, extname, isAbsolute, resolve } from "node:path";
import { nodePos, parseKdl, type KdlNode, type KdlValue } from "./kdl.ts";
import { PEM_KINDS, keyMismatch, pemProblem } from "./pem.ts";
import type {
  AgentConfig,
  AgentEventName,
  AgentTransportConfig,
  BodyMode,
  ConfigDiagnostic,
  FailureMode,
  FilterConfig,
  HeaderOpConfig,
  LbPolicy,
  LimitsConfig,
  ListenerConfig,
  LoadResult,
  MatchCondition,
  ObservabilityConfig,
  RetryPolicyConfig,
  RouteConfig,
  SentinelConfig,
  SourceLoc,
  SystemConfig,
  TargetConfig,
  UpstreamConfig,
  UpstreamHealthCheckConfig,
} from "./types.ts";
import { MAX_AGENT_ENDPOINTS } from "./types.ts";

// ───────────────────────────── defaults ─────────────────────────────

export const SUPPORTED_SCHEMA_VERSION = "1.0";

export function defaultSystem(): SystemConfig {
  return {
    workerThreads: 0,
    maxConnections: 10000,
    gracefulShutdownTimeoutMs: 30_000,
    traceIdFormat: "tinyflake",
    autoReload: false,
    routeCacheSize: 1000,
    headerTimeoutMs: 10_000,
    idleTimeoutMs: 60_000,
  };
}

export function defaultLimits(): LimitsConfig {
  return { maxHeaderSize: 8192, maxHeaderCount: 100, maxBodySize: 10 * 1024 * 1024, maxUriLength: 8192 };
}

function defaultObservability(): ObservabilityConfig {
  // error-log is on by default (to stderr), the other logs are off unless configured (§12).
  return { logging: { level: "info", errorLog: { enabled: true, level: "warn" } } };
}

function defaultRetryPolicy(): RetryPolicyConfig {
  return { maxAttempts: 1, backoffBaseMs: 100, backoffMaxMs: 2000, retryableStatusCodes: [] };
}

// ───────────────────────────── diagnostics ─────────────────────────────

const LOCS = new WeakMap<KdlNode, SourceLoc>();

function locOf(n: KdlNode): SourceLoc {
  return LOCS.get(n) ?? { file: "<unknown>", ...nodePos(n) };
}

function fmtLoc(l: SourceLoc): string {
  return `${l.file}:${l.line}:${l.col}`;
}

type At = KdlNode | SourceLoc;
function toLoc(at: At): SourceLoc {
  return "file" in at && "line" in at && !("children" in at) ? (at as SourceLoc) : locOf(at as KdlNode);
}

class Diags {
  list: ConfigDiagnostic[] = [];
  error(at: At, message: string): void {
    this.list.push({ severity: "error", loc: toLoc(at), message });
  }
  warn(at: At, message: string): void {
    this.list.push({ severity: "warning", loc: toLoc(at), message });
  }
  /** A construct we recognise but have not built: always an error (spec §19 item 7). */
  unsupported(at: At, feature: string): void {
    this.error(at, `not supported yet: ${feature}`);
  }
  get errorCount(): number {
    let n = 0;
    for (const d of this.list) if (d.severity === "error") n++;
    return n;
  }
}

// ───────────────────────────── small utilities ─────────────────────────────

export function editDistance(a: string, b: string): number {
  if (a === b) return 0;
  const m = a.length;
  const n = b.length;
  let prev = new Array<number>(n + 1);
  let cur = new Array<number>(n + 1);
  for (let j = 0; j <= n; j++) prev[j] = j;
  for (let i = 1; i <= m; i++) {
    cur[0] = i;
    for (let j = 1; j <= n; j++) {
      const cost = a.charCodeAt(i - 1) === b.charCodeAt(j - 1) ? 0 : 1;
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + cost);
    }
    [prev, cur] = [cur, prev];
  }
  return prev[n]!;
}

/** " (did you mean 'x'?)" when a candidate is close enough, else "". */
export function suggest(name: string, candidates: Iterable<string>): string {
  const lname = name.toLowerCase();
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(lname, c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  if (best === undefined) return "";
  if (bestD > 2 && lname.length >= 4) {
    // "least-conn" → "least_connections": an abbreviation of a known name
    const norm = (x: string) => x.toLowerCase().replace(/-/g, "_");
    const pre = [...candidates].filter((c) => norm(c).startsWith(norm(name))).sort((x, y) => x.length - y.length)[0];
    if (pre) return ` (did you mean '${pre}'?)`;
  }
  const limit = Math.max(2, Math.floor(name.length / 3));
  if (bestD <= limit && bestD < name.length) return ` (did you mean '${best}'?)`;
  return "";
}

function describe(v: KdlValue | undefined): string {
  if (v === undefined) return "nothing";
  if (v === null) return "#null";
  if (typeof v === "boolean") return v ? "#true" : "#false";
  if (typeof v === "number") return Number.isInteger(v) ? `integer ${v}` : `number ${v}`;
  return `string ${JSON.stringify(v)}`;
}

const HEADER_NAME_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const HEADER_VALUE_BAD_RE = /[\r\n\0]/;

/** Parse "10MB", "1MiB", "512KB", "1024" (bytes). K/M/G/T units are binary (1 MB = 1 MiB = 2^20). */
export function parseSize(v: KdlValue): number | undefined {
  if (typeof v === "number") return Number.isInteger(v) && v >= 0 && v <= Number.MAX_SAFE_INTEGER ? v : undefined;
  if (typeof v !== "string") return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$/i.exec(v);
  if (!m) return undefined;
  if (m[3] && !m[2]) return undefined; // "10ib"
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase()]!;
  const n = Number(m[1]) * mult;
  // Beyond 2^53 bytes a size is no longer exact (and no limit at all in practice): refused.
  return Number.isFinite(n) && n <= Number.MAX_SAFE_INTEGER ? Math.round(n) : undefined;
}

interface HostPort {
  host: string;
  port: number;
}

/** HOST:PORT with HOST an IPv4 address, a [IPv6] address or (when allowed) a DNS name. */
export function parseHostPort(s: string, opts: { allowName: boolean; allowPortZero: boolean }): HostPort | undefined {
  let host: string;
  let portStr: string;
  if (s.startsWith("[")) {
    const end = s.indexOf("]");
    if (end < 0 || s[end + 1] !== ":") return undefined;
    host = s.slice(1, end);
    portStr = s.slice(end + 2);
    if (!/^[0-9a-fA-F:.]+$/.test(host) || !host.includes(":")) return undefined;
  } else {
    const i = s.lastIndexOf(":");
    if (i <= 0) return undefined;
    host = s.slice(0, i);
    portStr = s.slice(i + 1);
    if (host.includes(":")) return undefined; // bare IPv6 needs brackets
    const isV4 = /^\d{1,3}(\.\d{1,3}){3}$/.test(host);
    if (isV4) {
      if (host.split(".").some((o) => Number(o) > 255)) return undefined;
    } else {
      if (!opts.allowName) return undefined;
      if (!/^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$/.test(host)) {
        return undefined;
      }
    }
  }
  if (!/^\d{1,5}$/.test(portStr)) return undefined;
  const port = Number(portStr);
  if (port > 65535 || (port === 0 && !opts.allowPortZero)) return undefined;
  return { host, port };
}

// Rust `regex` → JS RegExp, translating only what is trivial (spec §6.1).
const POSIX_CLASSES: Record<string, string> = {
  alpha: "a-zA-Z",
  digit: "0-9",
  alnum: "a-zA-Z0-9",
  upper: "A-Z",
  lower: "a-z",
  space: "\\s",
  xdigit: "0-9a-fA-F",
  word: "\\w",
  punct: "!-\\/:-@\\[-`{-~",
  blank: " \\t",
};

export function compileRustRegex(src: string): { regex: RegExp } | { error: string } {
  let s = src;
  let flags = "";
  const lead = /^\(\?([a-zA-Z]+)\)/.exec(s);
  if (lead) {
    for (const f of lead[1]!) {
      if (f === "i" || f === "m" || f === "s") {
        if (!flags.includes(f)) flags += f;
      } else {
        return { error: `inline flag '${f}' is not supported (only i, m and s)` };
      }
    }
    s = s.slice(lead[0].length);
  }
  if (/\(\?<?[=!]/.test(s)) return { error: "look-around assertions are not part of Rust regex syntax" };
  if (/(^|[^\\])(\\\\)*\\[1-9]/.test(s)) return { error: "backreferences are not part of Rust regex syntax" };
  s = s.replace(/\(\?P<([A-Za-z_][A-Za-z0-9_]*)>/g, "(?<$1>");
  s = s.replace(/(^|[^\\])((?:\\\\)*)\\A/g, "$1$2^").replace(/(^|[^\\])((?:\\\\)*)\\z/g, "$1$2$");
  let bad: string | undefined;
  s = s.replace(/\[:(\^?)([a-z]+):\]/g, (all, neg: string, name: string) => {
    const cls = POSIX_CLASSES[name];
    if (!cls || neg) {
      bad = all;
      return all;
    }
    return cls;
  });
  if (bad) return { error: `POSIX class ${bad} is not supported` };
  if (/\\[pP]/.test(s)) flags += "u";
  try {
    return { regex: new RegExp(s, flags) };
  } catch (e) {
    return { error: (e as Error).message.replace(/^Invalid regular expression: /, "") };
  }
}

/**
 * Heuristic for catastrophic backtracking: a group that contains a quantifier and is itself
 * quantified, e.g. `(a+)+`, `(\\w*)*`, `(x|y+){2,}`.
 */
export function hasNestedQuantifier(src: string): boolean {
  const stack: boolean[] = []; // per open group: contains a quantifier?
  let inClass = false;
  for (let i = 0; i < src.length; i++) {
    const ch = src[i]!;
    if (ch === "\\") {
      i++;
      continue;
    }
    if (inClass) {
      if (ch === "]") inClass = false;
      continue;
    }
    if (ch === "[") inClass = true;
    else if (ch === "(") stack.push(false);
    else if (ch === ")") {
      const inner = stack.pop() ?? false;
      const next = src[i + 1];
      const quantified = next === "+" || next === "*" || (next === "{" && /^\{\d*,\d*\}|^\{\d{2,}\}/.test(src.slice(i + 1)));
      if (inner && quantified) return true;
      if (inner && stack.length) stack[stack.length - 1] = true;
    } else if ((ch === "+" || ch === "*" || ch === "{") && stack.length) {
      stack[stack.length - 1] = true;
    }
  }
  return false;
}

// ───────────────────────────── node reading helpers ─────────────────────────────

type Handler = (n: KdlNode) => void;

interface BlockOpts {
  /** Keys that may repeat (everything else is an error when repeated). */
  repeatable?: string[];
  /** alias → canonical key, for duplicate detection across spellings. */
  aliases?: Record<string, string>;
  /** Extra words for "did you mean" (e.g. documented spellings we reject). */
  extraNames?: string[];
}

class Reader {
  constructor(readonly d: Diags) {}

  noProps(n: KdlNode, where: string, allowed: string[] = []): void {
    for (const k of Object.keys(n.properties)) {
      if (!allowed.includes(k)) {
        this.d.error(n, `${where}: unknown property '${k}='${suggest(k, allowed)}`);
      }
    }
  }

  noChildren(n: KdlNode, where: string): void {
    if (n.children.length) this.d.error(n.children[0]!, `${where}: '${n.name}' does not take a children block`);
  }

  noArgs(n: KdlNode, where: string): void {
    if (n.values.length) this.d.error(n, `${where}: '${n.name}' takes no arguments, got ${describe(n.values[0])}`);
  }

  /** A `name { ... }` block node: no arguments, no properties. */
  blockNode(n: KdlNode, where: string): void {
    this.noArgs(n, where);
    this.noProps(n, where);
  }

  /** Exactly one positional value, no properties, no children. */
  one(n: KdlNode, where: string): KdlValue | undefined {
    this.noProps(n, where);
    this.noChildren(n, where);
    if (n.values.length === 0) {
      this.d.error(n, `${where}: '${n.name}' needs a value`);
      return undefined;
    }
    if (n.values.length > 1) {
      this.d.error(n, `${where}: '${n.name}' takes one value, got ${n.values.length}`);
    }
    return n.values[0];
  }

  str(n: KdlNode, where: string, opts: { nonEmpty?: boolean } = { nonEmpty: true }): string | undefined {
    const v = this.one(n, where);
    if (v === undefined) return undefined;
    if (typeof v !== "string") {
      this.d.error(n, `${where}: '${n.name}' expects a string, got ${describe(v)}`);
      return undefined;
    }
    if (opts.nonEmpty !== false && v.length === 0) {
      this.d.error(n, `${where}: '${n.name}' must not be empty`);
      return undefined;
    }
    return v;
  }

  int(n: KdlNode, where: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined {
    const v = this.one(n, where);
    if (v === undefined) return undefined;
    return this.checkInt(n, where, v, min, max);
  }

  checkInt(n: KdlNode, where: string, v: KdlValue, min: number, max: number, label = `'${n.name}'`): number | undefined {
    if (typeof v !== "number" || !Number.isInteger(v)) {
      this.d.error(n, `${where}: ${label} expects an integer, got ${describe(v)}`);
      return undefined;
    }
    if (v < min || v > max) {
      const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `between ${min} and ${max}`;
      this.d.error(n, `${where}: ${label} must be ${range}, got ${v}`);
      return undefined;
    }
    return v;
  }

  num(n: KdlNode, where: string, min: number, max: number): number | undefined {
    const v = this.one(n, where);
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      this.d.error(n, `${where}: '${n.name}' expects a number, got ${describe(v)}`);
      return undefined;
    }
    if (v < min || v > max) {
      this.d.error(n, `${where}: '${n.name}' must be between ${min} and ${max}, got ${v}`);
      return undefined;
    }
    return v;
  }

  bool(n: KdlNode, where: string): boolean | undefined {
    const v = this.one(n, where);
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") {
      const hint = v === "true" || v === "false" ? ` (write #${v})` : "";
      this.d.error(n, `${where}: '${n.name}' expects #true or #false, got ${describe(v)}${hint}`);
      return undefined;
    }
    return v;
  }

  /** A flag that may be written bare (`tls`) or with a boolean (`tls #true`). */
  flag(n: KdlNode, where: string): boolean | undefined {
    if (n.values.length === 0) {
      this.noProps(n, where);
      this.noChildren(n, where);
      return true;
    }
    return this.bool(n, where);
  }

  /** Duration in whole seconds → ms. `min` is in seconds. */
  secs(n: KdlNode, where: string, min = 1): number | undefined {
    const v = this.int(n, where, min);
    return v === undefined ? undefined : v * 1000;
  }

  ms(n: KdlNode, where: string, min = 1): number | undefined {
    return this.int(n, where, min);
  }

  size(n: KdlNode, where: string, min = 1): number | undefined {
    const v = this.one(n, where);
    if (v === undefined) return undefined;
    const b = parseSize(v);
    if (b === undefined) {
      this.d.error(n, `${where}: '${n.name}' expects a size such as 1048576, "512KB", "10MB" or "1GiB" (at most 8 PiB), got ${describe(v)}`);
      return undefined;
    }
    if (b < min) {
      this.d.error(n, `${where}: '${n.name}' must be at least ${min} bytes, got ${describe(v)}`);
      return undefined;
    }
    return b;
  }

  enumOf<T>(n: KdlNode, where: string, map: Record<string, T>, opts: { caseInsensitive?: boolean } = {}): T | undefined {
    const v = this.str(n, where);
    if (v === undefined) return undefined;
    const key = opts.caseInsensitive ? v.toLowerCase() : v;
    if (Object.hasOwn(map, key)) return map[key];
    this.d.error(n, `${where}: invalid ${n.name} ${JSON.stringify(v)}${suggest(v, Object.keys(map))}; valid values: ${Object.keys(map).join(", ")}`);
    return undefined;
  }

  /**
   * Dispatch the children of a block to handlers. Unknown keys are errors with a suggestion;
   * a key given twice is an error (Zentinel silently reads the first one; we refuse to guess).
   */
  block(parent: KdlNode, where: string, handlers: Record<string, Handler>, opts: BlockOpts = {}): void {
    const seen = new Map<string, KdlNode>();
    const names = [...Object.keys(handlers), ...(opts.extraNames ?? [])];
    for (const c of parent.children) {
      const h = Object.hasOwn(handlers, c.name) ? handlers[c.name] : undefined;
      if (!h) {
        this.d.error(c, `${where}: unknown key '${c.name}'${suggest(c.name, names)}`);
        continue;
      }
      if (!opts.repeatable?.includes(c.name)) {
        const key = opts.aliases?.[c.name] ?? c.name;
        const prev = seen.get(key);
        if (prev) {
          this.d.error(c, `${where}: '${c.name}' is set more than once (first at ${fmtLoc(locOf(prev))})`);
          continue;
        }
        seen.set(key, c);
      }
      h(c);
    }
  }

  /** The ID of `listener "id"` etc.: exactly one non-empty string argument. */
  id(n: KdlNode, kind: string, allowedProps: string[] = []): string | undefined {
    const cap = kind[0]!.toUpperCase() + kind.slice(1);
    const v = n.values[0];
    if (n.values.length === 0 || typeof v !== "string" || v.length === 0) {
      this.d.error(n, `${cap} requires an ID as its first argument, e.g. ${kind} "my-${kind}" { ... }`);
      return undefined;
    }
    if (n.values.length > 1) this.d.error(n, `${cap} '${v}': takes one ID argument, got ${n.values.length} arguments`);
    this.noProps(n, `${kind} '${v}'`, allowedProps);
    return v;
  }

  unsupportedHandler(feature: string): Handler {
    return (n) => this.d.unsupported(n, feature);
  }
}

// ───────────────────────────── file loading / includes ─────────────────────────────

interface LoadedFiles {
  nodes: KdlNode[];
  files: string[];
  /** Some file could not be read or parsed: whole-config checks would only add noise. */
  incomplete: boolean;
}

function annotate(nodes: KdlNode[], file: string): void {
  for (const n of nodes) {
    const p = nodePos(n);
    LOCS.set(n, { file, line: p.line, col: p.col });
    annotate(n.children, file);
  }
}

function globToMatches(pattern: string, baseDir: string): string[] {
  const abs = isAbsolute(pattern) ? pattern : resolve(baseDir, pattern);
  if (!/[*?[{]/.test(abs)) return existsSync(abs) && statSync(abs).isFile() ? [abs] : [];
  // Split into the literal directory prefix and the glob part.
  const parts = abs.split("/");
  const firstGlob = parts.findIndex((p) => /[*?[{]/.test(p));
  const root = parts.slice(0, firstGlob).join("/") || "/";
  const rest = parts.slice(firstGlob).join("/");
  if (!existsSync(root)) return [];
  const glob = new Bun.Glob(rest);
  const out: string[] = [];
  for (const rel of glob.scanSync({ cwd: root, onlyFiles: true, dot: false })) out.push(resolve(root, rel));
  return out.sort();
}

function loadFiles(mainPath: string, d: Diags, r: Reader): LoadedFiles {
  const out: LoadedFiles = { nodes: [], files: [], incomplete: false };
  const loaded = new Map<string, SourceLoc | undefined>(); // realpath → include site

  const loadOne = (file: string, stack: string[], site: KdlNode | undefined): void => {
    let real = file;
    try {
      real = realpathSync(file);
    } catch {
      /* reported below */
    }
    if (stack.includes(real)) {
      const chain = [...stack.slice(stack.indexOf(real)), real].join(" -> ");
      d.error(site!, `Circular include detected: ${chain}`);
      return;
    }
    if (loaded.has(real)) {
      const first = loaded.get(real);
      d.warn(site ?? { file, line: 1, col: 1 }, `'${file}' is already included${first ? ` (at ${fmtLoc(first)})` : ""}; skipped`);
      return;
    }
    loaded.set(real, site ? locOf(site) : undefined);
    const at: At = site ?? { file, line: 1, col: 1 };
    const ext = extname(file).toLowerCase();
    if (ext === ".json" || ext === ".toml") {
      d.unsupported(at, `${ext.slice(1).toUpperCase()} config files (use KDL)`);
      return;
    }
    if (ext !== ".kdl" && ext !== "") {
      d.error(at, `unsupported config file extension '${ext}' for '${file}': expected .kdl`);
      return;
    }
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      d.error(at, `cannot read config file '${file}': ${code === "ENOENT" ? "no such file" : (e as Error).message}`);
      out.incomplete = true;
      return;
    }
    out.files.push(file);
    const parsed = parseKdl(text);
    if (parsed.errors.length || !parsed.nodes) {
      for (const e of parsed.errors) d.error({ file, line: e.line, col: e.col }, e.message);
      out.incomplete = true;
      return;
    }
    annotate(parsed.nodes, file);
    for (const n of parsed.nodes) {
      if (n.name !== "include") {
        out.nodes.push(n);
        continue;
      }
      r.noChildren(n, "include");
      r.noProps(n, "include");
      if (n.values.length === 0) {
        d.error(n, "include: expects a file path or glob pattern, e.g. include \"conf.d/*.kdl\"");
        continue;
      }
      for (const v of n.values) {
        if (typeof v !== "string" || !v) {
          d.error(n, `include: expects a file path or glob pattern (string), got ${describe(v)}`);
          continue;
        }
        const matches = globToMatches(v, dirname(file));
        if (matches.length === 0) {
          d.warn(n, `include pattern ${JSON.stringify(v)} matched no files`);
          continue;
        }
        for (const m of matches) loadOne(m, [...stack, real], n);
      }
    }
  };

  loadOne(mainPath, [], undefined);
  return out;
}

// ───────────────────────────── the converter ─────────────────────────────

const TOP_LEVEL = [
  "schema-version",
  "version",
  "include",
  "system",
  "server",
  "listeners",
  "routes",
  "upstreams",
  "filters",
  "agents",
  "limits",
  "observability",
  "waf",
  "cache",
  "rate-limits",
  "namespace",
];

const FAILURE_MODES: Record<string, FailureMode> = {
  open: "open",
  "fail-open": "open",
  fail_open: "open",
  closed: "closed",
  "fail-closed": "closed",
  fail_closed: "closed",
};

const PRIORITY_NAMES: Record<string, number> = { low: 10, normal: 50, high: 100, critical: 1000 };

const BUILTIN_HANDLERS: Record<string, NonNullable<RouteConfig["builtinHandler"]>> = {
  status: "status",
  health: "health",
  metrics: "metrics",
  "not-found": "not-found",
  not_found: "not-found",
  config: "config",
  upstreams: "upstreams",
};

const LB_CORE: Record<string, LbPolicy> = {
  round_robin: "round_robin",
  roundrobin: "round_robin",
  weighted: "weighted",
  weighted_round_robin: "weighted",
  least_connections: "least_connections",
  leastconnections: "least_connections",
  random: "random",
  ip_hash: "ip_hash",
  iphash: "ip_hash",
  consistent_hash: "consistent_hash",
  consistenthash: "consistent_hash",
};

const LB_EXT = [
  "power_of_two_choices",
  "p2c",
  "adaptive",
  "least_tokens_queued",
  "leasttokensqueued",
  "least_tokens",
  "maglev",
  "locality_aware",
  "localityaware",
  "locality",
  "peak_ewma",
  "peakewma",
  "ewma",
  "deterministic_subset",
  "subset",
  "subsetting",
  "weighted_least_connections",
  "weighted_least_conn",
  "wlc",
  "sticky",
  "sticky_session",
  "stickysession",
];

const AGENT_EVENTS: Record<string, AgentEventName> = {
  request_headers: "request_headers",
  request_body: "request_body",
  response_headers: "response_headers",
  response_body: "response_body",
  request_complete: "request_complete",
  log: "request_complete",
  websocket_frame: "websocket_frame",
  web_socket_frame: "websocket_frame",
  guardrail: "guardrail",
};

const FILTER_TYPES_CORE = ["agent", "headers", "timeout"];
const FILTER_TYPES_EXT = ["rate-limit", "compress", "cors", "log", "geo", "redirect", "url-rewrite"];

/** `healthy-threshold` / `unhealthy-threshold`, shared by upstream and agent health checks. */
function thresholdKeys(r: Reader, where: string, hc: { healthyThreshold: number; unhealthyThreshold: number }) {
  return {
    "healthy-threshold": (c: KdlNode) => {
      const v = r.int(c, where, 1, 1000);
      if (v !== undefined) hc.healthyThreshold = v;
    },
    "unhealthy-threshold": (c: KdlNode) => {
      const v = r.int(c, where, 1, 1000);
      if (v !== undefined) hc.unhealthyThreshold = v;
    },
  };
}

class Converter {
  readonly d: Diags;
  readonly r: Reader;
  readonly cfg: SentinelConfig;
  private listenerNodes = new Map<string, KdlNode>();
  private routeNodes = new Map<string, KdlNode>();
  private upstreamNodes = new Map<string, KdlNode>();
  private filterNodes = new Map<string, KdlNode>();
  private agentNodes = new Map<string, KdlNode>();
  /** Filter-level settings that can only be checked once agents are known. */
  private agentFilterChecks: Array<{ filter: KdlNode; agent: string; timeoutNode?: KdlNode; timeoutMs?: number; inspectBody?: KdlNode }> = [];
  private metricsNode: KdlNode | undefined;

  constructor(d: Diags, file: string, files: string[]) {
    this.d = d;
    this.r = new Reader(d);
    this.cfg = {
      file,
      files,
      schemaVersion: SUPPORTED_SCHEMA_VERSION,
      system: defaultSystem(),
      listeners: [],
      routes: [],
      upstreams: new Map(),
      filters: new Map(),
      agents: new Map(),
      limits: defaultLimits(),
      observability: defaultObservability(),
    };
  }

  run(nodes: KdlNode[], mainFile: string, incomplete: boolean): void {
    const single = new Map<string, KdlNode>(); // last-wins blocks
    let sawSystem = false;
    let sawListeners = false;
    let schemaNode: KdlNode | undefined;

    for (const n of nodes) {
      switch (n.name) {
        case "schema-version":
        case "version":
          if (schemaNode) this.d.warn(n, `schema version set again (first at ${fmtLoc(locOf(schemaNode))}); the last one applies`);
          schemaNode = n;
          break;
        case "system":
        case "server": {
          if (n.name === "server") this.d.warn(n, "'server' is a deprecated alias of 'system'; rename it to 'system'");
          const prev = single.get("system");
          if (prev) this.d.warn(n, `'${n.name}' block overrides the one at ${fmtLoc(locOf(prev))} (last one wins)`);
          single.set("system", n);
          sawSystem = true;
          break;
        }
        case "limits":
        case "observability": {
          const prev = single.get(n.name);
          if (prev) this.d.warn(n, `'${n.name}' block overrides the one at ${fmtLoc(locOf(prev))} (last one wins; settings are not merged)`);
          single.set(n.name, n);
          break;
        }
        case "listeners":
          sawListeners = true;
          this.r.blockNode(n, "listeners");
          this.r.block(n, "listeners", { listener: (c) => this.listener(c) }, { repeatable: ["listener"] });
          break;
        case "routes":
          this.r.blockNode(n, "routes");
          this.r.block(n, "routes", { route: (c) => this.route(c) }, { repeatable: ["route"] });
          break;
        case "upstreams":
          this.r.blockNode(n, "upstreams");
          this.r.block(n, "upstreams", { upstream: (c) => this.upstream(c) }, { repeatable: ["upstream"] });
          break;
        case "filters":
          this.r.blockNode(n, "filters");
          this.r.block(n, "filters", { filter: (c) => this.filter(c) }, { repeatable: ["filter"] });
          break;
        case "agents":
          this.r.blockNode(n, "agents");
          this.r.block(n, "agents", { agent: (c) => this.agent(c) }, { repeatable: ["agent"] });
          break;
        case "waf":
          this.waf(n);
          break;
        case "cache":
          this.d.unsupported(n, "cache");
          break;
        case "rate-limits":
          this.d.unsupported(n, "rate-limits");
          break;
        case "namespace":
          this.d.unsupported(n, "namespace");
          break;
        default:
          this.d.error(
            n,
            `Unknown top-level configuration block: '${n.name}'${suggest(n.name, TOP_LEVEL)}. Valid blocks: ${TOP_LEVEL.join(", ")}`,
          );
      }
    }

    if (schemaNode) this.schemaVersion(schemaNode);
    const sys = single.get("system");
    if (sys) this.system(sys);
    const lim = single.get("limits");
    if (lim) this.limits(lim);
    const obs = single.get("observability");
    if (obs) this.observability(obs);

    if (incomplete) return; // a file failed to load: missing blocks/references would be noise
    const top: SourceLoc = { file: mainFile, line: 1, col: 1 };
    if (!sawSystem) {
      this.d.error(top, "Missing required 'system' configuration block, e.g. system { worker-threads 0 }");
    }
    if (!sawListeners) {
      this.d.error(top, 'Missing required \'listeners\' configuration block, e.g. listeners { listener "http" { address "0.0.0.0:8080" } }');
    } else if (this.listenerNodes.size === 0 && this.cfg.listeners.length === 0) {
      this.d.error(top, "'listeners' must define at least one listener");
    }

    this.crossValidate();
  }

  // ── schema-version ──
  private schemaVersion(n: KdlNode): void {
    const v = this.r.one(n, n.name);
    if (v === undefined) return;
    let s: string;
    if (typeof v === "number") s = Number.isInteger(v) ? `${v}.0` : String(v);
    else if (typeof v === "string") s = v;
    else {
      this.d.error(n, `${n.name}: expected a version string such as "1.0", got ${describe(v)}`);
      return;
    }
    const m = /^(\d+)\.(\d+)$/.exec(s);
    if (!m) {
      this.d.error(n, `${n.name}: invalid schema version ${JSON.stringify(s)}; expected "major.minor", e.g. "1.0"`);
      return;
    }
    const [maj, min] = [Number(m[1]), Number(m[2])];
    if (maj < 1) {
      this.d.error(n, `${n.name}: schema version ${s} is older than the oldest supported version ${SUPPORTED_SCHEMA_VERSION}`);
      return;
    }
    if (maj > 1 || min > 0) {
      this.d.warn(n, `${n.name}: schema version ${s} is newer than supported (${SUPPORTED_SCHEMA_VERSION}); unknown settings will be reported`);
    }
    this.cfg.schemaVersion = s;
  }

  // ── system ──
  private system(n: KdlNode): void {
    const w = "system";
    const s = this.cfg.system;
    const r = this.r;
    r.blockNode(n, w);
    r.block(
      n,
      w,
      {
        "worker-threads": (c) => {
          const v = r.int(c, w, 0, 1024);
          if (v !== undefined) s.workerThreads = v;
        },
        workers: (c) => {
          const v = r.int(c, w, 0, 1024);
          if (v !== undefined) s.workerThreads = v;
          this.d.warn(c, "system: 'workers' is not a Zentinel key; read as 'worker-threads' (rename it)");
        },
        "max-connections": (c) => {
          const v = r.int(c, w, 1);
          if (v === undefined) return;
          s.maxConnections = v;
          this.d.warn(
            c,
            "system: max-connections has no effect: no connection limit is enforced (Bun.serve has no accept hook); bound agent load with each agent's max-concurrent-calls and connections with OS limits (ulimit -n, firewall)",
          );
        },
        "graceful-shutdown-timeout-secs": (c) => {
          const v = r.secs(c, w, 0);
          if (v !== undefined) s.gracefulShutdownTimeoutMs = v;
        },
        daemon: (c) => {
          const v = r.bool(c, w);
          if (v === true) this.d.unsupported(c, "system daemon #true (run under a process supervisor)");
        },
        "pid-file": (c) => {
          const v = r.str(c, w);
          if (v !== undefined) s.pidFile = v;
        },
        user: r.unsupportedHandler("system user"),
        group: r.unsupportedHandler("system group"),
        "working-directory": r.unsupportedHandler("system working-directory"),
        "trace-id-format": (c) => {
          const v = r.enumOf(c, w, { tinyflake: "tinyflake", uuid: "uuid", uuid4: "uuid", uuidv4: "uuid" } as const, {
            caseInsensitive: true,
          });
          if (v !== undefined) s.traceIdFormat = v;
        },
        "auto-reload": (c) => {
          const v = r.bool(c, w);
          if (v !== undefined) s.autoReload = v;
        },
        "route-cache-size": (c) => {
          const v = r.one(c, w);
          if (v === undefined) return;
          if (v === 0) {
            this.d.error(c, "system: route-cache-size must be > 0");
            return;
          }
          const i = r.checkInt(c, w, v, 1, Number.MAX_SAFE_INTEGER);
          if (i === undefined) return;
          s.routeCacheSize = i;
          this.d.warn(c, "system: route-cache-size has no effect: routes are compiled once at load and matched without a cache");
        },
        "header-timeout-secs": (c) => {
          const v = r.secs(c, w, 1);
          if (v === undefined) return;
          s.headerTimeoutMs = v;
          this.d.warn(
            c,
            "system: header-timeout-secs has no effect: Bun closes a connection whose request head is incomplete after its own fixed 10 s, which this value can neither shorten nor lengthen",
          );
        },
        "idle-timeout-secs": (c) => {
          const v = r.secs(c, w, 1);
          if (v !== undefined) s.idleTimeoutMs = v;
        },
      },
      { aliases: { workers: "worker-threads" } },
    );
  }

  /** The node's id, recorded in `seen`; undefined (error reported) when missing, invalid or used already. */
  private uniqueId(n: KdlNode, kind: string, seen: Map<string, KdlNode>, allowedProps?: string[]): string | undefined {
    const id = this.r.id(n, kind, allowedProps);
    if (id === undefined) return undefined;
    const prev = seen.get(id);
    if (prev) {
      this.d.error(n, `Duplicate ${kind} ID '${id}' found (first defined at ${fmtLoc(locOf(prev))}); ${kind} IDs must be unique across all config files`);
      return undefined;
    }
    seen.set(id, n);
    return id;
  }

  // ── listeners ──
  private listener(n: KdlNode): void {
    const id = this.uniqueId(n, "listener", this.listenerNodes, ["address"]);
    if (id === undefined) return;
    const w = `listener '${id}'`;
    const r = this.r;
    let address: string | undefined;
    let hp: HostPort | undefined;
    let protocol = "http" as "http" | "https";
    let protocolNode: KdlNode | undefined;
    let tlsNode: KdlNode | undefined;
    const out: Partial<ListenerConfig> = { requestTimeoutMs: 60_000, keepaliveTimeoutMs: 75_000 };
    r.block(n, w, {
      address: (c) => {
        const v = r.str(c, w);
        if (v === undefined) return;
        const p = parseHostPort(v, { allowName: false, allowPortZero: true });
        if (!p) {
          const hint = /^localhost:/i.test(v) ? " (use 127.0.0.1 instead of localhost)" : "";
          this.d.error(c, `${w}: invalid address ${JSON.stringify(v)}; expected IP:PORT such as "0.0.0.0:8080" or "[::1]:8080"${hint}`);
          return;
        }
        address = v;
        hp = p;
      },
      protocol: (c) => {
        protocolNode = c;
        const v = r.str(c, w);
        if (v === undefined) return;
        const p = v.toLowerCase();
        if (p === "http" || p === "https") protocol = p;
        else if (p === "h2" || p === "h3") this.d.unsupported(c, `listener protocol "${p}"`);
        else this.d.error(c, `Invalid protocol '${v}' for listener '${id}'. Valid protocols: http, https, h2, h3`);
      },
      "request-timeout-secs": (c) => {
        const v = r.secs(c, w, 1);
        if (v !== undefined) out.requestTimeoutMs = v;
      },
      "keepalive-timeout-secs": (c) => {
        const v = r.secs(c, w, 1);
        if (v !== undefined) out.keepaliveTimeoutMs = v;
      },
      "keepalive-max-requests": r.unsupportedHandler("listener keepalive-max-requests"),
      "max-concurrent-streams": (c) => {
        const v = r.int(c, w, 1);
        if (v !== undefined) this.d.warn(c, `${w}: max-concurrent-streams has no effect (HTTP/2 is not served); ignored`);
      },
      "default-route": (c) => {
        const v = r.str(c, w);
        if (v !== undefined) out.defaultRoute = v;
      },
      // Extension (not in Zentinel): addresses whose X-Forwarded-For is believed (src/proxy/client-ip.ts).
      "trusted-proxies": (c) => {
        r.noProps(c, w);
        r.noChildren(c, w);
        if (c.values.length === 0) this.d.error(c, `${w}: 'trusted-proxies' needs at least one address or CIDR, e.g. trusted-proxies "10.0.0.0/8" "::1"`);
        const list: string[] = [];
        for (const v of c.values) {
          if (typeof v !== "string" || parseCidr(v) === null) {
            this.d.error(c, `${w}: trusted-proxies: ${JSON.stringify(v)} is not an IP address or CIDR such as "10.0.0.0/8", "192.0.2.7" or "fd00::/8"`);
            continue;
          }
          list.push(v);
        }
        out.trustedProxies = list;
      },
      namespace: r.unsupportedHandler("listener namespace"),
      tls: (c) => {
        tlsNode = c;
      },
    });
    const prop = n.properties["address"];
    if (prop !== undefined && n.children.some((c) => c.name === "address")) {
      this.d.error(n, `${w}: address given both as property and as child node; use the child node`);
    } else if (address === undefined && !n.children.some((c) => c.name === "address")) {
      const hint = prop !== undefined ? ` (found property address=${JSON.stringify(prop)}; write it as a child node: address ${JSON.stringify(prop)})` : "";
      this.d.error(n, `Listener '${id}' requires an 'address' field${hint}`);
    }
    if (tlsNode) {
      if (protocol !== "https") {
        this.d.error(
          tlsNode,
          `${w}: has a tls block but protocol is ${protocolNode ? `"${protocol}"` : "not set (defaults to \"http\")"}; set protocol "https" or the port serves plain HTTP`,
        );
      }
      out.tls = this.listenerTls(tlsNode, w);
    } else if (protocol === "https") {
      this.d.error(protocolNode ?? n, `${w}: protocol "https" requires a tls block with cert-file and key-file`);
    }
    if (address && hp) {
      this.cfg.listeners.push({
        id,
        address,
        host: hp.host,
        port: hp.port,
        protocol,
        requestTimeoutMs: out.requestTimeoutMs!,
        keepaliveTimeoutMs: out.keepaliveTimeoutMs!,
        defaultRoute: out.defaultRoute,
        trustedProxies: out.trustedProxies,
        tls: protocol === "https" ? out.tls : undefined,
        loc: locOf(n),
      });
    }
  }

  private checkFile(c: KdlNode, where: string, path: string, what: string): void {
    if (!existsSync(path)) this.d.error(c, `${where}: ${what} '${path}' does not exist`);
    else if (!statSync(path).isFile()) this.d.error(c, `${where}: ${what} '${path}' is not a file`);
    else {
      // Certificates and keys are parsed now, so that validate names a bad file (the TLS stack
      // at start-up only says it could not create the server).
      const kind = PEM_KINDS[what];
      const problem = kind === undefined ? null : pemProblem(readFileSync(path, "utf8"), kind);
      if (problem !== null) this.d.error(c, `${where}: ${what} '${path}': ${problem}`);
    }
  }

  private resolvePath(c: KdlNode, p: string): string {
    return isAbsolute(p) ? p : resolve(dirname(locOf(c).file), p);
  }

  private listenerTls(n: KdlNode, lw: string): ListenerConfig["tls"] {
    const w = `${lw} tls`;
    const r = this.r;
    r.blockNode(n, w);
    let certFile: string | undefined;
    let keyFile: string | undefined;
    let caFile: string | undefined;
    let caNode: KdlNode | undefined;
    let clientAuth = false;
    let clientAuthNode: KdlNode | undefined;
    let hasAcme = false;
    const file = (set: (p: string) => void, what: string) => (c: KdlNode) => {
      const v = r.str(c, w);
      if (v === undefined) return;
      const p = this.resolvePath(c, v);
      this.checkFile(c, w, p, what);
      set(p);
    };
    r.block(
      n,
      w,
      {
        "cert-file": file((p) => (certFile = p), "cert-file"),
        "key-file": file((p) => (keyFile = p), "key-file"),
        "ca-file": (c) => {
          caNode = c;
          file((p) => (caFile = p), "ca-file")(c);
        },
        "client-auth": (c) => {
          clientAuthNode = c;
          clientAuth = r.bool(c, w) === true;
        },
        "min-version": (c) => {
          const v = r.str(c, w);
          if (v === undefined) return;
          const k = v.toLowerCase().replace(/^tlsv?/, "");
          if (k === "1.2") return; // our floor already is TLS 1.2
          if (k === "1.3") this.d.unsupported(c, 'listener tls min-version "1.3"');
          else this.d.error(c, `${w}: invalid min-version ${JSON.stringify(v)}; valid values: "1.2", "1.3"`);
        },
        "max-version": (c) => {
          const v = r.str(c, w);
          if (v === undefined) return;
          const k = v.toLowerCase().replace(/^tlsv?/, "");
          if (k === "1.3") return; // the highest version anyway
          if (k === "1.2") this.d.unsupported(c, 'listener tls max-version "1.2"');
          else this.d.error(c, `${w}: invalid max-version ${JSON.stringify(v)}; valid values: "1.2", "1.3"`);
        },
        "cipher-suite": r.unsupportedHandler("listener tls cipher-suite"),
        "cipher-suites": r.unsupportedHandler("listener tls cipher-suites"),
        "ocsp-stapling": (c) => {
          if (r.bool(c, w) === true) this.d.warn(c, `${w}: ocsp-stapling is not implemented; certificates are served without a stapled OCSP response`);
        },
        "session-resumption": (c) => {
          r.bool(c, w);
        },
        sni: r.unsupportedHandler("listener tls sni"),
        acme: (c) => {
          hasAcme = true;
          this.d.unsupported(c, "listener tls acme");
        },
      },
      { repeatable: ["cipher-suite", "sni"] },
    );
    if (!hasAcme && (certFile === undefined || keyFile === undefined)) {
      const missing = [certFile === undefined ? "cert-file" : "", keyFile === undefined ? "key-file" : ""].filter(Boolean).join(" and ");
      this.d.error(n, `${w}: requires either 'cert-file' and 'key-file', or an 'acme' block (missing ${missing})`);
      return undefined;
    }
    if (clientAuth && caFile === undefined && clientAuthNode !== undefined) {
      this.d.error(clientAuthNode, `${w}: client-auth #true needs ca-file, the CA bundle that client certificates must chain to`);
    } else if (!clientAuth && caNode !== undefined) {
      this.d.warn(caNode, `${w}: ca-file has no effect without client-auth #true (no client certificate is requested)`);
    }
    if (certFile === undefined || keyFile === undefined) return undefined;
    if (existsSync(certFile) && existsSync(keyFile) && statSync(certFile).isFile() && statSync(keyFile).isFile()) {
      const mismatch = keyMismatch(readFileSync(certFile, "utf8"), readFileSync(keyFile, "utf8"));
      if (mismatch !== null) this.d.error(n, `${w}: key-file '${keyFile}' and cert-file '${certFile}' do not match: ${mismatch}`);
    }
    if (clientAuth && caFile !== undefined) return { certFile, keyFile, caFile, clientAuth: true };
    return caFile ? { certFile, keyFile, caFile } : { certFile, keyFile };
  }

  // ── routes ──
  private route(n: KdlNode): void {
    const id = this.uniqueId(n, "route", this.routeNodes);
    if (id === undefined) return;
    const w = `route '${id}'`;
    const r = this.r;
    const route: RouteConfig = {
      id,
      priority: 50,
      matches: [],
      filters: [],
      requestHeaderOps: [],
      responseHeaderOps: [],
      retryPolicy: defaultRetryPolicy(),
      websocket: false,
      loc: locOf(n),
    };
    let upstreamNode: KdlNode | undefined;
    let builtinNode: KdlNode | undefined;
    r.block(n, w, {
      priority: (c) => {
        const v = r.one(c, w);
        if (v === undefined) return;
        if (typeof v === "string") {
          const p = PRIORITY_NAMES[v.toLowerCase()];
          if (p === undefined) {
            this.d.error(c, `${w}: invalid priority ${JSON.stringify(v)}${suggest(v, Object.keys(PRIORITY_NAMES))}; use an integer or low, normal, high, critical`);
          } else route.priority = p;
        } else {
          const p = r.checkInt(c, w, v, -1_000_000, 1_000_000);
          if (p !== undefined) route.priority = p;
        }
      },
      matches: (c) => this.matches(c, w, route),
      upstream: (c) => {
        upstreamNode = c;
        const v = r.str(c, w);
        if (v !== undefined) route.upstream = v;
      },
      filters: (c) => {
        r.noProps(c, w);
        r.noChildren(c, w);
        if (c.values.length === 0) this.d.error(c, `${w}: 'filters' needs at least one filter ID`);
        for (const v of c.values) {
          if (typeof v !== "string" || !v) this.d.error(c, `${w}: filters expects filter IDs (strings), got ${describe(v)}`);
          else if (route.filters.includes(v)) this.d.error(c, `${w}: filter '${v}' is listed twice`);
          else route.filters.push(v);
        }
      },
      policies: (c) => this.policies(c, w, route),
      "retry-policy": (c) => {
        route.retryPolicy = this.retryPolicy(c, w);
      },
      websocket: (c) => {
        if (c.values.length === 0 && c.children.length) {
          route.websocket = this.websocketBlock(c, w);
        } else {
          const v = r.bool(c, w);
          if (v !== undefined) route.websocket = v;
        }
      },
      "websocket-inspection": (c) => {
        if (r.bool(c, w) === true) this.d.unsupported(c, "route websocket-inspection");
      },
      "waf-enabled": (c) => {
        if (r.bool(c, w) === true) this.d.unsupported(c, "route waf-enabled (use an agent filter)");
      },
      "service-type": (c) => {
        // Informational: the service type is inferred from the route's other nodes, which report
        // their own "not supported yet" errors where needed.
        r.enumOf(c, w, { web: "web", api: "api", static: "static", builtin: "builtin", inference: "inference" });
      },
      "builtin-handler": (c) => {
        builtinNode = c;
        const v = r.str(c, w);
        if (v === undefined) return;
        const h = BUILTIN_HANDLERS[v];
        if (h) route.builtinHandler = h;
        else if (v === "cache-purge" || v === "cache-stats") this.d.unsupported(c, `builtin-handler "${v}"`);
        else {
          this.d.error(
            c,
            `${w}: unknown builtin-handler ${JSON.stringify(v)}${suggest(v, Object.keys(BUILTIN_HANDLERS))}; valid: status, health, metrics, not-found, config, upstreams`,
          );
        }
      },
      "circuit-breaker": r.unsupportedHandler("route circuit-breaker"),
      "static-files": r.unsupportedHandler("route static-files"),
      "api-schema": r.unsupportedHandler("route api-schema"),
      cache: r.unsupportedHandler("route cache"),
      shadow: r.unsupportedHandler("route shadow"),
      fallback: r.unsupportedHandler("route fallback"),
      inference: r.unsupportedHandler("route inference"),
      "error-pages": r.unsupportedHandler("route error-pages"),
    });
    if (upstreamNode && builtinNode && route.upstream && route.builtinHandler) {
      this.d.error(builtinNode, `${w}: has both 'upstream' and 'builtin-handler'; use one`);
    }
    this.cfg.routes.push(route);
  }

  /**
   * A route's path or path-prefix in the form requests are matched in (normalizeRoutePath): a
   * pattern no request can match is an error; one written in another form is rewritten, with a
   * warning that says so.
   */
  private routePath(c: KdlNode, mw: string, what: string, v: string): string | null {
    const n = normalizeRoutePath(v);
    if (!n.ok) {
      this.d.error(c, `${mw}: ${what} ${JSON.stringify(v)} can never match: ${n.reason} (requests are matched after normalisation, see SECURITY.md)`);
      return null;
    }
    const form = matchForm(n.path);
    if (form !== v) this.d.warn(c, `${mw}: ${what} ${JSON.stringify(v)} is matched as ${JSON.stringify(form)}, the normalised form of a request for it`);
    return form;
  }

  private matches(n: KdlNode, w: string, route: RouteConfig): void {
    const r = this.r;
    const mw = `${w} matches`;
    r.blockNode(n, mw);
    const nameValue = (c: KdlNode): { name?: string; value?: string } => {
      r.noChildren(c, mw);
      r.noProps(c, mw, ["name", "value"]);
      const vals: KdlValue[] = [...c.values];
      if (c.properties["name"] !== undefined) vals.unshift(c.properties["name"]);
      if (c.properties["value"] !== undefined) vals.push(c.properties["value"]);
      if (vals.length === 0 || vals.length > 2) {
        this.d.error(c, `${mw}: '${c.name}' expects a name and an optional value, e.g. ${c.name} "X-Name" "value"`);
        return {};
      }
      const [name, value] = vals;
      if (typeof name !== "string" || !name || (value !== undefined && typeof value !== "string")) {
        this.d.error(c, `${mw}: '${c.name}' expects strings, got ${vals.map(describe).join(", ")}`);
        return {};
      }
      return { name, value: value as string | undefined };
    };
    r.block(
      n,
      mw,
      {
        path: (c) => {
          const v = r.str(c, mw);
          if (v === undefined) return;
          if (!v.startsWith("/")) this.d.error(c, `${mw}: path ${JSON.stringify(v)} must start with '/'`);
          else {
            const p = this.routePath(c, mw, "path", v);
            if (p !== null) route.matches.push({ kind: "path", value: p });
          }
        },
        "path-prefix": (c) => {
          const v = r.str(c, mw);
          if (v === undefined) return;
          if (!v.startsWith("/")) this.d.error(c, `${mw}: path-prefix ${JSON.stringify(v)} must start with '/'`);
          else {
            const p = this.routePath(c, mw, "path-prefix", v);
            if (p !== null) route.matches.push({ kind: "path-prefix", value: p });
          }
        },
        "path-regex": (c) => {
          const v = r.str(c, mw);
          if (v === undefined) return;
          const res = compileRustRegex(v);
          if ("error" in res) this.d.error(c, `${mw}: invalid path-regex ${JSON.stringify(v)}: ${res.error}`);
          else {
            if (hasNestedQuantifier(v)) {
              this.d.warn(
                c,
                `${mw}: path-regex ${JSON.stringify(v)} nests quantifiers; JavaScript regexes backtrack (Rust's do not), so a crafted path can make matching very slow. Simplify the pattern`,
              );
            }
            route.matches.push({ kind: "path-regex", value: v, regex: res.regex });
          }
        },
        host: (c) => {
          const v = r.str(c, mw);
          if (v === undefined) return;
          if (/:\d+$/.test(v) && !v.includes("[")) {
            this.d.error(c, `${mw}: host ${JSON.stringify(v)} must not include a port (the port is stripped from the request host before matching)`);
            return;
          }
          route.matches.push({ kind: "host", value: v.toLowerCase() });
        },
        header: (c) => {
          const { name, value } = nameValue(c);
          if (name === undefined) return;
          if (!HEADER_NAME_RE.test(name)) {
            this.d.error(c, `${mw}: invalid header name ${JSON.stringify(name)}`);
            return;
          }
          route.matches.push(value === undefined ? { kind: "header", name: name.toLowerCase() } : { kind: "header", name: name.toLowerCase(), value });
        },
        method: (c) => {
          r.noChildren(c, mw);
          r.noProps(c, mw);
          if (c.values.length === 0) {
            this.d.error(c, `${mw}: 'method' needs at least one method, e.g. method "GET" "POST"`);
            return;
          }
          const values: string[] = [];
          for (const v of c.values) {
            if (typeof v !== "string" || !HEADER_NAME_RE.test(v)) {
              this.d.error(c, `${mw}: invalid method ${describe(v)}`);
              return;
            }
            const u = v.toUpperCase();
            if (!values.includes(u)) values.push(u);
          }
          route.matches.push({ kind: "method", values });
        },
        "query-param": (c) => {
          const { name, value } = nameValue(c);
          if (name === undefined) return;
          route.matches.push(value === undefined ? { kind: "query-param", name } : { kind: "query-param", name, value });
        },
      },
      { repeatable: ["path", "path-prefix", "path-regex", "host", "header", "method", "query-param"] },
    );
    // Several method nodes are AND'ed like every other condition: that can only match when they
    // share a method, which is almost certainly a mistake.
    const methods = route.matches.filter((m): m is Extract<MatchCondition, { kind: "method" }> => m.kind === "method");
    if (methods.length > 1) {
      this.d.warn(n, `${mw}: several 'method' nodes are AND'ed; list alternatives in one node instead: method "GET" "POST"`);
    }
    const prefixes = route.matches.filter((m) => m.kind === "path-prefix").map((m) => (m as { value: string }).value);
    for (let i = 0; i < prefixes.length; i++) {
      for (let j = i + 1; j < prefixes.length; j++) {
        const [a, b] = [prefixes[i]!, prefixes[j]!];
        if (!a.startsWith(b) && !b.startsWith(a)) {
          this.d.warn(n, `${mw}: path-prefix conditions are AND'ed; ${JSON.stringify(a)} and ${JSON.stringify(b)} can never both match (use separate routes)`);
        }
      }
    }
    const exact = route.matches.filter((m) => m.kind === "path").map((m) => (m as { value: string }).value);
    if (new Set(exact).size > 1) {
      this.d.warn(n, `${mw}: several different 'path' conditions are AND'ed, so this route can never match`);
    }
  }

  private headerOps(n: KdlNode, w: string): HeaderOpConfig[] {
    const r = this.r;
    const renames: HeaderOpConfig[] = [];
    const sets: HeaderOpConfig[] = [];
    const adds: HeaderOpConfig[] = [];
    const removes: HeaderOpConfig[] = [];
    const checkName = (c: KdlNode, name: string): boolean => {
      if (!HEADER_NAME_RE.test(name)) {
        this.d.error(c, `${w}: invalid header name ${JSON.stringify(name)}`);
        return false;
      }
      return true;
    };
    const pairs = (c: KdlNode, op: "set" | "add" | "rename", sink: HeaderOpConfig[]) => {
      r.blockNode(c, w);
      for (const h of c.children) {
        r.noProps(h, `${w} ${op}`);
        r.noChildren(h, `${w} ${op}`);
        if (h.values.length !== 1) {
          this.d.error(h, `${w} ${op}: '${h.name}' takes one value, got ${h.values.length}`);
          continue;
        }
        let v = h.values[0];
        if (typeof v === "number" || typeof v === "boolean") v = String(v);
        if (typeof v !== "string") {
          this.d.error(h, `${w} ${op}: '${h.name}' expects a string value, got ${describe(v)}`);
          continue;
        }
        if (!checkName(h, h.name)) continue;
        if (op === "rename") {
          if (!checkName(h, v)) continue;
          sink.push({ op, from: h.name.toLowerCase(), to: v.toLowerCase() });
        } else {
          if (HEADER_VALUE_BAD_RE.test(v)) {
            this.d.error(h, `${w} ${op}: value of '${h.name}' contains CR, LF or NUL`);
            continue;
          }
          sink.push({ op, name: h.name.toLowerCase(), value: v });
        }
      }
    };
    r.block(
      n,
      w,
      {
        rename: (c) => pairs(c, "rename", renames),
        set: (c) => pairs(c, "set", sets),
        add: (c) => pairs(c, "add", adds),
        remove: (c) => {
          r.noProps(c, w);
          r.noChildren(c, w);
          if (c.values.length === 0) this.d.error(c, `${w}: 'remove' needs at least one header name`);
          for (const v of c.values) {
            if (typeof v !== "string") this.d.error(c, `${w}: remove expects header names, got ${describe(v)}`);
            else if (checkName(c, v)) removes.push({ op: "remove", name: v.toLowerCase() });
          }
        },
      },
      { repeatable: ["rename", "set", "add", "remove"] },
    );
    // Applied as rename → set → add → remove, like Zentinel's header modification struct.
    return [...renames, ...sets, ...adds, ...removes];
  }

  private policies(n: KdlNode, w: string, route: RouteConfig): void {
    const r = this.r;
    const pw = `${w} policies`;
    r.blockNode(n, pw);
    r.block(n, pw, {
      "request-headers": (c) => {
        r.blockNode(c, pw);
        route.requestHeaderOps = this.headerOps(c, `${pw} request-headers`);
      },
      "response-headers": (c) => {
        r.blockNode(c, pw);
        route.responseHeaderOps = this.headerOps(c, `${pw} response-headers`);
      },
      "timeout-secs": (c) => {
        const v = r.secs(c, pw, 1);
        if (v !== undefined) route.timeoutMs = v;
      },
      "max-body-size": (c) => {
        const v = r.size(c, pw, 1);
        if (v !== undefined) route.maxBodySize = v;
      },
      "failure-mode": (c) => {
        const v = r.enumOf(c, pw, FAILURE_MODES);
        if (v !== undefined) route.failureMode = v;
      },
      "buffer-requests": (c) => {
        if (r.bool(c, pw) === true) this.d.unsupported(c, "route policies buffer-requests #true");
      },
      "buffer-responses": (c) => {
        if (r.bool(c, pw) === true) this.d.unsupported(c, "route policies buffer-responses #true");
      },
      "rate-limit": r.unsupportedHandler("route policies rate-limit"),
      cache: r.unsupportedHandler("route policies cache"),
      "rewrite-path": r.unsupportedHandler("route policies rewrite-path"),
    });
  }

  private retryPolicy(n: KdlNode, w: string): RetryPolicyConfig {
    const r = this.r;
    const rw = `${w} retry-policy`;
    r.blockNode(n, rw);
    // A retry-policy block without max-attempts means 3 attempts (Zentinel's default).
    const rp: RetryPolicyConfig = { maxAttempts: 3, backoffBaseMs: 100, backoffMaxMs: 2000, retryableStatusCodes: [] };
    let baseNode: KdlNode | undefined;
    r.block(n, rw, {
      "max-attempts": (c) => {
        const v = r.int(c, rw, 1, 100);
        if (v !== undefined) rp.maxAttempts = v;
      },
      "timeout-ms": (c) => {
        const v = r.ms(c, rw, 1);
        if (v !== undefined) rp.timeoutMs = v;
      },
      "backoff-base-ms": (c) => {
        baseNode = c;
        const v = r.ms(c, rw, 0);
        if (v !== undefined) rp.backoffBaseMs = v;
      },
      "backoff-max-ms": (c) => {
        const v = r.ms(c, rw, 0);
        if (v !== undefined) rp.backoffMaxMs = v;
      },
      "retryable-status-codes": (c) => {
        r.noProps(c, rw);
        r.noChildren(c, rw);
        if (c.values.length === 0) this.d.error(c, `${rw}: 'retryable-status-codes' needs at least one status code`);
        for (const v of c.values) {
          const code = r.checkInt(c, rw, v, 100, 599, "retryable-status-codes");
          if (code !== undefined && !rp.retryableStatusCodes.includes(code)) rp.retryableStatusCodes.push(code);
        }
      },
    });
    if (rp.backoffBaseMs > rp.backoffMaxMs) {
      this.d.error(baseNode ?? n, `${rw}: backoff-base-ms (${rp.backoffBaseMs}) is larger than backoff-max-ms (${rp.backoffMaxMs})`);
    }
    return rp;
  }

  private websocketBlock(n: KdlNode, w: string): boolean {
    const r = this.r;
    const ww = `${w} websocket`;
    r.noProps(n, ww);
    let enabled = false;
    let sawEnabled = false;
    r.block(n, ww, {
      enabled: (c) => {
        sawEnabled = true;
        enabled = r.bool(c, ww) ?? false;
      },
      "ping-interval-secs": r.unsupportedHandler("route websocket ping-interval-secs"),
      "ping-timeout-secs": r.unsupportedHandler("route websocket ping-timeout-secs"),
      "max-message-size-bytes": r.unsupportedHandler("route websocket max-message-size-bytes"),
      "max-connections-per-ip": r.unsupportedHandler("route websocket max-connections-per-ip"),
    });
    if (!sawEnabled) enabled = true; // `websocket { ... }` without `enabled` still means "on"
    return enabled;
  }

  // ── upstreams ──
  private upstream(n: KdlNode): void {
    const id = this.uniqueId(n, "upstream", this.upstreamNodes);
    if (id === undefined) return;
    const w = `upstream '${id}'`;
    const r = this.r;
    const up: UpstreamConfig = {
      id,
      targets: [],
      loadBalancing: "round_robin",
      passiveFailureThreshold: 5,
      passiveEjectMs: 30_000,
      connectTimeoutMs: 10_000,
      requestTimeoutMs: 60_000,
      readTimeoutMs: 30_000,
      writeTimeoutMs: 30_000,
      pool: { maxConnections: 0, maxIdle: 20, idleTimeoutMs: 60_000, maxLifetimeMs: 0 },
      loc: locOf(n),
    };
    let targetCount = 0;
    let serverNode: KdlNode | undefined;
    let writeNode: KdlNode | undefined;
    const addTarget = (c: KdlNode, addr: KdlValue | undefined, weight: KdlValue | undefined) => {
      targetCount++;
      const idx = targetCount;
      if (typeof addr !== "string" || !addr) {
        this.d.error(c, `Upstream '${id}' target #${idx} has no address; write target "HOST:PORT"`);
        return;
      }
      const hp = parseHostPort(addr, { allowName: true, allowPortZero: false });
      if (!hp) {
        this.d.error(c, `Upstream '${id}' target #${idx} has invalid address '${addr}': expected HOST:PORT (an IP or hostname and a port 1-65535)`);
        return;
      }
      let wgt = 1;
      if (weight !== undefined) {
        const wv = r.checkInt(c, w, weight, 1, 1_000_000, "weight");
        if (wv === undefined) return;
        wgt = wv;
      }
      up.targets.push({ address: addr, host: hp.host.toLowerCase(), port: hp.port, weight: wgt } satisfies TargetConfig);
    };
    const target = (c: KdlNode) => {
      const tw = `${w} target`;
      r.noProps(c, tw, ["address", "weight", "max-requests", "metadata"]);
      if (c.properties["max-requests"] !== undefined) this.d.unsupported(c, "upstream target max-requests");
      if (c.properties["metadata"] !== undefined) this.d.unsupported(c, "upstream target metadata");
      let addr: KdlValue | undefined = c.properties["address"];
      let weight: KdlValue | undefined = c.properties["weight"];
      if (c.values.length > 1) this.d.error(c, `${tw}: takes one address, got ${c.values.length} arguments`);
      if (c.values.length) {
        if (addr !== undefined) this.d.error(c, `${tw}: address given both as argument and as address= property`);
        addr = c.values[0];
      }
      if (c.children.length) {
        r.block(c, tw, {
          address: (cc) => {
            const v = r.str(cc, tw);
            if (addr !== undefined) this.d.error(cc, `${tw}: address is given twice`);
            addr = v ?? "";
          },
          weight: (cc) => {
            if (weight !== undefined) this.d.error(cc, `${tw}: weight is given twice`);
            weight = r.one(cc, tw) ?? 1;
          },
          "max-requests": r.unsupportedHandler("upstream target max-requests"),
          metadata: r.unsupportedHandler("upstream target metadata"),
        });
      }
      addTarget(c, addr, weight);
    };
    r.block(
      n,
      w,
      {
        target,
        targets: (c) => {
          r.blockNode(c, w);
          r.block(c, `${w} targets`, { target }, { repeatable: ["target"] });
        },
        address: (c) => {
          const v = r.str(c, w);
          if (v !== undefined) addTarget(c, v, undefined);
        },
        "load-balancing": (c) => {
          r.noProps(c, w);
          const v = c.values[0];
          if (c.values.length !== 1 || typeof v !== "string") {
            this.d.error(c, `${w}: 'load-balancing' expects one algorithm name, e.g. load-balancing "round_robin"`);
            return;
          }
          const key = v.toLowerCase().replace(/-/g, "_");
          const core = LB_CORE[key];
          if (core && !c.children.length) {
            up.loadBalancing = core;
          } else if (core) {
            r.noChildren(c, w);
          } else if (LB_EXT.includes(key)) {
            this.d.unsupported(c, `upstream load-balancing "${v}"`);
          } else {
            this.d.error(
              c,
              `${w}: unknown load-balancing algorithm ${JSON.stringify(v)}${suggest(key, [...Object.keys(LB_CORE), ...LB_EXT])}; supported: round_robin, weighted, least_connections, random, ip_hash, consistent_hash ('-' and '_' are interchangeable)`,
            );
          }
        },
        "health-check": (c) => {
          const hc = this.upstreamHealthCheck(c, w);
          if (hc) up.healthCheck = hc;
        },
        "connection-pool": (c) => {
          const pw = `${w} connection-pool`;
          r.blockNode(c, pw);
          r.block(
            c,
            pw,
            {
              "max-connections": (cc) => {
                const v = r.int(cc, pw, 1);
                // Per target: past it, requests wait for a free connection (src/upstreams/slots.ts).
                if (v !== undefined) up.pool.maxConnections = v;
              },
              "max-idle": (cc) => {
                const v = r.int(cc, pw, 0);
                if (v !== undefined) up.pool.maxIdle = v;
              },
              "idle-timeout": (cc) => {
                const v = r.secs(cc, pw, 1);
                if (v !== undefined) up.pool.idleTimeoutMs = v;
              },
              "idle-timeout-secs": (cc) => {
                const v = r.secs(cc, pw, 1);
                if (v !== undefined) up.pool.idleTimeoutMs = v;
              },
              "max-lifetime": (cc) => {
                const v = r.secs(cc, pw, 1);
                if (v !== undefined) up.pool.maxLifetimeMs = v;
              },
              "max-lifetime-secs": (cc) => {
                const v = r.secs(cc, pw, 1);
                if (v !== undefined) up.pool.maxLifetimeMs = v;
              },
            },
            { aliases: { "idle-timeout-secs": "idle-timeout", "max-lifetime-secs": "max-lifetime" } },
          );
        },
        timeouts: (c) => {
          const tw = `${w} timeouts`;
          r.blockNode(c, tw);
          const t = (set: (ms: number) => void) => (cc: KdlNode) => {
            const v = r.one(cc, tw);
            if (v === undefined) return;
            if (v === 0) {
              this.d.error(cc, `${tw}: '${cc.name}' must be > 0 (a zero timeout would fail every request)`);
              return;
            }
            const s = r.checkInt(cc, tw, v, 1, 86_400);
            if (s === undefined) return;
            set(s * 1000);
          };
          r.block(
            c,
            tw,
            {
              connect: t((ms) => (up.connectTimeoutMs = ms)),
              "connect-secs": t((ms) => (up.connectTimeoutMs = ms)),
              request: t((ms) => (up.requestTimeoutMs = ms)),
              "request-secs": t((ms) => (up.requestTimeoutMs = ms)),
              read: t((ms) => (up.readTimeoutMs = ms)),
              "read-secs": t((ms) => (up.readTimeoutMs = ms)),
              write: (cc) => {
                writeNode = cc;
                t((ms) => (up.writeTimeoutMs = ms))(cc);
              },
              "write-secs": (cc) => {
                writeNode = cc;
                t((ms) => (up.writeTimeoutMs = ms))(cc);
              },
            },
            { aliases: { "connect-secs": "connect", "request-secs": "request", "read-secs": "read", "write-secs": "write" } },
          );
        },
        tls: (c) => {
          up.tls = this.upstreamTls(c, w);
        },
        "circuit-breaker": (c) => {
          // Mapped onto passive ejection: N consecutive failures take a target out for timeout-seconds.
          const cw = `${w} circuit-breaker`;
          r.blockNode(c, cw);
          r.block(c, cw, {
            "failure-threshold": (cc) => {
              const v = r.int(cc, cw, 1);
              if (v !== undefined) up.passiveFailureThreshold = v;
            },
            "timeout-seconds": (cc) => {
              const v = r.secs(cc, cw, 1);
              if (v !== undefined) up.passiveEjectMs = v;
            },
            "success-threshold": r.unsupportedHandler("upstream circuit-breaker success-threshold"),
            "half-open-max-requests": r.unsupportedHandler("upstream circuit-breaker half-open-max-requests"),
          });
        },
        "http-version": r.unsupportedHandler("upstream http-version"),
        server: (c) => {
          serverNode = c;
          this.d.error(c, `${w}: 'server' is not a target; write target "HOST:PORT"`);
        },
      },
      { repeatable: ["target", "targets", "server"] },
    );
    if (targetCount === 0) {
      this.d.error(serverNode ?? n, `Upstream '${id}' requires at least one target, e.g. target "127.0.0.1:3000"`);
    }
    if (up.loadBalancing === "weighted" && up.targets.length && up.targets.every((t) => t.weight === 1)) {
      // harmless, but usually a sign that weights were forgotten
      this.d.warn(n, `${w}: load-balancing "weighted" but every target has weight 1`);
    }
    if (up.tls && writeNode) {
      // TLS targets go through fetch(), which shows no upstream write progress to time.
      this.d.warn(
        writeNode,
        `${w} timeouts: '${writeNode.name}' has no effect on a TLS upstream: the write timeout applies to plain-HTTP upstreams; here an upload that stalls is bounded by the request timeout`,
      );
    }
    this.cfg.upstreams.set(id, up);
  }

  private upstreamHealthCheck(n: KdlNode, w: string): UpstreamHealthCheckConfig | undefined {
    const r = this.r;
    const hw = `${w} health-check`;
    r.blockNode(n, hw);
    const hc: UpstreamHealthCheckConfig = {
      type: "tcp",
      path: "/health",
      expectedStatus: 200,
      intervalMs: 10_000,
      timeoutMs: 5_000,
      healthyThreshold: 2,
      unhealthyThreshold: 3,
    };
    let ok = true;
    r.block(n, hw, {
      type: (c) => {
        r.noProps(c, hw);
        const v = c.values[0];
        if (c.values.length !== 1 || typeof v !== "string") {
          this.d.error(c, `${hw}: 'type' expects one of "http", "tcp"`);
          ok = false;
          return;
        }
        if (v === "grpc" || v === "inference") {
          this.d.unsupported(c, `upstream health-check type "${v}"`);
          ok = false;
          return;
        }
        if (v !== "http" && v !== "tcp") {
          this.d.error(c, `${hw}: unknown type ${JSON.stringify(v)}${suggest(v, ["http", "tcp", "grpc", "inference"])}; valid: http, tcp`);
          ok = false;
          return;
        }
        hc.type = v;
        const tw = `${hw} type "${v}"`;
        if (v === "tcp") {
          r.noChildren(c, tw);
          return;
        }
        r.block(c, tw, {
          path: (cc) => {
            const p = r.str(cc, tw);
            if (p === undefined) return;
            if (!p.startsWith("/")) this.d.error(cc, `${tw}: path ${JSON.stringify(p)} must start with '/'`);
            else hc.path = p;
          },
          "expected-status": (cc) => {
            // Zentinel reads this as a string; accept the integer form too.
            const s = r.one(cc, tw);
            if (s === undefined) return;
            const num = typeof s === "string" && /^\d{3}$/.test(s) ? Number(s) : s;
            const code = r.checkInt(cc, tw, num, 100, 599, "expected-status");
            if (code !== undefined) hc.expectedStatus = code;
          },
          host: (cc) => {
            const h = r.str(cc, tw);
            if (h !== undefined) hc.host = h;
          },
        });
      },
      "interval-secs": (c) => {
        const v = r.secs(c, hw, 1);
        if (v !== undefined) hc.intervalMs = v;
      },
      "timeout-secs": (c) => {
        const v = r.secs(c, hw, 1);
        if (v !== undefined) hc.timeoutMs = v;
      },
      ...thresholdKeys(r, hw, hc),
    });
    return ok ? hc : undefined;
  }

  private upstreamTls(n: KdlNode, w: string): UpstreamConfig["tls"] {
    const r = this.r;
    const tw = `${w} tls`;
    r.blockNode(n, tw);
    const tls: NonNullable<UpstreamConfig["tls"]> = { insecureSkipVerify: false };
    const file = (set: (p: string) => void, what: string) => (c: KdlNode) => {
      const v = r.str(c, tw);
      if (v === undefined) return;
      const p = this.resolvePath(c, v);
      this.checkFile(c, tw, p, what);
      set(p);
    };
    let skipNode: KdlNode | undefined;
    let verifyNode: KdlNode | undefined;
    r.block(n, tw, {
      sni: (c) => {
        const v = r.str(c, tw);
        if (v !== undefined) tls.sni = v;
      },
      "ca-cert": file((p) => (tls.caCert = p), "ca-cert"),
      "client-cert": file((p) => (tls.clientCert = p), "client-cert"),
      "client-key": file((p) => (tls.clientKey = p), "client-key"),
      "insecure-skip-verify": (c) => {
        skipNode = c;
        const v = r.bool(c, tw);
        if (v !== undefined) tls.insecureSkipVerify = v;
        if (v) this.d.warn(c, `${tw}: insecure-skip-verify #true disables certificate verification for this upstream`);
      },
      verify: (c) => {
        // Not a Zentinel key (it ignores it and verifies). Accept the safe value only.
        verifyNode = c;
        const v = r.bool(c, tw);
        if (v === true) this.d.warn(c, `${tw}: 'verify' is not a Zentinel key; verification is on by default (remove it)`);
        else if (v === false) this.d.error(c, `${tw}: 'verify #false' is not supported; use insecure-skip-verify #true to disable verification explicitly`);
      },
    });
    if (skipNode && verifyNode && tls.insecureSkipVerify) {
      this.d.error(verifyNode, `${tw}: 'verify' contradicts insecure-skip-verify #true`);
    }
    if ((tls.clientCert === undefined) !== (tls.clientKey === undefined)) {
      this.d.error(n, `${tw}: client-cert and client-key must be given together`);
    }
    return tls;
  }

  // ── filters ──
  private filter(n: KdlNode): void {
    const id = this.uniqueId(n, "filter", this.filterNodes);
    if (id === undefined) return;
    const w = `filter '${id}'`;
    const r = this.r;
    const typeNodes = n.children.filter((c) => c.name === "type");
    const allTypes = [...FILTER_TYPES_CORE, ...FILTER_TYPES_EXT];
    if (typeNodes.length === 0) {
      this.d.error(n, `Filter '${id}' requires a 'type'. Valid types: ${allTypes.join(", ")}`);
      return;
    }
    const type = r.str(typeNodes[0]!, w);
    if (type === undefined) return;
    if (FILTER_TYPES_EXT.includes(type)) {
      this.d.unsupported(typeNodes[0]!, `filter type "${type}"`);
      return;
    }
    if (!FILTER_TYPES_CORE.includes(type)) {
      this.d.error(typeNodes[0]!, `Unknown filter type: '${type}'${suggest(type, allTypes)}. Valid types: ${allTypes.join(", ")}`);
      return;
    }
    const loc = locOf(n);
    const typeH: Handler = () => {};
    if (type === "agent") {
      let agent: string | undefined;
      let failureMode: FailureMode | undefined;
      const check: (typeof this.agentFilterChecks)[number] = { filter: n, agent: "" };
      r.block(n, w, {
        type: typeH,
        agent: (c) => {
          agent = r.str(c, w);
        },
        "failure-mode": (c) => {
          failureMode = r.enumOf(c, w, FAILURE_MODES);
        },
        "timeout-ms": (c) => {
          const v = r.ms(c, w, 1);
          if (v !== undefined) {
            check.timeoutNode = c;
            check.timeoutMs = v;
          }
        },
        "inspect-body": (c) => {
          if (r.bool(c, w) === true) check.inspectBody = c;
        },
        phase: r.unsupportedHandler('filter type "agent" phase (agents are called for the events they subscribe to)'),
        "max-body-bytes": r.unsupportedHandler('filter type "agent" max-body-bytes (use the agent\'s max-request-body-bytes)'),
      });
      if (agent === undefined) {
        if (!n.children.some((c) => c.name === "agent")) this.d.error(n, `Filter '${id}' of type "agent" requires an 'agent' field naming the agent`);
        return;
      }
      check.agent = agent;
      this.agentFilterChecks.push(check);
      const f: FilterConfig = failureMode ? { id, type: "agent", agent, failureMode, loc } : { id, type: "agent", agent, loc };
      this.cfg.filters.set(id, f);
    } else if (type === "headers") {
      let phase: "request" | "response" | "both" = "request";
      const opNodes: KdlNode[] = [];
      r.block(
        n,
        w,
        {
          type: typeH,
          phase: (c) => {
            const v = r.enumOf(c, w, { request: "request", response: "response", both: "both" } as const);
            if (v !== undefined) phase = v;
          },
          rename: (c) => opNodes.push(c),
          set: (c) => opNodes.push(c),
          add: (c) => opNodes.push(c),
          remove: (c) => opNodes.push(c),
        },
        { repeatable: ["rename", "set", "add", "remove"] },
      );
      const holder: KdlNode = { name: "filter", values: [], properties: {}, children: opNodes, tags: { name: undefined, values: [], properties: {} } };
      LOCS.set(holder, loc);
      const ops = this.headerOps(holder, w);
      if (opNodes.length === 0) this.d.warn(n, `${w}: headers filter has no rename/set/add/remove operations`);
      this.cfg.filters.set(id, { id, type: "headers", phase, ops, loc });
    } else {
      const f: Extract<FilterConfig, { type: "timeout" }> = { id, type: "timeout", loc };
      r.block(n, w, {
        type: typeH,
        "request-timeout-secs": (c) => {
          const v = r.secs(c, w, 1);
          if (v !== undefined) f.requestTimeoutMs = v;
        },
        "upstream-timeout-secs": (c) => {
          const v = r.secs(c, w, 1);
          if (v !== undefined) f.upstreamTimeoutMs = v;
        },
        "connect-timeout-secs": (c) => {
          const v = r.secs(c, w, 1);
          if (v !== undefined) f.connectTimeoutMs = v;
        },
      });
      if (f.requestTimeoutMs === undefined && f.upstreamTimeoutMs === undefined && f.connectTimeoutMs === undefined) {
        this.d.warn(n, `${w}: timeout filter sets no timeout`);
      }
      this.cfg.filters.set(id, f);
    }
  }

  // ── agents ──
  private agent(n: KdlNode): void {
    const id = this.uniqueId(n, "agent", this.agentNodes, ["type"]);
    if (id === undefined) return;
    const w = `agent '${id}'`;
    const r = this.r;
    let typeProp: string | undefined;
    const tp = n.properties["type"];
    if (tp !== undefined) {
      if (typeof tp !== "string" || !tp) this.d.error(n, `${w}: type= expects a string, got ${describe(tp)}`);
      else typeProp = tp;
    }
    let typeChild: string | undefined;
    let typeChildNode: KdlNode | undefined;
    const transports: Array<{ t: AgentTransportConfig; node: KdlNode; style: "direct" | "block" }> = [];
    let protocolNode: KdlNode | undefined;
    let protocol = "auto" as AgentTransportConfig["protocol"];
    let connectionsNode: KdlNode | undefined;
    let resolveIntervalNode: KdlNode | undefined;
    let resolveIntervalMs: number | undefined;
    const a: Omit<AgentConfig, "transport" | "type" | "failureMode" | "failureModeExplicit"> & {
      failureMode?: FailureMode;
    } = {
      id,
      events: [],
      timeoutMs: 1000,
      connectTimeoutMs: 5000,
      retry: { attempts: 0, backoffMs: 10 },
      healthCheck: { enabled: true, intervalMs: 10_000, timeoutMs: 100, healthyThreshold: 2, unhealthyThreshold: 3 },
      circuitBreaker: { failureThreshold: 5, successThreshold: 2, timeoutMs: 30_000, halfOpenMaxRequests: 1 },
      maxRequestBodyBytes: 1024 * 1024,
      maxResponseBodyBytes: 1024 * 1024,
      requestBodyMode: { kind: "buffer" },
      responseBodyMode: { kind: "buffer" },
      chunkTimeoutMs: 5000,
      maxConcurrentCalls: 100,
      connections: 4,
      loc: locOf(n),
    };
    let eventsNode: KdlNode | undefined;
    const positiveMs = (set: (v: number) => void, label: string) => (c: KdlNode) => {
      const v = r.one(c, w);
      if (v === undefined) return;
      if (v === 0) {
        this.d.error(c, `Agent '${id}' has ${label} 0; it must be > 0`);
        return;
      }
      const i = r.checkInt(c, w, v, 1, Number.MAX_SAFE_INTEGER);
      if (i !== undefined) set(i);
    };
    const bodyMode = (set: (m: BodyMode) => void) => (c: KdlNode) => {
      const v = r.str(c, w);
      if (v === undefined) return;
      const m = /^hybrid(?::(\d+))?$/.exec(v);
      if (v === "buffer") set({ kind: "buffer" });
      else if (v === "stream") set({ kind: "stream" });
      else if (m) {
        const t = m[1] === undefined ? 65536 : Number(m[1]);
        if (t <= 0) this.d.error(c, `${w}: ${c.name} hybrid threshold must be > 0`);
        else set({ kind: "hybrid", thresholdBytes: t });
      } else {
        this.d.error(c, `${w}: unknown body streaming mode ${JSON.stringify(v)} for ${c.name}; valid: buffer, stream, hybrid, hybrid:<bytes>`);
      }
    };
    r.block(n, w, {
      type: (c) => {
        typeChildNode = c;
        typeChild = r.str(c, w);
      },
      "unix-socket": (c) => {
        const t = this.unixSocket(c, w);
        if (t) transports.push({ t, node: c, style: "direct" });
      },
      grpc: (c) => {
        const t = this.grpcTransport(c, w, false);
        if (t) transports.push({ t, node: c, style: "direct" });
      },
      http: r.unsupportedHandler("agent http transport"),
      transport: (c) => {
        const tw = `${w} transport`;
        r.blockNode(c, tw);
        if (c.children.length === 0) this.d.error(c, `${tw}: empty transport block; use unix-socket or grpc inside it`);
        r.block(
          c,
          tw,
          {
            "unix-socket": (cc) => {
              const t = this.unixSocket(cc, tw);
              if (t) transports.push({ t, node: cc, style: "block" });
            },
            grpc: (cc) => {
              const t = this.grpcTransport(cc, tw, true);
              if (t) transports.push({ t, node: cc, style: "block" });
            },
            http: r.unsupportedHandler("agent http transport"),
          },
          { repeatable: ["unix-socket", "grpc", "http"] },
        );
      },
      "resolve-interval-secs": (c) => {
        resolveIntervalNode = c;
        const v = r.int(c, w, 1, 86_400);
        if (v !== undefined) resolveIntervalMs = v * 1000;
      },
      protocol: (c) => {
        protocolNode = c;
        const v = r.enumOf(c, w, { v1: "v1", v2: "v2", auto: "auto" } as const);
        if (v !== undefined) protocol = v;
      },
      "protocol-version": (c) => {
        r.one(c, w);
        this.d.warn(c, `${w}: 'protocol-version' is deprecated and ignored; use 'protocol "v1"|"v2"|"auto"' for unix-socket framing`);
      },
      connections: (c) => {
        connectionsNode = c;
        const v = r.int(c, w, 1, 256);
        if (v !== undefined) a.connections = v;
      },
      events: (c) => {
        eventsNode = c;
        r.noProps(c, w);
        r.noChildren(c, w);
        if (c.values.length === 0) this.d.error(c, `${w}: 'events' needs at least one event`);
        for (const v of c.values) {
          if (typeof v !== "string") {
            this.d.error(c, `${w}: events expects event names (strings), got ${describe(v)}`);
            continue;
          }
          const key = v.toLowerCase().replace(/-/g, "_");
          const ev = AGENT_EVENTS[key];
          if (!ev) {
            this.d.error(c, `Unknown agent event: '${v}'${suggest(key, Object.keys(AGENT_EVENTS))}. Valid events: ${Object.keys(AGENT_EVENTS).join(", ")}`);
            continue;
          }
          if (ev === "websocket_frame" || ev === "guardrail") {
            // Parsed, but the proxy never sends these events: refusing beats a silent no-op.
            this.d.unsupported(c, `agent event "${ev}"`);
            continue;
          }
          if (!a.events.includes(ev)) a.events.push(ev);
        }
      },
      "timeout-ms": positiveMs((v) => (a.timeoutMs = v), "timeout-ms"),
      "connect-timeout-ms": positiveMs((v) => (a.connectTimeoutMs = v), "connect-timeout-ms"),
      "chunk-timeout-ms": positiveMs((v) => (a.chunkTimeoutMs = v), "chunk-timeout-ms"),
      "max-request-body-bytes": positiveMs((v) => (a.maxRequestBodyBytes = v), "max-request-body-bytes"),
      "max-response-body-bytes": positiveMs((v) => (a.maxResponseBodyBytes = v), "max-response-body-bytes"),
      "max-concurrent-calls": positiveMs((v) => (a.maxConcurrentCalls = v), "max-concurrent-calls"),
      "failure-mode": (c) => {
        const v = c.values[0];
        if (typeof v === "string" && !Object.hasOwn(FAILURE_MODES, v) && c.values.length === 1) {
          this.d.error(c, `${w}: Unknown failure mode ${JSON.stringify(v)}${suggest(v, Object.keys(FAILURE_MODES))}; valid: open, closed`);
          return;
        }
        const m = r.enumOf(c, w, FAILURE_MODES);
        if (m !== undefined) a.failureMode = m;
      },
      "circuit-breaker": (c) => {
        const cw = `${w} circuit-breaker`;
        r.blockNode(c, cw);
        const nz = (set: (v: number) => void) => (cc: KdlNode) => {
          const v = r.one(cc, cw);
          if (v === undefined) return;
          if (v === 0) {
            this.d.error(cc, `${cw}: Implausible value for ${cc.name}: 0 (must be a non-zero integer)`);
            return;
          }
          const i = r.checkInt(cc, cw, v, 1, 4_294_967_295);
          if (i !== undefined) set(i);
        };
        r.block(c, cw, {
          "failure-threshold": nz((v) => (a.circuitBreaker.failureThreshold = v)),
          "success-threshold": nz((v) => (a.circuitBreaker.successThreshold = v)),
          "timeout-seconds": nz((v) => (a.circuitBreaker.timeoutMs = v * 1000)),
          "half-open-max-requests": nz((v) => (a.circuitBreaker.halfOpenMaxRequests = v)),
        });
      },
      "request-body-mode": bodyMode((m) => (a.requestBodyMode = m)),
      "response-body-mode": bodyMode((m) => (a.responseBodyMode = m)),
      "health-check": (c) => {
        const hw = `${w} health-check`;
        r.blockNode(c, hw);
        const hc = a.healthCheck;
        r.block(c, hw, {
          enabled: (cc) => {
            const v = r.bool(cc, hw);
            if (v !== undefined) hc.enabled = v;
          },
          "interval-ms": (cc) => {
            const v = r.ms(cc, hw, 1);
            if (v !== undefined) hc.intervalMs = v;
          },
          "timeout-ms": (cc) => {
            const v = r.ms(cc, hw, 1);
            if (v !== undefined) hc.timeoutMs = v;
          },
          ...thresholdKeys(r, hw, hc),
        });
      },
      retry: (c) => {
        const rw = `${w} retry`;
        r.blockNode(c, rw);
        r.block(c, rw, {
          attempts: (cc) => {
            const v = r.int(cc, rw, 0, 10);
            if (v !== undefined) a.retry.attempts = v;
          },
          "backoff-ms": (cc) => {
            const v = r.ms(cc, rw, 0);
            if (v !== undefined) a.retry.backoffMs = v;
          },
        });
      },
      config: (c) => {
        r.blockNode(c, `${w} config`);
        a.config = kdlToJson(c.children);
      },
      pool: r.unsupportedHandler("agent pool (use 'connections N')"),
      "connection-pool": r.unsupportedHandler("agent connection-pool (use 'connections N')"),
      "event-timeouts": r.unsupportedHandler("agent event-timeouts"),
      "body-handling": r.unsupportedHandler("agent body-handling"),
      // Repeats are reported below as "more than one transport", with the replication hint.
    }, { repeatable: ["unix-socket", "grpc"] });

    // type: property and/or child
    if (typeProp !== undefined && typeChild !== undefined && typeProp !== typeChild) {
      this.d.error(typeChildNode!, `${w}: type="${typeProp}" and child type "${typeChild}" disagree`);
    }
    const type = normalizeAgentType(typeChild ?? typeProp ?? id);

    // transport
    let transport: AgentTransportConfig | undefined;
    if (transports.length === 0) {
      // A transport node that was given but invalid has its own error already.
      if (!n.children.some((c) => c.name === "http" || c.name === "transport" || c.name === "grpc" || c.name === "unix-socket")) {
        this.d.error(n, `Agent '${id}' requires a transport (unix-socket, grpc, or http)`);
      }
    } else {
      const first = transports[0]!;
      const key = (t: AgentTransportConfig) => JSON.stringify([t.kind, t.address, t.endpoints ?? null]);
      const same = transports.every((x) => key(x.t) === key(first.t));
      if (transports.length > 1 && same && transports.some((x) => x.style !== first.style)) {
        this.d.warn(transports[1]!.node, `${w}: transport given in both styles (direct and transport {}); they agree`);
      } else if (transports.length > 1) {
        const hint =
          transports[1]!.t.kind === first.t.kind
            ? `; to replicate an agent, list every endpoint in one node, e.g. ${first.t.kind === "grpc" ? 'grpc "http://10.0.0.1:50051" "http://10.0.0.2:50051"' : 'unix-socket "/run/a1.sock" "/run/a2.sock"'}`
            : "";
        this.d.error(transports[1]!.node, `${w}: more than one transport (first at ${fmtLoc(locOf(first.node))}); give exactly one${hint}`);
      }
      const { resolveIntervalNode: innerIntervalNode, ...firstT } = first.t as AgentTransportConfig & { resolveIntervalNode?: KdlNode };
      transport = { ...firstT, protocol };
      if (resolveIntervalNode) {
        if (innerIntervalNode) {
          this.d.error(resolveIntervalNode, `${w}: resolve-interval-secs is given twice (also at ${fmtLoc(locOf(innerIntervalNode))})`);
        } else if (!transport.dns) {
          this.d.warn(resolveIntervalNode, `${w}: resolve-interval-secs applies to dns:// endpoints only; ignored`);
        } else if (resolveIntervalMs !== undefined) {
          transport.dns = { ...transport.dns, resolveIntervalMs };
        }
      }
      if (transport.kind === "grpc" && protocol === "v1") {
        this.d.error(protocolNode!, `${w}: protocol "v1" applies to unix-socket agents only (gRPC is always v2)`);
      }
      if (transport.kind === "grpc" && connectionsNode) {
        this.d.warn(connectionsNode, `${w}: 'connections' sets the unix-socket pool size; gRPC agents multiplex one channel`);
      }
    }
    if (!eventsNode) a.events = ["request_headers"];

    const explicit = a.failureMode !== undefined;
    const failureMode: FailureMode = a.failureMode ?? (type === "auth" || type === "waf" ? "closed" : "open");
    if (!explicit) {
      this.d.warn(
        n,
        `Agent '${id}' has no explicit failure-mode; using "${failureMode}" (default for type "${type}"). Set failure-mode "closed" for security agents or "open" for observability agents`,
      );
    }
    const { failureMode: _fm, ...rest } = a;
    const agent: AgentConfig = {
      ...rest,
      type,
      transport: transport ?? { kind: "uds", address: "", protocol },
      failureMode,
      failureModeExplicit: explicit,
    };
    this.cfg.agents.set(id, agent);
  }

  /**
   * `unix-socket "/a.sock"` (or path=), or a replicated agent: `unix-socket "/a.sock" "/b.sock"`
   * and/or `unix-socket { endpoint "/a.sock"; endpoint "/b.sock"; }`.
   */
  private unixSocket(c: KdlNode, w: string): AgentTransportConfig | undefined {
    const r = this.r;
    r.noProps(c, w, ["path"]);
    const raw: Array<{ v: KdlValue | undefined; node: KdlNode }> = [];
    const p: KdlValue | undefined = c.properties["path"];
    if (c.values.length) {
      if (p !== undefined) this.d.error(c, `${w}: unix-socket path given both as argument and as path= property`);
      for (const v of c.values) raw.push({ v, node: c });
    } else if (p !== undefined) {
      raw.push({ v: p, node: c });
    }
    r.block(c, `${w} unix-socket`, { endpoint: (cc) => raw.push({ v: r.str(cc, `${w} unix-socket`) ?? "", node: cc }) }, { repeatable: ["endpoint"] });
    if (raw.length === 0) {
      this.d.error(c, `${w}: unix-socket expects a socket path, e.g. unix-socket "/run/sentinel/auth.sock"`);
      return undefined;
    }
    const paths: string[] = [];
    const warnedDirs = new Set<string>();
    for (const { v, node } of raw) {
      if (typeof v !== "string" || !v) {
        if (v !== "") this.d.error(node, `${w}: unix-socket expects a socket path, e.g. unix-socket "/run/sentinel/auth.sock"`);
        return undefined;
      }
      const abs = this.resolvePath(node, v);
      const dir = dirname(abs);
      if (!warnedDirs.has(dir) && (!existsSync(dir) || !statSync(dir).isDirectory())) {
        // A warning, not an error: the agent's supervisor may create the directory after the proxy
        // starts (systemd RuntimeDirectory), and the proxy must start while agents are down.
        warnedDirs.add(dir);
        this.d.warn(node, `${w}: unix socket path parent directory doesn't exist (yet): '${dir}'`);
      }
      if (paths.includes(abs)) {
        this.d.error(node, `${w}: unix-socket endpoint '${abs}' is listed twice`);
        return undefined;
      }
      paths.push(abs);
    }
    if (paths.length > MAX_AGENT_ENDPOINTS) {
      this.d.error(c, `${w}: at most ${MAX_AGENT_ENDPOINTS} endpoints per agent, got ${paths.length}`);
      return undefined;
    }
    return paths.length > 1 ? { kind: "uds", address: paths[0]!, endpoints: paths, protocol: "auto" } : { kind: "uds", address: paths[0]!, protocol: "auto" };
  }

  /**
   * `grpc "http://host:port"` (or address=), a replicated agent `grpc "http://a:1" "http://b:1"`
   * and/or `grpc { endpoint "…"; endpoint "…"; }`, or `grpc "dns://name:port"` (every address of
   * the name is an endpoint; `resolve-interval-secs N` here or on the agent, default 30).
   */
  private grpcTransport(c: KdlNode, w: string, blockStyle: boolean): (AgentTransportConfig & { resolveIntervalNode?: KdlNode }) | undefined {
    const r = this.r;
    const gw = `${w} grpc`;
    r.noProps(c, gw, ["address"]);
    const raw: Array<{ v: KdlValue | undefined; node: KdlNode }> = [];
    const addrProp: KdlValue | undefined = c.properties["address"];
    let addrGiven = addrProp !== undefined;
    if (c.values.length) {
      if (addrProp !== undefined) this.d.error(c, `${gw}: address given both as argument and as address= property`);
      for (const v of c.values) raw.push({ v, node: c });
    } else if (addrProp !== undefined) {
      raw.push({ v: addrProp, node: c });
    }
    let resolveIntervalMs: number | undefined;
    let resolveIntervalNode: KdlNode | undefined;
    let tlsOn = false;
    const tls: NonNullable<AgentTransportConfig["tls"]> = { insecure: false };
    const file = (set: (p: string) => void, what: string, ww: string) => (cc: KdlNode) => {
      const v = r.str(cc, ww);
      if (v === undefined) return;
      const p = this.resolvePath(cc, v);
      this.checkFile(cc, ww, p, what);
      set(p);
      tlsOn = true;
    };
    const insecure = (ww: string) => (cc: KdlNode) => {
      const v = r.flag(cc, ww);
      if (v === undefined) return;
      tls.insecure = v;
      if (v) {
        tlsOn = true;
        this.d.warn(cc, `${ww}: ${cc.name} disables certificate verification for this agent`);
      }
    };
    const tlsChildren = (ww: string): Record<string, Handler> => ({
      "ca-cert": file((p) => (tls.caCert = p), "ca-cert", ww),
      "client-cert": file((p) => (tls.clientCert = p), "client-cert", ww),
      "client-key": file((p) => (tls.clientKey = p), "client-key", ww),
      "insecure-skip-verify": insecure(ww),
    });
    r.block(
      c,
      gw,
      {
        address: (cc) => {
          const v = r.str(cc, gw);
          if (addrGiven || c.values.length) this.d.error(cc, `${gw}: address is given twice`);
          addrGiven = true;
          raw.push({ v: v ?? "", node: v === undefined ? cc : c });
        },
        endpoint: (cc) => raw.push({ v: r.str(cc, gw) ?? "", node: cc }),
        "resolve-interval-secs": (cc) => {
          resolveIntervalNode = cc;
          const v = r.int(cc, gw, 1, 86_400);
          if (v !== undefined) resolveIntervalMs = v * 1000;
        },
        tls: (cc) => {
          if (cc.children.length || blockStyle) {
            r.blockNode(cc, gw);
            tlsOn = true;
            r.block(cc, `${gw} tls`, tlsChildren(`${gw} tls`));
          } else {
            const v = r.flag(cc, gw);
            if (v !== undefined) tlsOn = v;
          }
        },
        "tls-insecure": insecure(gw),
        ...tlsChildren(gw),
      },
      { repeatable: ["endpoint"] },
    );
    if (raw.length === 0 || raw.some((x) => typeof x.v !== "string" || !x.v)) {
      const bad = raw.find((x) => typeof x.v !== "string" || !x.v);
      // An empty endpoint child was already reported by r.str.
      if (!bad || bad.v !== "" || bad.node === c) {
        this.d.error(bad?.node ?? c, `${gw}: expects an address, e.g. grpc "http://127.0.0.1:50051" or grpc address="http://127.0.0.1:50051"`);
      }
      return undefined;
    }
    if ((tls.clientCert === undefined) !== (tls.clientKey === undefined)) {
      this.d.error(c, `${gw}: client-cert and client-key must be given together`);
    }
    const withTls = (t: AgentTransportConfig): AgentTransportConfig & { resolveIntervalNode?: KdlNode } => {
      const out: AgentTransportConfig & { resolveIntervalNode?: KdlNode } = tlsOn ? { ...t, tls } : t;
      if (resolveIntervalNode) out.resolveIntervalNode = resolveIntervalNode;
      return out;
    };

    // DNS form: the only endpoint.
    const dnsIdx = raw.findIndex((x) => /^dns:\/\//i.test(x.v as string));
    if (dnsIdx >= 0) {
      if (raw.length > 1) {
        this.d.error(raw[dnsIdx === 0 ? 1 : dnsIdx]!.node, `${gw}: a dns:// endpoint must be the agent's only endpoint`);
        return undefined;
      }
      const written = raw[0]!.v as string;
      const hp = parseHostPort(written.slice("dns://".length).replace(/\/$/, ""), { allowName: true, allowPortZero: false });
      if (!hp || hp.host.startsWith("[") || hp.host.includes(":")) {
        this.d.error(raw[0]!.node, `${gw}: invalid DNS endpoint ${JSON.stringify(written)}; expected "dns://NAME:PORT"`);
        return undefined;
      }
      if (tlsOn) {
        this.d.warn(
          raw[0]!.node,
          `${gw}: TLS with a dns:// endpoint connects to each resolved IP address; the agents' certificates must be valid for those addresses (or use tls-insecure)`,
        );
      }
      return withTls({
        kind: "grpc",
        address: `dns://${hp.host}:${hp.port}`,
        dns: { name: hp.host, port: hp.port, scheme: tlsOn ? "https" : "http", resolveIntervalMs: resolveIntervalMs ?? 30_000 },
        protocol: "v2",
      });
    }
    if (resolveIntervalNode) {
      this.d.warn(resolveIntervalNode, `${gw}: resolve-interval-secs applies to dns:// endpoints only; ignored`);
    }

    const addresses: string[] = [];
    const schemes = new Set<string>();
    for (const { v, node } of raw) {
      let address = v as string;
      const m = /^(https?):\/\/(.+)$/.exec(address);
      if (!m) {
        if (!parseHostPort(address, { allowName: true, allowPortZero: false })) {
          this.d.error(node, `${gw}: invalid address ${JSON.stringify(address)}; expected "http://HOST:PORT" or "https://HOST:PORT"`);
          return undefined;
        }
        address = `${tlsOn ? "https" : "http"}://${address}`;
        this.d.warn(node, `${gw}: address without scheme; using ${JSON.stringify(address)}`);
      } else {
        const hostPort = m[2]!.replace(/\/$/, "");
        if (!parseHostPort(hostPort, { allowName: true, allowPortZero: false })) {
          this.d.error(node, `${gw}: invalid address ${JSON.stringify(address)}; expected "http://HOST:PORT" or "https://HOST:PORT"`);
          return undefined;
        }
        address = `${m[1]}://${hostPort}`;
        schemes.add(m[1]!);
        if (schemes.size > 1) {
          this.d.error(node, `${gw}: endpoints mix http:// and https://; use one scheme for every endpoint of an agent`);
          return undefined;
        }
        if (m[1] === "https") tlsOn = true;
        else if (tlsOn) {
          address = `https://${hostPort}`;
          this.d.warn(node, `${gw}: TLS settings given with an http:// address; connecting with TLS to ${address}`);
        }
      }
      if (addresses.includes(address)) {
        this.d.error(node, `${gw}: endpoint ${JSON.stringify(address)} is listed twice`);
        return undefined;
      }
      addresses.push(address);
    }
    if (addresses.length > MAX_AGENT_ENDPOINTS) {
      this.d.error(c, `${gw}: at most ${MAX_AGENT_ENDPOINTS} endpoints per agent, got ${addresses.length}`);
      return undefined;
    }
    // An https:// endpoint after http:// ones switched TLS on: all of them use TLS then.
    const final = tlsOn ? addresses.map((a) => a.replace(/^http:/, "https:")) : addresses;
    return withTls(
      final.length > 1 ? { kind: "grpc", address: final[0]!, endpoints: final, protocol: "v2" } : { kind: "grpc", address: final[0]!, protocol: "v2" },
    );
  }

  // ── limits ──
  private limits(n: KdlNode): void {
    const r = this.r;
    const w = "limits";
    const l = this.cfg.limits;
    r.blockNode(n, w);
    const pos = (set: (v: number) => void, size = false) => (c: KdlNode) => {
      const v = r.one(c, w);
      if (v === undefined) return;
      if (v === 0 || v === "0") {
        this.d.error(c, `limits: ${c.name} must be > 0`);
        return;
      }
      const i = size ? r.size(c, w, 1) : r.checkInt(c, w, v, 1, Number.MAX_SAFE_INTEGER);
      if (i !== undefined) set(i);
    };
    const u = (k: string) => r.unsupportedHandler(`limits ${k}`);
    r.block(
      n,
      w,
      {
        "max-header-size": pos((v) => (l.maxHeaderSize = v), true),
        "max-header-size-bytes": pos((v) => (l.maxHeaderSize = v), true),
        "max-header-count": pos((v) => (l.maxHeaderCount = v)),
        "max-body-size": pos((v) => (l.maxBodySize = v), true),
        "max-body-size-bytes": pos((v) => (l.maxBodySize = v), true),
        "max-uri-length": pos((v) => (l.maxUriLength = v)),
        ...Object.fromEntries(
          [
            "max-connections-per-client",
            "max-total-connections",
            "max-in-flight-requests",
            "max-header-name-bytes",
            "max-header-value-bytes",
            "max-body-buffer-bytes",
            "max-body-inspection-bytes",
            "max-decompression-ratio",
            "max-decompressed-size-bytes",
            "max-connections-per-route",
            "max-idle-connections-per-upstream",
            "max-in-flight-requests-per-worker",
            "max-queued-requests",
            "max-agent-queue-depth",
            "max-agent-body-bytes",
            "max-agent-response-bytes",
            "max-requests-per-second-global",
            "max-requests-per-second-per-client",
          ].map((k) => [k, u(k)]),
        ),
      },
      { aliases: { "max-header-size-bytes": "max-header-size", "max-body-size-bytes": "max-body-size" } },
    );
  }

  // ── observability ──
  private observability(n: KdlNode): void {
    const r = this.r;
    const w = "observability";
    const o = this.cfg.observability;
    r.blockNode(n, w);
    const level = (c: KdlNode, ww: string) =>
      r.enumOf(c, ww, { debug: "debug", info: "info", warn: "warn", warning: "warn", error: "error" } as const, { caseInsensitive: true });
    // Bytes a log holds before writing them out, 1 B to 1 MiB (the sink keeps room for twice that).
    const logBufferSize = (c: KdlNode, ww: string) => r.int(c, ww, 1, 1024 * 1024);
    r.block(n, w, {
      metrics: (c) => {
        const mw = `${w} metrics`;
        r.blockNode(c, mw);
        const m = { enabled: true, address: "0.0.0.0:9090", host: "0.0.0.0", port: 9090, path: "/metrics" };
        r.block(c, mw, {
          enabled: (cc) => {
            const v = r.bool(cc, mw);
            if (v !== undefined) m.enabled = v;
          },
          address: (cc) => {
            const v = r.str(cc, mw);
            if (v === undefined) return;
            const hp = parseHostPort(v, { allowName: false, allowPortZero: true });
            if (!hp) this.d.error(cc, `${mw}: invalid address ${JSON.stringify(v)}; expected IP:PORT such as "127.0.0.1:9090"`);
            else Object.assign(m, { address: v, host: hp.host, port: hp.port });
          },
          path: (cc) => {
            const v = r.str(cc, mw);
            if (v === undefined) return;
            if (!v.startsWith("/")) this.d.error(cc, `${mw}: path ${JSON.stringify(v)} must start with '/'`);
            else m.path = v;
          },
          "high-cardinality": (cc) => {
            if (r.bool(cc, mw) === true) this.d.unsupported(cc, "observability metrics high-cardinality #true");
          },
        });
        o.metrics = m;
        this.metricsNode = c;
      },
      logging: (c) => {
        const lw = `${w} logging`;
        r.blockNode(c, lw);
        r.block(c, lw, {
          level: (cc) => {
            const v = level(cc, lw);
            if (v !== undefined) o.logging.level = v;
          },
          format: (cc) => {
            const v = r.str(cc, lw);
            if (v === undefined) return;
            if (v === "json") return; // our operational log is JSON lines
            if (v === "pretty" || v === "text") this.d.unsupported(cc, `observability logging format "${v}" (logs are JSON lines)`);
            else this.d.error(cc, `${lw}: invalid format ${JSON.stringify(v)}; valid: json`);
          },
          timestamps: (cc) => {
            if (r.bool(cc, lw) === false) this.d.unsupported(cc, "observability logging timestamps #false");
          },
          file: r.unsupportedHandler("observability logging file (operational logs go to stderr)"),
          "access-log": (cc) => {
            const aw = `${lw} access-log`;
            r.blockNode(cc, aw);
            const al: NonNullable<ObservabilityConfig["logging"]["accessLog"]> = { enabled: true, format: "json" };
            r.block(cc, aw, {
              enabled: (x) => {
                const v = r.bool(x, aw);
                if (v !== undefined) al.enabled = v;
              },
              file: (x) => {
                const v = r.str(x, aw);
                if (v !== undefined) al.file = this.resolvePath(x, v);
              },
              format: (x) => {
                const v = r.enumOf(x, aw, { json: "json", combined: "combined" } as const);
                if (v !== undefined) al.format = v;
              },
              "buffer-size": (x) => {
                const v = logBufferSize(x, aw);
                if (v !== undefined) al.bufferSize = v;
              },
              "include-trace-id": (x) => {
                const v = r.bool(x, aw);
                if (v === false) this.d.unsupported(x, "observability logging access-log include-trace-id #false");
              },
              "sample-rate": r.unsupportedHandler("observability logging access-log sample-rate"),
            });
            o.logging.accessLog = al;
          },
          "error-log": (cc) => {
            const ew = `${lw} error-log`;
            r.blockNode(cc, ew);
            const el: NonNullable<ObservabilityConfig["logging"]["errorLog"]> = { enabled: true, level: "warn" };
            r.block(cc, ew, {
              enabled: (x) => {
                const v = r.bool(x, ew);
                if (v !== undefined) el.enabled = v;
              },
              file: (x) => {
                const v = r.str(x, ew);
                if (v !== undefined) el.file = this.resolvePath(x, v);
              },
              level: (x) => {
                const v = level(x, ew);
                if (v !== undefined) el.level = v;
              },
              "buffer-size": (x) => {
                const v = logBufferSize(x, ew);
                if (v !== undefined) el.bufferSize = v;
              },
            });
            if (el.enabled && el.file === undefined && !cc.children.some((x) => x.name === "file"))
              this.d.warn(
                cc,
                `${ew} without 'file' writes nothing: operational lines already go to stderr, and the error log is only a copy of them into a file; add file "…" (or remove the block)`,
              );
            o.logging.errorLog = el;
          },
          "audit-log": (cc) => {
            const aw = `${lw} audit-log`;
            r.blockNode(cc, aw);
            const al: NonNullable<ObservabilityConfig["logging"]["auditLog"]> = { enabled: true };
            const onlyTrue = (x: KdlNode) => {
              if (r.bool(x, aw) === false) this.d.unsupported(x, `observability logging audit-log ${x.name} #false`);
            };
            r.block(cc, aw, {
              enabled: (x) => {
                const v = r.bool(x, aw);
                if (v !== undefined) al.enabled = v;
              },
              file: (x) => {
                const v = r.str(x, aw);
                if (v !== undefined) al.file = this.resolvePath(x, v);
              },
              "buffer-size": (x) => {
                const v = logBufferSize(x, aw);
                if (v !== undefined) al.bufferSize = v;
              },
              "log-blocked": onlyTrue,
              "log-agent-decisions": onlyTrue,
              "log-waf-events": (x) => {
                const v = r.bool(x, aw);
                if (v !== undefined) al.wafEvents = v;
              },
            });
            o.logging.auditLog = al;
          },
        });
      },
      tracing: r.unsupportedHandler("observability tracing"),
    });
  }

  // ── waf ──
  private waf(n: KdlNode): void {
    const modeNode = n.children.find((c) => c.name === "mode");
    const mode = modeNode?.values[0];
    if (mode === "off") {
      this.d.warn(n, "waf block with mode \"off\" has no effect (WAF is done by agents)");
      return;
    }
    this.d.unsupported(modeNode ?? n, `waf mode ${JSON.stringify(typeof mode === "string" ? mode : "prevention")} (use a WAF agent, or mode "off")`);
  }

  // ── cross references ──
  private crossValidate(): void {
    const cfg = this.cfg;
    const list = (names: Iterable<string>) => {
      const a = [...names];
      return a.length ? a.join(", ") : "(none)";
    };
    // listeners: duplicate addresses, default-route
    const byAddr = new Map<string, ListenerConfig>();
    for (const l of cfg.listeners) {
      const key = `${l.host}:${l.port}`;
      const other = byAddr.get(key);
      if (other && l.port !== 0) {
        this.d.error(l.loc, `Duplicate listener address '${l.address}' (also used by listener '${other.id}' at ${fmtLoc(other.loc)})`);
      } else byAddr.set(key, l);
      if (l.defaultRoute !== undefined && !this.routeNodes.has(l.defaultRoute)) {
        const at = this.listenerNodes.get(l.id)!.children.find((c) => c.name === "default-route") ?? l.loc;
        this.d.error(at, `Listener '${l.id}' references default-route '${l.defaultRoute}' which doesn't exist${suggest(l.defaultRoute, this.routeNodes.keys())}`);
      }
    }
    const m = cfg.observability.metrics;
    if (m?.enabled) {
      const clash = cfg.listeners.find((l) => l.port === m.port && m.port !== 0 && (l.host === m.host || l.host === "0.0.0.0" || m.host === "0.0.0.0" || l.host === "::" || m.host === "::"));
      const mn = this.metricsNode;
      if (clash && mn) this.d.error(mn, `observability metrics: address '${m.address}' collides with listener '${clash.id}' (${clash.address})`);
    }
    // routes
    const used = new Set<string>();
    for (const route of cfg.routes) {
      const rn = this.routeNodes.get(route.id)!;
      if (route.upstream !== undefined) {
        used.add(route.upstream);
        if (!cfg.upstreams.has(route.upstream) && !this.upstreamNodes.has(route.upstream)) {
          const at = rn.children.find((c) => c.name === "upstream") ?? rn;
          this.d.error(
            at,
            `Route '${route.id}' references upstream '${route.upstream}' which doesn't exist${suggest(route.upstream, this.upstreamNodes.keys())}. Available upstreams: ${list(this.upstreamNodes.keys())}`,
          );
        }
      }
      for (const f of route.filters) {
        if (!this.filterNodes.has(f)) {
          const at = rn.children.find((c) => c.name === "filters") ?? rn;
          this.d.error(at, `Route '${route.id}' references filter '${f}' which doesn't exist${suggest(f, this.filterNodes.keys())}. Available filters: ${list(this.filterNodes.keys())}`);
        }
      }
      if (route.matches.length === 0 && route.priority > PRIORITY_NAMES.low!) {
        const hasMatchesNode = rn.children.some((c) => c.name === "matches");
        // A matches block whose conditions were all invalid already produced errors.
        if (!hasMatchesNode || rn.children.find((c) => c.name === "matches")!.children.length === 0) {
          this.d.error(rn, `Route '${route.id}' has no match conditions; add a 'matches' block or set priority "low" for catch-all routes`);
        }
      }
      const hasOtherHandler = rn.children.some((c) => ["static-files", "inference", "builtin-handler"].includes(c.name));
      if (route.upstream === undefined && route.builtinHandler === undefined && !hasOtherHandler) {
        const redirect = route.filters.some((f) => this.filterNodes.get(f)?.children.some((c) => c.name === "type" && c.values[0] === "redirect"));
        if (!redirect) this.d.warn(rn, `Route '${route.id}' has no upstream and no builtin-handler; matching requests get 500`);
      }
    }
    // filters → agents
    for (const chk of this.agentFilterChecks) {
      const fid = chk.filter.values[0] as string;
      const agentNode = this.agentNodes.get(chk.agent);
      if (!agentNode) {
        const at = chk.filter.children.find((c) => c.name === "agent") ?? chk.filter;
        this.d.error(at, `Filter '${fid}' references agent '${chk.agent}' which doesn't exist${suggest(chk.agent, this.agentNodes.keys())}. Available agents: ${list(this.agentNodes.keys())}`);
        continue;
      }
      const agent = cfg.agents.get(chk.agent);
      if (!agent) continue;
      if (chk.timeoutNode && chk.timeoutMs !== undefined && chk.timeoutMs !== agent.timeoutMs) {
        this.d.warn(
          chk.timeoutNode,
          `filter '${fid}': timeout-ms ${chk.timeoutMs} is not applied; agent '${chk.agent}' timeout-ms ${agent.timeoutMs} applies (set it on the agent)`,
        );
      }
      if (chk.inspectBody && !agent.events.includes("request_body")) {
        this.d.error(
          chk.inspectBody,
          `filter '${fid}': inspect-body #true, but agent '${chk.agent}' does not subscribe to request_body; bodies are sent to agents per their 'events'`,
        );
      }
    }
    // unused upstreams
    for (const [id, up] of cfg.upstreams) {
      if (!used.has(id)) this.d.warn(up.loc, `Upstream '${id}' is not used by any route`);
    }
  }
}

function normalizeAgentType(t: string): string {
  const k = t.toLowerCase();
  return k === "rate_limit" ? "rate-limit" : k;
}

/**
 * KDL → JSON for agent `config {}` (spec §8.1): one argument → scalar, several → array, children
 * (and properties) → object, a bare node → true. A name repeated at one level becomes an array.
 * Arguments next to children/properties are kept under "_args".
 */
export function kdlToJson(nodes: KdlNode[]): Record<string, unknown> {
  const grouped = new Map<string, unknown[]>();
  for (const n of nodes) {
    let v: unknown;
    if (n.children.length || Object.keys(n.properties).length) {
      const obj: Record<string, unknown> = { ...n.properties, ...kdlToJson(n.children) };
      if (n.values.length) obj["_args"] = n.values.length === 1 ? n.values[0] : [...n.values];
      v = obj;
    } else if (n.values.length === 0) v = true;
    else if (n.values.length === 1) v = n.values[0];
    else v = [...n.values];
    const g = grouped.get(n.name);
    if (g) g.push(v);
    else grouped.set(n.name, [v]);
  }
  const out: Record<string, unknown> = {};
  for (const [k, vs] of grouped) out[k] = vs.length === 1 ? vs[0] : vs;
  return out;
}

// ───────────────────────────── public API ─────────────────────────────

/**
 * Load, merge, convert and validate a config file (and its includes).
 * `config` is set only when there are no errors; `partial` always holds the best-effort result.
 * Never throws for bad input.
 */
export function loadConfig(path: string): LoadResult {
  const file = resolve(path);
  const d = new Diags();
  const r = new Reader(d);
  const loaded = loadFiles(file, d, r);
  const conv = new Converter(d, file, loaded.files);
  if (loaded.files.length > 0) conv.run(loaded.nodes, file, loaded.incomplete);
  const fileOrder = new Map(loaded.files.map((f, i) => [f, i] as const));
  const diagnostics = d.list
    .map((x, i) => ({ x, i }))
    .sort((a, b) => {
      const fa = fileOrder.get(a.x.loc.file) ?? -1;
      const fb = fileOrder.get(b.x.loc.file) ?? -1;
      return fa - fb || a.x.loc.line - b.x.loc.line || a.x.loc.col - b.x.loc.col || a.i - b.i;
    })
    .map((e) => e.x);
  const partial = conv.cfg;
  return d.errorCount === 0 ? { config: partial, partial, diagnostics } : { partial, diagnostics };
}
