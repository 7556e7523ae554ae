import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createSink } from "./access-log.ts";

async function until(fn: () => boolean, ms = 2_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error("timed out");
    await Bun.sleep(5);
  }
}

test("flushBytes (the logs' buffer-size) writes once that many bytes are buffered, without waiting for the timer", async () => {
  const file = join(mkdtempSync(join(tmpdir(), "sink-")), "a.log");
  const sink = createSink("test", file, { flushBytes: 10, flushMs: 60_000 });
  sink.write("abc"); // 4 bytes with its newline: held (the timer is a minute away)
  sink.write("defghijkl"); // 14 bytes in all: written now
  await until(() => readFileSync(file, "utf8") === "abc\ndefghijkl\n");
  sink.write("x");
  await sink.close();
  expect(readFileSync(file, "utf8")).toBe("abc\ndefghijkl\nx\n");
});

test("the largest flushBytes (1 MiB) loses nothing to a burst that fills it within the 100 ms", async () => {
  const file = join(mkdtempSync(join(tmpdir(), "sink-")), "b.log");
  const sink = createSink("test", file, { flushBytes: 1024 * 1024 });
  const line = "x".repeat(999);
  for (let i = 0; i < 1500; i++) sink.write(line); // 1.5 MB at once
  await sink.close();
  expect(readFileSync(file, "utf8").split("\n").filter(Boolean).length).toBe(1500);
});
