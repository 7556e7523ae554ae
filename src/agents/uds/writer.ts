// Write queue for Bun sockets (research/bun-toolchain.md §3): Bun's socket.write() may accept
// only part of a buffer and does not keep the rest, so unwritten bytes are queued here and
// flushed from the socket's `drain` callback. Frames written in the same tick are batched into
// one write (fewer syscalls); a frame is never split across batches except by a short write.

export interface WritableSocket {
  write(data: Uint8Array, byteOffset?: number, byteLength?: number): number;
}

/** Frames smaller than this are concatenated into one write when several are queued. */
const COALESCE_LIMIT = 64 * 1024;

export class WriteQueue {
  /** Buffers not yet handed to the socket, in order; `offset` bytes of the first one are written. */
  private readonly backlog: Uint8Array[] = [];
  private offset = 0;
  private scheduled = false;
  private dead = false;
  /** Bytes accepted by write() but not yet taken by the kernel. */
  queued = 0;

  constructor(
    private readonly socket: WritableSocket,
    /** Called once if the socket refuses a write (closed). */
    private readonly onError: () => void = () => {},
  ) {}

  /** Queue a frame. Returns false if the queue is already known dead. Never throws. */
  write(buf: Uint8Array): boolean {
    if (this.dead) return false;
    this.backlog.push(buf);
    this.queued += buf.length;
    if (!this.scheduled && this.backlog.length === 1) {
      this.scheduled = true;
      // setImmediate, not a microtask: frames queued by every request handled in this event-loop
      // turn go out in one write (the peer then reads them in one read), instead of one
      // syscall (and one wake-up of the peer) per frame.
      setImmediate(this.flushTask);
    }
    return true;
  }

  /** Write immediately (no batching), e.g. a v1 frame or a frame right before closing. */
  writeNow(buf: Uint8Array): boolean {
    if (!this.write(buf)) return false;
    this.flush();
    return !this.dead;
  }

  private readonly flushTask = (): void => {
    this.scheduled = false;
    this.flush();
  };

  /** Push as much as the socket takes. Call from the socket's `drain` handler. */
  flush(): void {
    const b = this.backlog;
    while (b.length > 0 && !this.dead) {
      let buf = b[0]!;
      let off = this.offset;
      // Coalesce a run of small whole frames into one buffer.
      if (off === 0 && b.length > 1 && buf.length < COALESCE_LIMIT) {
        let n = 0;
        let total = 0;
        while (n < b.length && total + b[n]!.length <= COALESCE_LIMIT) total += b[n++]!.length;
        if (n > 1) {
          const joined = new Uint8Array(total);
          let p = 0;
          for (let i = 0; i < n; i++) {
            joined.set(b[i]!, p);
            p += b[i]!.length;
          }
          b.splice(0, n, joined);
          buf = joined;
        }
      }
      let w: number;
      try {
        w = this.socket.write(buf, off, buf.length - off);
      } catch {
        w = -1;
      }
      if (w < 0) {
        this.kill();
        return;
      }
      this.queued -= w;
      off += w;
      if (off < buf.length) {
        this.offset = off; // short write: wait for drain
        return;
      }
      b.shift();
      this.offset = 0;
    }
  }

  /** Drop everything (socket gone). */
  kill(): void {
    if (this.dead) return;
    this.dead = true;
    this.backlog.length = 0;
    this.queued = 0;
    this.offset = 0;
    this.onError();
  }

  get isDead(): boolean {
    return this.dead;
  }
}
