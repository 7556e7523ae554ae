// Reading the JSON-lines logs that test agents append to while a test polls them.
import { existsSync, readFileSync } from "node:fs";

/**
 * The complete (newline-terminated) lines of a JSON-lines file, parsed; [] when it does not exist.
 * A line still being written when we read is left for the next poll, not parsed half-way.
 */
export function readJsonLines<T = Record<string, unknown>>(file: string): T[] {
  if (!existsSync(file)) return [];
  const text = readFileSync(file, "utf8");
  return text
    .slice(0, text.lastIndexOf("\n") + 1)
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as T);
}
