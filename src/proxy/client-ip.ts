// The client address behind trusted proxies (listener `trusted-proxies`, an extension: nginx's
// set_real_ip_from with real_ip_recursive on, Envoy's xff_num_trusted_hops by address).
//
// Only when the TCP peer is a trusted proxy is X-Forwarded-For read, from the right: trusted hops
// are skipped and the first untrusted address is the client; when every hop is trusted, the
// leftmost one. An entry that is not an IP address (with an optional port, as some load balancers
// append) makes the whole chain untrustworthy: the client is then the peer itself. A client can
// therefore never choose its address by sending X-Forwarded-For, unless it connects from a
// trusted address. The X-Forwarded-For sent upstream still appends the peer (headers.ts).
import { BlockList, isIP } from "node:net";
import type { ListenerConfig } from "../config/types.ts";

const sets = new WeakMap<ListenerConfig, BlockList>();
const PORT = /^\d{1,5}$/;
const PREFIX = /^\d{1,3}$/;

/** "10.0.0.0/8", "::1", "fd00::/8" → [address, prefix, family], or null when invalid. */
export function parseCidr(text: string): [string, number, "ipv4" | "ipv6"] | null {
  const slash = text.indexOf("/");
  const address = slash < 0 ? text : text.slice(0, slash);
  const fam = isIP(address);
  if (fam === 0) return null;
  const max = fam === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!PREFIX.test(p) || Number(p) > max) return null;
    prefix = Number(p);
  }
  return [address, prefix, fam === 4 ? "ipv4" : "ipv6"];
}

/** The listener's trusted proxies as a matcher (built once per listener), or null when it has none. */
export function trustedProxies(listener: ListenerConfig): BlockList | null {
  const list = listener.trustedProxies;
  if (list === undefined || list.length === 0) return null;
  let set = sets.get(listener);
  if (set === undefined) {
    set = new BlockList();
    for (const text of list) {
      const c = parseCidr(text);
      if (c) set.addSubnet(c[0], c[1], c[2]);
    }
    sets.set(listener, set);
  }
  return set;
}

function isTrusted(set: BlockList, address: string): boolean {
  const fam = isIP(address);
  return fam !== 0 && set.check(address, fam === 4 ? "ipv4" : "ipv6");
}

/** One X-Forwarded-For entry as an address ("1.2.3.4", "1.2.3.4:80", "::1", "[::1]:80"), or null. */
function entryAddress(raw: string): string | null {
  let s = raw.trim();
  if (s.startsWith("[")) {
    const end = s.indexOf("]");
    if (end < 0) return null;
    const rest = s.slice(end + 1);
    if (rest !== "" && (rest[0] !== ":" || !PORT.test(rest.slice(1)) || Number(rest.slice(1)) > 65_535)) return null;
    s = s.slice(1, end);
    return isIP(s) === 6 ? s : null;
  }
  const colon = s.indexOf(":");
  if (colon >= 0 && s.indexOf(":", colon + 1) < 0) {
    // IPv4 with a port
    if (!PORT.test(s.slice(colon + 1)) || Number(s.slice(colon + 1)) > 65_535) return null;
    s = s.slice(0, colon);
    return isIP(s) === 4 ? s : null;
  }
  return isIP(s) !== 0 ? s : null;
}

/** The client address for a request from `peer` carrying `xff` (see the top of this file). */
export function realClientIp(peer: string, xff: string | null, trusted: BlockList): string {
  if (xff === null || !isTrusted(trusted, peer)) return peer;
  const parts = xff.split(",");
  let leftmost = peer;
  for (let i = parts.length - 1; i >= 0; i--) {
    const address = entryAddress(parts[i]!);
    if (address === null) return peer;
    if (!isTrusted(trusted, address)) return address;
    leftmost = address;
  }
  return leftmost;
}
