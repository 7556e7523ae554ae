import { expect, test } from "bun:test";
import { createTarget, perProcessConnections, shareUpstreamConnections } from "./pool.ts";
import { MAX_WAITERS, hasRoom, releaseSlot, takeSlot, waitingFor } from "./slots.ts";

const target = (max: number) => createTarget({ address: "127.0.0.1:1", host: "127.0.0.1", port: 1, weight: 1 } as never, false, max);

test("without a limit every take succeeds at once", () => {
  const t = target(0);
  const signal = new AbortController().signal;
  for (let i = 0; i < 5000; i++) expect(takeSlot(t, 1000, signal)).toBe("ok");
  expect(t.active).toBe(5000);
});

test("past the limit, takes wait in order and get the freed slots one by one", async () => {
  const t = target(2);
  const signal = new AbortController().signal;
  expect(takeSlot(t, 5000, signal)).toBe("ok");
  expect(takeSlot(t, 5000, signal)).toBe("ok");
  const order: number[] = [];
  const waits = [1, 2, 3].map((n) => (takeSlot(t, 5000, signal) as Promise<string>).then((o) => (order.push(n), o)));
  expect(waitingFor(t)).toBe(3);
  releaseSlot(t);
  expect(t.active).toBe(2); // handed over, not freed
  expect(await waits[0]).toBe("ok");
  // a newcomer does not overtake the queue
  expect(takeSlot(t, 5000, signal)).toBeInstanceOf(Promise);
  releaseSlot(t);
  releaseSlot(t);
  expect(await Promise.all(waits.slice(1))).toEqual(["ok", "ok"]);
  expect(order).toEqual([1, 2, 3]);
});

test("a wait ends at its deadline, or when the client aborts, and leaves the queue", async () => {
  const t = target(1);
  const ac = new AbortController();
  expect(takeSlot(t, 5000, ac.signal)).toBe("ok");
  const timed = takeSlot(t, 30, new AbortController().signal) as Promise<string>;
  const aborted = takeSlot(t, 5000, ac.signal) as Promise<string>;
  expect(await timed).toBe("timeout");
  ac.abort();
  expect(await aborted).toBe("aborted");
  expect(waitingFor(t)).toBe(0);
  releaseSlot(t);
  expect(t.active).toBe(0);
});

test("the wait queue is bounded", () => {
  const t = target(1);
  const signal = new AbortController().signal;
  expect(takeSlot(t, 60_000, signal)).toBe("ok");
  for (let i = 0; i < MAX_WAITERS; i++) takeSlot(t, 60_000, signal);
  expect(takeSlot(t, 60_000, signal)).toBe("full");
  for (let i = 0; i <= MAX_WAITERS; i++) releaseSlot(t); // drain (timers cancelled)
  expect(waitingFor(t)).toBe(0);
});

test("hasRoom: a free slot with nobody queued", async () => {
  const t = target(1);
  const signal = new AbortController().signal;
  expect(hasRoom(t)).toBe(true);
  expect(takeSlot(t, 1000, signal)).toBe("ok");
  expect(hasRoom(t)).toBe(false);
  const w = takeSlot(t, 1000, signal) as Promise<string>;
  releaseSlot(t); // handed to the waiter: still no room for a newcomer
  expect(hasRoom(t)).toBe(false);
  expect(await w).toBe("ok");
  releaseSlot(t);
  expect(hasRoom(t)).toBe(true);
  expect(hasRoom(target(0))).toBe(true);
});

test("worker processes share a target's max-connections: floor(N / workers), at least 1; no limit stays none", () => {
  shareUpstreamConnections(3);
  try {
    expect([perProcessConnections(0), perProcessConnections(1), perProcessConnections(7), perProcessConnections(9)]).toEqual([0, 1, 2, 3]);
  } finally {
    shareUpstreamConnections(1);
  }
  expect(perProcessConnections(7)).toBe(7);
});
