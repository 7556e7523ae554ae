import { expect, test } from "bun:test";
import { normalizePath } from "./normalize.ts";

const ok = (p: string) => {
  const r = normalizePath(p);
  if (!r.ok) throw new Error(`rejected ${p}: ${r.reason}`);
  return r.path;
};

test("clean paths pass unchanged", () => {
  expect(ok("/")).toBe("/");
  expect(ok("/api/users")).toBe("/api/users");
  expect(ok("/a/b/")).toBe("/a/b/");
});

test("unreserved escapes are decoded, others upper-cased", () => {
  expect(ok("/%61dmin")).toBe("/admin");
  expect(ok("/ad%6Din/x")).toBe("/admin/x");
  expect(ok("/a%7e")).toBe("/a~");
  expect(ok("/a%3fb")).toBe("/a%3Fb");
  expect(ok("/admin%252fx")).toBe("/admin%252fx");
});

test("dot segments and repeated slashes", () => {
  expect(ok("//admin")).toBe("/admin");
  expect(ok("/admin//x")).toBe("/admin/x");
  expect(ok("/public/../admin")).toBe("/admin");
  expect(ok("/public/%2e%2e/admin/x")).toBe("/admin/x");
  expect(ok("/public/.%2e/admin/x")).toBe("/admin/x");
  expect(ok("/admin/./x")).toBe("/admin/x");
  expect(ok("/admin/x/..")).toBe("/admin/");
  expect(ok("/../../etc")).toBe("/etc");
  expect(ok("/a/.")).toBe("/a/");
});

test("dangerous encodings are rejected", () => {
  for (const p of ["/admin%2fx", "/admin%2Fx", "/public/..%2fadmin", "/a%5cb", "/admin%00/x", "/admin%09/x", "/admin%c0%afx", "/a%zz", "/a%4", "/a b", "/a\\b", "/a#f", "/admin%3bx", "/public/..;/admin", "/p/.;x/y", "/public/%2e%2e;/admin", "/a\u00e9", "/a\ufffdb", "/a%EF%BF%BDb", "/a%ef%bf%bd"]) {
    expect(normalizePath(p).ok).toBe(false);
  }
});

test("characters fetch() would encode are encoded by the normaliser itself", () => {
  expect(ok("/a{b}")).toBe("/a%7Bb%7D");
  expect(ok('/a"<>`')).toBe("/a%22%3C%3E%60");
  expect(ok("/a;b=c/d")).toBe("/a;b=c/d");
  expect(ok("/a/..b;c/d")).toBe("/a/..b;c/d");
});
