// Shared by both servers: which events a handler announces, and which hook an event calls.
import type { AgentEvent, AgentHandler, ReplyInit } from "./types.ts";

/** EventType numbers (proto numbering, configure = 8): explicit, or derived from the hooks defined. */
export function supportedEvents(h: AgentHandler): number[] {
  if (h.supportedEvents) return h.supportedEvents;
  const out: number[] = [];
  if (h.onRequestHeaders) out.push(1);
  if (h.onRequestBodyChunk) out.push(2);
  if (h.onResponseHeaders) out.push(3);
  if (h.onResponseBodyChunk) out.push(4);
  if (h.onRequestComplete) out.push(5);
  if (h.onConfigure) out.push(8);
  return out.length > 0 ? out : [1];
}

/** Call the hook for a decision event (headers and body chunks); a missing hook means allow. */
export async function runDecisionHook(handler: AgentHandler, event: AgentEvent): Promise<ReplyInit | void> {
  switch (event.type) {
    case "request_headers":
      return handler.onRequestHeaders?.(event);
    case "request_body_chunk":
      return handler.onRequestBodyChunk?.(event as Parameters<NonNullable<AgentHandler["onRequestBodyChunk"]>>[0]);
    case "response_headers":
      return handler.onResponseHeaders?.(event);
    case "response_body_chunk":
      return handler.onResponseBodyChunk?.(event as Parameters<NonNullable<AgentHandler["onResponseBodyChunk"]>>[0]);
    default:
      return undefined;
  }
}
