// Active health check for one agent (config `health-check { … }`), transport-independent.
//
// - Disabled: always passing; no timers.
// - Enabled: while the transport is connected, ping it every `intervalMs` (the next ping starts
//   `intervalMs` after the previous one started, never overlapping); each ping must answer within
//   `timeoutMs`. `unhealthyThreshold` consecutive failures → failing; `healthyThreshold`
//   consecutive successes → passing. The check starts out passing (a freshly connected agent is
//   trusted until its pings say otherwise).
// - A lost connection (`connectivity(false)`) makes the check fail at once and resets both
//   counters; pings in flight at that moment are ignored. On reconnect (`connectivity(true)`) a
//   ping is sent immediately, so recovery takes (healthyThreshold - 1) × intervalMs + ping time.
// - While disconnected no pings are sent (the state is already failing).

import { DeadlineQueue, realClock, sharedDeadlines, type TimerClock } from "./deadline.ts";

export interface HealthCheckSettings {
  enabled: boolean;
  intervalMs: number;
  timeoutMs: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
}

export interface HealthMonitorDeps {
  ping(timeoutMs: number): Promise<void>;
  isConnected(): boolean;
  /** Called on every passing/failing flip, with a short reason. */
  onChange(passing: boolean, reason: string): void;
  /**
   * Called each time `unhealthyThreshold` pings in a row have failed while connected (at the
   * flip to failing, then again after every further run of as many, while it stays failing).
   * `since` is when the first ping of that run was sent (the clock's time): a connection that
   * received nothing at all since then is silent, not merely slow.
   */
  onUnanswered?(since: number, reason: string): void;
  /** Timers for the ping loop (default: real, unref'd). */
  clock?: TimerClock;
  /** Queue for the ping timeout guard (default: the shared one). */
  deadlines?: DeadlineQueue;
}

export class HealthMonitor {
  private pass = true;
  private successes = 0;
  private failures = 0;
  /** When the first ping of the current failure streak was sent. */
  private streakStart = 0;
  private epoch = 0; // bumped on connectivity changes; stale ping results are ignored
  private timer: unknown = null;
  private inFlight = false;
  private running = false;
  private readonly clock: TimerClock;
  private readonly deadlines: DeadlineQueue;
  private readonly interval: number;
  private readonly healthyThreshold: number;
  private readonly unhealthyThreshold: number;

  constructor(
    readonly settings: HealthCheckSettings,
    private readonly deps: HealthMonitorDeps,
  ) {
    this.clock = deps.clock ?? realClock;
    this.deadlines = deps.deadlines ?? sharedDeadlines;
    this.interval = Math.max(1, settings.intervalMs);
    this.healthyThreshold = Math.max(1, settings.healthyThreshold);
    this.unhealthyThreshold = Math.max(1, settings.unhealthyThreshold);
  }

  /** True when the check is disabled or currently passing. */
  passing(): boolean {
    return !this.settings.enabled || this.pass;
  }

  start(): void {
    if (!this.settings.enabled || this.running) return;
    this.running = true;
    if (this.deps.isConnected()) this.check();
    else this.schedule(this.interval);
  }

  stop(): void {
    this.running = false;
    this.epoch++;
    if (this.timer !== null) {
      this.clock.clearTimer(this.timer);
      this.timer = null;
    }
  }

  /** Feed transport connectivity changes. */
  connectivity(connected: boolean): void {
    if (!this.settings.enabled) return;
    this.epoch++;
    this.successes = 0;
    this.failures = 0;
    if (!connected) {
      this.set(false, "connection lost");
      return;
    }
    if (this.running && !this.inFlight) this.check();
    // If a (now stale) ping is in flight, its completion starts the next check right away.
  }

  private schedule(ms: number): void {
    if (!this.running) return;
    if (this.timer !== null) this.clock.clearTimer(this.timer);
    this.timer = this.clock.setTimer(() => {
      this.timer = null;
      this.check();
    }, Math.max(0, ms));
  }

  private check(): void {
    if (!this.running || this.inFlight) return;
    if (this.timer !== null) {
      this.clock.clearTimer(this.timer);
      this.timer = null;
    }
    if (!this.deps.isConnected()) {
      this.schedule(this.interval);
      return;
    }
    const epoch = this.epoch;
    const started = this.clock.now();
    this.inFlight = true;
    this.pingWithTimeout().then(
      () => this.settle(epoch, started, true, ""),
      (err) => this.settle(epoch, started, false, err instanceof Error ? err.message : String(err)),
    );
  }

  private pingWithTimeout(): Promise<void> {
    const timeoutMs = this.settings.timeoutMs;
    return new Promise<void>((resolve, reject) => {
      const guard = this.deadlines.schedule(timeoutMs, () => reject(new Error(`ping timed out after ${timeoutMs} ms`)));
      let p: Promise<void>;
      try {
        p = this.deps.ping(timeoutMs);
      } catch (err) {
        p = Promise.reject(err);
      }
      p.then(
        () => {
          guard.cancel();
          resolve();
        },
        (err) => {
          guard.cancel();
          reject(err);
        },
      );
    });
  }

  private settle(epoch: number, started: number, ok: boolean, why: string): void {
    this.inFlight = false;
    if (!this.running) return;
    if (epoch !== this.epoch) {
      // Connectivity changed while pinging: ignore this result and check again now.
      this.check();
      return;
    }
    if (ok) {
      this.failures = 0;
      if (!this.pass && ++this.successes >= this.healthyThreshold) this.set(true, `${this.successes} consecutive pings answered`);
    } else {
      this.successes = 0;
      if (this.failures === 0) this.streakStart = started;
      if (++this.failures >= this.unhealthyThreshold) {
        const reason = `${this.failures} consecutive pings failed: ${why}`;
        const since = this.streakStart;
        this.failures = 0; // the next run of failures starts counting afresh
        this.set(false, reason);
        this.deps.onUnanswered?.(since, reason);
      }
    }
    this.schedule(this.interval - (this.clock.now() - started));
  }

  private set(pass: boolean, reason: string): void {
    if (this.pass === pass) return;
    this.pass = pass;
    this.successes = 0;
    this.failures = 0;
    this.deps.onChange(pass, reason);
  }
}
