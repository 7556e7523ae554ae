import { describe, expect, test } from "bun:test";
import { headerValueNormalized, listAppend, listDelete, listGet, listSet, listToHeaders, type HeaderList } from "./header-list.ts";
import { finishUpstreamRequestHeaders, upstreamRequestHeaders, upstreamHeadersOf } from "../proxy/headers.ts";
import type { HeaderOp } from "../agents/types.ts";

/** name → value as a Headers object exposes it (sorted, duplicates joined). */
function view(h: Headers | HeaderList): Record<string, string> {
  const out: Record<string, string> = {};
  (Array.isArray(h) ? listToHeaders(h) : h).forEach((v, k) => (out[k] = v));
  return out;
}

describe("header list", () => {
  test("get, set, delete, append behave like Headers", () => {
    const l: HeaderList = ["a", "1", "b", "2", "a", "3"];
    expect(listGet(l, "a")).toBe("1");
    listDelete(l, "a");
    expect(l).toEqual(["b", "2"]);
    listSet(l, "b", "9");
    listAppend(l, "b", "10");
    listAppend(l, "c", "x");
    expect(l).toEqual(["b", "9, 10", "c", "x"]);
    expect(view(l)).toEqual({ b: "9, 10", c: "x" });
  });

  test("values are trimmed as Headers trims them", () => {
    for (const v of ["", "x", " x", "x\t", "\t x \t", "a b"]) {
      const h = new Headers();
      h.set("n", v);
      expect(headerValueNormalized(v)).toBe(h.get("n")!);
    }
  });

  test("agent operations on the list give exactly what the Headers path gives", () => {
    const incoming = new Headers({ host: "example.com", "x-user": "forged", accept: "*/*", "x-keep": "k", connection: "x-keep" });
    const fwd = { clientIp: "10.0.0.1", proto: "http", hostHeader: "example.com", traceId: "t1" };
    const cases: HeaderOp[][] = [
      [{ op: "set", name: "X-User", value: "alice" }],
      [{ op: "add", name: "x-user", value: " bob " }, { op: "add", name: "X-USER", value: "carol" }],
      [{ op: "remove", name: "accept" }, { op: "set", name: "x-new", value: "1" }, { op: "add", name: "x-new", value: "2" }],
      [{ op: "set", name: "x-forwarded-for", value: "spoofed" }, { op: "remove", name: "via" }],
    ];
    for (const ops of cases) {
      const viaList = upstreamRequestHeaders(incoming, fwd);
      finishUpstreamRequestHeaders(viaList, ops, []);
      expect(viaList.headers).toBeNull();
      // The Headers path (taken when a policy is present too): an empty-effect policy forces it.
      const viaHeaders = upstreamRequestHeaders(incoming, fwd);
      finishUpstreamRequestHeaders(viaHeaders, ops, [{ op: "remove", name: "x-not-there" }] as never);
      expect(viaHeaders.headers).not.toBeNull();
      expect(view(upstreamHeadersOf(viaList))).toEqual(view(upstreamHeadersOf(viaHeaders)));
      const v = view(upstreamHeadersOf(viaList));
      expect(v["x-forwarded-for"]).toBe("10.0.0.1");
      expect(v["via"]).toBe("1.1 sentinel");
      expect(v["x-keep"]).toBeUndefined(); // Connection-nominated
    }
  });
});
