// The one per-request context object that every phase of the pipeline reads and writes.
import type { Server } from "bun";
import type { ListenerConfig } from "../config/types.ts";
import type { HeaderOp } from "../agents/types.ts";
import type { Runtime, RoutePlan } from "./runtime.ts";
import type { Target } from "../upstreams/pool.ts";
import type { BodyReader } from "../upstreams/body.ts";
import type { UpstreamRequestHeaders } from "./headers.ts";

export interface AgentTrace {
  agent: string;
  decision: string; // allow | block | redirect | challenge | error:<kind> | skipped:<kind>
  latencyMs: number;
  ruleIds?: string[];
  tags?: string[];
}

export interface RequestContext {
  readonly rt: Runtime;
  readonly req: Request;
  readonly server: Server<unknown>;
  readonly listener: ListenerConfig;
  readonly startedAt: number; // performance.now()
  readonly traceId: string;
  /** Unique per request; the id agents see (never client-controlled). */
  readonly correlationId: string;
  /** The TCP peer (appended to X-Forwarded-For). */
  peerIp: string;
  /** The client: the peer, or from X-Forwarded-For when the peer is a trusted proxy (client-ip.ts). */
  clientIp: string;
  /** The peer's port, or 0 when the client address came from X-Forwarded-For. */
  clientPort: number;
  method: string;
  host: string; // routing host (lower-case, no port)
  hostHeader: string; // as received
  path: string; // normalised, forwarded as is
  query: string; // "" or "?…", forwarded unchanged
  plan?: RoutePlan;
  /** Headers to send upstream (sanitised; policies and agent mutations applied). */
  upstreamHeaders?: UpstreamRequestHeaders;
  /** Response header operations from agents' request phase (applied at response time). */
  deferredResponseOps: HeaderOp[];
  target?: Target;
  /** The last attempt's target address, kept for the access log once `target` is released. */
  targetAddress?: string;
  attempts: number;
  status: number;
  bytesIn: number;
  bytesOut: number;
  agentTrace: AgentTrace[];
  error?: string;
  /** The rest of a request body whose limit was crossed (drained before the connection closes). */
  bodyRest?: BodyReader;
  /** Aborted on client disconnect. */
  readonly signal: AbortSignal;
  finished: boolean;
}
