import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { selfSignedCert } from "../../test/helpers/tls.ts";
import { keyMismatch, pemProblem } from "./pem.ts";

const f = selfSignedCert();
const cert = readFileSync(f.cert, "utf8");
const key = readFileSync(f.key, "utf8");

test("certificates: one or a bundle parse; garbage, a truncated one or a key in its place are named", () => {
  expect(pemProblem(cert, "cert")).toBeNull();
  expect(pemProblem(cert + "\n" + cert, "cert")).toBeNull();
  expect(pemProblem("this is not a pem", "cert")).toContain("no PEM certificate");
  expect(pemProblem(key, "cert")).toContain("no PEM certificate");
  const lines = cert.trim().split("\n");
  const cut = [...lines.slice(0, 4), ...lines.slice(-1)].join("\n"); // BEGIN, a few lines, END
  expect(pemProblem(cut, "cert")).toContain("certificate 1 of 1 does not parse");
  expect(pemProblem(cert + "\n" + cut, "cert")).toContain("certificate 2 of 2 does not parse");
});

test("keys: a PEM private key parses; a certificate or garbage does not", () => {
  expect(pemProblem(key, "key")).toBeNull();
  expect(pemProblem(cert, "key")).toContain("not a PEM private key");
  expect(pemProblem("garbage", "key")).toContain("not a PEM private key");
});

test("a key that belongs to another certificate is named; a matching pair is not", async () => {
  const other = selfSignedCert();
  expect(keyMismatch(cert, key)).toBeNull();
  expect(keyMismatch(cert, readFileSync(other.key, "utf8"))).toBe("the key does not belong to the certificate");
});
