// The gRPC agent transport, loaded on first use: the gRPC stack (our HTTP/2 client in h2/, the
// generated protobuf code and protobuf-es) is a share of the proxy's start-up time and idle memory, and a
// proxy with only UDS agents (or none) never needs it. Until the module has loaded (one tick
// after construction, in practice) the transport behaves exactly like one that is still
// connecting: not connected, calls fail "connect" (not sent), start/close are remembered.
import { TransportError, type AgentCapabilities, type AgentEvent, type AgentReply, type AgentTransport, type TransportOptions } from "../types.ts";

type GrpcModule = typeof import("./client.ts");
let loading: Promise<GrpcModule> | null = null;

class LazyGrpcTransport implements AgentTransport {
  readonly endpoint: string;
  private inner: AgentTransport | null = null;
  private readonly listeners: Array<(connected: boolean) => void> = [];
  private startRequested = false;
  private closeRequested: { graceMs?: number; done: Promise<void>; resolve: () => void } | null = null;

  constructor(opts: TransportOptions) {
    this.endpoint = opts.endpoint;
    (loading ??= import("./client.ts")).then(
      (m) => {
        const t = m.createGrpcTransport(opts);
        this.inner = t;
        for (const l of this.listeners) t.onConnectivity(l);
        if (this.closeRequested) {
          const c = this.closeRequested;
          void t.close(c.graceMs).then(c.resolve, c.resolve);
          return;
        }
        if (this.startRequested) t.start();
      },
      (err: unknown) => opts.log?.("error", "grpc agent transport failed to load", { endpoint: opts.endpoint, error: String((err as Error)?.message ?? err) }),
    );
  }

  get capabilities(): AgentCapabilities | undefined {
    return this.inner?.capabilities;
  }

  start(): void {
    if (this.inner) this.inner.start();
    else this.startRequested = true;
  }

  isConnected(): boolean {
    return this.inner !== null && this.inner.isConnected();
  }

  call(event: AgentEvent, signal: AbortSignal): Promise<AgentReply> {
    if (this.inner) return this.inner.call(event, signal);
    return Promise.reject(new TransportError(this.closeRequested ? "closed" : "connect", `agent ${this.endpoint}: no ready gRPC stream`, true));
  }

  notify(event: AgentEvent): void {
    this.inner?.notify(event);
  }

  ping(timeoutMs: number): Promise<void> {
    if (this.inner) return this.inner.ping(timeoutMs);
    return Promise.reject(new TransportError("connect", `agent ${this.endpoint}: no ready gRPC stream`, true));
  }

  reconnect(reason: string, silentSince: number): void {
    this.inner?.reconnect?.(reason, silentSince);
  }

  onConnectivity(listener: (connected: boolean) => void): void {
    if (this.inner) this.inner.onConnectivity(listener);
    else this.listeners.push(listener);
  }

  close(graceMs?: number): Promise<void> {
    if (this.inner) return this.inner.close(graceMs);
    if (!this.closeRequested) {
      let resolve!: () => void;
      const done = new Promise<void>((r) => (resolve = r));
      this.closeRequested = { graceMs, done, resolve };
    }
    return this.closeRequested.done;
  }
}

/** A gRPC transport whose implementation (and the whole gRPC stack) loads on first use. */
export function createLazyGrpcTransport(opts: TransportOptions): AgentTransport {
  return new LazyGrpcTransport(opts);
}
