// Circuit breaker for one agent: a small pure state machine with an injectable clock.
//
//   closed    --failureThreshold consecutive failures-->            open
//   open      --timeoutMs elapsed (evaluated lazily on use)-->      half_open
//   half_open --successThreshold consecutive successes-->           closed
//   half_open --any failure-->                                      open (timeout restarts)
//   open      --halfOpenNow() (a replica reconnected)-->             half_open
//
// Callers take a permit per logical call (`tryAcquire`) and settle it exactly once with
// `success()`, `failure()` or `release()` (neutral: overload, caller abort; counts as neither).
// While open every acquire is refused. While half-open at most `halfOpenMaxRequests` permits are
// outstanding at a time. A permit only counts in the state "generation" it was taken in: answers
// to calls admitted before the circuit last changed state are ignored, so a burst of late
// successes from before an opening cannot close the circuit, and late failures cannot reopen it.

export type CircuitState = "closed" | "open" | "half_open";

export interface BreakerOptions {
  failureThreshold: number;
  successThreshold: number;
  timeoutMs: number;
  halfOpenMaxRequests: number;
  /** Monotonic milliseconds; default performance.now(). */
  now?: () => number;
  onStateChange?: (from: CircuitState, to: CircuitState) => void;
}

export interface BreakerPermit {
  success(): void;
  failure(): void;
  /** Neither success nor failure (e.g. the call was rejected for overload or aborted by the caller). */
  release(): void;
}

export class CircuitBreaker {
  private st: CircuitState = "closed";
  private generation = 0;
  private failures = 0; // consecutive, while closed
  private successes = 0; // consecutive, while half-open
  private probes = 0; // outstanding permits while half-open
  private openedAt = 0;
  private readonly now: () => number;
  private readonly failureThreshold: number;
  private readonly successThreshold: number;
  private readonly halfOpenMax: number;
  readonly timeoutMs: number;

  constructor(private readonly opts: BreakerOptions) {
    this.now = opts.now ?? (() => performance.now());
    // Config validation already rejects zero; stay safe against hand-built configs anyway.
    this.failureThreshold = Math.max(1, opts.failureThreshold);
    this.successThreshold = Math.max(1, opts.successThreshold);
    this.halfOpenMax = Math.max(1, opts.halfOpenMaxRequests);
    this.timeoutMs = Math.max(0, opts.timeoutMs);
  }

  /** Current state; moves open → half_open when the open timeout has elapsed. */
  state(): CircuitState {
    if (this.st === "open" && this.now() - this.openedAt >= this.timeoutMs) this.transition("half_open");
    return this.st;
  }

  /**
   * Open → half-open now, without waiting for the timeout (a replicated agent's endpoint that has
   * just reconnected: its probes decide at once). No-op in any other state.
   */
  halfOpenNow(): void {
    if (this.st === "open") this.transition("half_open");
  }

  /** When an open circuit will become half-open (clock of `now`), or null when not open. */
  reopensAt(): number | null {
    return this.st === "open" ? this.openedAt + this.timeoutMs : null;
  }

  /** Consecutive failures counted so far while closed. */
  consecutiveFailures(): number {
    return this.failures;
  }

  /** Admit one call, or null when the circuit refuses it (open, or half-open and full). */
  tryAcquire(): BreakerPermit | null {
    const st = this.state();
    if (st === "open") return null;
    if (st === "half_open") {
      if (this.probes >= this.halfOpenMax) return null;
      this.probes++;
    }
    return this.permit(this.generation, st === "half_open");
  }

  private permit(gen: number, probe: boolean): BreakerPermit {
    let settled = false;
    const settle = (outcome: "success" | "failure" | "release") => {
      if (settled) return;
      settled = true;
      if (gen !== this.generation) return; // admitted before the last state change
      if (probe) this.probes--;
      if (outcome === "success") this.onSuccess();
      else if (outcome === "failure") this.onFailure();
    };
    return {
      success: () => settle("success"),
      failure: () => settle("failure"),
      release: () => settle("release"),
    };
  }

  private onSuccess(): void {
    if (this.st === "closed") {
      this.failures = 0;
    } else if (this.st === "half_open") {
      if (++this.successes >= this.successThreshold) this.transition("closed");
    }
  }

  private onFailure(): void {
    if (this.st === "closed") {
      if (++this.failures >= this.failureThreshold) this.transition("open");
    } else if (this.st === "half_open") {
      this.transition("open");
    }
  }

  private transition(to: CircuitState): void {
    const from = this.st;
    if (from === to) return;
    this.st = to;
    this.generation++;
    this.failures = 0;
    this.successes = 0;
    this.probes = 0;
    if (to === "open") this.openedAt = this.now();
    this.opts.onStateChange?.(from, to);
  }
}
