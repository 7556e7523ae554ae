// Example agent: a small WAF that blocks common SQL injection, XSS and path traversal probes.
//
//   bun examples/agents/waf-agent.ts --grpc 127.0.0.1:50051
//   bun examples/agents/waf-agent.ts --socket /tmp/waf.sock
//   bun examples/agents/waf-agent.ts --grpc 127.0.0.1:50051 --socket /tmp/waf.sock --config '{"paranoia-level":2}'
//
// The same handler serves gRPC (sdk/grpc-server.ts) and UDS (sdk/uds-server.ts).
//
// What it inspects:
//   - request_headers: the path and the query string, raw and URL-decoded (repeatedly, so double
//     encoding does not hide a payload; "+" counts as a space in the query), and every request
//     header value except an allow list (credentials and content-negotiation headers, see
//     DEFAULT_HEADER_ALLOWLIST; configurable).
//   - request_body_chunk: each chunk as UTF-8 text, raw and URL-decoded, plus a 64-byte tail of the
//     previous chunk of the same request so a payload split across two chunks is still seen.
//     Non-final chunks are answered with needs_more so the proxy keeps streaming.
// A match answers Block 403 with a JSON body naming the rule, and the rule id, tags and match
// location in the audit metadata.
//
// Configuration (the proxy's `config {}` for this agent, delivered in the handshake):
//   paranoia-level    1 (default) to 4; level-2 rules are broader and may false-positive
//   disabled-rules    rule ids to skip, e.g. ["WAF-XSS-3"]
//   header-allowlist  header names never inspected (replaces the default list)
//   inspect-body      false to skip bodies (default true)
//   max-body-bytes    bodies larger than this are not inspected past this many bytes (default 1 MiB)
// Unknown keys and wrong types reject the configuration (the handshake fails), so a typo cannot
// silently turn a rule off.
import { block } from "../../sdk/reply.ts";
import type { AgentEvent, AgentHandler, ReplyInit, RunningServer } from "../../sdk/types.ts";

export interface WafRule {
  id: string;
  category: "sqli" | "xss" | "traversal" | "protocol";
  description: string;
  /** Lowest paranoia level at which the rule is active. */
  level: number;
  /** Tested against decoded text. */
  pattern: RegExp;
  /** Optionally tested against the raw (undecoded) text as well, for encoded-only signatures. */
  rawPattern?: RegExp;
}

export const RULES: readonly WafRule[] = [
  // --- SQL injection
  {
    id: "WAF-SQLI-1",
    category: "sqli",
    description: "SQL injection: quote followed by a boolean tautology (' or 1=1)",
    level: 1,
    pattern: /['"`]\s*\)?\s*(?:(?:or|and)\s+|\|\|\s*|&&\s*)['"`(]?\s*\w+\s*['"`)]?\s*(?:=|<|>|like\b)\s*['"`(]?\s*\w+/i,
  },
  { id: "WAF-SQLI-2", category: "sqli", description: "SQL injection: UNION SELECT", level: 1, pattern: /\bunion\b(?:\s|\/\*.*?\*\/|\+)+(?:all\s+|distinct\s+)?select\b/i },
  {
    id: "WAF-SQLI-3",
    category: "sqli",
    description: "SQL injection: stacked destructive statement (; drop table)",
    level: 1,
    pattern: /;\s*(?:drop|truncate|alter)\s+(?:table|database|schema)\b/i,
  },
  {
    id: "WAF-SQLI-4",
    category: "sqli",
    description: "SQL injection: time-based probe (sleep(), benchmark(), waitfor delay)",
    level: 1,
    pattern: /\b(?:sleep|benchmark|pg_sleep)\s*\(|\bwaitfor\s+delay\b/i,
  },
  { id: "WAF-SQLI-5", category: "sqli", description: "SQL injection: quote followed by a comment", level: 2, pattern: /['"`]\s*(?:--|#|\/\*)/ },
  // --- XSS
  { id: "WAF-XSS-1", category: "xss", description: "XSS: <script> tag", level: 1, pattern: /<\s*script\b/i },
  { id: "WAF-XSS-2", category: "xss", description: "XSS: javascript: URI", level: 1, pattern: /\bjavascript\s*:/i },
  { id: "WAF-XSS-3", category: "xss", description: "XSS: onerror= / onload= handler", level: 1, pattern: /\bon(?:error|load)\s*=/i },
  { id: "WAF-XSS-4", category: "xss", description: "XSS: embedding tag (iframe, object, embed, svg)", level: 2, pattern: /<\s*(?:iframe|object|embed|svg)\b/i },
  { id: "WAF-XSS-5", category: "xss", description: "XSS: any inline event handler (on*=)", level: 3, pattern: /\bon[a-z]{3,20}\s*=/i },
  // --- path traversal
  {
    id: "WAF-LFI-1",
    category: "traversal",
    description: "Path traversal: ../ (also encoded as ..%2f or %2e%2e)",
    level: 1,
    pattern: /(?:^|[\/\\=])\.\.(?:[\/\\]|$)/,
    rawPattern: /\.\.(?:%2f|%5c)|%2e%2e|%252e%252e/i,
  },
  // --- protocol
  { id: "WAF-PROTO-1", category: "protocol", description: "NUL byte in the request", level: 2, pattern: /\u0000/, rawPattern: /%00/ },
];

export const DEFAULT_HEADER_ALLOWLIST: readonly string[] = [
  // credentials: opaque tokens, never inspected or echoed into audit logs
  "authorization",
  "proxy-authorization",
  // content negotiation and framing: fixed syntax, frequent false positives (q=, */*)
  "accept",
  "accept-encoding",
  "accept-language",
  "content-length",
  "content-type",
  "cache-control",
  "connection",
  "if-none-match",
  "if-modified-since",
];

export interface WafConfig {
  paranoiaLevel: number;
  disabledRules: string[];
  headerAllowlist: string[];
  inspectBody: boolean;
  maxBodyBytes: number;
}

export const DEFAULT_CONFIG: WafConfig = {
  paranoiaLevel: 1,
  disabledRules: [],
  headerAllowlist: [...DEFAULT_HEADER_ALLOWLIST],
  inspectBody: true,
  maxBodyBytes: 1024 * 1024,
};

/** Validate the proxy's `config {}`; throws (rejecting the handshake) on anything unexpected. */
export function parseConfig(raw: unknown): WafConfig {
  const cfg: WafConfig = { ...DEFAULT_CONFIG, disabledRules: [], headerAllowlist: [...DEFAULT_HEADER_ALLOWLIST] };
  if (raw === null || raw === undefined) return cfg;
  if (typeof raw !== "object" || Array.isArray(raw)) throw new Error("config must be an object");
  const strings = (key: string, v: unknown): string[] => {
    if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw new Error(`${key} must be a list of strings`);
    return v as string[];
  };
  for (const [key, v] of Object.entries(raw as Record<string, unknown>)) {
    switch (key) {
      case "paranoia-level":
        if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 4) throw new Error("paranoia-level must be an integer from 1 to 4");
        cfg.paranoiaLevel = v;
        break;
      case "disabled-rules": {
        const ids = strings(key, v);
        const unknown = ids.filter((id) => !RULES.some((r) => r.id === id));
        if (unknown.length > 0) throw new Error(`disabled-rules: unknown rule id(s) ${unknown.join(", ")}`);
        cfg.disabledRules = ids;
        break;
      }
      case "header-allowlist":
        cfg.headerAllowlist = strings(key, v).map((h) => h.toLowerCase());
        break;
      case "inspect-body":
        if (typeof v !== "boolean") throw new Error("inspect-body must be true or false");
        cfg.inspectBody = v;
        break;
      case "max-body-bytes":
        if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw new Error("max-body-bytes must be a non-negative integer");
        cfg.maxBodyBytes = v;
        break;
      default:
        throw new Error(`unknown config key "${key}"`);
    }
  }
  return cfg;
}

/** Percent-decode without throwing on malformed sequences; `plus` turns "+" into a space first. */
function percentDecode(s: string, plus: boolean): string {
  if (plus && s.includes("+")) s = s.replace(/\+/g, " ");
  if (!s.includes("%")) return s;
  try {
    return decodeURIComponent(s);
  } catch {
    return s.replace(/%([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  }
}

/** Decode until stable (at most 3 rounds), so %252e%252e becomes .. as well. */
export function deepDecode(s: string, plus = false): string {
  let cur = s;
  for (let i = 0; i < 3; i++) {
    const next = percentDecode(cur, plus);
    if (next === cur) break;
    cur = next;
  }
  return cur;
}

interface Match {
  rule: WafRule;
  location: string;
  matched: string;
}

const TAIL_BYTES = 64;
const MAX_TRACKED_BODIES = 10_000;

type BodyChunk = Extract<AgentEvent, { type: "request_body_chunk" | "response_body_chunk" }>;
type RequestHeaders = Extract<AgentEvent, { type: "request_headers" }>;

export function createWafAgent(initialConfig?: unknown): AgentHandler & { readonly config: WafConfig } {
  let config = parseConfig(initialConfig);
  let active = activeRules(config);
  // Per-request body state: bytes inspected so far and the tail of the previous chunk.
  const bodies = new Map<string, { seen: number; tail: string }>();
  const textDecoder = new TextDecoder("utf-8", { fatal: false });

  function activeRules(c: WafConfig): WafRule[] {
    return RULES.filter((r) => r.level <= c.paranoiaLevel && !c.disabledRules.includes(r.id));
  }

  function scan(raw: string, location: string, plus: boolean): Match | null {
    if (raw.length === 0) return null;
    const decoded = deepDecode(raw, plus);
    for (const rule of active) {
      const m = rule.pattern.exec(decoded) ?? (decoded !== raw ? rule.pattern.exec(raw) : null) ?? rule.rawPattern?.exec(raw) ?? null;
      if (m) return { rule, location, matched: m[0].slice(0, 64) };
    }
    return null;
  }

  function blockFor(m: Match, correlationId: string): ReplyInit {
    const body = JSON.stringify({ error: "forbidden", rule_id: m.rule.id, message: m.rule.description, request_id: correlationId });
    return block(403, body, { "content-type": "application/json" }, {
      audit: {
        tags: ["waf", m.rule.category],
        ruleIds: [m.rule.id],
        confidence: m.rule.level === 1 ? 0.9 : 0.6,
        reasonCodes: [`WAF_${m.rule.category.toUpperCase()}`],
        custom: { location: m.location, matched: m.matched, paranoia_level: config.paranoiaLevel },
      },
    });
  }

  function inspectHeaders(e: RequestHeaders): ReplyInit {
    const q = e.uri.indexOf("?");
    const path = q < 0 ? e.uri : e.uri.slice(0, q);
    const query = q < 0 ? "" : e.uri.slice(q + 1);
    const hit = scan(path, "path", false) ?? scan(query, "query", true);
    if (hit) return blockFor(hit, e.correlationId);
    for (const name in e.headers) {
      if (config.headerAllowlist.includes(name)) continue;
      for (const value of e.headers[name]!) {
        const h = scan(value, `header:${name}`, false);
        if (h) return blockFor(h, e.correlationId);
      }
    }
    return {};
  }

  function inspectBody(e: BodyChunk): ReplyInit {
    const id = e.correlationId;
    if (!config.inspectBody) {
      bodies.delete(id);
      return {};
    }
    let state = bodies.get(id);
    if (!state) {
      if (bodies.size >= MAX_TRACKED_BODIES) bodies.delete(bodies.keys().next().value!);
      state = { seen: 0, tail: "" };
      bodies.set(id, state);
    }
    const room = Math.max(0, config.maxBodyBytes - state.seen);
    const slice = e.data.byteLength > room ? e.data.subarray(0, room) : e.data;
    state.seen += slice.byteLength;
    if (slice.byteLength > 0) {
      const text = state.tail + textDecoder.decode(slice);
      const hit = scan(text, "body", true);
      if (hit) {
        bodies.delete(id);
        return blockFor(hit, id);
      }
      state.tail = text.slice(-TAIL_BYTES);
    }
    if (e.isLast) {
      bodies.delete(id);
      return {};
    }
    return { needsMore: true };
  }

  return {
    info: { agentId: "sentinel-waf", name: "Sentinel example WAF", version: "1.0.0" },
    supportedEvents: [1, 2, 5, 8],
    get config() {
      return config;
    },
    onConfigure(raw: unknown) {
      config = parseConfig(raw);
      active = activeRules(config);
    },
    onRequestHeaders: (e) => inspectHeaders(e),
    onRequestBodyChunk: (e: BodyChunk) => inspectBody(e),
    onRequestComplete(e) {
      bodies.delete(e.correlationId);
    },
  };
}

function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  const grpcAddr = argValue("--grpc");
  const socketPath = argValue("--socket");
  const configArg = argValue("--config");
  if (!grpcAddr && !socketPath) {
    process.stderr.write("usage: bun examples/agents/waf-agent.ts [--grpc HOST:PORT] [--socket PATH] [--config JSON]\n");
    process.exit(2);
  }
  const agent = createWafAgent(configArg ? JSON.parse(configArg) : undefined);
  const servers: RunningServer[] = [];
  if (grpcAddr) {
    const { serveGrpc } = await import("../../sdk/grpc-server.ts");
    const s = await serveGrpc(grpcAddr, agent);
    servers.push(s);
    process.stdout.write(`waf-agent: gRPC on ${s.address}\n`);
  }
  if (socketPath) {
    const { serveUds } = await import("../../sdk/uds-server.ts");
    const s = await serveUds(socketPath, agent);
    servers.push(s);
    process.stdout.write(`waf-agent: UDS on ${socketPath}\n`);
  }
  const stop = async () => {
    await Promise.all(servers.map((s) => s.close()));
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

if (import.meta.main) {
  main().catch((err) => {
    process.stderr.write(`waf-agent: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
