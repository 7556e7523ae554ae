// What an agent author implements. Both servers (sdk/uds-server.ts, sdk/grpc-server.ts) call the
// same handler, so one agent serves either transport unchanged.
import type { AgentEvent, AgentReply, Decision, HeaderOp, AuditMetadata } from "../src/agents/types.ts";

export type { AgentEvent, AgentReply, Decision, HeaderOp, AuditMetadata };

// Distributes over the union; the body-chunk member has a union `type`, which Extract misses.
type EventOf<T extends AgentEvent["type"]> = AgentEvent extends infer E ? (E extends { type: infer U } ? (T extends U ? E : never) : never) : never;

/** A handler may return a partial reply; missing fields default to allow / empty. */
export type ReplyInit = Partial<Omit<AgentReply, "correlationId" | "audit">> & { audit?: Partial<AuditMetadata> };

export interface AgentHandler {
  info: { agentId: string; name: string; version: string };
  /** EventType numbers (1 request_headers … 8 configure) announced in the handshake. */
  supportedEvents?: number[];
  /** Receives the proxy's `config {}` (handshake and configure event). Throw to reject it. */
  onConfigure?(config: unknown): void | Promise<void>;
  onRequestHeaders?(event: EventOf<"request_headers">): ReplyInit | Promise<ReplyInit>;
  onRequestBodyChunk?(event: EventOf<"request_body_chunk">): ReplyInit | Promise<ReplyInit>;
  onResponseHeaders?(event: EventOf<"response_headers">): ReplyInit | Promise<ReplyInit>;
  onResponseBodyChunk?(event: EventOf<"response_body_chunk">): ReplyInit | Promise<ReplyInit>;
  onRequestComplete?(event: EventOf<"request_complete">): void | Promise<void>;
}

export interface RunningServer {
  /** For gRPC: the bound port (useful with port 0). For UDS: 0. */
  port: number;
  address: string;
  close(): Promise<void>;
}
