// Reply helpers for agent authors, shared by every transport server (UDS and gRPC).
// Transport-neutral: they build the model types of src/agents/types.ts, never wire JSON.
//
//   onRequestHeaders(e) {
//     if (!ok) return block(401, '{"error":"unauthorized"}', { "www-authenticate": "Bearer" });
//     return allow({ requestHeaders: [setHeader("x-user", "ada")] });
//   }
import type { AgentReply, AuditMetadata, HeaderOp, ReplyInit } from "./types.ts";

export type { ReplyInit };

/** Allow, optionally with header operations, audit data, mutations… */
export function allow(extra: ReplyInit = {}): ReplyInit {
  return { ...extra, decision: { kind: "allow" } };
}

/** Block with an HTTP status (default 403), an optional body and block response headers. */
export function block(status = 403, body?: string | null, headers?: Record<string, string> | null, extra: ReplyInit = {}): ReplyInit {
  return { ...extra, decision: { kind: "block", status, body: body ?? null, headers: headers ?? null } };
}

/** Redirect to `url` (default status 302). */
export function redirect(url: string, status = 302, extra: ReplyInit = {}): ReplyInit {
  return { ...extra, decision: { kind: "redirect", url, status } };
}

/** Challenge the client (e.g. "captcha"), with string parameters. */
export function challenge(challengeType: string, params: Record<string, string> = {}, extra: ReplyInit = {}): ReplyInit {
  return { ...extra, decision: { kind: "challenge", challengeType, params } };
}

export function setHeader(name: string, value: string): HeaderOp {
  return { op: "set", name, value };
}

export function addHeader(name: string, value: string): HeaderOp {
  return { op: "add", name, value };
}

export function removeHeader(name: string): HeaderOp {
  return { op: "remove", name };
}

/**
 * Fill every field of a reply from a handler's partial answer (missing → allow / empty). Tolerates
 * a partial `audit` and a null/undefined init (a handler that returned nothing means allow).
 */
export function completeReply(correlationId: string, init?: ReplyInit | null | void): AgentReply {
  const i: ReplyInit = init ?? {};
  const a: Partial<AuditMetadata> = i.audit ?? {};
  const reply: AgentReply = {
    correlationId,
    decision: i.decision ?? { kind: "allow" },
    requestHeaders: i.requestHeaders ?? [],
    responseHeaders: i.responseHeaders ?? [],
    routingMetadata: i.routingMetadata ?? {},
    audit: {
      tags: a.tags ?? [],
      ruleIds: a.ruleIds ?? [],
      confidence: a.confidence ?? null,
      reasonCodes: a.reasonCodes ?? [],
      custom: a.custom ?? {},
    },
    needsMore: i.needsMore ?? false,
    requestBodyMutation: i.requestBodyMutation ?? null,
    responseBodyMutation: i.responseBodyMutation ?? null,
  };
  if (i.success !== undefined) reply.success = i.success;
  if (i.error !== undefined) reply.error = i.error;
  return reply;
}
