// The command line of the compiled binary: validate, version, help, bad invocations.
import { describe, expect, test } from "bun:test";
import { readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, runBinary, tempDir } from "./helpers/proxy.ts";

describe("sentinel validate", () => {
  const examples = (readdirSync(join(ROOT, "examples"), { recursive: true }) as string[]).filter((f) => f.endsWith(".kdl")).sort();
  test("there are example configs", () => expect(examples.length).toBeGreaterThan(0));
  for (const f of examples) {
    test(`accepts examples/${f}`, () => {
      const r = runBinary(["validate", "-c", join(ROOT, "examples", f)]);
      expect(r.stderr.split("\n").filter((l) => l.includes(": ") && !l.includes("warning:") && !l.startsWith("sentinel:"))).toEqual([]);
      expect(r.code).toBe(0);
    });
  }

  const broken: Array<[string, string, string]> = [
    ["unknown key with suggestion", `system { worker-thread 2 }\nlisteners { listener "l" { address "127.0.0.1:0" } }\n`, ":1:10: system: unknown key 'worker-thread' (did you mean 'worker-threads'?)"],
    ["missing listeners", `system { }\n`, ":1:1:"],
    ["unknown upstream", `system { }\nlisteners { listener "l" { address "127.0.0.1:0" } }\nroutes {\n  route "r" { priority "low"; upstream "nope" }\n}\n`, ":4:"],
    ["syntax error", `system {\n  worker-threads true\n}\n`, ":2:"],
    ["bad address", `system { }\nlisteners { listener "l" { address "localhost" } }\n`, ":2:"],
  ];
  for (const [name, text, fragment] of broken) {
    test(`rejects a broken config: ${name}`, () => {
      const dir = tempDir();
      const file = join(dir, "bad.kdl");
      writeFileSync(file, text);
      const r = runBinary(["validate", "-c", file]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(file + fragment);
    });
  }

  test("warns (exit 0) when a log or pid-file directory is missing here, naming it", () => {
    const dir = tempDir();
    const file = join(dir, "logs.kdl");
    writeFileSync(
      file,
      `system { pid-file "${dir}/nope/sentinel.pid" }\nlisteners { listener "l" { address "127.0.0.1:0" } }\nobservability { logging { access-log { file "${dir}/missing/access.log" } } }\n`,
    );
    const r = runBinary(["validate", "-c", file]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`warning: access-log "${dir}/missing/access.log": directory ${dir}/missing is not writable (ENOENT)`);
    expect(r.stderr).toContain(`warning: pid-file "${dir}/nope/sentinel.pid"`);
    writeFileSync(file, `system { }\nlisteners { listener "l" { address "127.0.0.1:0" } }\nobservability { logging { access-log { file "${dir}/access.log" } } }\n`);
    expect(runBinary(["validate", "-c", file]).stderr).not.toContain("warning");
  });

  test("-t and --test are aliases", () => {
    expect(runBinary(["-t", "-c", join(ROOT, "examples", "sentinel.kdl")]).code).toBe(0);
    expect(runBinary(["--test", "-c", join(ROOT, "examples", "sentinel.kdl")]).code).toBe(0);
  });

  test("a missing config file is a clear error, never a generated default", () => {
    const dir = tempDir();
    const r = runBinary(["-c", join(dir, "nope.kdl")], dir);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("nope.kdl");
    expect(readdirSync(dir)).toEqual([]);
  });

  test("no config at all is an error", () => {
    const r = runBinary([]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("no configuration file");
  });
});

test("--version and --help", () => {
  expect(runBinary(["--version"]).stdout).toMatch(/^sentinel \d+\.\d+\.\d+/);
  const help = runBinary(["--help"]);
  expect(help.code).toBe(0);
  expect(help.stdout).toContain("validate");
});

test("the binary runs from an empty directory without node_modules", () => {
  const dir = tempDir();
  const r = runBinary(["--version"], dir);
  expect(r.code).toBe(0);
});
