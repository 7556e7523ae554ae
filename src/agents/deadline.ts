// One shared deadline queue for every agent call (hot path): no setTimeout per call.
//
// Design: entries are grouped by their *duration* (an agent's timeout-ms, chunk-timeout-ms, the
// health-check timeout…). Within one group, deadline = now + duration grows with insertion order
// because the clock is monotonic, so each group is a FIFO doubly linked list that is already
// sorted: schedule and cancel are O(1), with no garbage left behind by cancelled entries. The
// earliest deadline overall is the minimum over the group heads (a handful of distinct
// durations in practice). A single runtime timer is armed for that earliest deadline; it is
// re-armed only when a new entry would expire earlier than the armed time, or when it fires.
// A call that completes normally never touches the runtime timer. When the timer fires early
// (ms rounding) nothing is expired and it is re-armed for the remainder, so expiry happens no
// earlier than the deadline and, normally, within ~1–2 ms after it.

export interface TimerClock {
  /** Monotonic milliseconds. */
  now(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(handle: unknown): void;
}

export const realClock: TimerClock = {
  now: () => performance.now(),
  setTimer(fn, ms) {
    const t = setTimeout(fn, ms);
    // The deadline timer alone must not keep the process alive (sockets/servers do that).
    (t as { unref?: () => void }).unref?.();
    return t;
  },
  clearTimer(handle) {
    clearTimeout(handle as ReturnType<typeof setTimeout>);
  },
};

export interface DeadlineHandle {
  /** Absolute expiry time on the queue's clock. */
  readonly deadline: number;
  /** Idempotent; a no-op after expiry. */
  cancel(): void;
}

/** A scheduled callback; a class so that `cancel` is one shared method, not a closure per entry. */
class Entry implements DeadlineHandle {
  prev: Entry | null;
  next: Entry | null = null;
  constructor(
    readonly deadline: number,
    private readonly queue: DeadlineQueue,
    public bucket: Bucket | null, // null once expired or cancelled
    public fn: ((arg: never) => void) | null,
    public arg: unknown,
  ) {
    this.prev = bucket!.tail;
  }

  cancel(): void {
    if (this.bucket !== null) this.queue.unlink(this);
  }
}

interface Bucket {
  duration: number;
  head: Entry | null;
  tail: Entry | null;
}

export class DeadlineQueue {
  private readonly buckets = new Map<number, Bucket>();
  private count = 0;
  private timer: unknown = null;
  private armedAt = Infinity;

  constructor(private readonly clock: TimerClock = realClock) {}

  /** Pending (not yet expired, not cancelled) entries. */
  get size(): number {
    return this.count;
  }

  now(): number {
    return this.clock.now();
  }

  /**
   * Run `fn(arg)` once, `delayMs` from now, unless cancelled first. (A module-level `fn` with the
   * per-call state as `arg` keeps the hot path free of a closure per call.)
   */
  schedule(delayMs: number, fn: () => void): DeadlineHandle;
  schedule<T>(delayMs: number, fn: (arg: T) => void, arg: T): DeadlineHandle;
  schedule(delayMs: number, fn: (arg: never) => void, arg?: unknown): DeadlineHandle {
    const duration = delayMs > 0 ? Math.min(delayMs, 2 ** 31 - 1) : 0; // NaN/negative → now
    const deadline = this.clock.now() + duration;
    let bucket = this.buckets.get(duration);
    if (bucket === undefined) {
      bucket = { duration, head: null, tail: null };
      this.buckets.set(duration, bucket);
    }
    const entry = new Entry(deadline, this, bucket, fn, arg);
    if (bucket.tail !== null) bucket.tail.next = entry;
    else bucket.head = entry;
    bucket.tail = entry;
    this.count++;
    if (deadline < this.armedAt) this.arm(deadline);
    return entry;
  }

  /**
   * Run `fn(arg)` at the absolute time `at` on this queue's clock (no earlier), unless cancelled
   * first. The delay is rounded up to whole milliseconds, so that entries aimed at nearby times
   * share a duration group.
   */
  scheduleAt<T>(at: number, fn: (arg: T) => void, arg: T): DeadlineHandle {
    return this.schedule(Math.max(0, Math.ceil(at - this.clock.now())), fn, arg);
  }

  /** @internal (Entry.cancel) */
  unlink(e: Entry): void {
    const b = e.bucket!;
    if (e.prev !== null) e.prev.next = e.next;
    else b.head = e.next;
    if (e.next !== null) e.next.prev = e.prev;
    else b.tail = e.prev;
    e.prev = e.next = null;
    e.bucket = null;
    e.fn = null;
    e.arg = undefined;
    this.count--;
    if (b.head === null) this.buckets.delete(b.duration);
    // The armed timer is deliberately left alone, even when the queue becomes empty: when it
    // fires it re-arms for whatever is earliest then (or for nothing). Clearing it here would
    // make a lightly loaded agent (one call at a time) arm and clear a runtime timer per call.
    // The timer is unref'd, so an idle armed timer never keeps the process alive.
  }

  private arm(at: number): void {
    if (this.timer !== null) this.clock.clearTimer(this.timer);
    this.armedAt = at;
    const delay = Math.max(0, Math.ceil(at - this.clock.now()));
    this.timer = this.clock.setTimer(() => this.fire(), delay);
  }

  private fire(): void {
    this.timer = null;
    this.armedAt = Infinity;
    const now = this.clock.now();
    const due: Entry[] = [];
    for (const b of this.buckets.values()) {
      let e = b.head;
      while (e !== null && e.deadline <= now) {
        due.push(e);
        e = e.next;
      }
    }
    // Collect first, then run: callbacks may schedule or cancel entries.
    due.sort((a, b) => a.deadline - b.deadline);
    for (const e of due) {
      if (e.bucket === null) continue; // cancelled by an earlier callback
      const fn = e.fn!;
      const arg = e.arg;
      this.unlink(e);
      try {
        fn(arg as never);
      } catch {
        // A deadline callback must never break the queue.
      }
    }
    let earliest = Infinity;
    for (const b of this.buckets.values()) if (b.head !== null && b.head.deadline < earliest) earliest = b.head.deadline;
    if (earliest < this.armedAt) this.arm(earliest);
  }
}

/** The process-wide queue every agent uses. */
export const sharedDeadlines = new DeadlineQueue();

/** Reason attached to a signal aborted by its deadline. */
export class DeadlineExceeded extends Error {
  constructor(readonly timeoutMs: number) {
    super(`deadline of ${timeoutMs} ms exceeded`);
    this.name = "DeadlineExceeded";
  }
}

export interface CallDeadline {
  readonly signal: AbortSignal;
  /** Absolute deadline on the queue's clock. */
  readonly deadline: number;
  /** True when the deadline (not the parent signal) aborted the signal. */
  timedOut(): boolean;
  /** Resolves (never rejects) when the signal aborts, for racing against a transport call. */
  readonly aborted: Promise<void>;
  /** Cancel the deadline and detach from the parent signal. Idempotent. */
  dispose(): void;
}

type AbortListener = ((ev: Event) => void) | { handleEvent(ev: Event): void };

/**
 * The signal of one agent call: what the transports use of an AbortSignal (`aborted`, `reason`,
 * `throwIfAborted`, add/removeEventListener("abort")), in plain JS. A native AbortController and
 * its listeners cost ~2 µs per call in Bun; this costs an object and an array. Listeners run once,
 * in order, when it aborts (as with `{ once: true }`); one that throws does not stop the others.
 */
class CallSignal {
  aborted = false;
  reason: unknown = undefined;
  private listeners: AbortListener[] = [];

  addEventListener(type: string, listener: AbortListener | null): void {
    if (type === "abort" && listener !== null && !this.aborted) this.listeners.push(listener);
  }

  removeEventListener(type: string, listener: AbortListener | null): void {
    if (type !== "abort") return;
    const i = this.listeners.indexOf(listener as AbortListener);
    if (i >= 0) this.listeners.splice(i, 1);
  }

  throwIfAborted(): void {
    if (this.aborted) throw this.reason;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listeners = this.listeners;
    this.listeners = [];
    const ev = { type: "abort", target: this } as unknown as Event;
    for (const l of listeners) {
      try {
        if (typeof l === "function") l(ev);
        else l.handleEvent(ev);
      } catch {
        /* a listener's failure is its own */
      }
    }
  }
}

/**
 * How long an agent call (its parent signal) or an upstream exchange (h1client.ts) runs before it
 * listens on the client's abort signal. A listener on a native AbortSignal (the client's request
 * signal) costs about a microsecond per call in Bun, and most calls end sooner: the signal is
 * checked at this mark instead, and listened to from then on. An abort before the mark is
 * therefore acted on at the mark at the latest.
 */
export const ABORT_WATCH_AFTER_MS = 50;

/**
 * A signal that aborts at `timeoutMs` from now (reason: DeadlineExceeded) or when `parent`
 * aborts (reason: the parent's reason; noticed at ABORT_WATCH_AFTER_MS at the latest),
 * whichever comes first.
 */
export function callDeadline(timeoutMs: number, parent?: AbortSignal, queue: DeadlineQueue = sharedDeadlines): CallDeadline {
  return new Deadline(timeoutMs, parent, queue);
}

/**
 * One call's deadline. A class listening to its parent as an EventListener object (handleEvent)
 * and scheduled with itself as the argument: no closure per call on the hot path.
 */
class Deadline implements CallDeadline {
  readonly signal: AbortSignal;
  readonly deadline: number;
  readonly aborted: Promise<void>;
  private readonly ac = new CallSignal();
  private resolveAborted!: () => void;
  private handle: DeadlineHandle | null = null;
  private listening = false;
  private expired = false;

  constructor(
    private readonly timeoutMs: number,
    private readonly parent: AbortSignal | undefined,
    private readonly queue: DeadlineQueue,
  ) {
    this.signal = this.ac as unknown as AbortSignal;
    const { promise, resolve } = Promise.withResolvers<void>(); // no executor closure per call
    this.aborted = promise;
    this.resolveAborted = resolve;
    if (parent?.aborted) {
      this.ac.abort(parent.reason);
      this.resolveAborted();
      this.deadline = queue.now();
      return;
    }
    if (parent !== undefined && timeoutMs > ABORT_WATCH_AFTER_MS) {
      this.handle = queue.schedule(ABORT_WATCH_AFTER_MS, parentWatchMark, this);
      this.deadline = this.handle.deadline - ABORT_WATCH_AFTER_MS + timeoutMs;
      return;
    }
    this.handle = queue.schedule(timeoutMs, expireDeadline, this);
    this.deadline = this.handle.deadline;
    if (parent !== undefined) {
      parent.addEventListener("abort", this, { once: true });
      this.listening = true;
    }
  }

  /** The queue's callback at ABORT_WATCH_AFTER_MS: check the parent, listen to it, wait out the rest. */
  watchParent(): void {
    this.handle = null;
    if (this.ac.aborted) return;
    const parent = this.parent!;
    if (parent.aborted) {
      this.handleEvent();
      return;
    }
    parent.addEventListener("abort", this, { once: true });
    this.listening = true;
    // From the absolute deadline, so that a mark that fired late does not delay the timeout.
    this.handle = this.queue.scheduleAt(this.deadline, expireDeadline, this);
  }

  timedOut(): boolean {
    return this.expired;
  }

  /** The queue's callback: the deadline passed. */
  expire(): void {
    this.handle = null;
    if (this.ac.aborted) return;
    this.expired = true;
    this.dispose();
    this.ac.abort(new DeadlineExceeded(this.timeoutMs));
    this.resolveAborted();
  }

  /** The parent signal aborted (EventListener interface). */
  handleEvent(): void {
    this.listening = false;
    if (this.ac.aborted) return;
    this.dispose();
    this.ac.abort(this.parent!.reason);
    this.resolveAborted();
  }

  dispose(): void {
    this.handle?.cancel();
    this.handle = null;
    if (this.listening) {
      this.listening = false;
      this.parent!.removeEventListener("abort", this);
    }
  }
}

function expireDeadline(d: Deadline): void {
  d.expire();
}

function parentWatchMark(d: Deadline): void {
  d.watchParent();
}

/**
 * Wait `ms` on the queue, or until `signal` aborts (resolves false then). Used for retry backoff.
 */
export function sleep(ms: number, signal?: AbortSignal, queue: DeadlineQueue = sharedDeadlines): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise<boolean>((resolve) => {
    const onAbort = () => {
      h.cancel();
      resolve(false);
    };
    const h = queue.schedule(ms, () => {
      signal?.removeEventListener("abort", onAbort);
      resolve(true);
    });
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
