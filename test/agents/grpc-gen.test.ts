// Fails when src/gen is stale: regenerates from proto/ into a temp dir (offline, local
// protoc-gen-es) and byte-compares every file with the committed copy.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

const root = join(import.meta.dir, "..", "..");

function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

describe("generated protobuf code", () => {
  test("src/gen matches `buf generate` output byte for byte", () => {
    const tmp = mkdtempSync(join(tmpdir(), "sentinel-gen-"));
    try {
      // Same plugin options as buf.gen.yaml, but written into the temp dir.
      const template = readFileSync(join(root, "buf.gen.yaml"), "utf8").replace(/out:\s*src\/gen/, `out: ${join(tmp, "gen")}`);
      expect(template).toContain(join(tmp, "gen"));
      const templatePath = join(tmp, "buf.gen.yaml");
      writeFileSync(templatePath, template);
      const bin = join(root, "node_modules", ".bin");
      const r = spawnSync(join(bin, "buf"), ["generate", "--template", templatePath], {
        cwd: root,
        env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}` },
        encoding: "utf8",
        timeout: 30_000,
      });
      expect(r.stderr + (r.error?.message ?? "")).toBe("");
      expect(r.status).toBe(0);

      const committed = listFiles(join(root, "src", "gen"));
      const fresh = listFiles(join(tmp, "gen"));
      expect(committed).toEqual(fresh);
      for (const f of fresh) {
        const a = readFileSync(join(root, "src", "gen", f));
        const b = readFileSync(join(tmp, "gen", f));
        if (!a.equals(b)) throw new Error(`src/gen/${f} is stale: run \`PATH=$PWD/node_modules/.bin:$PATH buf generate\``);
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
