import { describe, expect, test } from "bun:test";
import { headerValueNormalized, listAppend, listDelete, listGet, listSet, listToHeaders, type HeaderList } from "./header-list.ts";
import { applyHeaderOps, finishUpstreamRequestHeaders, upstreamRequestHeaders } from "../proxy/headers.ts";
import { applyPolicyOps } from "../proxy/policies.ts";
import type { HeaderOpConfig } from "../config/types.ts";
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

  test("agent and policy operations on the list give exactly what they give on a Headers object", async () => {
    const incoming = new Headers({ host: "example.com", "x-user": "forged", accept: "*/*", "x-keep": "k", connection: "x-keep" });
    const fwd = { peerIp: "10.0.0.1", proto: "http", hostHeader: "example.com", traceId: "t1" };
    const cases: Array<[HeaderOp[], HeaderOpConfig[]]> = [
      [[{ op: "set", name: "X-User", value: "alice" }], []],
      [[{ op: "add", name: "x-user", value: " bob " }, { op: "add", name: "X-USER", value: "carol" }], []],
      [[{ op: "remove", name: "accept" }, { op: "set", name: "x-new", value: "1" }, { op: "add", name: "x-new", value: "2" }], []],
      [[{ op: "set", name: "x-forwarded-for", value: "spoofed" }, { op: "remove", name: "via" }], []],
      [[{ op: "set", name: "x-user", value: "alice" }], [{ op: "rename", from: "x-user", to: "x-principal" }, { op: "add", name: "Accept", value: "text/html" }]],
      [[], [{ op: "set", name: "via", value: "forged" }, { op: "remove", name: "x-trace-id" }, { op: "rename", from: "accept", to: "x-accept" }]],
    ];
    for (const [ops, policies] of cases) {
      const u = upstreamRequestHeaders(incoming, fwd);
      // Reference: the same steps on a Headers object.
      const ref = listToHeaders([...u.list].filter((_, i, l) => (i % 2 === 0 ? l[i] !== "x-keep" : l[i - 1] !== "x-keep")));
      for (const op of ops) if (op.op !== "remove") ref.delete(op.name);
      applyHeaderOps(ref, ops);
      applyPolicyOps(ref, policies);
      for (const [n, v] of u.own) ref.set(n, v);
      finishUpstreamRequestHeaders(u, ops, policies);
      expect(view(u.list)).toEqual(view(ref));
      const v = view(u.list);
      expect(v["x-forwarded-for"]).toBe("10.0.0.1");
      expect(v["via"]).toBe("1.1 sentinel");
      expect(v["x-trace-id"]).toBe("t1");
      expect(v["x-keep"]).toBeUndefined(); // Connection-nominated
    }
  });
});
