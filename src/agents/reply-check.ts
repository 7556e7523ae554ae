// The agent layer's check of an answer it decoded, before the answer counts: every header
// mutation valid and allowed (src/http/fields.ts), a redirect only to a safe URL. An answer that
// fails it is an agent error of kind "protocol" for the metrics, the circuit breaker and the
// failure mode alike, over UDS and gRPC (SECURITY.md, "Agent path", header mutations).
import { isSafeRedirect, mutationProblem } from "../http/fields.ts";
import type { AgentReply } from "./types.ts";

/** Why an answer is refused, or null if it may be applied. */
export function replyProblem(reply: AgentReply): string | null {
  for (const op of reply.requestHeaders) {
    const p = mutationProblem(op);
    if (p) return p;
  }
  for (const op of reply.responseHeaders) {
    const p = mutationProblem(op);
    if (p) return p;
  }
  const d = reply.decision;
  if (d.kind === "redirect" && !isSafeRedirect(d.url)) return "redirect to an unsafe or invalid URL";
  return null;
}
