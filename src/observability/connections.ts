// Open client connections per listener, counted at scrape time.
//
// Bun.serve exposes no connection count (only pendingRequests / pendingWebSockets, which miss
// idle keep-alive connections). On Linux we count the real thing: the sockets this process
// holds (inodes from /proc/self/fd) whose local port is a listener's port and whose TCP state is
// anything but LISTEN (established, or closing). Cost: one readdir + readlink per open fd and
// one read of /proc/self/net/tcp{,6}, only when /metrics is scraped. Without /proc we fall back
// to Bun's in-flight requests + WebSockets per listener.
import { readFileSync, readdirSync, readlinkSync } from "node:fs";

export interface ListenerPort {
  id: string;
  port: number;
  /** Fallback when /proc is unavailable. */
  pending(): number;
}

const TCP_LISTEN = "0A";

function socketInodes(): Set<string> | undefined {
  let fds: string[];
  try {
    fds = readdirSync("/proc/self/fd");
  } catch {
    return undefined;
  }
  const out = new Set<string>();
  for (const fd of fds) {
    let link: string;
    try {
      link = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    if (link.startsWith("socket:[")) out.add(link.slice(8, -1));
  }
  return out;
}

export function countConnections(listeners: ListenerPort[]): Array<[string, number]> {
  const inodes = socketInodes();
  if (!inodes) return listeners.map((l) => [l.id, l.pending()]);
  const byPort = new Map<number, number>();
  for (const l of listeners) byPort.set(l.port, 0);
  let readAny = false;
  for (const file of ["/proc/self/net/tcp", "/proc/self/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(file, "latin1");
    } catch {
      continue;
    }
    readAny = true;
    let nl = text.indexOf("\n"); // header line
    while (nl >= 0 && nl < text.length - 1) {
      const end = text.indexOf("\n", nl + 1);
      const line = text.slice(nl + 1, end < 0 ? text.length : end);
      nl = end;
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] === TCP_LISTEN) continue;
      const local = f[1]!;
      const port = parseInt(local.slice(local.lastIndexOf(":") + 1), 16);
      const n = byPort.get(port);
      if (n === undefined || !inodes.has(f[9]!)) continue;
      byPort.set(port, n + 1);
    }
  }
  if (!readAny) return listeners.map((l) => [l.id, l.pending()]);
  return listeners.map((l) => [l.id, byPort.get(l.port) ?? 0]);
}
