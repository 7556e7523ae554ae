// Reliability & security catalog §3 — proxy semantics (PS-01 … PS-14): what the upstream and the
// agents see (checked on the recording upstream's raw bytes and the agent's own log) and what
// the client gets back from hostile upstream answers.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash } from "node:crypto";
import { aggressivePath, startRawUpstream, type RawRecord, type RawUpstream } from "./raw-upstream.ts";
import {
  alive,
  canary,
  catalogConfig,
  exchange,
  H,
  header,
  req,
  startHostileAgent,
  startProxy,
  waitFor,
  type HostileAgent,
  type ProxyProcess,
} from "./harness.ts";

setDefaultTimeout(30_000);

let up: RawUpstream;
let agent: HostileAgent;
let proxy: ProxyProcess;

beforeAll(async () => {
  up = await startRawUpstream();
  agent = await startHostileAgent("uds");
  proxy = await startProxy(
    catalogConfig({
      upstream: up.address,
      auth: agent.kdl(),
      extraRoutes: `route "big" { matches { path-prefix "/big" }; upstream "u"; policies { max-body-size "20MB" } }`,
      // PS-05: a client connecting from 127.0.0.2 is a trusted proxy (tests bind it as localAddress).
      listener: `trusted-proxies "127.0.0.2" "10.0.0.0/8"`,
    }),
  );
  await waitFor(async () => (await fetch(`${proxy.url}/admin/warm`, { headers: { authorization: "Bearer good" } })).status === 200, 10_000, "agent ready");
});

afterAll(async () => {
  await proxy?.stop("SIGKILL");
  await agent?.kill();
  await up?.stop();
});

/** One request on its own connection; returns the exchange and what the upstream received. */
async function send(bytes: string, opts: { responses?: number } = {}): Promise<{ ex: Awaited<ReturnType<typeof exchange>>; recs: RawRecord[] }> {
  const mark = up.mark();
  const ex = await exchange(proxy.url, [bytes], { responses: opts.responses ?? 1, timeoutMs: 3000 });
  return { ex, recs: up.since(mark) };
}

const hdr = (r: RawRecord, n: string) => up.header(r, n);
const lastEvent = (uri: string) => agent.events("request_headers").filter((e) => e.uri === uri).at(-1);

describe("PS: request headers", () => {
  test("PS-01 hop-by-hop request headers never reach the upstream", async () => {
    const { ex, recs } = await send(
      req(
        "GET",
        "/public/hop",
        "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, gzip\r\nTrailer: X-T\r\nUpgrade: foo\r\nProxy-Authorization: Basic eA==\r\nHTTP2-Settings: AAA\r\n",
      ),
    );
    expect(ex.statuses).toEqual([200]);
    const r = recs[0]!;
    for (const n of ["keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization", "http2-settings"]) expect(hdr(r, n)).toEqual([]);
    // The only Connection line is the upstream hop's own persistence.
    expect(hdr(r, "connection")).toEqual(["keep-alive"]);
  });

  test("PS-02 Connection-nominated headers are removed before the proxy adds its own; the auth agent still sees Authorization", async () => {
    const a = await send(req("GET", "/public/nominated", "Connection: close, X-Secret\r\nX-Secret: 1\r\n"));
    expect(a.ex.statuses).toEqual([200]);
    expect(hdr(a.recs[0]!, "x-secret")).toEqual([]);

    const b = await send(
      req("GET", "/admin/nominated", "Connection: X-Forwarded-For, X-Request-Id, X-Auth-User, Authorization\r\nAuthorization: Bearer good\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: client-id-1\r\nX-Auth-User: mallory\r\n"),
    );
    expect(b.ex.statuses).toEqual([200]);
    const r = b.recs[0]!;
    expect(hdr(r, "x-forwarded-for")).toEqual(["127.0.0.1"]);
    expect(hdr(r, "x-auth-user")).toEqual(["alice"]);
    expect(hdr(r, "x-request-id").length).toBe(1);
    expect(hdr(r, "x-request-id")[0]).toBe(header(b.ex.responses[0]!, "x-correlation-id")[0]!);
    expect(lastEvent("/admin/nominated")!.h.authorization).toEqual(["Bearer good"]);
  });

  test("PS-03 hop-by-hop response headers never reach the client; the client connection stays keep-alive", async () => {
    const ex = await exchange(proxy.url, [req("GET", "/public/r/hop/1"), 150, req("GET", "/public/after-hop")], { responses: 2, timeoutMs: 3000 });
    expect(ex.statuses).toEqual([200, 200]);
    const first = ex.responses[0]!;
    for (const n of ["connection", "x-internal", "keep-alive", "proxy-authenticate", "upgrade", "trailer", "proxy-connection"]) expect(header(first, n)).toEqual([]);
    expect(ex.responses[1]!.body.toString()).toBe("ok GET /public/after-hop");
    expect(ex.closed).toBe(false);
  });

  test("PS-04 client address: the upstream and agents see 127.0.0.1; spoofed Forwarded / X-Real-IP removed", async () => {
    const { ex, recs } = await send(req("GET", "/admin/addr", "Authorization: Bearer good\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4;proto=https\r\nX-Real-IP: 1.2.3.4\r\n"));
    expect(ex.statuses).toEqual([200]);
    const r = recs[0]!;
    expect(hdr(r, "x-forwarded-for")).toEqual(["1.2.3.4, 127.0.0.1"]); // appended as the last hop
    expect(hdr(r, "forwarded")).toEqual([]);
    expect(hdr(r, "x-real-ip")).toEqual([]);
    const ev = lastEvent("/admin/addr")!;
    expect(ev.ip).toBe("127.0.0.1");
    expect(ev.h["x-real-ip"]).toBeUndefined();
    expect(ev.h.forwarded).toBeUndefined();
  });

  test("PS-05 forwarded chains: malformed or oversized X-Forwarded-For never crashes and never becomes the client address", async () => {
    // From an untrusted peer, X-Forwarded-For is only appended to.
    const untrusted = await send(req("GET", "/admin/xff-untrusted", "Authorization: Bearer good\r\nX-Forwarded-For: 6.6.6.6, 5.5.5.5\r\n"));
    expect(untrusted.ex.statuses).toEqual([200]);
    expect(lastEvent("/admin/xff-untrusted")!.ip).toBe("127.0.0.1");
    expect(hdr(untrusted.recs[0]!, "x-forwarded-for")).toEqual(["6.6.6.6, 5.5.5.5, 127.0.0.1"]);
    // From a trusted peer, a malformed chain is not believed: the client is the peer.
    const bad = await exchange(proxy.url, [req("GET", "/admin/xff-bad-trusted", "Authorization: Bearer good\r\nX-Forwarded-For: 1.2.3.4, garbage, [::1]:80, \r\nConnection: close\r\n")], {
      localAddress: "127.0.0.2",
    });
    expect(bad.statuses).toEqual([200]);
    expect(lastEvent("/admin/xff-bad-trusted")!.ip).toBe("127.0.0.2");
    const { ex, recs } = await send(req("GET", "/public/xff-bad", "X-Forwarded-For: 1.2.3.4, garbage, [::1]:80, \r\n"));
    expect(ex.statuses).toEqual([200]);
    expect(hdr(recs[0]!, "x-forwarded-for")[0]!.endsWith("127.0.0.1")).toBe(true);
    const big = await send(req("GET", "/public/xff-big", `X-Forwarded-For: ${"1.2.3.4, ".repeat(1100)}1.1.1.1\r\n`));
    expect(big.ex.statuses).toEqual([431]);
    expect(big.recs).toEqual([]);
    expect(alive(proxy)).toBe(true);
  });

  test("PS-05 trusted hop: from a trusted 127.0.0.2 the client is the rightmost untrusted X-Forwarded-For entry", async () => {
    // listener trusted-proxies "127.0.0.2" "10.0.0.0/8" (an extension: src/proxy/client-ip.ts)
    const cases: Array<[string, string, string]> = [
      ["/admin/xff-trusted", "X-Forwarded-For: 6.6.6.6, 5.5.5.5\r\n", "5.5.5.5"],
      ["/admin/xff-two-lines", "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 5.5.5.5\r\n", "5.5.5.5"],
      ["/admin/xff-trusted-hops", "X-Forwarded-For: 6.6.6.6, 5.5.5.5, 10.1.2.3, 10.0.0.9:443\r\n", "5.5.5.5"],
      ["/admin/xff-v6", "X-Forwarded-For: 6.6.6.6, [2001:db8::7]:5000\r\n", "2001:db8::7"],
      ["/admin/xff-all-trusted", "X-Forwarded-For: 10.9.9.9, 10.1.1.1\r\n", "10.9.9.9"],
      ["/admin/xff-none", "", "127.0.0.2"],
    ];
    for (const [path, xff, client] of cases) {
      const mark = up.mark();
      const ex = await exchange(proxy.url, [req("GET", path, `Authorization: Bearer good\r\n${xff}Connection: close\r\n`)], { localAddress: "127.0.0.2" });
      expect(ex.statuses).toEqual([200]);
      const ev = lastEvent(path)!;
      expect(ev.ip).toBe(client);
      // The chain sent upstream still ends with the peer that connected.
      expect(hdr(up.since(mark)[0]!, "x-forwarded-for")[0]!.endsWith("127.0.0.2")).toBe(true);
    }
  });

  test("PS-06 X-Forwarded-Proto/Host are the proxy's; Via is added in both directions", async () => {
    const { ex, recs } = await send(req("GET", "/public/xfp", "X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nVia: 1.0 client-proxy\r\n"));
    expect(ex.statuses).toEqual([200]);
    const r = recs[0]!;
    expect(hdr(r, "x-forwarded-proto")).toEqual(["http"]);
    expect(hdr(r, "x-forwarded-host")).toEqual(["t"]);
    expect(hdr(r, "via")).toEqual(["1.0 client-proxy, 1.1 sentinel"]);
    expect(header(ex.responses[0]!, "via")).toEqual(["1.1 sentinel"]);
  });

  test("PS-07 request ids: generated ones unique and well-formed; a valid one propagated everywhere; hostile ones replaced", async () => {
    const ids = new Set<string>();
    const N = 2000;
    for (let i = 0; i < N; i += 100) {
      const batch = await Promise.all(Array.from({ length: 100 }, () => fetch(`${proxy.url}/public/id`).then(async (r) => (await r.arrayBuffer(), r.headers.get("x-correlation-id")!))));
      for (const id of batch) {
        expect(id).toMatch(/^[A-Za-z0-9._:-]{1,128}$/);
        ids.add(id);
      }
    }
    expect(ids.size).toBe(N);

    const valid = await send(req("GET", "/admin/id", "Authorization: Bearer good\r\nX-Request-Id: abc-123\r\n"));
    expect(header(valid.ex.responses[0]!, "x-correlation-id")).toEqual(["abc-123"]);
    expect(hdr(valid.recs[0]!, "x-request-id")).toEqual(["abc-123"]);
    expect(hdr(valid.recs[0]!, "x-correlation-id")).toEqual(["abc-123"]);
    expect(lastEvent("/admin/id")!.h["x-request-id"]).toEqual(["abc-123"]);

    for (const hostile of ["<script>alert(1)</script>", "x".repeat(4000), "caf\xe9\xff"]) {
      const mark = up.mark();
      const ex = await exchange(proxy.url, [Buffer.from(req("GET", "/public/id-hostile", `X-Request-Id: ${hostile}\r\nConnection: close\r\n`), "latin1")]);
      expect(ex.statuses).toEqual([200]);
      expect(ex.text).not.toContain(hostile);
      const r = up.since(mark)[0]!;
      expect(hdr(r, "x-request-id").length).toBe(1);
      expect(hdr(r, "x-request-id")[0]).not.toBe(hostile);
      expect(hdr(r, "x-request-id")[0]).toMatch(/^[A-Za-z0-9._:-]{1,128}$/);
    }
    // Two ids: neither is trusted blindly as a list.
    const two = await send(req("GET", "/public/id-two", "X-Request-Id: a\r\nX-Request-Id: b\r\n"));
    expect(hdr(two.recs[0]!, "x-request-id").length).toBe(1);
    expect(hdr(two.recs[0]!, "x-request-id")[0]).not.toContain(",");
  });

  test("PS-08 Host normalisation for routing; X-Forwarded-Host / X-Original-URL / X-Rewrite-URL never change routing or reach the upstream", async () => {
    for (const host of ["T.", "t:80", "T"]) {
      const { ex, recs } = await send(`GET /public/host HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
      expect(ex.statuses).toEqual([200]);
      expect(hdr(recs[0]!, "host")).toEqual([host]);
    }
    const { ex, recs } = await send(req("GET", "/public/a", "X-Forwarded-Host: admin.internal\r\nX-Original-URL: /admin/x\r\nX-Rewrite-URL: /admin/x\r\n"));
    expect(ex.statuses).toEqual([200]);
    const r = recs[0]!;
    expect(r.target).toBe("/public/a");
    expect(hdr(r, "x-forwarded-host")).toEqual(["t"]);
    expect(hdr(r, "x-original-url")).toEqual([]);
    expect(hdr(r, "x-rewrite-url")).toEqual([]);
  });
});

describe("PS: paths", () => {
  const VARIANTS = [
    "/%61dmin/x",
    "/ad%6Din/x",
    "/admin%2fx",
    "/admin%2Fx",
    "/public/..%2fadmin/x",
    "/public/%2e%2e/admin/x",
    "/public/.%2e/admin/x",
    "/public/..\\admin\\x",
    "/public/..;/admin/x",
    "/public/x/..;/..;/admin/x",
    "/public;/../admin/x",
    "//admin/x",
    "/admin//x",
    "/ADMIN/x",
    "/admin%252fx",
    "/admin%00/x",
    "/admin%c0%afx",
    "/admin;jsessionid=1/x",
    "/admin/./x",
    "/admin%09/x",
    "/admin/x/..",
    "/admin.",
    "/public/%2E%2E/%41dmin/x",
    "/public/..%5cadmin/x",
    "/admin%3bx",
    "/public/%2e%2e%3b/admin/x",
  ];

  test("PS-09 path confusion: no variant reaches the upstream's /admin handler without the /admin policy", async () => {
    for (const v of VARIANTS) {
      const mark = up.mark();
      const ex = await exchange(proxy.url, [`GET ${v} HTTP/1.1\r\n${H}Connection: close\r\n\r\n`], { responses: 1 });
      const recs = up.since(mark);
      expect({ v, served: recs.filter((r) => r.servedAdmin).map((r) => r.target) }).toEqual({ v, served: [] });
      // Applied the /admin policy (the agent said 401), or rejected, or no route.
      expect({ v, status: [400, 401, 404].includes(ex.statuses[0]!) }).toEqual({ v, status: true });
    }
    // With credentials the agent allows, and the upstream receives exactly the normalised path.
    const ok = await send(req("GET", "/%61dmin//x/./y", "Authorization: Bearer good\r\n"));
    expect(ok.ex.statuses).toEqual([200]);
    expect(ok.recs[0]!.target).toBe("/admin/x/y");
    expect(lastEvent("/admin/x/y")).toBeDefined();
  });

  test("PS-10 the forwarded path is the matched path; the query is forwarded unchanged and never matched", async () => {
    const cases: Array<[string, string]> = [
      ["/public/a?x=/admin", "/public/a?x=/admin"],
      ["/public/a?x=%2e%2e", "/public/a?x=%2e%2e"],
      ["/public//b/./c/../d", "/public/b/d"],
      ["/public/%7e%61%2D", "/public/~a-"],
      ["/PUBLIC/Mixed", "/PUBLIC/Mixed"],
      ["/public/sp%20ace", "/public/sp%20ace"],
      ["/public/%e2%82%ac", "/public/%E2%82%AC"],
      ["/public/a;b=c", "/public/a;b=c"],
    ];
    for (const [sent, forwarded] of cases) {
      const { ex, recs } = await send(req("GET", sent, "Connection: close\r\n"));
      expect({ sent, status: ex.statuses[0] }).toEqual({ sent, status: 200 });
      expect({ sent, target: recs[0]!.target }).toEqual({ sent, target: forwarded });
      // What an aggressive upstream would route on stays inside the matched prefix.
      expect(aggressivePath(recs[0]!.target).startsWith("/public")).toBe(true);
    }
  });
});

describe("PS: upstream answers", () => {
  test("PS-11 hostile upstream framing → 502; the next request on the client connection is served cleanly", async () => {
    for (const mode of ["dupcl", "badchunk", "obsfold", "spcolon", "nul", "status2000", "http09", "bigheader:100000", "bigheader:1048576"]) {
      const ex = await exchange(proxy.url, [req("GET", `/public/r/${mode}/x`), 200, req("GET", "/public/after-bad")], { responses: 2, timeoutMs: 4000 });
      expect({ mode, statuses: ex.statuses }).toEqual({ mode, statuses: [502, 200] });
      expect(ex.responses[1]!.body.toString()).toBe("ok GET /public/after-bad");
      expect(ex.text).not.toContain("bbbbbbbbbb");
    }
    for (const [mode, body] of [
      ["clte", "hello"],
      ["samecl", "ab"],
    ] as const) {
      const ex = await exchange(proxy.url, [req("GET", `/public/r/${mode}/x`), 200, req("GET", "/public/after-bad")], { responses: 2, timeoutMs: 4000 });
      expect(ex.statuses[0] === 502 || ex.responses[0]!.body.toString() === body).toBe(true);
      expect(header(ex.responses[0]!, "transfer-encoding").length + header(ex.responses[0]!, "content-length").length).toBe(1);
      expect(ex.statuses[1]).toBe(200);
    }
  });

  test("PS-12 1xx, unsolicited 101, 204/304 with bodies, HEAD with a body: no poisoning on either side", async () => {
    const e103 = await send(req("GET", "/public/r/early103/x"));
    expect(e103.ex.statuses.filter((s) => s >= 200)).toEqual([200]);
    const s100 = await send(req("GET", "/public/r/s100/x"));
    expect(s100.ex.statuses.filter((s) => s >= 200)).toEqual([200]);
    const s101 = await send(req("GET", "/public/r/s101/x"));
    expect(s101.ex.statuses).toEqual([502]);
    const wsOnPublic = await send(req("GET", "/public/ws-attempt", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"));
    expect(wsOnPublic.ex.statuses).not.toContain(101);
    expect(wsOnPublic.recs).toEqual([]);
    for (const mode of ["204body", "304body"]) {
      const ex = await exchange(proxy.url, [req("GET", `/public/r/${mode}/x`), 200, req("GET", `/public/after-${mode}`), 200, req("GET", `/public/after2-${mode}`)], { responses: 3, timeoutMs: 4000 });
      expect(ex.statuses).toEqual([Number(mode.slice(0, 3)), 200, 200]);
      expect(ex.responses[0]!.body.length).toBe(0);
      expect(ex.text).not.toContain("POISON");
      expect(ex.responses[1]!.body.toString()).toBe(`ok GET /public/after-${mode}`);
      expect(ex.responses[2]!.body.toString()).toBe(`ok GET /public/after2-${mode}`);
    }
    const head = await exchange(proxy.url, [req("HEAD", "/public/r/headbody/x"), 200, req("GET", "/public/after-head")], { responses: 2, timeoutMs: 4000, headMethods: [true, false] });
    expect(head.statuses).toEqual([200, 200]);
    expect(head.text).not.toContain("POISON");
    expect(head.responses[1]!.body.toString()).toBe("ok GET /public/after-head");
  });

  test("PS-13 Set-Cookie kept separate; trailers not copied; truncation visible; 10 MB byte-identical both ways", async () => {
    const sc = await send(req("GET", "/public/r/setcookie/x"));
    expect(header(sc.ex.responses[0]!, "set-cookie")).toEqual(["a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/", "b=2; HttpOnly"]);
    const tr = await send(req("GET", "/public/r/trailers/x"));
    expect(tr.ex.responses[0]!.body.toString()).toBe("hello world");
    expect(header(tr.ex.responses[0]!, "trailer")).toEqual([]);
    expect(tr.ex.text).not.toContain("X-Checksum");
    for (const mode of ["truncate", "reset"]) {
      const ex = await exchange(proxy.url, [req("GET", `/public/r/${mode}/x`), 300, req("GET", "/public/after-trunc")], { responses: 2, timeoutMs: 3000 });
      // The client sees a truncated response and the connection is not reused.
      expect(ex.responses[0]?.complete ?? false).toBe(false);
      expect(ex.closed).toBe(true);
      expect(ex.text).not.toContain("ok GET /public/after-trunc");
    }
    const data = new Uint8Array(10 * 1024 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 12)) & 0xff;
    const sha = createHash("sha256").update(data).digest("hex");
    const upload = await fetch(`${proxy.url}/big/r/sha/x`, { method: "POST", body: data });
    expect(await upload.json()).toEqual({ sha256: sha, bytes: data.length });
    const down = await fetch(`${proxy.url}/public/r/bytes:${10 * 1024 * 1024}/x`);
    const got = new Uint8Array(await down.arrayBuffer());
    expect(got.length).toBe(10 * 1024 * 1024);
    expect(createHash("sha256").update(got).digest("hex")).toBe(createHash("sha256").update(Buffer.alloc(got.length, 0x61)).digest("hex"));
  });

  test("PS-14 error hygiene: short fixed error bodies, no stack, no paths, the proxy keeps serving", async () => {
    const cases = [
      req("GET", "/admin/e1", "X-Chaos: malformed\r\nConnection: close\r\n"),
      `GET /public/e2 HTTP/1.1\r\nHost: a:x\r\nConnection: close\r\n\r\n`,
      `GET /public/e3 HTTP/1.1\r\nHost: u@evil\r\nConnection: close\r\n\r\n`,
      req("GET", "/admin/e4", `X-Chaos: mutate:${JSON.stringify([{ op: "set", name: "x-bad", value: "v\r\nX-Injected: 1" }])}\r\nConnection: close\r\n`),
      req("GET", "/public/r/http09/x", "Connection: close\r\n"),
    ];
    for (const bytes of cases) {
      const ex = await exchange(proxy.url, [bytes]);
      const r = ex.responses[0]!;
      expect(r.status).toBeGreaterThanOrEqual(400);
      expect(r.body.length).toBeLessThan(200);
      const body = r.body.toString();
      expect(body).toMatch(/^\{"error":"[a-z ]+","request_id":"[A-Za-z0-9._:-]+"\}$/);
      expect(ex.text).not.toMatch(/<html|\/work\/|node_modules|\bat \w+ \(|X-Injected/i);
    }
    expect(await canary(proxy)).toBe(true);
  });
});
