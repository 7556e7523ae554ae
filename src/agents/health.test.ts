import { describe, expect, test } from "bun:test";
import { DeadlineQueue, type TimerClock } from "./deadline.ts";
import { HealthMonitor, type HealthCheckSettings } from "./health.ts";

function fakeClock() {
  let t = 0;
  let seq = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  const clock: TimerClock = {
    now: () => t,
    setTimer(fn, ms) {
      const id = ++seq;
      timers.set(id, { at: t + ms, fn });
      return id;
    },
    clearTimer(h) {
      timers.delete(h as number);
    },
  };
  /** Advance time, running due timers and letting promise callbacks settle in between. */
  async function advance(ms: number) {
    const end = t + ms;
    for (;;) {
      await flush();
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of timers) if (e[1].at <= end && (next === undefined || e[1].at < next[1].at)) next = e;
      if (next === undefined) break;
      timers.delete(next[0]);
      t = Math.max(t, next[1].at);
      next[1].fn();
    }
    t = end;
    await flush();
  }
  return { clock, advance, pending: () => timers.size };
}
const flush = async () => {
  for (let i = 0; i < 10; i++) await Promise.resolve();
};

type PingMode = "ok" | "fail" | "hang";
function setup(over: Partial<HealthCheckSettings> = {}) {
  const f = fakeClock();
  const deadlines = new DeadlineQueue(f.clock);
  const state = { mode: "ok" as PingMode, connected: true, pings: 0 };
  const changes: Array<[boolean, string]> = [];
  const unanswered: number[] = [];
  const m = new HealthMonitor(
    { enabled: true, intervalMs: 100, timeoutMs: 20, healthyThreshold: 2, unhealthyThreshold: 3, ...over },
    {
      ping: () => {
        state.pings++;
        if (state.mode === "ok") return Promise.resolve();
        if (state.mode === "fail") return Promise.reject(new Error("no pong"));
        return new Promise<void>(() => {});
      },
      isConnected: () => state.connected,
      onChange: (p, why) => changes.push([p, why]),
      onUnanswered: (since) => unanswered.push(since),
      clock: f.clock,
      deadlines,
    },
  );
  return { m, f, state, changes, unanswered };
}

describe("HealthMonitor", () => {
  test("onUnanswered: at the flip and after every further unhealthyThreshold failures, with the first ping of that run; never while pings answer", async () => {
    const { m, f, state, changes, unanswered } = setup({ unhealthyThreshold: 3 });
    m.start();
    await f.advance(250); // pings at 0, 100, 200 answered
    expect(unanswered).toEqual([]);
    state.mode = "fail";
    await f.advance(300); // fail at 300, 400, 500 → flip
    expect(changes).toEqual([[false, "3 consecutive pings failed: no pong"]]);
    expect(unanswered).toEqual([300]);
    await f.advance(300); // 600, 700, 800: another run while failing, no second flip
    expect(changes.length).toBe(1);
    expect(unanswered).toEqual([300, 600]);
    state.mode = "ok";
    await f.advance(300);
    expect(m.passing()).toBe(true);
    expect(unanswered).toEqual([300, 600]);
    m.stop();
  });

  test("disabled: always passing, no timers, no pings", async () => {
    const { m, f, state } = setup({ enabled: false });
    m.start();
    m.connectivity(false);
    expect(m.passing()).toBe(true);
    await f.advance(1000);
    expect(state.pings).toBe(0);
    expect(f.pending()).toBe(0);
  });

  test("pings every intervalMs, first one at start", async () => {
    const { m, f, state } = setup();
    m.start();
    await f.advance(0);
    expect(state.pings).toBe(1);
    await f.advance(99);
    expect(state.pings).toBe(1);
    await f.advance(1);
    expect(state.pings).toBe(2);
    await f.advance(300);
    expect(state.pings).toBe(5);
    m.stop();
    await f.advance(1000);
    expect(state.pings).toBe(5);
    expect(f.pending()).toBe(0);
  });

  test("unhealthyThreshold consecutive failures → failing; healthyThreshold successes → passing", async () => {
    const { m, f, state, changes } = setup();
    m.start();
    await f.advance(0);
    state.mode = "fail";
    await f.advance(100); // 1st failure
    await f.advance(100); // 2nd
    expect(m.passing()).toBe(true);
    await f.advance(100); // 3rd
    expect(m.passing()).toBe(false);
    expect(changes.length).toBe(1);
    expect(changes[0]![1]).toContain("3 consecutive pings failed");
    state.mode = "ok";
    await f.advance(100); // 1st success
    expect(m.passing()).toBe(false);
    await f.advance(100); // 2nd
    expect(m.passing()).toBe(true);
    expect(changes.map((c) => c[0])).toEqual([false, true]);
  });

  test("a success in between resets the failure count", async () => {
    const { m, f, state } = setup();
    m.start();
    await f.advance(0);
    for (const mode of ["fail", "fail", "ok", "fail", "fail"] as PingMode[]) {
      state.mode = mode;
      await f.advance(100);
    }
    expect(m.passing()).toBe(true);
  });

  test("a hung ping counts as failed after timeoutMs; pings do not overlap", async () => {
    const { m, f, state } = setup({ unhealthyThreshold: 2 });
    state.mode = "hang";
    m.start();
    await f.advance(19);
    expect(state.pings).toBe(1);
    await f.advance(81); // timed out at 20, next ping at 100
    expect(state.pings).toBe(2);
    await f.advance(20);
    expect(m.passing()).toBe(false);
  });

  test("interval longer than the check: next ping starts interval after the previous start", async () => {
    const { m, f, state } = setup({ intervalMs: 50, timeoutMs: 80 });
    state.mode = "hang";
    m.start();
    await f.advance(0);
    expect(state.pings).toBe(1);
    await f.advance(79);
    expect(state.pings).toBe(1); // still in flight: no overlap
    await f.advance(1); // timed out at 80 → next one right away (80 > 50)
    expect(state.pings).toBe(2);
  });

  test("lost connection fails at once; reconnect pings at once", async () => {
    const { m, f, state, changes } = setup();
    m.start();
    await f.advance(0);
    state.connected = false;
    m.connectivity(false);
    expect(m.passing()).toBe(false);
    expect(changes).toEqual([[false, "connection lost"]]);
    const before = state.pings;
    await f.advance(500);
    expect(state.pings).toBe(before); // no pings while disconnected
    state.connected = true;
    m.connectivity(true);
    await f.advance(0);
    expect(state.pings).toBe(before + 1);
    expect(m.passing()).toBe(false); // 1 of 2
    await f.advance(100);
    expect(m.passing()).toBe(true);
  });

  test("a ping answered after the connection dropped is ignored, and the check resumes on reconnect", async () => {
    const f = fakeClock();
    const deadlines = new DeadlineQueue(f.clock);
    let connected = true;
    const pending: Array<() => void> = [];
    const changes: boolean[] = [];
    const m = new HealthMonitor(
      { enabled: true, intervalMs: 100, timeoutMs: 50, healthyThreshold: 1, unhealthyThreshold: 1 },
      {
        ping: () => new Promise<void>((r) => pending.push(r)),
        isConnected: () => connected,
        onChange: (p) => changes.push(p),
        clock: f.clock,
        deadlines,
      },
    );
    m.start();
    await f.advance(0);
    expect(pending.length).toBe(1);
    connected = false;
    m.connectivity(false);
    expect(m.passing()).toBe(false);
    pending[0]!(); // the stale ping answers now
    await f.advance(0);
    expect(m.passing()).toBe(false); // ignored (healthyThreshold 1 would otherwise flip it)
    expect(pending.length).toBe(1); // and no new ping while disconnected
    await f.advance(300);
    expect(pending.length).toBe(1);
    connected = true;
    m.connectivity(true);
    await f.advance(0);
    expect(pending.length).toBe(2);
    pending[1]!();
    await f.advance(0);
    expect(m.passing()).toBe(true);
    expect(changes).toEqual([false, true]);
    m.stop();
  });
});
