// Route matching (config.md §6.1): compiled once per config; per request it is a linear scan
// over pre-built predicates (no regex construction, no allocation beyond the lower-cased path).
import type { MatchCondition, RouteConfig } from "../config/types.ts";

export interface MatchInput {
  method: string; // upper-case
  host: string; // lower-case, port and trailing dot stripped
  path: string; // normalised
  pathLower: string;
  headers: Headers;
  query: URLSearchParams | null; // parsed lazily by the caller only when a route needs it
}

type Predicate = (m: MatchInput) => boolean;

export interface CompiledRoute {
  route: RouteConfig;
  specificity: number;
  needsQuery: boolean;
  test: Predicate;
}

export interface Router {
  routes: CompiledRoute[];
  needsQuery: boolean;
  byId: Map<string, RouteConfig>;
  match(m: MatchInput): RouteConfig | undefined;
}

function prefixPredicate(prefix: string): Predicate {
  const p = prefix.toLowerCase();
  if (p.endsWith("/")) return (m) => m.pathLower.startsWith(p);
  // Segment boundary: "/api" matches "/api", "/api/x", "/api;x" but not "/apix".
  return (m) => {
    if (!m.pathLower.startsWith(p)) return false;
    if (m.pathLower.length === p.length) return true;
    const next = m.pathLower.charCodeAt(p.length);
    return next === 0x2f || next === 0x3b;
  };
}

function hostPredicate(pattern: string): { test: (host: string) => boolean; score: number } {
  const p = pattern.toLowerCase();
  if (p.startsWith("*.") && !p.slice(2).includes("*") && !p.includes("[")) {
    const suffix = p.slice(1); // ".example.com"
    return { test: (h) => h.length > suffix.length && h.endsWith(suffix), score: 50 };
  }
  if (p.includes("*") || p.includes("[")) {
    try {
      const re = new RegExp("^" + p.replace(/\./g, "\\.").replace(/\*/g, "[^.]+") + "$");
      return { test: (h) => re.test(h), score: 60 };
    } catch {
      return { test: (h) => h === p, score: 70 };
    }
  }
  return { test: (h) => h === p, score: 70 };
}

function compileCondition(c: MatchCondition): { test: Predicate; score: number; pathScore?: number; needsQuery?: boolean } {
  switch (c.kind) {
    case "path": {
      const v = c.value.toLowerCase();
      return { test: (m) => m.pathLower === v, score: 0, pathScore: 10000 };
    }
    case "path-prefix":
      return { test: prefixPredicate(c.value), score: 0, pathScore: 1000 + c.value.length };
    case "path-regex": {
      const re = c.regex;
      return { test: (m) => re.test(m.path), score: 0, pathScore: 5000 };
    }
    case "header": {
      const name = c.name.toLowerCase();
      const value = c.value;
      if (value === undefined) return { test: (m) => m.headers.has(name), score: 20 };
      return { test: (m) => m.headers.get(name) === value, score: 30 };
    }
    case "method": {
      const set = new Set(c.values.map((v) => v.toUpperCase()));
      return { test: (m) => set.has(m.method), score: 10 };
    }
    case "query-param": {
      const { name, value } = c;
      if (value === undefined) return { test: (m) => m.query!.has(name), score: 15, needsQuery: true };
      return { test: (m) => m.query!.getAll(name).includes(value), score: 25, needsQuery: true };
    }
    case "host":
      throw new Error("host conditions are compiled separately");
  }
}

export function compileRoute(route: RouteConfig): CompiledRoute {
  const preds: Predicate[] = [];
  let specificity = 0;
  let pathScore = 0;
  let hostScore = 0;
  let needsQuery = false;
  const hosts: Array<(h: string) => boolean> = [];
  for (const c of route.matches) {
    if (c.kind === "host") {
      const h = hostPredicate(c.value);
      hosts.push(h.test);
      hostScore = Math.max(hostScore, h.score);
      continue;
    }
    const compiled = compileCondition(c);
    preds.push(compiled.test);
    specificity += compiled.score;
    if (compiled.pathScore) pathScore = Math.max(pathScore, compiled.pathScore);
    if (compiled.needsQuery) needsQuery = true;
  }
  // Several host conditions are OR'ed with each other and AND'ed with the rest.
  if (hosts.length === 1) {
    const h = hosts[0]!;
    preds.unshift((m) => h(m.host));
  } else if (hosts.length > 1) {
    preds.unshift((m) => hosts.some((h) => h(m.host)));
  }
  const test: Predicate =
    preds.length === 0
      ? () => true
      : preds.length === 1
        ? preds[0]!
        : (m) => {
            for (const p of preds) if (!p(m)) return false;
            return true;
          };
  return { route, specificity: specificity + pathScore + hostScore, needsQuery, test };
}

export function buildRouter(routes: RouteConfig[]): Router {
  const compiled = routes.map(compileRoute);
  // Priority first, then specificity, then config order (Array.prototype.sort is stable).
  compiled.sort((a, b) => b.route.priority - a.route.priority || b.specificity - a.specificity);
  const byId = new Map(routes.map((r) => [r.id, r]));
  return {
    routes: compiled,
    needsQuery: compiled.some((r) => r.needsQuery),
    byId,
    match(m) {
      for (const r of compiled) if (r.test(m)) return r.route;
      return undefined;
    },
  };
}
