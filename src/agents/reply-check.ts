// The agent layer's check of an answer it decoded, before the answer counts: an allow's header
// mutations valid and allowed (src/http/fields.ts), a body replacement for the chunk answered.
// An answer that fails it is an agent error of kind "protocol" for the metrics and the failure
// mode alike, over UDS and gRPC (SECURITY.md, "Agent path", header mutations); not for the
// circuit breaker, since request data an agent copies into a header can make it fail at will.
import { mutationProblem } from "../http/fields.ts";
import type { AgentEvent, AgentReply, BodyMutation, HeaderOp } from "./types.ts";

/**
 * Why an answer to `event` is refused, or null if it may be applied. Only an allow can be
 * refused for its header mutations: a deny (block, redirect, challenge) stands whatever its
 * operations (the proxy drops the invalid ones, agent-phases.ts), so that an agent's mistake, or
 * request data it copied into a header, can never turn a deny into an allow under fail-open.
 */
export function replyProblem(reply: AgentReply, event: AgentEvent): string | null {
  if (reply.decision.kind === "allow") {
    const p = opsProblem(reply.requestHeaders) ?? opsProblem(reply.responseHeaders);
    if (p !== null) return p;
  }
  if (event.type === "request_body_chunk") return chunkProblem(reply.requestBodyMutation, event.chunkIndex);
  if (event.type === "response_body_chunk") return chunkProblem(reply.responseBodyMutation, event.chunkIndex);
  return null;
}

/** The first invalid or forbidden header operation's problem, or null. */
function opsProblem(ops: readonly HeaderOp[]): string | null {
  for (const op of ops) {
    const p = mutationProblem(op);
    if (p) return p;
  }
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
