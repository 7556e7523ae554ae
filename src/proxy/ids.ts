// Request/trace ids. Generated ids are unique per process (prefix + counter) and cheap.
const prefix = (Date.now() % 0xffffffff).toString(36) + Math.floor(Math.random() * 0xffffff).toString(36);
let counter = 0;

/** tinyflake-style id: time-ordered, url-safe, unique within the process. */
export function newTraceId(format: "tinyflake" | "uuid"): string {
  if (format === "uuid") return crypto.randomUUID();
  counter = (counter + 1) % 0x7fffffff;
  return `${prefix}${counter.toString(36).padStart(6, "0")}`;
}

const VALID_ID = /^[A-Za-z0-9._:\-]{1,128}$/;

/** A client-supplied id is accepted only if short and made of safe characters. */
export function acceptTraceId(value: string | null): string | undefined {
  return value !== null && VALID_ID.test(value) ? value : undefined;
}
