#!/usr/bin/env bun
// Entry point: `sentinel -c FILE`, `sentinel validate -c FILE` (alias -t/--test), --version, --help.
import { accessSync, constants, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, resolve } from "node:path";
import { loadConfig } from "./config/load.ts";
import { formatDiagnostic, type SentinelConfig } from "./config/types.ts";
import { startProxy } from "./proxy/server.ts";
import { adaptWorkerConfig, shareWorkerLimits, superviseWorkers, watchSupervisor, workerIndex, workerRole } from "./proxy/workers.ts";
import { log, setLogLevel, warnInvalidEnvLogLevel } from "./observability/log.ts";
import { VERSION } from "./version.ts";

const HELP = `sentinel ${VERSION}: security-first reverse proxy with external agents

Usage:
  sentinel -c FILE               run the proxy with the KDL config FILE (also --config FILE)
  sentinel validate -c FILE      check FILE and exit 0 if valid, 1 otherwise (alias: -t, --test)
  sentinel --version             print the version
  sentinel --help                print this help

Signals: SIGTERM/SIGINT drain and stop (exit 0); SIGHUP reloads the configuration (and reopens log files).
The environment variable SENTINEL_CONFIG may name the config file instead of -c.`;

interface Args {
  mode: "run" | "validate" | "version" | "help";
  config?: string;
  error?: string;
}

export function parseArgs(argv: string[]): Args {
  const args: Args = { mode: "run" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "validate" || a === "test" || a === "-t" || a === "--test") args.mode = "validate";
    else if (a === "--version" || a === "-V" || a === "version") args.mode = "version";
    else if (a === "--help" || a === "-h" || a === "help") args.mode = "help";
    else if (a === "-c" || a === "--config") {
      const v = argv[++i];
      if (v === undefined) return { ...args, error: `${a} needs a file argument` };
      args.config = v;
    } else if (a.startsWith("--config=")) args.config = a.slice("--config=".length);
    else return { ...args, error: `unknown argument '${a}' (see --help)` };
  }
  args.config ??= process.env.SENTINEL_CONFIG || undefined;
  return args;
}

/**
 * What `validate` warns about beyond the file itself (as `nginx -t` opens its log files): the
 * directories the log files and the pid file will be written in exist and are writable here
 * (start-up would otherwise fail on a config that validated).
 */
function unwritablePlaces(config: SentinelConfig): string[] {
  const logging = config.observability.logging;
  const files: [string, string | undefined][] = [
    ["access-log", logging.accessLog?.enabled ? logging.accessLog.file : undefined],
    ["audit-log", logging.auditLog?.enabled ? logging.auditLog.file : undefined],
    ["error-log", logging.errorLog?.enabled ? logging.errorLog.file : undefined],
    ["pid-file", config.system.pidFile],
  ];
  const problems: string[] = [];
  for (const [what, file] of files) {
    if (!file || file === "-" || file === "/dev/stdout" || file === "/dev/stderr") continue;
    const dir = dirname(resolve(file));
    try {
      if (!statSync(dir).isDirectory()) throw new Error("not a directory");
      accessSync(dir, constants.W_OK);
    } catch (err) {
      problems.push(`${what} ${JSON.stringify(file)}: directory ${dir} is not writable (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  }
  return problems;
}

function printDiagnostics(diags: ReturnType<typeof loadConfig>["diagnostics"]): void {
  for (const d of diags) process.stderr.write(formatDiagnostic(d) + "\n");
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  if (args.error) {
    process.stderr.write(`sentinel: ${args.error}\n`);
    return 2;
  }
  if (args.mode === "help") {
    process.stdout.write(HELP + "\n");
    return 0;
  }
  if (args.mode === "version") {
    process.stdout.write(`sentinel ${VERSION}\n`);
    return 0;
  }
  if (!args.config) {
    process.stderr.write("sentinel: no configuration file given (use -c FILE; see --help)\n");
    return 2;
  }
  // Once per instance: worker processes inherit the environment and leave it to their supervisor.
  if (args.mode === "run" && workerIndex() === 0) warnInvalidEnvLogLevel();
  const result = loadConfig(args.config);
  printDiagnostics(result.diagnostics);
  if (args.mode === "validate") {
    if (!result.config) {
      process.stderr.write(`sentinel: ${args.config}: configuration is invalid\n`);
      return 1;
    }
    // A warning, not a failure: a config is often validated on another host than it runs on
    // (CI, an image build), where its log and pid directories need not exist.
    for (const p of unwritablePlaces(result.config)) process.stderr.write(`sentinel: ${args.config}: warning: ${p}; start-up would fail on this host\n`);
    process.stdout.write(`sentinel: ${args.config}: configuration is valid\n`);
    return 0;
  }
  if (!result.config) {
    process.stderr.write(`sentinel: ${args.config}: configuration is invalid; not starting\n`);
    return 1;
  }
  // The configured level holds from here on (SENTINEL_LOG_LEVEL only covers what comes before),
  // in the supervisor too, whose own lines would otherwise ignore it.
  setLogLevel(result.config.observability.logging.level);
  // system { worker-threads N ≥ 2 }: supervise N reusePort worker processes (src/proxy/workers.ts).
  const role = workerRole(result.config);
  if (role === "supervisor") return superviseWorkers(result.config), -1;
  if (role === "worker") {
    adaptWorkerConfig(result.config);
    shareWorkerLimits(result.config);
  }
  if (role === "single" && result.config.system.workerThreads === 0 && availableParallelism() > 1)
    // Zentinel reads 0 as one thread per CPU with shared state; ours would be processes with
    // per-process breakers and health (docs/operations.md), so 0 stays one process: say so.
    log("info", "worker-threads 0 runs one process; set worker-threads N (N >= 2) for N reusePort worker processes", { cpus: availableParallelism() });
  // Signal handlers first: as PID 1 (a container) the defaults do nothing for SIGTERM/SIGINT, and
  // SIGHUP's default would kill a process that is still starting.
  let proxy: Awaited<ReturnType<typeof startProxy>> | undefined;
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      log("warn", "signal received; shutdown already in progress", { signal });
      return;
    }
    stopping = true;
    log("info", "signal received", { signal });
    if (!proxy) process.exit(0);
    void proxy.shutdown().then(
      () => process.exit(0),
      (err) => {
        log("error", "shutdown failed", { error: String((err as Error)?.stack ?? err) });
        process.exit(1);
      },
    );
  };
  if (role === "worker") watchSupervisor(() => stop("supervisor gone"));
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGHUP", () => {
    log("info", "signal received", { signal: "SIGHUP" });
    if (proxy && !stopping) void proxy.reload("SIGHUP");
  });
  process.on("unhandledRejection", (err) => log("error", "unhandled rejection", { error: String((err as Error)?.stack ?? err) }));
  process.on("uncaughtException", (err) => log("error", "uncaught exception", { error: String(err?.stack ?? err) }));
  try {
    proxy = await startProxy(result.config);
  } catch (err) {
    process.stderr.write(`sentinel: failed to start: ${(err as Error)?.message ?? err}\n`);
    return 1;
  }
  return -1; // keep running
}

// No top-level await: the bytecode build wraps the entry as CommonJS.
void main().then((code) => {
  if (code >= 0) process.exit(code);
});
