// connection-pool max-connections: at most that many exchanges (HTTP and WebSocket) in flight to
// one target, hence at most that many connections to it. A request past the limit waits, first
// come first served, for a slot: until the wait bound its caller gives (forward.ts: the connect
// timeout), the client's abort, or at once when MAX_WAITERS already wait (every queue has a
// bound). A freed slot is handed straight to the first waiter (target.active is counted for it),
// so a newcomer cannot overtake the queue.
//
// Without the setting (maxConnections 0) takeSlot is one comparison and a count.
import { sharedDeadlines, type DeadlineHandle } from "../agents/deadline.ts";
import type { Target } from "./pool.ts";

/** Requests that may wait for one target's slot at once; beyond it they are refused (503). */
export const MAX_WAITERS = 1024;

export type SlotOutcome = "ok" | "timeout" | "aborted" | "full";

class Waiter {
  deadline: DeadlineHandle | null = null;
  done = false;

  constructor(
    readonly target: Target,
    readonly signal: AbortSignal,
    readonly resolve: (o: SlotOutcome) => void,
  ) {}

  /** The client's abort (this is its EventListener). */
  handleEvent(): void {
    this.settle("aborted");
  }

  settle(o: SlotOutcome): void {
    if (this.done) return;
    this.done = true;
    this.deadline?.cancel();
    this.deadline = null;
    this.signal.removeEventListener("abort", this);
    if (o !== "ok") {
      const q = this.target.waiters as Waiter[];
      const i = q.indexOf(this);
      if (i >= 0) q.splice(i, 1);
    }
    this.resolve(o);
  }
}

function expireWaiter(w: Waiter): void {
  w.deadline = null;
  w.settle("timeout");
}

/**
 * Take a slot on `target` (counted in target.active): "ok" at once when one is free, otherwise a
 * promise of the wait's outcome. Each "ok" is paired with one releaseSlot().
 */
export function takeSlot(target: Target, waitMs: number, signal: AbortSignal): SlotOutcome | Promise<SlotOutcome> {
  const max = target.maxConnections;
  const q = target.waiters as Waiter[] | undefined;
  if (max <= 0 || (target.active < max && (q === undefined || q.length === 0))) {
    target.active++;
    return "ok";
  }
  if (signal.aborted) return "aborted";
  if (q !== undefined && q.length >= MAX_WAITERS) return "full";
  return new Promise<SlotOutcome>((resolve) => {
    const w = new Waiter(target, signal, resolve);
    (target.waiters ??= []).push(w);
    w.deadline = sharedDeadlines.schedule(waitMs, expireWaiter, w);
    signal.addEventListener("abort", w, { once: true });
  });
}

/** Give back a slot taken with takeSlot; the first waiter, if any, gets it. */
export function releaseSlot(target: Target): void {
  if (target.active > 0) target.active--;
  const q = target.waiters as Waiter[] | undefined;
  if (q === undefined) return;
  const max = target.maxConnections;
  while (q.length > 0 && (max <= 0 || target.active < max)) {
    const w = q.shift() as Waiter;
    target.active++;
    w.settle("ok");
  }
}

/** A slot is free on `target` now, with nobody ahead in its queue. */
export function hasRoom(target: Target): boolean {
  const max = target.maxConnections;
  return max <= 0 || (target.active < max && waitingFor(target) === 0);
}

/** Requests waiting for a slot on `target`. */
export function waitingFor(target: Target): number {
  return target.waiters?.length ?? 0;
}
