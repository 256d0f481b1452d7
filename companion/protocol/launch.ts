// How to start a companion worker: the launch contract between a launcher (the extension's local and SSH launchers)
// and the companion. A launcher builds a WorkerLaunch, checks it with this schema and writes it as JSON to
// `<home>/launch.json`; the worker is started with `--launch <file>` and config.ts parses the file with the same
// schema and maps it onto the configuration, so a field renamed on either side breaks the build, not a user.
// Invariants: a launch never holds a secret (the environment key travels on the worker's stdin only); the schema is
// strict, so an unknown or misspelt field is refused by the companion, not ignored; field names are part of the
// contract: add, never rename.
import { z } from 'zod';

/** The launch file's name in the companion's state directory. */
export const LAUNCH_FILE = 'launch.json';

export const LogLevel = z.enum(['debug', 'info', 'warn', 'error']);
export type LogLevel = z.infer<typeof LogLevel>;

/** `auto` picks a microVM driver that can run (never `process`); `process` (no isolation) runs only when named. */
export const SandboxDriver = z.enum(['auto', 'qemu', 'firecracker', 'process']);
export type SandboxDriver = z.infer<typeof SandboxDriver>;

/** Sessions served at once. */
export const Concurrency = z.number().int().min(1).max(64);

/** The work queue a worker serves: a self_hosted environment, or the embedded dev queue playing a scenario. */
export const LaunchQueue = z.discriminatedUnion('kind', [
  /** Without an id the companion takes ANTHROPIC_ENVIRONMENT_ID from its environment, or refuses to start. */
  z.object({ kind: z.literal('environment'), environmentId: z.string().min(1).optional() }).strict(),
  /** A scenario file on the companion's machine; the bundled demo when absent. */
  z.object({ kind: z.literal('local'), scenario: z.string().min(1).optional() }).strict(),
]);
export type LaunchQueue = z.infer<typeof LaunchQueue>;

export const WorkerLaunch = z.object({
  queue: LaunchQueue,
  concurrency: Concurrency,
  logLevel: LogLevel,
  sandboxDriver: SandboxDriver,
  /** The persist list of new sessions (absolute guest paths or patterns). */
  persistDefaults: z.array(z.string().min(1)),
  /** Host names tool calls may reach; empty: no network. */
  egressAllow: z.array(z.string().min(1)),
}).strict();
export type WorkerLaunch = z.infer<typeof WorkerLaunch>;
