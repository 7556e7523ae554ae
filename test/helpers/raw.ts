// A raw TCP HTTP client for tests where the exact bytes matter (fetch would normalise them).
import { connect } from "node:net";

export interface RawResult {
  text: string;
  status: number;
  closed: boolean;
}

export function rawRequest(url: string, bytes: string | Uint8Array, opts: { timeoutMs?: number; waitClose?: boolean; localAddress?: string } = {}): Promise<RawResult> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const sock = connect({ host: u.hostname, port: Number(u.port), localAddress: opts.localAddress });
    let text = "";
    let closed = false;
    const done = () => {
      clearTimeout(timer);
      sock.destroy();
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      resolve({ text, status: m ? Number(m[1]) : 0, closed });
    };
    const timer = setTimeout(done, opts.timeoutMs ?? 3000);
    sock.on("connect", () => sock.write(bytes));
    sock.on("data", (d) => {
      text += d.toString("latin1");
      if (!opts.waitClose && /\r\n\r\n/.test(text)) {
        const cl = /content-length: (\d+)/i.exec(text);
        const head = text.indexOf("\r\n\r\n") + 4;
        if (cl && text.length - head >= Number(cl[1])) setTimeout(done, 5);
      }
    });
    sock.on("close", () => {
      closed = true;
      done();
    });
    sock.on("error", () => {
      closed = true;
      done();
    });
  });
}

export function get(path: string, host = "t", extra = ""): string {
  return `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}Connection: close\r\n\r\n`;
}
