// Idle deadlines for streaming bodies without one timer per chunk: streams record their last
// activity and a single sweeper aborts those idle for longer than their limit.
export interface IdleWatch {
  last: number;
  limitMs: number;
  onIdle: () => void;
}

const watches = new Set<IdleWatch>();
let sweeper: ReturnType<typeof setInterval> | undefined;

function sweep(): void {
  const now = performance.now();
  for (const w of watches) {
    if (now - w.last > w.limitMs) {
      watches.delete(w);
      try {
        w.onIdle();
      } catch {
        /* the stream owner handles its own errors */
      }
    }
  }
  if (watches.size === 0 && sweeper) {
    clearInterval(sweeper);
    sweeper = undefined;
  }
}

export function watchIdle(limitMs: number, onIdle: () => void): IdleWatch {
  const w: IdleWatch = { last: performance.now(), limitMs, onIdle };
  watches.add(w);
  if (!sweeper) {
    sweeper = setInterval(sweep, 100);
    (sweeper as { unref?: () => void }).unref?.();
  }
  return w;
}

export function unwatchIdle(w: IdleWatch): void {
  watches.delete(w);
}

export function activeIdleWatches(): number {
  return watches.size;
}
