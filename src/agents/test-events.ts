// Test-only: builders for AgentEvents, shared by the unit tests here, the tests under test/ and
// scripts/bench/grpc-hop.ts. Not imported by production code.
import type { AgentEvent, HeaderMap, RequestMetadata } from "./types.ts";

export type RequestHeadersEvent = Extract<AgentEvent, { type: "request_headers" }>;

/**
 * A request_headers event with correlation id `id`: GET / with no headers, from 127.0.0.1:1 over
 * HTTP/1.1, requestId = id, no server name / route / upstream / TLS, timestamp now. `over` replaces
 * any of that (metadata field by field).
 */
export function requestHeadersEvent(
  id: string,
  over: { metadata?: Partial<RequestMetadata>; method?: string; uri?: string; headers?: HeaderMap } = {},
): RequestHeadersEvent {
  return {
    type: "request_headers",
    correlationId: id,
    metadata: {
      correlationId: id,
      requestId: id,
      clientIp: "127.0.0.1",
      clientPort: 1,
      serverName: null,
      protocol: "HTTP/1.1",
      tlsVersion: null,
      routeId: null,
      upstreamId: null,
      timestampMs: Date.now(),
      ...over.metadata,
    },
    method: over.method ?? "GET",
    uri: over.uri ?? "/",
    headers: over.headers ?? {},
  };
}
