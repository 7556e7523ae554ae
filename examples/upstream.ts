// A tiny example upstream for the demo: answers JSON describing the request it received.
//   bun examples/upstream.ts [--port 3000]
const i = process.argv.indexOf("--port");
const port = i >= 0 ? Number(process.argv[i + 1]) : 3000;
const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  development: false,
  fetch(req) {
    const url = new URL(req.url);
    if (url.pathname === "/health") return new Response("ok\n");
    return Response.json({
      upstream: "demo",
      method: req.method,
      path: url.pathname + url.search,
      user: req.headers.get("x-auth-user"),
      correlation_id: req.headers.get("x-correlation-id"),
    });
  },
});
process.stdout.write(`READY http://127.0.0.1:${server.port}\n`);
