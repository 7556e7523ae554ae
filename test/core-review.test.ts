// Request and response rules found by a black-box review, through the compiled binary: route
// patterns are compared in their normalised form, a request the proxy cannot forward faithfully
// is refused (empty Host, fragment in the query, DEL in a field, a GET or HEAD with a body), a
// 405 names what is allowed, and a HEAD answer keeps the upstream's Content-Length.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { runBinary, startProxy, tempDir, type ProxyProcess } from "./helpers/proxy.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { rawRequest } from "./helpers/raw.ts";
import { join } from "node:path";
import { writeFileSync } from "node:fs";

let up: Upstream;
let proxy: ProxyProcess;

beforeAll(async () => {
  up = startUpstream("u");
  proxy = await startProxy(`
system { }
listeners { listener "main" { address "127.0.0.1:0" } }
upstreams { upstream "u" { target "${up.address}" } }
routes {
  route "cafe" { priority "high"; matches { path-prefix "/café" }; builtin-handler "not-found" }
  route "tilde" { priority "high"; matches { path-prefix "/a%7eb" }; builtin-handler "not-found" }
  route "dots" { priority "high"; matches { path-prefix "/p/../q" }; builtin-handler "not-found" }
  route "space" { priority "high"; matches { path "/a b" }; builtin-handler "not-found" }
  route "at" { priority "high"; matches { path-prefix "/users/@me" }; builtin-handler "not-found" }
  route "colon" { priority "high"; matches { path-prefix "/api%3Ainternal" }; builtin-handler "not-found" }
  route "all" { matches { path-prefix "/" }; upstream "u" }
}
`);
});
afterAll(async () => {
  await proxy?.stop("SIGKILL");
  await up?.stop();
});

const send = (bytes: string) => rawRequest(proxy.url, bytes);
const seen = (marker: string) => up.requests.filter((r) => r.path.includes(marker)).length;

describe("route patterns are matched in normalised form", () => {
  test("a pattern written with non-ASCII, a lower-case escape, a dot segment or a space matches the requests it names", async () => {
    for (const target of ["/caf%C3%A9", "/caf%c3%a9/x", "/a~b", "/a%7Eb", "/q/1", "/p/../q", "/a%20b", "/users/@me", "/users/%40me/x", "/api:internal", "/api%3ainternal"]) {
      const r = await send(`GET ${target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n`);
      expect({ target, status: r.status }).toEqual({ target, status: 404 });
    }
    expect(up.requests.length).toBe(0);
  });

  test("validate rewrites such a pattern with a warning, and refuses one no request can match", () => {
    const dir = tempDir();
    const file = join(dir, "routes.kdl");
    const head = `system { }\nlisteners { listener "main" { address "127.0.0.1:0" } }\nupstreams { upstream "u" { target "127.0.0.1:9" } }\n`;
    writeFileSync(file, `${head}routes { route "c" { matches { path-prefix "/café" }; upstream "u" } }\n`);
    const ok = runBinary(["validate", "-c", file]);
    expect(ok.code).toBe(0);
    expect(ok.stdout + ok.stderr).toContain(`routes.kdl:4:`);
    expect(ok.stdout + ok.stderr).toContain(`is matched as "/caf%C3%A9"`);
    for (const [pattern, reason] of [
      ["/x%2fy", "encoded slash"],
      ["/q?a=1", "query"],
      ["/f#x", "fragment"],
    ]) {
      writeFileSync(file, `${head}routes { route "c" { matches { path-prefix "${pattern}" }; upstream "u" } }\n`);
      const bad = runBinary(["validate", "-c", file]);
      expect({ pattern, code: bad.code }).toEqual({ pattern, code: 1 });
      expect(bad.stdout + bad.stderr).toContain("can never match");
      expect(bad.stdout + bad.stderr).toContain(reason);
    }
  });
});

describe("requests that cannot be forwarded as sent are refused", () => {
  test("an empty Host is a 400 (RFC 9110 §4.2.1); an HTTP/1.0 request without Host is served", async () => {
    const r = await send("GET /empty-host HTTP/1.1\r\nHost: \r\n\r\n");
    expect(r.status).toBe(400);
    expect(seen("/empty-host")).toBe(0);
    expect((await send("GET /no-host-10 HTTP/1.0\r\n\r\n")).status).toBe(200);
  });

  test("a fragment after the query is a 400, like one in the path", async () => {
    expect((await send("GET /frag?q=1#x HTTP/1.1\r\nHost: t\r\n\r\n")).status).toBe(400);
    expect((await send("GET /frag#x HTTP/1.1\r\nHost: t\r\n\r\n")).status).toBe(400);
    expect(seen("/frag")).toBe(0);
  });

  test("DEL in a header value is a 400 (not a field-vchar)", async () => {
    expect((await send("GET /del HTTP/1.1\r\nHost: t\r\nX-B: a\x7fb\r\n\r\n")).status).toBe(400);
    expect(seen("/del")).toBe(0);
    expect((await send("GET /obs-text HTTP/1.1\r\nHost: t\r\nX-B: caf\xe9\r\nConnection: close\r\n\r\n")).status).toBe(200);
  });

  test("a GET or HEAD with a body is a 400 (the runtime drops such a body); Content-Length: 0 is fine", async () => {
    expect((await send("GET /getbody HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")).status).toBe(400);
    expect((await send("GET /getbody HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")).status).toBe(400);
    expect((await send("HEAD /getbody HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")).status).toBe(400);
    expect(seen("/getbody")).toBe(0);
    expect((await send("GET /getzero HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).status).toBe(200);
    expect((await send("GET /getzero HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).status).toBe(200);
    // Other methods keep their bodies.
    const del = await send("DELETE /x/sha HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    expect(del.status).toBe(200);
    expect(up.requests.find((r) => r.method === "DELETE")?.bodyBytes).toBe(5);
  });

  test("a 405 names the allowed methods", async () => {
    const r = await send("TRACE / HTTP/1.1\r\nHost: t\r\n\r\n");
    expect(r.status).toBe(405);
    expect(r.text).toMatch(/\r\nallow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n/i);
  });
});

test("a HEAD answer carries the upstream's Content-Length, not 0 (RFC 9110 §9.3.2)", async () => {
  // HEAD answers have no body to wait for: read until the server closes.
  const head = "HEAD /hd HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
  const direct = await rawRequest(up.url, head, { waitClose: true });
  const viaProxy = await rawRequest(proxy.url, head, { waitClose: true });
  const length = (t: string) => /\r\ncontent-length: (\d+)\r\n/i.exec(t)?.[1];
  expect(viaProxy.status).toBe(200);
  expect(length(direct.text)).toBeDefined();
  expect(length(direct.text)).not.toBe("0");
  expect(length(viaProxy.text)).toBe(length(direct.text));
  // An upstream that gives no length (a streamed, chunked answer): no made-up "0" either.
  const streamed = await rawRequest(proxy.url, "HEAD /x/bytes?n=5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", { waitClose: true });
  expect(streamed.status).toBe(200);
  expect(length(streamed.text)).toBeUndefined();
});

test("forwarding headers a client could use to claim a scheme, port, prefix or address to a trusting framework are dropped", async () => {
  const spoof = ["X-Forwarded-Port: 443", "X-Forwarded-Prefix: /admin", "X-Forwarded-Scheme: https", "X-Forwarded-Ssl: on", "X-Forwarded-Server: evil", "X-Client-IP: 6.6.6.6", "True-Client-IP: 6.6.6.6", "X-Cluster-Client-IP: 6.6.6.6"];
  const r = await send(`GET /spoof HTTP/1.1\r\nHost: t\r\n${spoof.join("\r\n")}\r\nX-Kept: yes\r\nConnection: close\r\n\r\n`);
  expect(r.status).toBe(200);
  const rec = up.requests.find((q) => q.path === "/spoof")!;
  for (const line of spoof) expect(rec.headers[line.split(":")[0]!.toLowerCase()]).toBeUndefined();
  expect(rec.headers["x-kept"]).toBe("yes");
  expect(rec.headers["x-forwarded-proto"]).toBe("http");
});
