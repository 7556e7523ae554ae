// Listener mTLS (`tls { client-auth #true; ca-file "…" }`) through the compiled binary: a client
// certificate signed by the configured CA is served; none, or one from another CA, fails the handshake.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { runBinary, startProxy, tempDir, type ProxyProcess } from "./helpers/proxy.ts";
import { selfSignedCert } from "./helpers/tls.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

function openssl(args: string[]): void {
  const r = Bun.spawnSync(["openssl", ...args], { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr.toString()}`);
}

/** A CA and a client certificate it signs, in `dir`. */
function clientCa(dir: string, name: string): { ca: string; cert: string; key: string } {
  const ca = join(dir, `${name}-ca.pem`);
  const caKey = join(dir, `${name}-ca.key`);
  const key = join(dir, `${name}-client.key`);
  const csr = join(dir, `${name}-client.csr`);
  const cert = join(dir, `${name}-client.pem`);
  openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", caKey, "-out", ca, "-days", "1", "-subj", `/CN=${name} test CA`]);
  openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", `/CN=${name} client`]);
  openssl(["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", caKey, "-CAcreateserial", "-out", cert, "-days", "1"]);
  return { ca, cert, key };
}

let up: Upstream;
let proxy: ProxyProcess;
let good: { ca: string; cert: string; key: string };
let rogue: { ca: string; cert: string; key: string };
let dir: string;

beforeAll(async () => {
  up = startUpstream("u");
  dir = tempDir();
  const server = selfSignedCert();
  good = clientCa(dir, "good");
  rogue = clientCa(dir, "rogue");
  proxy = await startProxy(
    `
system { }
listeners {
  listener "plain" { address "127.0.0.1:0" }
  listener "mtls" { address "127.0.0.1:0"; protocol "https"; tls { cert-file "${server.cert}"; key-file "${server.key}"; ca-file "${good.ca}"; client-auth #true } }
}
upstreams { upstream "u" { target "${up.address}" } }
routes { route "all" { priority "low"; upstream "u" } }
`,
    { dir },
  );
});

afterAll(async () => {
  await proxy?.stop("SIGKILL");
  await up?.stop();
});

const tlsFetch = (tls: Record<string, unknown>) => fetch(`${proxy.urls[1]!}/m`, { tls: { rejectUnauthorized: false, ...tls } } as RequestInit);

test("a client certificate signed by ca-file is served", async () => {
  const res = await tlsFetch({ cert: Bun.file(good.cert), key: Bun.file(good.key) });
  expect(res.status).toBe(200);
  expect(await res.text()).toBe("ok u");
});

test("without a client certificate the handshake fails, and nothing reaches the upstream", async () => {
  const before = up.requests.length;
  await expect(tlsFetch({})).rejects.toThrow();
  expect(up.requests.length).toBe(before);
});

test("a client certificate from another CA is refused", async () => {
  const before = up.requests.length;
  await expect(tlsFetch({ cert: Bun.file(rogue.cert), key: Bun.file(rogue.key) })).rejects.toThrow();
  expect(up.requests.length).toBe(before);
  // The proxy keeps serving: a good client still gets through, and so does the plain listener.
  expect((await tlsFetch({ cert: Bun.file(good.cert), key: Bun.file(good.key) })).status).toBe(200);
  expect((await fetch(`${proxy.url}/p`)).status).toBe(200);
});

test("validate: client-auth without ca-file is a located error; ca-file without client-auth warns", async () => {
  const server = selfSignedCert();
  const bad = join(dir, "bad.kdl");
  await Bun.write(bad, `system { }\nlisteners { listener "m" { address "127.0.0.1:0"; protocol "https"; tls { cert-file "${server.cert}"; key-file "${server.key}"; client-auth #true } } }\nupstreams { upstream "u" { target "127.0.0.1:1" } }\nroutes { route "all" { priority "low"; upstream "u" } }\n`);
  const r = runBinary(["validate", "-c", bad]);
  expect(r.code).not.toBe(0);
  expect(r.stderr).toContain("bad.kdl:2:");
  expect(r.stderr).toContain("client-auth #true needs ca-file");
  const warn = join(dir, "warn.kdl");
  await Bun.write(warn, `system { }\nlisteners { listener "m" { address "127.0.0.1:0"; protocol "https"; tls { cert-file "${server.cert}"; key-file "${server.key}"; ca-file "${good.ca}" } } }\nupstreams { upstream "u" { target "127.0.0.1:1" } }\nroutes { route "all" { priority "low"; upstream "u" } }\n`);
  const w = runBinary(["validate", "-c", warn]);
  expect(w.code).toBe(0);
  expect(w.stderr + w.stdout).toContain("ca-file has no effect without client-auth #true");
});

test("validate names a ca-file that is not a certificate, and a key-file that does not match cert-file", async () => {
  const server = selfSignedCert();
  const other = selfSignedCert();
  const garbage = join(dir, "garbage.pem");
  await Bun.write(garbage, "this is not a pem\n");
  const cfg = join(dir, "garbage.kdl");
  await Bun.write(
    cfg,
    `system { }\nlisteners {\n  listener "m" { address "127.0.0.1:0"; protocol "https"; tls { cert-file "${server.cert}"; key-file "${server.key}"; ca-file "${garbage}"; client-auth #true } }\n  listener "n" { address "127.0.0.1:0"; protocol "https"; tls { cert-file "${server.cert}"; key-file "${other.key}" } }\n}\nupstreams { upstream "u" { target "127.0.0.1:1" } }\nroutes { route "all" { priority "low"; upstream "u" } }\n`,
  );
  const r = runBinary(["validate", "-c", cfg]);
  expect(r.code).not.toBe(0);
  expect(r.stderr).toMatch(/garbage\.kdl:3:\d+: listener 'm' tls: ca-file '.*garbage\.pem': no PEM certificate/);
  expect(r.stderr).toMatch(/garbage\.kdl:4:\d+: listener 'n' tls: key-file '.*' and cert-file '.*' do not match/);
});

