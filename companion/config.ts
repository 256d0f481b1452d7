// The companion's one typed configuration. Sources, later wins: defaults < `$PERIMETER_HOME/config.json` <
// environment (`PERIMETER_*`) < a launcher's launch file (`--launch`, protocol/launch.ts) < command-line flags.
// Validated with zod; an invalid value is a fatal error that names the field. Secrets (the environment key) are never
// part of the configuration: see companion/queue/credentials.ts.
import { z } from 'zod';
import os from 'node:os';
import path from 'node:path';
import { readFileSync, existsSync } from 'node:fs';
import { fatal } from './errors';
import { Concurrency, LogLevel, SandboxDriver, VM_SIZES, WorkerLaunch } from './protocol/launch';

export const SandboxMode = z.enum(['per-call', 'per-session']);

export const ConfigSchema = z.object({
  home: z.string(),
  environmentId: z.string().optional(),
  baseUrl: z.string().url().optional(),
  workerId: z.string().optional(),
  concurrency: Concurrency.default(4),
  logLevel: LogLevel.default('info'),
  /** Below this much free space (MiB) in the state directory's filesystem the worker claims no new work (calls of
   *  sessions it holds still run); it resumes by itself once space returns. `doctor` and /healthz say so too. */
  minFreeMiB: z.number().int().min(0).default(1024),
  sandbox: z.object({
    /** `auto` picks a VM driver that can run (never `process`); `process` (no isolation) runs only when named. */
    driver: SandboxDriver.default('auto'),
    /** Lets the `process` driver serve a control plane that is not on this machine (a real environment). */
    allowNoIsolation: z.boolean().default(false),
    mode: SandboxMode.default('per-call'),
    poolSize: z.number().int().min(0).max(64).default(2),
    /** Memory the warm pools of all templates may hold together, each ready VM counted at its template's size
     *  (default: a quarter of the host's memory; sandbox/qemu/template-pools.ts). */
    poolMemoryMiB: z.number().int().min(0).optional(),
    /** Keep one QEMU process started ahead of the next restore (skips QEMU's own start-up, ≈ 25 ms). */
    startEmulatorAhead: z.boolean().default(true),
    vcpus: z.number().int().min(1).max(16).default(1),
    memoryMiB: z.number().int().min(64).max(65536).default(256),
    diskMiB: z.number().int().min(16).max(65536).default(256),
    maxProcesses: z.number().int().min(16).max(100000).default(512),
    /** Host wall-clock cap for one tool call (the VM is killed past it). */
    callTimeoutMs: z.number().int().min(1000).max(3_600_000).default(120_000),
    /** `kvm`, `tcg` or `auto` (KVM only when a test boot succeeds). */
    accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
    qemuBinary: z.string().default('qemu-system-x86_64'),
    firecrackerBinary: z.string().default('firecracker'),
    jailerBinary: z.string().optional(),
    /** A template directory to use instead of the newest built one. */
    template: z.string().optional(),
    /** How each QEMU process is confined (companion/sandbox/qemu/confine.ts): `jail` (own mount, PID, IPC, network,
     *  UTS and cgroup namespaces, own uid, no capabilities, rlimits, host cgroup where delegated) or `none` (only
     *  when named: QEMU runs as the companion's user with its view of the filesystem; logged as a warning). */
    confinement: z.enum(['jail', 'none']).default('jail'),
    /** uids (and gids of the same number) a root companion gives its VMs, one per live VM: [vmUidBase, +vmUidCount). */
    vmUidBase: z.number().int().min(1000).max(0xfffe0000).default(0x70000000),
    vmUidCount: z.number().int().min(1).max(65536).default(4096),
    /** Host cgroup per VM (cpu, memory, pids): `auto` uses one wherever this host lets the companion create it
     *  (delegated cgroup v2, or writable v1 hierarchies) and says so when not; `required` refuses to start VMs without. */
    hostCgroup: z.enum(['auto', 'required']).default('auto'),
  }).default({} as never),
  persist: z.object({
    defaults: z.array(z.string()).default(['/workspace']),
    /** The session quota: the session disk's size (QEMU driver), or the file store's byte limit. */
    maxBytes: z.number().int().positive().default(16 * 1024 * 1024 * 1024),
    maxFiles: z.number().int().positive().default(200_000),
    keepGenerations: z.number().int().min(1).default(3),
    /** Days a terminated session's disks are kept before they are deleted (`perimeter persist gc` deletes them now). */
    retainDays: z.number().int().min(0).default(7),
    /** How copy-out finds changed files: `hash` (the guest hashes every persisted file; exact) or `mtime` (size,
     *  mtime and mode compared with the stored generation, as rsync does; only candidates are read and hashed). */
    changeDetection: z.enum(['hash', 'mtime']).default('hash'),
  }).default({} as never),
  egress: z.object({
    mode: z.enum(['none', 'allow']).default('none'),
    allow: z.array(z.string()).default([]),
    /** CIDRs the allow-list may reach even though they are private (e.g. an internal API). */
    allowPrivate: z.array(z.string()).default([]),
    /** A ClientHello with the ECH extension: `refuse` it, or `route-outer` = route by its outer SNI like any other
     *  (Chromium always sends GREASE ECH; see companion/egress/proxy.ts). */
    ech: z.enum(['refuse', 'route-outer']).default('refuse'),
  }).default({} as never),
  control: z.object({
    enabled: z.boolean().default(true),
    host: z.literal('127.0.0.1').default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(0),
  }).prefault({}),   // prefault: an absent `control` is parsed, so its field defaults apply (zod 4 `.default` would not)
  /** The Prometheus endpoint (`/metrics`, `/healthz`; companion/service/metrics-server.ts), off unless enabled. */
  metrics: z.object({
    enabled: z.boolean().default(false),
    /** host:port; loopback unless another address is configured (port 0: any free port). */
    listen: z.string().default('127.0.0.1:9464'),
  }).prefault({}),
});
export type Config = z.infer<typeof ConfigSchema>;
export type ConfigInput = z.input<typeof ConfigSchema>;

export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.PERIMETER_HOME) return path.resolve(env.PERIMETER_HOME);
  const base = env.XDG_STATE_HOME ? path.resolve(env.XDG_STATE_HOME) : path.join(os.homedir(), '.local', 'state');
  return path.join(base, 'perimeter');
}

type Plain = Record<string, unknown>;
function isPlain(v: unknown): v is Plain { return typeof v === 'object' && v !== null && !Array.isArray(v); }
function merge(a: Plain, b: Plain): Plain {
  const out: Plain = { ...a };
  for (const [k, v] of Object.entries(b)) {
    if (v === undefined) continue;
    out[k] = isPlain(v) && isPlain(out[k]) ? merge(out[k] as Plain, v) : v;
  }
  return out;
}

function fromEnv(env: NodeJS.ProcessEnv): Plain {
  const num = (v: string | undefined) => (v === undefined || v === '' ? undefined : Number(v));
  const list = (v: string | undefined) => (v === undefined ? undefined : v.split(',').map((s) => s.trim()).filter(Boolean));
  return {
    environmentId: env.ANTHROPIC_ENVIRONMENT_ID,
    baseUrl: env.ANTHROPIC_BASE_URL,
    workerId: env.PERIMETER_WORKER_ID,
    concurrency: num(env.PERIMETER_CONCURRENCY),
    logLevel: env.PERIMETER_LOG_LEVEL,
    sandbox: { driver: env.PERIMETER_DRIVER, mode: env.PERIMETER_SANDBOX_MODE, poolSize: num(env.PERIMETER_POOL_SIZE), accel: env.PERIMETER_ACCEL, template: env.PERIMETER_TEMPLATE },
    persist: { defaults: list(env.PERIMETER_PERSIST) },
    metrics: env.PERIMETER_METRICS ? { enabled: true, listen: env.PERIMETER_METRICS } : undefined,
    egress: { mode: env.PERIMETER_EGRESS, allow: list(env.PERIMETER_EGRESS_ALLOW), allowPrivate: list(env.PERIMETER_EGRESS_ALLOW_PRIVATE), ech: env.PERIMETER_EGRESS_ECH },
  };
}

/** Reads and checks a launch file (protocol/launch.ts); a file that does not parse is a fatal error naming the field. */
export function readLaunch(file: string): WorkerLaunch {
  let json: unknown;
  try { json = JSON.parse(readFileSync(file, 'utf8')); } catch (err) { throw fatal('config_invalid', `launch file ${file} is not readable JSON: ${(err as Error).message}`); }
  const parsed = WorkerLaunch.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw fatal('config_invalid', `invalid launch file ${file}: ${issues}`);
  }
  return parsed.data;
}

/** The configuration a launch sets (its queue is the worker command's business: see commands/run-worker.ts). */
export function launchSettings(launch: WorkerLaunch): Omit<ConfigInput, 'home'> {
  return {
    environmentId: launch.queue.kind === 'environment' ? launch.queue.environmentId : undefined,
    concurrency: launch.concurrency,
    logLevel: launch.logLevel,
    sandbox: {
      driver: launch.sandboxDriver,
      ...(launch.sandbox?.mode ? { mode: launch.sandbox.mode } : {}),
      ...(launch.sandbox?.poolSize !== undefined ? { poolSize: launch.sandbox.poolSize } : {}),
      ...(launch.sandbox?.callTimeoutMs !== undefined ? { callTimeoutMs: launch.sandbox.callTimeoutMs } : {}),
      ...(launch.sandbox?.vmSize ? VM_SIZES[launch.sandbox.vmSize] : {}),
    },
    persist: { defaults: launch.persistDefaults },
    egress: { mode: launch.egressAllow.length ? 'allow' : 'none', allow: launch.egressAllow },
  };
}

/** Loads the configuration; `overrides` are the command-line flags, already shaped like the schema. */
export function loadConfig(overrides: Plain = {}, env: NodeJS.ProcessEnv = process.env, launch?: WorkerLaunch): Config {
  const home = typeof overrides.home === 'string' ? path.resolve(overrides.home) : defaultHome(env);
  const file = path.join(home, 'config.json');
  let fromFile: Plain = {};
  if (existsSync(file)) {
    try { fromFile = JSON.parse(readFileSync(file, 'utf8')) as Plain; } catch (err) { throw fatal('config_invalid', `${file} is not valid JSON: ${(err as Error).message}`); }
  }
  const fromLaunch: Plain = launch ? launchSettings(launch) : {};
  const merged = merge(merge(merge(merge({ home }, fromFile), fromEnv(env)), fromLaunch), overrides);
  const parsed = ConfigSchema.safeParse(merged);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw fatal('config_invalid', `invalid configuration: ${issues}`);
  }
  return parsed.data;
}

/** Well-known locations under the state directory. */
export function statePaths(home: string) {
  return {
    home,
    templates: path.join(home, 'templates'),
    sessions: path.join(home, 'sessions'),
    journal: path.join(home, 'journal'),
    vms: path.join(home, 'vms'),
    logs: path.join(home, 'logs'),
    controlFile: path.join(home, 'control.json'),
  };
}
