// A minimal single-consumer push queue that Connect can read as a request (or response) stream.
//
// Connect calls `throw()` on stream iterables (bun-toolchain.md §2), so this implements the full
// AsyncIterator protocol. Unlike createWritableIterable from @connectrpc/connect/protocol, a push
// is synchronous and costs no promise when the reader is behind (that one awaits one promise per
// queued item on every write, which is quadratic with hundreds of calls in flight).

export class PushQueue<T> implements AsyncIterableIterator<T> {
  private items: (T | undefined)[] = [];
  private head = 0;
  private waiter: ((r: IteratorResult<T>) => void) | null = null;
  private ended = false;

  /** Items queued and not yet taken by the reader. */
  get size(): number {
    return this.items.length - this.head;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Queue one item. Returns false (and drops it) once the queue has ended. */
  push(value: T): boolean {
    if (this.ended) return false;
    const w = this.waiter;
    if (w !== null) {
      this.waiter = null;
      w({ value, done: false });
    } else {
      this.items.push(value);
    }
    return true;
  }

  /** No more items: the reader sees the end after draining what is queued. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.waiter !== null && this.size === 0) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: undefined, done: true });
    }
  }

  /** End now and drop anything still queued. */
  clear(): void {
    this.items = [];
    this.head = 0;
    this.end();
    if (this.waiter !== null) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<T>> {
    if (this.head < this.items.length) {
      const value = this.items[this.head] as T;
      this.items[this.head++] = undefined;
      if (this.head === this.items.length) {
        this.items.length = 0;
        this.head = 0;
      } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  return(): Promise<IteratorResult<T>> {
    this.clear();
    return Promise.resolve({ value: undefined, done: true });
  }

  throw(_err?: unknown): Promise<IteratorResult<T>> {
    this.clear();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
