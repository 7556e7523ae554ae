import { describe, expect, test } from "bun:test";
import type { ListenerConfig } from "../config/types.ts";
import { parseCidr, realClientIp, trustedProxies } from "./client-ip.ts";

const listener = (trusted?: string[]) => ({ id: "l", trustedProxies: trusted }) as unknown as ListenerConfig;

describe("client address behind trusted proxies", () => {
  const set = trustedProxies(listener(["10.0.0.0/8", "127.0.0.2", "fd00::/8"]))!;

  test("no trusted-proxies: no matcher (the peer is the client)", () => {
    expect(trustedProxies(listener())).toBeNull();
    expect(trustedProxies(listener([]))).toBeNull();
  });

  test("an untrusted peer's X-Forwarded-For is never read", () => {
    expect(realClientIp("127.0.0.1", "6.6.6.6", set)).toBe("127.0.0.1");
    expect(realClientIp("11.0.0.1", "6.6.6.6", set)).toBe("11.0.0.1");
    expect(realClientIp("fe80::1", "6.6.6.6", set)).toBe("fe80::1");
  });

  test("from a trusted peer: the rightmost untrusted entry, trusted hops skipped, ports allowed", () => {
    expect(realClientIp("127.0.0.2", null, set)).toBe("127.0.0.2");
    expect(realClientIp("127.0.0.2", "6.6.6.6, 5.5.5.5", set)).toBe("5.5.5.5");
    expect(realClientIp("10.1.1.1", "6.6.6.6, 5.5.5.5, 10.2.2.2:443, 10.3.3.3", set)).toBe("5.5.5.5");
    expect(realClientIp("fd00::5", "[2001:db8::7]:5000", set)).toBe("2001:db8::7");
    expect(realClientIp("::ffff:127.0.0.2", "5.5.5.5", set)).toBe("5.5.5.5"); // IPv4-mapped peer
    expect(realClientIp("127.0.0.2", "10.9.9.9, 10.1.1.1", set)).toBe("10.9.9.9"); // all trusted: leftmost
  });

  test("a chain with anything but addresses is not believed: the peer", () => {
    for (const xff of ["garbage", "5.5.5.5, garbage", "5.5.5.5, ", "1.2.3.4:99999", "[::1", "[::1]x", "1.2.3.4.5", "unknown", ""]) {
      expect(realClientIp("127.0.0.2", xff, set)).toBe("127.0.0.2");
    }
    // …but garbage to the left of the first untrusted entry is never reached
    expect(realClientIp("127.0.0.2", "garbage, 5.5.5.5", set)).toBe("5.5.5.5");
  });

  test("parseCidr", () => {
    expect(parseCidr("10.0.0.0/8")).toEqual(["10.0.0.0", 8, "ipv4"]);
    expect(parseCidr("192.0.2.7")).toEqual(["192.0.2.7", 32, "ipv4"]);
    expect(parseCidr("fd00::/8")).toEqual(["fd00::", 8, "ipv6"]);
    for (const bad of ["10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/x", "host", "10.0.0.0/8/8", ""]) expect(parseCidr(bad)).toBeNull();
  });
});
