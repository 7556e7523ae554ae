// The agent layer's check of an answer it decoded, before the answer counts: every header
// mutation valid and allowed (src/http/fields.ts), a redirect only to a safe URL. An answer that
// fails it is an agent error of kind "protocol" for the metrics, the circuit breaker and the
// failure mode alike, over UDS and gRPC (SECURITY.md, "Agent path", header mutations).
import { isSafeRedirect, mutationProblem } from "../http/fields.ts";
import type { AgentEvent, AgentReply, BodyMutation } from "./types.ts";

/** Why an answer to `event` is refused, or null if it may be applied. */
export function replyProblem(reply: AgentReply, event: AgentEvent): string | null {
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
  if (event.type === "request_body_chunk") return chunkProblem(reply.requestBodyMutation, event.chunkIndex);
  if (event.type === "response_body_chunk") return chunkProblem(reply.responseBodyMutation, event.chunkIndex);
  return null;
}

/**
 * A body mutation replaces the chunk it names (spec §4.5), and an answer is about the chunk it
 * answers: a replacement naming another chunk cannot be applied as meant. (`data` null keeps the
 * chunk, whatever index it names.)
 */
function chunkProblem(m: BodyMutation | null, chunkIndex: number): string | null {
  if (m === null || m.data === null || m.chunkIndex === chunkIndex) return null;
  return `body mutation names chunk ${m.chunkIndex} in the answer to chunk ${chunkIndex}`;
}
