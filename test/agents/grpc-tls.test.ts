// https:// agent endpoints: CA verification, insecure mode, mutual TLS (certificates made with
// openssl at test time, valid for 1 day, for IP 127.0.0.1).
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { serveGrpc, type ServeGrpcOptions } from "../../sdk/grpc-server.ts";
import { createGrpcTransport } from "../../src/agents/grpc/client.ts";
import type { AgentTransport, TransportOptions } from "../../src/agents/types.ts";
import { requestHeadersEvent } from "../../src/agents/test-events.ts";

const openssl = Bun.which("openssl");
let dir = "";
const pemPath = (name: string) => join(dir, name);
const pem = (name: string) => readFileSync(pemPath(name), "utf8");

function run(args: string[]): void {
  const r = spawnSync(openssl!, args, { cwd: dir, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
}

function issue(name: string, cn: string, ext: string): void {
  run(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`]);
  writeFileSync(join(dir, `${name}.ext`), ext);
  run(["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", `${name}.pem`, "-days", "1", "-extfile", `${name}.ext`]);
}

beforeAll(() => {
  if (!openssl) return;
  dir = mkdtempSync(join(tmpdir(), "sentinel-grpc-tls-"));
  run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=sentinel-test-ca"]);
  issue("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  issue("client", "sentinel-proxy", "extendedKeyUsage=clientAuth\n");
  issue("elsewhere", "elsewhere.example", "subjectAltName=IP:10.9.9.9,DNS:elsewhere.example\nextendedKeyUsage=serverAuth\n");
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const cleanup: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

const info = { agentId: "tls-agent", name: "TLS agent", version: "1" };

async function serveTls(tls: ServeGrpcOptions["tls"]): Promise<number> {
  const s = await serveGrpc("127.0.0.1:0", { info, onRequestHeaders: () => ({ requestHeaders: [{ op: "set", name: "x-tls", value: "yes" }] }) }, { tls, log: () => {} });
  cleanup.push(() => s.close());
  return s.port;
}

function transport(port: number, tls: TransportOptions["tls"]): { t: AgentTransport; logs: string[] } {
  const logs: string[] = [];
  const t = createGrpcTransport({
    endpoint: `https://127.0.0.1:${port}`,
    connectTimeoutMs: 2000,
    connections: 1,
    proxyVersion: "test",
    tls,
    log: (_l, msg, f) => logs.push(`${msg} ${JSON.stringify(f ?? {})}`),
  });
  cleanup.push(() => t.close());
  t.start();
  return { t, logs };
}

async function waitConnected(t: AgentTransport, ms = 3000): Promise<boolean> {
  const end = performance.now() + ms;
  while (!t.isConnected()) {
    if (performance.now() > end) return false;
    await Bun.sleep(10);
  }
  return true;
}

const event = requestHeadersEvent("tls-1", { metadata: { requestId: "r", timestampMs: 0 } });

describe.skipIf(!openssl)("gRPC over TLS", () => {
  test("CA file verifies the agent's certificate", async () => {
    const port = await serveTls({ cert: pem("server.pem"), key: pem("server.key") });
    const { t } = transport(port, { caCert: pemPath("ca.pem"), insecure: false });
    expect(await waitConnected(t)).toBe(true);
    const r = await t.call(event, new AbortController().signal);
    expect(r.requestHeaders).toEqual([{ op: "set", name: "x-tls", value: "yes" }]);
  });

  test("PEM text works in place of a path", async () => {
    const port = await serveTls({ cert: pem("server.pem"), key: pem("server.key") });
    const { t } = transport(port, { caCert: pem("ca.pem"), insecure: false });
    expect(await waitConnected(t)).toBe(true);
  });

  test("an unknown CA is refused unless insecure", async () => {
    const port = await serveTls({ cert: pem("server.pem"), key: pem("server.key") });
    const strict = transport(port, { insecure: false });
    expect(await waitConnected(strict.t, 600)).toBe(false);
    expect(strict.logs.some((l) => l.includes("unable to verify"))).toBe(true);
    const loose = transport(port, { insecure: true });
    expect(await waitConnected(loose.t)).toBe(true);
  });

  test("mutual TLS: the client certificate is required and accepted", async () => {
    const port = await serveTls({ cert: pem("server.pem"), key: pem("server.key"), ca: pem("ca.pem") });
    const without = transport(port, { caCert: pemPath("ca.pem"), insecure: false });
    expect(await waitConnected(without.t, 600)).toBe(false);
    expect(without.logs.some((l) => /CERTIFICATE_REQUIRED|certificate/i.test(l))).toBe(true);
    const withCert = transport(port, { caCert: pemPath("ca.pem"), clientCert: pemPath("client.pem"), clientKey: pemPath("client.key"), insecure: false });
    expect(await waitConnected(withCert.t)).toBe(true);
  });

  test("a certificate from the right CA but for another host is refused", async () => {
    const port = await serveTls({ cert: pem("elsewhere.pem"), key: pem("elsewhere.key") });
    const { t, logs } = transport(port, { caCert: pemPath("ca.pem"), insecure: false });
    expect(await waitConnected(t, 600)).toBe(false);
    expect(logs.some((l) => /does not match|altnames/i.test(l))).toBe(true);
  });

  test("a missing CA file never throws synchronously; the transport just cannot connect", async () => {
    const { t, logs } = transport(1, { caCert: join(dir, "does-not-exist.pem"), insecure: false });
    expect(await waitConnected(t, 300)).toBe(false);
    expect(logs.some((l) => l.includes("setup failed"))).toBe(true);
  });
});
