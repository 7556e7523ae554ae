// Test-only: builders for AgentEvents and AgentConfigs, shared by the unit tests here, the tests
// under test/ and scripts/bench/grpc-hop.ts. Not imported by production code.
import type { AgentConfig } from "../config/types.ts";
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

/**
 * An agent config as the loader would produce it for agent `id` on a v2 UDS socket
 * /tmp/<id>.sock: request_headers and request_complete, 1 s timeouts, fail closed, no health
 * checks, no retries, 2 connections. `over` replaces whole fields.
 */
export function testAgentConfig(id: string, over: Partial<AgentConfig> = {}): AgentConfig {
  return {
    id,
    type: "auth",
    transport: { kind: "uds", address: `/tmp/${id}.sock`, protocol: "v2" },
    events: ["request_headers", "request_complete"],
    timeoutMs: 1000,
    connectTimeoutMs: 1000,
    failureMode: "closed",
    failureModeExplicit: true,
    retry: { attempts: 0, backoffMs: 10 },
    healthCheck: { enabled: false, intervalMs: 10000, timeoutMs: 100, healthyThreshold: 2, unhealthyThreshold: 3 },
    circuitBreaker: { failureThreshold: 5, successThreshold: 2, timeoutMs: 30000, halfOpenMaxRequests: 1 },
    maxRequestBodyBytes: 1 << 20,
    maxResponseBodyBytes: 1 << 20,
    requestBodyMode: { kind: "buffer" },
    responseBodyMode: { kind: "buffer" },
    chunkTimeoutMs: 5000,
    maxConcurrentCalls: 100,
    connections: 2,
    loc: { file: "test.kdl", line: 1, col: 1 },
    ...over,
  };
}
