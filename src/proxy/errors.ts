// Short, fixed error responses: never a stack trace, a path or an echo of client input.
const TEXT: Record<number, string> = {
  400: "bad request",
  401: "unauthorized",
  403: "forbidden",
  404: "not found",
  405: "method not allowed",
  408: "request timeout",
  413: "payload too large",
  414: "uri too long",
  421: "misdirected request",
  429: "too many requests",
  431: "request header fields too large",
  499: "client closed request",
  500: "internal error",
  502: "bad gateway",
  503: "service unavailable",
  504: "gateway timeout",
};

export function errorResponse(status: number, requestId: string, extra?: Readonly<Record<string, string>>): Response {
  const body = `{"error":"${TEXT[status] ?? "error"}","request_id":"${requestId}"}`;
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "cache-control": "no-store",
    "x-correlation-id": requestId,
    ...extra,
  };
  return new Response(body, { status, headers });
}

export function statusText(status: number): string {
  return TEXT[status] ?? "error";
}
