// Benchmark upstream: Bun.serve answering a fixed body. 13 bytes ("Hello, World!") by default,
// `/big` answers 64 KiB; `POST` bodies are read and discarded.
//   bun scripts/bench/upstream.ts --port N
const i = process.argv.indexOf("--port");
const port = i >= 0 ? Number(process.argv[i + 1]) : 0;
const SMALL = "Hello, World!";
const BIG = new Uint8Array(64 * 1024).fill(0x61);
const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  reusePort: false,
  development: false,
  idleTimeout: 120,
  async fetch(req) {
    if (req.body) await req.arrayBuffer();
    if (req.url.endsWith("/big")) return new Response(BIG, { headers: { "content-type": "application/octet-stream" } });
    return new Response(SMALL, { headers: { "content-type": "text/plain" } });
  },
});
process.stdout.write(`READY ${server.port}\n`);
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
