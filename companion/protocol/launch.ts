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

/** A fresh VM per tool call, or one per session. */
export const SandboxMode = z.enum(['per-call', 'per-session']);
export type SandboxMode = z.infer<typeof SandboxMode>;

/** Named VM sizes (vCPUs and memory): a template is built at one size, and the worker is told the same. */
export const VmSize = z.enum(['small', 'medium', 'large']);
export type VmSize = z.infer<typeof VmSize>;
export const VM_SIZES: Record<VmSize, { vcpus: number; memoryMiB: number }> = {
  small: { vcpus: 1, memoryMiB: 256 },
  medium: { vcpus: 2, memoryMiB: 1024 },
  large: { vcpus: 4, memoryMiB: 4096 },
};

/** The VM choices a launcher may make (each optional: the companion's configuration decides what is left out). */
export const LaunchSandbox = z.object({
  mode: SandboxMode.optional(),
  /** VMs restored ahead of need. */
  poolSize: z.number().int().min(0).max(64).optional(),
  /** Host wall-clock cap per tool call (the VM is killed past it). */
  callTimeoutMs: z.number().int().min(1000).max(3_600_000).optional(),
  /** The VM size the template was built with (vCPUs and memory come from the template; the worker checks they match). */
  vmSize: VmSize.optional(),
}).strict();
export type LaunchSandbox = z.infer<typeof LaunchSandbox>;

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
  sandbox: LaunchSandbox.optional(),
}).strict();
export type WorkerLaunch = z.infer<typeof WorkerLaunch>;
