import { describe, expect, test } from "bun:test";
import { replyProblem } from "./reply-check.ts";
import { allowReply, type AgentEvent, type AgentReply } from "./types.ts";

const reply = (over: Partial<AgentReply> = {}): AgentReply => ({ ...allowReply("c1"), ...over });
const headers = { type: "request_headers", correlationId: "c1" } as unknown as AgentEvent;
const chunk = (type: "request_body_chunk" | "response_body_chunk", chunkIndex: number) =>
  ({ type, correlationId: "c1", data: new Uint8Array(1), isLast: false, totalSize: null, chunkIndex, bytesTransferred: 1 }) as unknown as AgentEvent;

describe("replyProblem", () => {
  test("a valid allow, with ordinary mutations, passes", () => {
    expect(replyProblem(reply({ requestHeaders: [{ op: "set", name: "x-user", value: "alice" }], responseHeaders: [{ op: "remove", name: "server" }] }), headers)).toBeNull();
  });

  test("a mutation of a hop-by-hop or framing header, or an invalid name or value, is refused", () => {
    for (const op of [
      { op: "set", name: "te", value: "x" },
      { op: "remove", name: "Transfer-Encoding" },
      { op: "set", name: "content-length", value: "1" },
      { op: "set", name: "host", value: "evil" },
      { op: "set", name: "x bad", value: "v" },
      { op: "set", name: "x-ok", value: "a\r\nb" },
    ] as const) {
      expect(replyProblem(reply({ requestHeaders: [op] }), headers)).not.toBeNull();
      expect(replyProblem(reply({ responseHeaders: [op] }), headers)).not.toBeNull();
    }
  });

  test("a deny stands whatever its header operations (the proxy drops the invalid ones); a redirect target is checked where it is sent", () => {
    const bad = [{ op: "set", name: "x-reason", value: "caf\u00e9 \u20ac" }] as const;
    expect(replyProblem(reply({ requestHeaders: [...bad] }), headers)).not.toBeNull();
    for (const decision of [
      { kind: "block", status: 403, body: null, headers: null },
      { kind: "redirect", url: "javascript:alert(1)", status: 302 },
      { kind: "challenge", challengeType: "captcha", params: {} },
    ] as const)
      expect(replyProblem(reply({ decision: decision as never, responseHeaders: [...bad], requestHeaders: [...bad] }), headers)).toBeNull();
  });

  test("a body replacement must name the chunk it answers; keeping the chunk (data null) names any", () => {
    const data = new Uint8Array([1]);
    expect(replyProblem(reply({ requestBodyMutation: { data, chunkIndex: 3 } }), chunk("request_body_chunk", 3))).toBeNull();
    expect(replyProblem(reply({ requestBodyMutation: { data, chunkIndex: 7 } }), chunk("request_body_chunk", 0))).toContain("chunk 7");
    expect(replyProblem(reply({ responseBodyMutation: { data, chunkIndex: 0 } }), chunk("response_body_chunk", 2))).toContain("chunk 0");
    expect(replyProblem(reply({ requestBodyMutation: { data: null, chunkIndex: 9 } }), chunk("request_body_chunk", 1))).toBeNull();
    // The other direction's mutation is not this answer's business.
    expect(replyProblem(reply({ responseBodyMutation: { data, chunkIndex: 9 } }), chunk("request_body_chunk", 1))).toBeNull();
  });
});
