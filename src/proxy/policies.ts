// Route and filter header policies (config.md §6 `policies { request-headers response-headers }`).
import type { HeaderOpConfig } from "../config/types.ts";
import type { HeaderTarget } from "../http/header-list.ts";

export function applyPolicyOps(headers: HeaderTarget, ops: readonly HeaderOpConfig[]): void {
  for (const op of ops) {
    switch (op.op) {
      case "set":
        headers.set(op.name, op.value);
        break;
      case "add":
        headers.append(op.name, op.value);
        break;
      case "remove":
        headers.delete(op.name);
        break;
      case "rename": {
        const v = headers.get(op.from);
        if (v !== null) {
          headers.delete(op.from);
          headers.set(op.to, v);
        }
        break;
      }
    }
  }
}
