import { describe, expect, test } from "bun:test";
import { CircuitBreaker, type CircuitState } from "./breaker.ts";

function make(over: Partial<{ failureThreshold: number; successThreshold: number; timeoutMs: number; halfOpenMaxRequests: number }> = {}) {
  let t = 1000;
  const changes: string[] = [];
  const b = new CircuitBreaker({
    failureThreshold: 3,
    successThreshold: 2,
    timeoutMs: 500,
    halfOpenMaxRequests: 1,
    ...over,
    now: () => t,
    onStateChange: (from: CircuitState, to: CircuitState) => changes.push(`${from}->${to}`),
  });
  return { b, changes, advance: (ms: number) => (t += ms) };
}

const fail = (b: CircuitBreaker) => b.tryAcquire()!.failure();
const ok = (b: CircuitBreaker) => b.tryAcquire()!.success();

describe("CircuitBreaker", () => {
  test("opens after failureThreshold consecutive failures", () => {
    const { b, changes } = make();
    fail(b);
    fail(b);
    expect(b.state()).toBe("closed");
    fail(b);
    expect(b.state()).toBe("open");
    expect(changes).toEqual(["closed->open"]);
    expect(b.tryAcquire()).toBeNull();
  });

  test("a success resets the consecutive failure count", () => {
    const { b } = make();
    fail(b);
    fail(b);
    ok(b);
    fail(b);
    fail(b);
    expect(b.state()).toBe("closed");
    expect(b.consecutiveFailures()).toBe(2);
    fail(b);
    expect(b.state()).toBe("open");
  });

  test("released (neutral) permits count as neither", () => {
    const { b } = make();
    fail(b);
    fail(b);
    for (let i = 0; i < 10; i++) b.tryAcquire()!.release();
    expect(b.consecutiveFailures()).toBe(2);
    fail(b);
    expect(b.state()).toBe("open");
  });

  test("stays open until timeoutMs, then half-open", () => {
    const { b, advance, changes } = make();
    for (let i = 0; i < 3; i++) fail(b);
    expect(b.reopensAt()).toBe(1500);
    advance(499);
    expect(b.tryAcquire()).toBeNull();
    expect(b.state()).toBe("open");
    advance(1);
    expect(b.state()).toBe("half_open");
    expect(changes).toEqual(["closed->open", "open->half_open"]);
    expect(b.reopensAt()).toBeNull();
  });

  test("half-open admits at most halfOpenMaxRequests concurrent probes", () => {
    const { b, advance } = make({ halfOpenMaxRequests: 2, successThreshold: 3 });
    for (let i = 0; i < 3; i++) fail(b);
    advance(500);
    const p1 = b.tryAcquire();
    const p2 = b.tryAcquire();
    expect(p1).not.toBeNull();
    expect(p2).not.toBeNull();
    expect(b.tryAcquire()).toBeNull();
    p1!.success(); // frees a slot
    const p3 = b.tryAcquire();
    expect(p3).not.toBeNull();
    expect(b.tryAcquire()).toBeNull();
    p2!.release(); // neutral also frees a slot, without counting
    const p4 = b.tryAcquire();
    expect(p4).not.toBeNull();
    p3!.success();
    expect(b.state()).toBe("half_open"); // 2 of 3 successes
    p4!.success();
    expect(b.state()).toBe("closed");
  });

  test("closes after successThreshold consecutive successes", () => {
    const { b, advance, changes } = make();
    for (let i = 0; i < 3; i++) fail(b);
    advance(500);
    ok(b);
    expect(b.state()).toBe("half_open");
    ok(b);
    expect(b.state()).toBe("closed");
    expect(changes).toEqual(["closed->open", "open->half_open", "half_open->closed"]);
    // counts start from zero again
    fail(b);
    fail(b);
    expect(b.state()).toBe("closed");
  });

  test("a failure while half-open reopens it and restarts the timeout", () => {
    const { b, advance, changes } = make();
    for (let i = 0; i < 3; i++) fail(b);
    advance(600);
    ok(b);
    fail(b);
    expect(b.state()).toBe("open");
    expect(b.reopensAt()).toBe(1600 + 500);
    advance(499);
    expect(b.tryAcquire()).toBeNull();
    advance(1);
    expect(b.state()).toBe("half_open");
    expect(changes).toEqual(["closed->open", "open->half_open", "half_open->open", "open->half_open"]);
  });

  test("answers to calls admitted before a state change are ignored", () => {
    const { b, advance } = make();
    const late = Array.from({ length: 5 }, () => b.tryAcquire()!);
    for (let i = 0; i < 3; i++) fail(b);
    expect(b.state()).toBe("open");
    late[0]!.success();
    late[1]!.success();
    expect(b.state()).toBe("open");
    advance(500);
    expect(b.state()).toBe("half_open");
    late[2]!.failure(); // from the closed generation: must not reopen
    late[3]!.success(); // and must not count as a probe success
    late[4]!.success();
    expect(b.state()).toBe("half_open");
    const probe = b.tryAcquire();
    expect(probe).not.toBeNull(); // the probe slot was not consumed by stale permits
  });

  test("halfOpenNow: open → half-open at once (a replica reconnected); no-op otherwise", () => {
    const { b, changes } = make();
    b.halfOpenNow();
    expect(b.state()).toBe("closed");
    fail(b);
    fail(b);
    fail(b);
    expect(b.state()).toBe("open");
    b.halfOpenNow();
    expect(b.state()).toBe("half_open");
    expect(b.tryAcquire()).not.toBeNull();
    expect(b.tryAcquire()).toBeNull(); // probe slots still apply
    b.halfOpenNow();
    expect(changes).toEqual(["closed->open", "open->half_open"]);
  });

  test("a permit settles once", () => {
    const { b } = make();
    const p = b.tryAcquire()!;
    p.failure();
    p.failure();
    p.failure();
    expect(b.state()).toBe("closed");
    expect(b.consecutiveFailures()).toBe(1);
  });

  test("threshold 1 and zero timeout", () => {
    const { b } = make({ failureThreshold: 1, successThreshold: 1, timeoutMs: 0 });
    fail(b);
    // timeout 0: immediately half-open on the next look
    expect(b.state()).toBe("half_open");
    ok(b);
    expect(b.state()).toBe("closed");
  });
});
