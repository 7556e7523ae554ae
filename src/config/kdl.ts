// KDL v2 parsing with source locations, on top of kdljs 0.3.0.
//
// kdljs builds plain `{ name, values, properties, children, tags }` objects without positions.
// Its chevrotain parser invokes sub-rules through `rule.coreRule.apply(this, args)`, so wrapping
// `parser.node.coreRule` once lets us read the first token of every node (`this.LA(1)`) before the
// original rule runs, and attach that position to the node object it returns (kept in a WeakMap,
// so the kdljs objects stay untouched). Lexer and parser errors are turned into located messages.

// @ts-ignore -- kdljs ships no types for this deep module; shapes are described below.
import { lexer, parser } from "kdljs/src/parser/kdl.js";

export type KdlValue = string | number | boolean | null;

export interface KdlNode {
  name: string;
  values: KdlValue[];
  properties: Record<string, KdlValue>;
  children: KdlNode[];
  tags: { name: string | undefined; values: Array<string | undefined>; properties: Record<string, string> };
}

export interface KdlPos {
  line: number; // 1-based
  col: number; // 1-based
}

export interface KdlSyntaxError {
  line: number;
  col: number;
  message: string;
}

export interface KdlParseResult {
  nodes?: KdlNode[];
  errors: KdlSyntaxError[];
}

interface ChevToken {
  image: string;
  startLine?: number;
  startColumn?: number;
  endLine?: number;
  endColumn?: number;
  tokenType?: { name: string };
}

const positions = new WeakMap<object, KdlPos>();

let hooked = false;
function installHook(): void {
  if (hooked) return;
  const rule = (parser as any).node;
  if (!rule || typeof rule.coreRule !== "function") {
    throw new Error("kdljs parser layout changed: parser.node.coreRule is missing");
  }
  const original = rule.coreRule as (...args: unknown[]) => unknown;
  rule.coreRule = function locatedNode(this: any, ...args: unknown[]) {
    const tok: ChevToken = this.LA(1);
    const result = original.apply(this, args);
    if (result && typeof result === "object" && tok && typeof tok.startLine === "number") {
      positions.set(result as object, { line: tok.startLine, col: tok.startColumn ?? 1 });
    }
    return result;
  };
  hooked = true;
}

/** Position of a node produced by `parseKdl` (1-based line and column). */
export function nodePos(node: KdlNode): KdlPos {
  return positions.get(node) ?? { line: 1, col: 1 };
}

function describeToken(tok: ChevToken | undefined): string {
  if (!tok || tok.tokenType?.name === "EOF") return "end of input";
  const img = tok.image.length > 40 ? tok.image.slice(0, 40) + "…" : tok.image;
  return JSON.stringify(img);
}

/** Bare words that KDL v1 allowed but v2 reserves; give the v2 spelling. */
const V1_KEYWORDS: Record<string, string> = { true: "#true", false: "#false", null: "#null", inf: "#inf", "-inf": "#-inf", nan: "#nan" };

function parserErrorMessage(e: any): string {
  const tok: ChevToken | undefined = e.token;
  const image = tok?.image ?? "";
  if (image in V1_KEYWORDS) {
    return `KDL syntax error: bare ${JSON.stringify(image)} is not a valid value in KDL v2; write ${V1_KEYWORDS[image]}`;
  }
  const raw = String(e.message ?? "invalid syntax").split("\n")[0]!;
  if (/Bare identifier string must not be a keyword/.test(raw)) {
    return `KDL syntax error: bare identifier ${JSON.stringify(image)} is a reserved keyword`;
  }
  if (tok?.image === '"' || tok?.image === '"""') {
    return `KDL syntax error: unterminated or malformed string starting here`;
  }
  if (e.name === "NotAllInputParsedException" || /Redundant input/.test(raw)) {
    return `KDL syntax error: unexpected ${describeToken(tok)}`;
  }
  if (e.name === "EarlyExitException" || e.name === "NoViableAltException" || e.name === "MismatchedTokenException") {
    return `KDL syntax error: unexpected ${describeToken(tok)}`;
  }
  return `KDL syntax error: ${raw}`;
}

function validPos(n: number | undefined): boolean {
  return typeof n === "number" && !Number.isNaN(n);
}

function endOfText(text: string): KdlPos {
  const lines = text.split(/\r\n|\n|\r/);
  return { line: lines.length, col: lines[lines.length - 1]!.length + 1 };
}

/** Parse KDL v2 text. Never throws for malformed input: problems come back as located errors. */
export function parseKdl(text: string): KdlParseResult {
  installHook();
  const lexed = lexer.tokenize(text) as { tokens: ChevToken[]; errors: Array<{ line?: number; column?: number; offset: number; length: number; message: string }> };
  if (lexed.errors.length) {
    return {
      errors: lexed.errors.map((e) => {
        const snippet = text.slice(e.offset, e.offset + Math.min(e.length, 20)).split(/\r?\n/)[0];
        return {
          line: e.line ?? 1,
          col: e.column ?? 1,
          message: `KDL syntax error: unexpected character${snippet ? ` ${JSON.stringify(snippet)}` : ""}`,
        };
      }),
    };
  }
  (parser as any).input = lexed.tokens;
  const output = (parser as any).document() as KdlNode[] | undefined;
  const perrs = ((parser as any).errors ?? []) as any[];
  if (perrs.length) {
    const errors: KdlSyntaxError[] = [];
    const seen = new Set<string>();
    for (const e of perrs) {
      const tok: ChevToken | undefined = e.token;
      let line: number;
      let col: number;
      if (tok && validPos(tok.startLine) && tok.image in V1_KEYWORDS && validPos(tok.endColumn)) {
        // A bare `true`/`null`/... lexes as an identifier; it is known to be the reserved word (and
        // not a longer identifier such as `trueish`) only once the word ends: report that point.
        line = tok.endLine ?? tok.startLine!;
        col = tok.endColumn! + 1;
      } else if (tok && validPos(tok.startLine)) {
        line = tok.startLine!;
        col = tok.startColumn ?? 1;
      } else {
        // Unexpected end of input: chevrotain's EOF token has no position.
        ({ line, col } = endOfText(text));
      }
      const key = `${line}:${col}`;
      if (seen.has(key)) continue;
      seen.add(key);
      errors.push({ line, col, message: parserErrorMessage(e) });
    }
    return { errors };
  }
  return { nodes: output ?? [], errors: [] };
}
