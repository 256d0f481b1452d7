// Shared fixtures for the worker suite: a dev queue on loopback, scenarios, an in-process runtime on the process
// driver, and the built CLI (dist/perimeter.js) as a child process for crash/signal tests.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DevQueue, type DevQueueOptions } from '../../companion/devqueue/server';
import { parseScenario, type Scenario } from '../../companion/devqueue/scenario';
import { loadConfig } from '../../companion/config';
import { assembleRuntime, type Runtime } from '../../companion/runtime';
import { setStderrLogging } from '../../companion/log';
import { ControlClient } from '../../extension/launcher/controlClient';
import { parseEndpointFile, delay } from '../../extension/launcher/workerHost';

export const ROOT = path.resolve(__dirname, '..', '..');
/** The built CLI; beside this code when it runs bundled (the bench, dist/bench.js). */
export const CLI = existsSync(path.join(__dirname, 'perimeter.js')) ? path.join(__dirname, 'perimeter.js') : path.join(ROOT, 'dist', 'perimeter.js');

export function tmpDir(prefix = 'perimeter-test-'): string { return mkdtempSync(path.join(os.tmpdir(), prefix)); }
export function rmDir(dir: string): void { rmSync(dir, { recursive: true, force: true }); }

export function scenario(steps: unknown[], extra: Record<string, unknown> = {}): Scenario {
  return parseScenario({ name: 'test', steps, ...extra });
}

export async function startDevQueue(opts: DevQueueOptions = {}): Promise<DevQueue> {
  const dq = new DevQueue({ unansweredWaitMs: 800, ...opts });
  await dq.start();
  return dq;
}

export interface RuntimeFixture { runtime: Runtime; running: Promise<number>; home: string; stop(): Promise<number> }

/** A worker runtime in this process, on the process driver, pointed at `dq`. */
export async function startRuntime(dq: DevQueue, o: { home?: string; concurrency?: number; mode?: 'per-call' | 'per-session'; maxIdleMs?: number; drainTimeoutMs?: number } = {}): Promise<RuntimeFixture> {
  setStderrLogging(process.env.PERIMETER_TEST_LOGS === '1');
  const home = o.home ?? tmpDir('perimeter-home-');
  const config = loadConfig({ home, logLevel: process.env.PERIMETER_LOG_LEVEL, concurrency: o.concurrency ?? 4, sandbox: { driver: 'process', mode: o.mode ?? 'per-call' }, control: { enabled: false } }, {});
  const runtime = await assembleRuntime({ config, environmentId: dq.environmentId, environmentKey: dq.environmentKey, baseUrl: dq.baseUrl, control: false, maxIdleMs: o.maxIdleMs ?? 800, drainTimeoutMs: o.drainTimeoutMs, stallCheckMs: 2000 });
  const running = runtime.run();
  return { runtime, running, home, stop: async () => { await runtime.worker.drain(); return running; } };
}

export interface Child { proc: ChildProcess; stderr: () => string; stdout: () => string; exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> }

/** Runs the built CLI. `env` replaces the environment (plus PATH and HOME), so nothing leaks in by accident. */
export function runCli(args: string[], env: Record<string, string> = {}, stdin?: string): Child {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (node scripts/build.mjs)`);
  const proc = spawn(process.execPath, [CLI, ...args], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => { out += d; });
  proc.stderr!.on('data', (d) => { err += d; if (process.env.PERIMETER_TEST_LOGS === '1') process.stderr.write(d); });
  if (stdin !== undefined) proc.stdin!.end(stdin); else proc.stdin!.end();
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  return { proc, stderr: () => err, stdout: () => out, exit };
}

/** SIGKILLs every child still running (emptying the list) and waits for each to exit. */
export async function killAll(children: Child[]): Promise<void> {
  for (const c of children.splice(0)) if (c.proc.exitCode === null && c.proc.signalCode === null) { c.proc.kill('SIGKILL'); await c.exit; }
}

export function workerArgs(dq: DevQueue, home: string, extra: string[] = []): string[] {
  return ['worker', '--home', home, '--base-url', dq.baseUrl, '--environment-id', dq.environmentId, '--driver', 'process', '--no-control', '--max-idle-ms', '800', ...extra];
}

/** Every tool_use_id answered exactly once (the oracle for "no result lost, none duplicated"). */
export function answeredOnce(dq: DevQueue, toolUseIds: string[]): { missing: string[]; duplicated: string[] } {
  return {
    missing: toolUseIds.filter((id) => !dq.results.has(id)),
    duplicated: toolUseIds.filter((id) => (dq.results.get(id)?.length ?? 0) > 1 || dq.duplicateResults.includes(id)),
  };
}

/** Connects to the control API of the worker CLI `worker` started on `home`, once its control.json names that process. */
export async function connectControl(home: string, worker: Child): Promise<ControlClient> {
  const file = path.join(home, 'control.json');
  for (;;) {
    if (worker.proc.exitCode !== null) throw new Error(`the worker exited during start-up:\n${worker.stderr()}`);
    const target = existsSync(file) ? parseEndpointFile(readFileSync(file, 'utf8')) : null;
    if (target && target.pid === worker.proc.pid) {
      const client = new ControlClient({ port: target.port, token: target.token });
      await client.connect();
      return client;
    }
    await delay(100);
  }
}
