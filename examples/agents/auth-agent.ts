// Example auth agent: API keys and bearer tokens.
//
//   bun examples/agents/auth-agent.ts [--socket PATH] [--grpc HOST:PORT]
//
// Serves UDS on --socket (default /tmp/sentinel-auth.sock), gRPC on --grpc, or both when both
// flags are given. Prints "READY <address>" per listener on stdout.
//
// Credentials (user ↔ secret), from the proxy's agent `config {}` (delivered in the handshake)
// or else from the environment:
//   config {"keys": {"<secret>": "<user>", …}}   or   {"keys": ["<user>:<secret>", …]}
//   AUTH_KEYS="ada:s3cret,bob:t0ken"
// A request is allowed if `x-api-key: <secret>` or `authorization: Bearer <secret>` names a
// known secret. The agent then sets `x-auth-user: <user>` on the upstream request (replacing
// anything the client sent) and removes `x-api-key`. Otherwise it blocks with 401,
// `www-authenticate: Bearer` and a small JSON body.
import { createHash } from "node:crypto";
import { allow, block, removeHeader, setHeader } from "../../sdk/reply.ts";
import type { AgentHandler, RunningServer } from "../../sdk/types.ts";
import { serveUds } from "../../sdk/uds-server.ts";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** Secrets are looked up by their SHA-256, so lookup time does not depend on how much of a guess matches. */
const digest = (s: string) => createHash("sha256").update(s).digest("hex");

function parseKeys(v: unknown): Map<string, string> {
  const out = new Map<string, string>();
  const addPair = (pair: string) => {
    const i = pair.indexOf(":");
    if (i <= 0 || i === pair.length - 1) throw new Error(`bad key entry "${pair.slice(0, 20)}…" (want user:secret)`);
    out.set(digest(pair.slice(i + 1).trim()), pair.slice(0, i).trim());
  };
  if (typeof v === "string") {
    for (const p of v.split(",").map((s) => s.trim()).filter(Boolean)) addPair(p);
  } else if (Array.isArray(v)) {
    for (const p of v) {
      if (typeof p !== "string") throw new Error("keys array entries must be user:secret strings");
      addPair(p);
    }
  } else if (typeof v === "object" && v !== null) {
    for (const [secret, user] of Object.entries(v)) {
      if (typeof user !== "string" || secret === "") throw new Error("keys object must map secret → user name");
      out.set(digest(secret), user);
    }
  } else throw new Error("keys must be an object, an array or a string");
  return out;
}

let keys = parseKeys(process.env.AUTH_KEYS ?? "");

function header(h: Record<string, string[]>, name: string): string | undefined {
  const v = h[name];
  if (v) return v[0];
  for (const k in h) if (k.toLowerCase() === name) return h[k]![0];
  return undefined;
}

const deny = (reason: string) =>
  block(401, JSON.stringify({ error: "unauthorized", message: reason }), { "www-authenticate": "Bearer", "content-type": "application/json" }, {
    audit: { tags: ["auth", "denied"], ruleIds: [], confidence: null, reasonCodes: ["AUTH_REQUIRED"], custom: {} },
  });

export const authHandler: AgentHandler = {
  info: { agentId: "auth-agent", name: "Sentinel example auth agent", version: "0.1.0" },
  supportedEvents: [1, 8],
  onConfigure(config) {
    if (typeof config !== "object" || config === null) return;
    const c = config as { keys?: unknown };
    if (c.keys === undefined) return;
    keys = parseKeys(c.keys); // throws → the proxy sees the configuration rejected
  },
  onRequestHeaders(e) {
    const apiKey = header(e.headers, "x-api-key");
    const authz = header(e.headers, "authorization");
    let user: string | undefined;
    let via = "";
    if (apiKey !== undefined && apiKey !== "") {
      user = keys.get(digest(apiKey));
      via = "api-key";
    }
    if (user === undefined && authz !== undefined) {
      const m = /^Bearer[ \t]+([^\s]+)[ \t]*$/i.exec(authz);
      if (m) {
        user = keys.get(digest(m[1]!));
        via = "bearer";
      }
    }
    if (user === undefined) return deny(apiKey || authz ? "invalid credentials" : "credentials required");
    return allow({
      requestHeaders: [setHeader("x-auth-user", user), removeHeader("x-api-key")],
      audit: { tags: ["auth", via], ruleIds: [], confidence: null, reasonCodes: [], custom: { user } },
    });
  },
};

async function main(): Promise<void> {
  const grpc = arg("grpc");
  const socket = arg("socket") ?? (grpc ? undefined : "/tmp/sentinel-auth.sock");
  const servers: RunningServer[] = [];
  const stop = async () => {
    await Promise.all(servers.map((s) => s.close()));
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  if (keys.size === 0) process.stderr.write("auth-agent: no AUTH_KEYS yet; every request is denied until a config with keys arrives\n");
  if (socket) {
    const s = await serveUds(socket, authHandler);
    servers.push(s);
    process.stdout.write(`READY ${s.address}\n`);
  }
  if (grpc) {
    const { serveGrpc } = await import("../../sdk/grpc-server.ts");
    const s = await serveGrpc(grpc, authHandler);
    servers.push(s);
    process.stdout.write(`READY ${s.address}\n`);
  }
}

if (import.meta.main) await main();
