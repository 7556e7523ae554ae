import { describe, expect, test } from "bun:test";
import { DeadlineQueue, DeadlineExceeded, ABORT_WATCH_AFTER_MS, callDeadline, sleep, type TimerClock } from "./deadline.ts";

/** A fake clock whose timers run when time is advanced. Counts how many runtime timers were armed. */
function fakeClock(late = 0) {
  let t = 0;
  let seq = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  const stats = { armed: 0 };
  const clock: TimerClock = {
    now: () => t,
    setTimer(fn, ms) {
      stats.armed++;
      const id = ++seq;
      timers.set(id, { at: t + ms + late, fn }); // `late`: every runtime timer fires this much late
      return id;
    },
    clearTimer(h) {
      timers.delete(h as number);
    },
  };
  function advance(ms: number) {
    const end = t + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of timers) if (e[1].at <= end && (next === undefined || e[1].at < next[1].at)) next = e;
      if (next === undefined) break;
      timers.delete(next[0]);
      t = Math.max(t, next[1].at);
      next[1].fn();
    }
    t = end;
  }
  return { clock, advance, stats, pendingTimers: () => timers.size, now: () => t };
}

describe("DeadlineQueue", () => {
  test("fires each entry at its deadline, in deadline order", () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    const fired: string[] = [];
    q.schedule(100, () => fired.push(`a@${f.now()}`));
    q.schedule(30, () => fired.push(`b@${f.now()}`));
    f.advance(10);
    q.schedule(100, () => fired.push(`c@${f.now()}`));
    q.schedule(5, () => fired.push(`d@${f.now()}`));
    expect(q.size).toBe(4);
    f.advance(200);
    expect(fired).toEqual(["d@15", "b@30", "a@100", "c@110"]);
    expect(q.size).toBe(0);
    expect(f.pendingTimers()).toBe(0);
  });

  test("cancelled entries never fire and leave nothing behind", () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    let fired = 0;
    const hs = Array.from({ length: 1000 }, () => q.schedule(50, () => fired++));
    for (const h of hs) h.cancel();
    hs[0]!.cancel(); // idempotent
    expect(q.size).toBe(0);
    f.advance(100);
    expect(fired).toBe(0);
    expect(f.pendingTimers()).toBe(0); // the idle timer fired once and was not re-armed
  });

  test("one runtime timer for many same-duration calls (hot path)", () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    // 10,000 calls, each completing after 1 ms, with a 1000 ms timeout
    for (let i = 0; i < 10_000; i++) {
      const h = q.schedule(1000, () => {
        throw new Error("must not fire");
      });
      f.advance(0.1);
      h.cancel();
    }
    // first schedule arms once; all later deadlines are later than the armed one
    expect(f.stats.armed).toBeLessThanOrEqual(2);
  });

  test("early timer wake-up re-arms instead of expiring early", () => {
    let t = 0;
    const timers: Array<{ fn: () => void; ms: number }> = [];
    const q = new DeadlineQueue({
      now: () => t,
      setTimer: (fn, ms) => timers.push({ fn, ms }),
      clearTimer: () => {},
    });
    let fired = false;
    q.schedule(10.4, () => (fired = true));
    expect(timers[0]!.ms).toBe(11);
    t = 9.9; // runtime fired early
    timers[0]!.fn();
    expect(fired).toBe(false);
    expect(timers.length).toBe(2);
    t = 10.4;
    timers[1]!.fn();
    expect(fired).toBe(true);
  });

  test("callbacks may schedule and cancel other entries", () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    const fired: string[] = [];
    let second: { cancel(): void } | null = null;
    q.schedule(10, () => {
      fired.push("first");
      second!.cancel();
      q.schedule(5, () => fired.push("third"));
    });
    second = q.schedule(10, () => fired.push("second"));
    f.advance(10);
    expect(fired).toEqual(["first"]);
    f.advance(5);
    expect(fired).toEqual(["first", "third"]);
  });

  test("a throwing callback does not break the queue", () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    let ok = false;
    q.schedule(1, () => {
      throw new Error("boom");
    });
    q.schedule(1, () => (ok = true));
    f.advance(1);
    expect(ok).toBe(true);
  });

  test("zero and negative delays fire on the next tick", () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    let n = 0;
    q.schedule(0, () => n++);
    q.schedule(-5, () => n++);
    q.schedule(Number.NaN, () => n++);
    f.advance(0);
    expect(n).toBe(3);
  });
});

describe("callDeadline", () => {
  test("aborts with DeadlineExceeded at the deadline", async () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    const d = callDeadline(100, undefined, q);
    expect(d.deadline).toBe(100);
    f.advance(99);
    expect(d.signal.aborted).toBe(false);
    f.advance(1);
    expect(d.signal.aborted).toBe(true);
    expect(d.timedOut()).toBe(true);
    expect(d.signal.reason).toBeInstanceOf(DeadlineExceeded);
    await d.aborted;
  });

  /** A native signal that counts the listeners registered on it. */
  function countingParent() {
    const parent = new AbortController();
    let adds = 0;
    const add = parent.signal.addEventListener.bind(parent.signal);
    Object.assign(parent.signal, { addEventListener: (...a: Parameters<AbortSignal["addEventListener"]>) => (adds++, add(...a)) });
    return { parent, adds: () => adds };
  }

  test("a parent abort before the watch mark wins at the mark: not a timeout, the deadline cancelled, no listener", async () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    const { parent, adds } = countingParent();
    const d = callDeadline(100, parent.signal, q);
    expect(d.deadline).toBe(100);
    expect(q.size).toBe(1);
    parent.abort(new Error("client gone"));
    f.advance(ABORT_WATCH_AFTER_MS - 1);
    expect(d.signal.aborted).toBe(false);
    f.advance(1);
    expect(d.signal.aborted).toBe(true);
    expect(d.timedOut()).toBe(false);
    expect((d.signal.reason as Error).message).toBe("client gone");
    expect(q.size).toBe(0);
    expect(adds()).toBe(0);
    await d.aborted;
  });

  test("past the mark the parent is listened to: its abort wins at once; the deadline stays where it was", async () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    const { parent, adds } = countingParent();
    const d = callDeadline(100, parent.signal, q);
    f.advance(ABORT_WATCH_AFTER_MS);
    expect(adds()).toBe(1);
    expect(d.signal.aborted).toBe(false);
    expect(q.size).toBe(1);
    parent.abort(new Error("client gone"));
    expect(d.signal.aborted).toBe(true);
    expect(d.timedOut()).toBe(false);
    expect(q.size).toBe(0);
    await d.aborted;
    // Without an abort, the deadline still expires at 100 ms.
    const d2 = callDeadline(100, new AbortController().signal, q);
    f.advance(99);
    expect(d2.signal.aborted).toBe(false);
    f.advance(1);
    expect(d2.timedOut()).toBe(true);
  });

  test("a mark that fires late does not delay the deadline", () => {
    const f = fakeClock(20); // every runtime timer 20 ms late: the mark at 70 ms, not 50
    const q = new DeadlineQueue(f.clock);
    const d = callDeadline(100, new AbortController().signal, q);
    f.advance(100 + 20 - 1);
    expect(d.timedOut()).toBe(false);
    f.advance(1); // the rest was scheduled from the deadline (100), so it too is only 20 ms late
    expect(d.timedOut()).toBe(true);
  });

  test("a call shorter than the mark listens to its parent from the start", () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    const { parent, adds } = countingParent();
    const d = callDeadline(ABORT_WATCH_AFTER_MS, parent.signal, q);
    expect(adds()).toBe(1);
    parent.abort();
    expect(d.signal.aborted).toBe(true);
  });

  test("already-aborted parent", () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    const parent = AbortSignal.abort("x");
    const d = callDeadline(100, parent, q);
    expect(d.signal.aborted).toBe(true);
    expect(q.size).toBe(0);
  });

  test("dispose cancels the deadline and detaches from the parent", () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    const parent = new AbortController();
    const d = callDeadline(100, parent.signal, q);
    d.dispose();
    d.dispose();
    expect(q.size).toBe(0);
    parent.abort();
    f.advance(200);
    expect(d.signal.aborted).toBe(false);
  });
});

describe("sleep", () => {
  test("resolves true after the delay, false on abort", async () => {
    const f = fakeClock();
    const q = new DeadlineQueue(f.clock);
    const p = sleep(20, undefined, q);
    f.advance(20);
    expect(await p).toBe(true);
    const ac = new AbortController();
    const p2 = sleep(20, ac.signal, q);
    ac.abort();
    expect(await p2).toBe(false);
    expect(q.size).toBe(0);
  });
});

describe("real clock accuracy", () => {
  test("deadlines fire within a few ms of their time", async () => {
    const q = new DeadlineQueue();
    const delays = [5, 20, 50, 50, 80];
    const lateness = await Promise.all(
      delays.map(
        (ms) =>
          new Promise<number>((resolve) => {
            const start = performance.now();
            q.schedule(ms, () => resolve(performance.now() - start - ms));
          }),
      ),
    );
    for (const l of lateness) {
      expect(l).toBeGreaterThanOrEqual(-0.001);
      expect(l).toBeLessThan(10);
    }
  });
});
