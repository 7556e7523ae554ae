// Hop-by-hop header names (RFC 9110 §7.6.1 plus the legacy/HTTP2 ones): never forwarded in either
// direction. Shared by the request-path sanitiser (src/proxy/headers.ts) and the upstream client.
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "proxy-authenticate",
  "proxy-authorization",
  "http2-settings",
]);
