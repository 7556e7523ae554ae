// Wire pieces shared by the hand-written test agents (chaos-uds-agent.ts, chaos-grpc-agent.ts,
// test/security/hostile-agent.ts): UDS v2 framing with a write backlog, and the gRPC pong.
import type { Socket } from "bun";
import type { AgentToProxy, ProxyToAgent } from "../../src/gen/zentinel/agent/v2/agent_v2_pb.ts";

/** One UDS v2 frame: u32 BE length (type byte + payload), type byte, payload. */
export function frame(type: number, payload: string | Uint8Array): Buffer {
  const p = typeof payload === "string" ? Buffer.from(payload, "utf8") : Buffer.from(payload);
  const b = Buffer.alloc(5 + p.length);
  b.writeUInt32BE(p.length + 1, 0);
  b[4] = type;
  p.copy(b, 5);
  return b;
}

/** The JSON of a successful v2 handshake answer for a UDS agent (JSON encoding, no extra features). */
export function handshakeJson(agentId: string, name: string, concurrency: number): string {
  return JSON.stringify({
    protocol_version: 2,
    capabilities: {
      agent_id: agentId,
      name,
      version: "0.0.1",
      supported_events: [1, 2, 3, 4, 5, 8],
      features: {
        streaming_body: true,
        websocket: false,
        guardrails: false,
        config_push: false,
        metrics_export: false,
        concurrent_requests: concurrency,
        cancellation: false,
        flow_control: false,
        health_reporting: false,
      },
      limits: { max_body_size: 10485760, max_concurrency: concurrency, preferred_chunk_size: 65536 },
    },
    success: true,
    error: null,
    encoding: "json",
  });
}

/** Per-connection state the helpers below need: unparsed input, unsent output. */
export interface FramedConn {
  buf: Buffer;
  backlog: Buffer[];
  closed: boolean;
}

/** Write `b`, or queue it (in order) behind what the socket has not taken yet; see flush. */
export function write<C extends FramedConn>(s: Socket<C>, b: Buffer): void {
  const c = s.data;
  if (c.closed) return;
  if (c.backlog.length > 0) {
    c.backlog.push(b);
    return;
  }
  const n = s.write(b);
  if (n < 0) return;
  if (n < b.length) c.backlog.push(b.subarray(n));
}

/** On drain: write out the backlog as far as the socket takes it. */
export function flush<C extends FramedConn>(s: Socket<C>): void {
  const c = s.data;
  while (c.backlog.length > 0) {
    const b = c.backlog[0]!;
    const n = s.write(b);
    if (n < 0) return;
    if (n < b.length) {
      c.backlog[0] = b.subarray(n);
      return;
    }
    c.backlog.shift();
  }
}

/** Append `chunk` to the connection's input and hand every whole frame in it to `onFrame`. */
export function readFrames(c: FramedConn, chunk: Uint8Array, onFrame: (type: number, payload: Buffer) => void): void {
  c.buf = c.buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([c.buf, chunk]);
  while (c.buf.length >= 5) {
    const len = c.buf.readUInt32BE(0);
    if (c.buf.length < 4 + len) break;
    const type = c.buf[4]!;
    const payload = c.buf.subarray(5, 4 + len);
    c.buf = c.buf.subarray(4 + len);
    onFrame(type, payload);
  }
}

/** The gRPC agent's answer to a ping. */
export function pong(msg: Extract<ProxyToAgent["message"], { case: "ping" }>["value"]): AgentToProxy {
  return {
    $typeName: "zentinel.agent.v2.AgentToProxy",
    message: { case: "pong", value: { $typeName: "zentinel.agent.v2.Pong", sequence: msg.sequence, pingTimestampMs: msg.timestampMs, timestampMs: BigInt(Date.now()) } },
  };
}
