// Endpoint selection (rendezvous hashing) and DNS resolution of replicated agents.
import { describe, expect, test } from "bun:test";
import { MAX_AGENT_ENDPOINTS } from "../config/types.ts";
import { endpointUrl, hashString, pickEndpoint, resolveEndpoints, systemLookup, type Selectable } from "./endpoints.ts";

const ep = (address: string) => ({ address, salt: hashString(address) });
const three = ["http://127.0.0.2:50051", "http://127.0.0.3:50051", "http://127.0.0.4:50051"].map(ep);
const all = () => true;
const keys = (n: number, prefix = "k") => Array.from({ length: n }, (_, i) => `${prefix}${i.toString(36).padStart(6, "0")}`);

describe("pickEndpoint (rendezvous hash of the correlation id)", () => {
  test("spreads keys evenly over the endpoints, also sequential ids", () => {
    for (const prefix of ["lq3x9a", "req-", ""]) {
      const counts = new Map<string, number>();
      const ks = keys(30_000, prefix);
      for (const k of ks) {
        const e = pickEndpoint(three, hashString(k, 12345), all, null)!;
        counts.set(e.address, (counts.get(e.address) ?? 0) + 1);
      }
      expect(counts.size).toBe(3);
      for (const n of counts.values()) expect(Math.abs(n - 10_000)).toBeLessThan(500); // within 5 %
    }
  });

  test("the same key always gets the same endpoint (request affinity)", () => {
    for (const k of keys(200)) {
      const h = hashString(k, 7);
      const first = pickEndpoint(three, h, all, null);
      for (let i = 0; i < 3; i++) expect(pickEndpoint(three, h, all, null)).toBe(first);
      // order of the endpoint list does not matter
      expect(pickEndpoint([...three].reverse(), h, all, null)).toBe(first);
    }
  });

  test("taking an endpoint out moves only its keys; the others keep theirs; bringing it back restores all", () => {
    const ks = keys(6000).map((k) => hashString(k, 99));
    const before = ks.map((h) => pickEndpoint(three, h, all, null)!);
    const down = three[1]!;
    const up = (e: (typeof three)[number]) => e !== down;
    let moved = 0;
    ks.forEach((h, i) => {
      const now = pickEndpoint(three, h, up, null)!;
      expect(now).not.toBe(down);
      if (before[i] !== down) expect(now).toBe(before[i]!);
      else moved++;
    });
    expect(moved).toBeGreaterThan(1500);
    expect(moved).toBeLessThan(2500);
    // The moved keys spread over both survivors.
    const survivors = new Set(ks.filter((_, i) => before[i] === down).map((h) => pickEndpoint(three, h, up, null)));
    expect(survivors.size).toBe(2);
    ks.forEach((h, i) => expect(pickEndpoint(three, h, all, null)).toBe(before[i]!));
  });

  test("skip set: the next endpoint in the key's own order (failover), then null", () => {
    const h = hashString("corr-1", 1);
    const skip = new Set<Selectable & { address: string }>();
    const order: string[] = [];
    for (;;) {
      const e = pickEndpoint(three, h, all, skip);
      if (e === null) break;
      order.push(e.address);
      skip.add(e);
    }
    expect(order.length).toBe(3);
    expect(new Set(order).size).toBe(3);
    expect(order[0]).toBe(pickEndpoint(three, h, all, null)!.address);
    // The failover target is the key's choice once its first endpoint is out.
    expect(order[1]).toBe(pickEndpoint(three, h, (e) => e.address !== order[0], null)!.address);
  });

  test("no endpoint (empty list, or none accepted) → null", () => {
    expect(pickEndpoint([], 1, all, null)).toBeNull();
    expect(pickEndpoint(three, 1, () => false, null)).toBeNull();
  });

  test("the seed changes which endpoint a key prefers (clients cannot aim at a replica)", () => {
    const ks = keys(300);
    const a = ks.map((k) => pickEndpoint(three, hashString(k, 1), all, null));
    const b = ks.map((k) => pickEndpoint(three, hashString(k, 2), all, null));
    const same = a.filter((x, i) => x === b[i]).length;
    expect(same).toBeLessThan(150); // ~1/3 by chance
  });
});

describe("DNS endpoints", () => {
  test("localhost resolves through the system resolver to 127.0.0.1", async () => {
    const addrs = await systemLookup("localhost");
    expect(addrs).toContain("127.0.0.1");
    const { endpoints, dropped } = await resolveEndpoints({ name: "localhost", port: 50051, scheme: "http", resolveIntervalMs: 30_000 });
    expect(endpoints).toContain("http://127.0.0.1:50051");
    expect(endpoints.every((e) => e === "http://127.0.0.1:50051" || e === "http://[::1]:50051")).toBe(true);
    expect(dropped).toBe(0);
  });

  test("an unknown name rejects (the agent then keeps its current endpoints)", async () => {
    await expect(resolveEndpoints({ name: "no-such-host.invalid", port: 1, scheme: "http", resolveIntervalMs: 1000 })).rejects.toThrow();
  });

  test("addresses are deduplicated, sorted, IPv6 bracketed, and capped", async () => {
    const dns = { name: "agents.svc", port: 9000, scheme: "https" as const, resolveIntervalMs: 1000 };
    const r = await resolveEndpoints(dns, async () => ["10.0.0.3", "10.0.0.1", "::1", "10.0.0.3"]);
    expect(r.endpoints).toEqual(["https://10.0.0.1:9000", "https://10.0.0.3:9000", "https://[::1]:9000"]);
    const many = Array.from({ length: 100 }, (_, i) => `10.1.${Math.floor(i / 250)}.${i % 250}`);
    const capped = await resolveEndpoints(dns, async () => many);
    expect(capped.endpoints.length).toBe(MAX_AGENT_ENDPOINTS);
    expect(capped.dropped).toBe(100 - MAX_AGENT_ENDPOINTS);
    expect(endpointUrl("http", "fe80::1", 1)).toBe("http://[fe80::1]:1");
  });
});
