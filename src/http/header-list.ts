// A flat header list: [name0, value0, name1, value1, …] with lower-case names.
//
// The request headers on their way upstream live in this form while nobody changes them: building
// a `Headers` copy and setting the proxy's own headers on it cost ~10 µs per request in Bun
// (every operation crosses into native code), a list costs one pass. A `Headers` is made from it
// only when agents or policies mutate headers, or when fetch() needs one.

export type HeaderList = string[];

export function listGet(list: HeaderList, name: string): string | null {
  for (let i = 0; i < list.length; i += 2) if (list[i] === name) return list[i + 1]!;
  return null;
}

export function listDelete(list: HeaderList, name: string): void {
  let i = 0;
  while (i < list.length && list[i] !== name) i += 2;
  if (i >= list.length) return;
  let w = i;
  for (; i < list.length; i += 2) {
    if (list[i] === name) continue;
    if (w !== i) {
      list[w] = list[i]!;
      list[w + 1] = list[i + 1]!;
    }
    w += 2;
  }
  list.length = w;
}

/** Replace every value of `name` with one (appended at the end when absent). */
export function listSet(list: HeaderList, name: string, value: string): void {
  listDelete(list, name);
  list.push(name, value);
}

/** Add a value the way Headers.append does: joined to an existing value with ", ". */
export function listAppend(list: HeaderList, name: string, value: string): void {
  for (let i = 0; i < list.length; i += 2) {
    if (list[i] === name) {
      list[i + 1] = `${list[i + 1]}, ${value}`;
      return;
    }
  }
  list.push(name, value);
}

const EDGE_WS = /^[\t ]+|[\t ]+$/g;

/** A value as Headers stores it: leading and trailing spaces and tabs removed. */
export function headerValueNormalized(value: string): string {
  if (value.length === 0) return value;
  const a = value.charCodeAt(0);
  const z = value.charCodeAt(value.length - 1);
  return a === 0x20 || a === 0x09 || z === 0x20 || z === 0x09 ? value.replace(EDGE_WS, "") : value;
}

/** The part of the Headers interface that header operations use (agent and policy ops). */
export interface HeaderTarget {
  get(name: string): string | null;
  set(name: string, value: string): void;
  append(name: string, value: string): void;
  delete(name: string): void;
}

/** The list seen through HeaderTarget, with Headers' semantics: names case-insensitive, values trimmed, append joins. */
export function listTarget(list: HeaderList): HeaderTarget {
  return {
    get: (name) => listGet(list, name.toLowerCase()),
    set: (name, value) => listSet(list, name.toLowerCase(), headerValueNormalized(value)),
    append: (name, value) => listAppend(list, name.toLowerCase(), headerValueNormalized(value)),
    delete: (name) => listDelete(list, name.toLowerCase()),
  };
}

export function listToHeaders(list: HeaderList): Headers {
  const h = new Headers();
  for (let i = 0; i < list.length; i += 2) h.append(list[i]!, list[i + 1]!);
  return h;
}

/** Either form, name by name (lower-case names, values as they will be sent). */
export function eachHeader(h: Headers | HeaderList, fn: (value: string, name: string) => void): void {
  if (Array.isArray(h)) {
    for (let i = 0; i < h.length; i += 2) fn(h[i + 1]!, h[i]!);
  } else {
    h.forEach(fn);
  }
}

export function headerValue(h: Headers | HeaderList, name: string): string | null {
  return Array.isArray(h) ? listGet(h, name) : h.get(name);
}
