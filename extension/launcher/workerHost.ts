// What the supervisor needs from a machine that runs a companion worker: this machine (localHost.ts) or an SSH host
// (sshHost.ts). Plain Node, no `vscode`. The settings here are non-secret; both hosts hand them to the worker as one
// launch file (companion/protocol/launch.ts, built by `launchFor`); the environment key is passed separately and only
// ever written to the worker's stdin.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { ControlEndpointFile } from '../../companion/protocol/control';
import { WorkerLaunch, type LaunchSandbox, type LogLevel, type SandboxDriver, type VmSize } from '../../companion/protocol/launch';
import { EnvironmentCheck } from '../../companion/protocol/environment';
import type { IDisposable } from '../common/lifecycle';

export type SandboxDriverSetting = SandboxDriver;
export type LogLevelSetting = LogLevel;

export interface WorkerSettings {
  /** `environment` serves a real self_hosted environment; `localQueue` plays the bundled scenario (Try Locally). */
  mode: 'environment' | 'localQueue';
  environmentId?: string;
  concurrency: number;
  driver: SandboxDriverSetting;
  persistDefaults: string[];
  egressAllow: string[];
  logLevel: LogLevelSetting;
  /** A scenario file for the local queue (this machine only); the bundled one when absent. */
  scenario?: string;
  /** VM mode, warm pool size and call timeout (the companion's configuration decides what is left out). */
  sandbox?: LaunchSandbox;
}

/**
 * The launch a host hands its worker, checked against the companion's schema (a setting out of range throws here,
 * before anything starts). `scenarioHere`: the scenario file is on the worker's machine (false for an SSH host).
 */
export function launchFor(s: WorkerSettings, scenarioHere: boolean): WorkerLaunch {
  const list = (values: string[]) => values.map((v) => v.trim()).filter(Boolean);
  const parsed = WorkerLaunch.safeParse({
    queue: s.mode === 'environment'
      ? { kind: 'environment', ...(s.environmentId ? { environmentId: s.environmentId } : {}) }
      : { kind: 'local', ...(scenarioHere && s.scenario ? { scenario: s.scenario } : {}) },
    concurrency: s.concurrency,
    logLevel: s.logLevel,
    sandboxDriver: s.driver,
    persistDefaults: list(s.persistDefaults),
    egressAllow: list(s.egressAllow),
    ...(s.sandbox ? { sandbox: s.sandbox } : {}),
  } satisfies WorkerLaunch);
  if (!parsed.success) throw new Error(`invalid Perimeter settings: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

/** The host cannot be reached (SSH could not connect or log in): a worker there may still be running. */
export class HostUnreachableError extends Error {
  constructor(message: string) { super(message); this.name = 'HostUnreachableError'; }
}

/**
 * SSH refused the host's key. `changed`: the host presents another key than the one known for it (a reinstalled
 * host, or someone in between): never trusted from here. Otherwise the key is simply not known yet (a first
 * connection); `fingerprints` are what the host offers now (from ssh-keyscan, `SHA256:…` with the key type), for
 * the user to compare with the host's own before trusting it.
 */
export class HostKeyError extends HostUnreachableError {
  constructor(message: string, readonly changed: boolean, readonly fingerprints: string[] = []) { super(message); this.name = 'HostKeyError'; }
}

/** The steps of bringing a host up that a progress notification names. */
export type HostStep = 'connecting' | 'installing' | 'checking' | 'starting';

/** Choices of a CLI command: the VM size a template is built at. */
export interface CliOptions { vmSize?: VmSize }

/** Where a running worker's control API can be reached from this machine. */
export interface ConnectTarget { port: number; token: string; pid: number; version: string }

export interface CommandResult { code: number | null; stdout: string; stderr: string }

export interface WorkerHost extends IDisposable {
  readonly hostId: string;
  readonly label: string;
  /** The worker is reached over a link that can fail on its own (SSH): a lost link is then not a lost worker. */
  readonly remote: boolean;
  /** The running worker for this host, or null when none runs (a stale control.json does not count). */
  findWorker(): Promise<ConnectTarget | null>;
  /** Starts a worker and resolves once its control API is up. `key` is required for mode `environment`. */
  startWorker(settings: WorkerSettings, key: string | undefined): Promise<void>;
  /** Fires when the link to the worker ends (our local worker process exited, or the SSH tunnel closed). */
  onLinkDown(listener: (detail: string) => void): IDisposable;
  /** Lines the worker (or ssh) wrote to stderr, for the Worker Log. */
  onLog(listener: (line: string) => void): IDisposable;
  /** Resolves once no worker runs any more (after a shutdown request), or rejects after `timeoutMs`. */
  waitStopped(timeoutMs: number): Promise<void>;
  /** Last resort after a shutdown request went unanswered: kill what we can reach. */
  forceStop(): Promise<void>;
  /** The last 200 lines of the worker's log file (`<home>/worker.log` on that machine). */
  logTail(): Promise<string>;
  /** Runs a companion CLI command (`doctor --json`, `template build`) on that machine. */
  runCli(command: 'doctor' | 'templateBuild', onOutput?: (text: string) => void, opts?: CliOptions): Promise<CommandResult>;
  /** Asks the API from that machine (its route, the companion's SDK) whether the environment ID and key are accepted. */
  checkEnvironment(environmentId: string, key: string): Promise<EnvironmentCheck>;
  /** Reports the step a longer operation (connect, install, check, start) is at. */
  onStep(listener: (step: HostStep, detail: string) => void): IDisposable;
  /** Releases processes this object spawned (tunnels); a detached worker keeps running. */
  dispose(): void;
}

/** Reads `perimeter environment check --json` output; a result that does not parse becomes an error with the output. */
export function parseEnvironmentCheck(r: CommandResult): EnvironmentCheck {
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    const parsed = EnvironmentCheck.safeParse(JSON.parse(line));
    if (parsed.success) return parsed.data;
  } catch { /* not JSON: reported below */ }
  throw new Error(`the environment check did not run: ${(r.stderr || r.stdout).trim().split('\n').pop() ?? `exit code ${r.code}`}`);
}

export function parseEndpointFile(text: string): ConnectTarget | null {
  try {
    const parsed = ControlEndpointFile.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : null;
  } catch { return null; }
}

export function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
}

/**
 * The reason a worker gave for not starting: the CLI's one fatal line (`perimeter worker: <reason>`, e.g. no microVM
 * sandbox can run here, with the fix) in the last lines of its log; null when it did not print one.
 */
export function workerStartFailure(logTail: string): string | null {
  const lines = logTail.split('\n').map((l) => /^perimeter worker: (.+)$/.exec(l.trim())?.[1]).filter((r): r is string => !!r);
  return lines.at(-1) ?? null;
}

export function delay(ms: number): Promise<void> { return new Promise((r) => setTimeout(r, ms)); }

/** A free TCP port on 127.0.0.1 (ssh -L cannot allocate one itself). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Runs a program from an argv array (never a shell), optionally feeding stdin; collects output. */
export function runProgram(program: string, args: string[], opts: { stdin?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number; onOutput?: (text: string) => void } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { shell: false, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = ''; let stderr = '';
    const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs) : null;
    child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); opts.onOutput?.(b.toString()); });
    child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); opts.onOutput?.(b.toString()); });
    child.on('error', (err) => { if (timer) clearTimeout(timer); reject(err); });
    child.on('close', (code) => { if (timer) clearTimeout(timer); resolve({ code, stdout, stderr }); });
    child.stdin.on('error', () => { /* the program may exit without reading stdin */ });
    child.stdin.end(opts.stdin ?? '');
  });
}

/** Splits a byte stream into lines for a log sink. */
export function lineSplitter(sink: (line: string) => void): (chunk: Buffer | string) => void {
  let rest = '';
  return (chunk) => {
    const text = rest + chunk.toString();
    const lines = text.split('\n');
    rest = lines.pop() ?? '';
    for (const l of lines) if (l.trim()) sink(l);
  };
}
