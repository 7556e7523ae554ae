// All configured agents of one runtime snapshot, with hot-reload hand-over.
//
// createAgentRegistry(configs, previous):
// - an agent whose config is deep-equal to the previous one (ignoring `loc`) is REUSED: the same
//   Agent object, with its connections, breaker state and health state;
// - a changed agent gets a NEW Agent; the old one is closed gracefully (in-flight calls may finish,
//   up to `graceMs`) in the background;
// - an agent no longer configured is closed gracefully the same way and its gauges are removed.
// The new registry takes ownership of reused agents: closing the previous registry afterwards
// does not touch them. New agents are NOT started here (building a runtime must have no side
// effects); the caller starts them with `agent.start()` (idempotent, so starting every agent of
// the new registry is fine), and may await `ready()` before swapping the new runtime in.

import type { AgentConfig } from "../config/types.ts";
import { log } from "../observability/log.ts";
import { createAgent, type Agent } from "./agent.ts";

export interface AgentRegistry {
  get(id: string): Agent | undefined;
  all(): Agent[];
  close(graceMs: number): Promise<void>;
  /** Resolves once every agent is connected, or after timeoutMs; true when all are connected. */
  ready(timeoutMs: number): Promise<boolean>;
}

export interface AgentRegistryOptions {
  /** Grace for agents closed because they were removed or changed (default 5000 ms). */
  graceMs?: number;
  /** Agent factory (default createAgent with the transport named by the config). */
  create?: (config: AgentConfig) => Agent;
}

export const DEFAULT_RELOAD_GRACE_MS = 5000;

export function createAgentRegistry(
  configs: Map<string, AgentConfig>,
  previous?: AgentRegistry,
  opts: AgentRegistryOptions = {},
): AgentRegistry {
  const create = opts.create ?? ((c: AgentConfig) => createAgent(c));
  const graceMs = opts.graceMs ?? DEFAULT_RELOAD_GRACE_MS;
  const prevAgents = new Map<string, Agent>();
  if (previous !== undefined) {
    for (const a of previous instanceof Registry ? previous.handOff() : previous.all()) prevAgents.set(a.id, a);
  }
  const agents = new Map<string, Agent>();
  const retire: Agent[] = [];
  for (const [id, config] of configs) {
    const old = prevAgents.get(id);
    if (old !== undefined && sameAgentConfig(old.config, config)) {
      agents.set(id, old);
      prevAgents.delete(id);
      continue;
    }
    if (old !== undefined) {
      retire.push(old);
      prevAgents.delete(id);
      log("info", "agent config changed, replacing", { agent: id });
    }
    agents.set(id, create(config));
  }
  // Close replaced agents first (their successor owns the gauges now), then removed ones.
  for (const old of retire) void old.close(graceMs);
  for (const [id, old] of prevAgents) {
    log("info", "agent removed from config, closing", { agent: id });
    void old.close(graceMs); // also drops its gauge series (unless a successor owns them)
  }
  return new Registry(agents);
}

class Registry implements AgentRegistry {
  private owned = true;
  private closing: Promise<void> | null = null;

  constructor(private readonly agents: Map<string, Agent>) {}

  get(id: string): Agent | undefined {
    return this.agents.get(id);
  }

  all(): Agent[] {
    return [...this.agents.values()];
  }

  /** Give every agent to a successor registry; this one will no longer close them. */
  handOff(): Agent[] {
    if (!this.owned) return [];
    this.owned = false;
    return this.all();
  }

  async ready(timeoutMs: number): Promise<boolean> {
    const results = await Promise.all(this.all().map((a) => a.whenConnected(timeoutMs)));
    return results.every(Boolean);
  }

  close(graceMs: number): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.closing = this.owned ? Promise.all(this.all().map((a) => a.close(graceMs))).then(() => {}) : Promise.resolve();
    this.owned = false;
    return this.closing;
  }
}

/** Deep equality of two agent configs, ignoring the top-level source location. */
export function sameAgentConfig(a: AgentConfig, b: AgentConfig): boolean {
  const { loc: _la, ...ra } = a;
  const { loc: _lb, ...rb } = b;
  return deepEqual(ra, rb);
}

export function deepEqual(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    if (a.length !== bb.length) return false;
    for (let i = 0; i < a.length; i++) if (!deepEqual(a[i], bb[i])) return false;
    return true;
  }
  if (ArrayBuffer.isView(a)) {
    const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const y = new Uint8Array((b as ArrayBufferView).buffer, (b as ArrayBufferView).byteOffset, (b as ArrayBufferView).byteLength);
    return x.length === y.length && x.every((v, i) => v === y[i]);
  }
  if (a instanceof RegExp) return a.source === (b as RegExp).source && a.flags === (b as RegExp).flags;
  if (a instanceof Map) {
    const bm = b as Map<unknown, unknown>;
    if (a.size !== bm.size) return false;
    for (const [k, v] of a) if (!bm.has(k) || !deepEqual(v, bm.get(k))) return false;
    return true;
  }
  if (a instanceof Set) {
    const bs = b as Set<unknown>;
    if (a.size !== bs.size) return false;
    for (const v of a) if (!bs.has(v)) return false;
    return true;
  }
  const ka = Object.keys(a).filter((k) => (a as Record<string, unknown>)[k] !== undefined);
  const kb = Object.keys(b).filter((k) => (b as Record<string, unknown>)[k] !== undefined);
  if (ka.length !== kb.length) return false;
  for (const k of ka) if (!deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) return false;
  return true;
}
