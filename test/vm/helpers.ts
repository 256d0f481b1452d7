// Shared setup of the real-VM tests: a QEMU driver over the template built by `perimeter template build` (the
// default state directory, or PERIMETER_HOME). Tests skip, saying why, only when QEMU or the template is genuinely
// absent; everything else is a real failure.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfig, type Config } from '../../companion/config';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import { QemuDriver } from '../../companion/sandbox/qemu/driver';
import type { Sandbox } from '../../companion/sandbox/types';
import type { ExecResult } from '../../companion/guest/types';
import { SHELL_BASE_ENV } from '../../companion/guest/ready-shell';
import type { DevQueue } from '../../companion/devqueue/server';
import { runCli, workerArgs, type Child } from '../worker/helpers';

export function vmConfig(sandbox: Record<string, unknown> = {}): Config {
  return loadConfig({ sandbox: { poolSize: 0, ...sandbox } });
}

/** Why VM tests cannot run here, or null when they can. */
export function vmUnavailable(): string | null {
  const config = vmConfig();
  try { execFileSync(config.sandbox.qemuBinary, ['--version'], { stdio: 'ignore' }); } catch {
    return `${config.sandbox.qemuBinary} is not installed (apt-get install qemu-system-x86)`;
  }
  try {
    if (!findTemplate(config.home, config.sandbox.template)) return `no sandbox template under ${config.home} (run: perimeter template build)`;
  } catch (err) { return (err as Error).message; }
  return null;
}

export function skipWithoutVms(ctx: Mocha.Context): void {
  const why = vmUnavailable();
  if (why) {
    console.log(`      SKIPPED (real VMs unavailable): ${why}`);
    ctx.skip();
  }
}

/** The default template's session-disk size in bytes, or null when it has none (built before session disks). */
export function templateDiskBytes(): number | null {
  const config = loadConfig({});
  return findTemplate(config.home, config.sandbox.template)?.manifest.sessionDisk?.bytes ?? null;
}

/** Skips the suite, saying how to fix it, when the default template has no session disk. */
export function skipWithoutSessionDisk(ctx: Mocha.Context): void {
  if (templateDiskBytes()) return;
  console.log('      SKIPPED: the template has no session disk (rebuild it: perimeter template build)');
  ctx.skip();
}

export function newDriver(sandbox: Record<string, unknown> = {}): QemuDriver {
  return new QemuDriver(vmConfig(sandbox));
}

export const BASH = ['/bin/bash', '--noprofile', '--norc', '-c'];
/** The bash tool's base environment, so these commands take the same path as a tool call (the guest's ready shell). */
export const ENV = { ...SHELL_BASE_ENV };

export function sh(s: Sandbox, script: string, o: { timeoutMs?: number; maxOutputBytes?: number; stdin?: Buffer } = {}): Promise<ExecResult> {
  return s.exec({ argv: [...BASH, script], cwd: '/', env: ENV, timeoutMs: o.timeoutMs ?? 30_000, maxOutputBytes: o.maxOutputBytes ?? 1 << 20, stdin: o.stdin });
}

export function text(r: ExecResult): string { return r.output.toString('utf8'); }

/** The built worker CLI on the QEMU driver (default template, control API on) serving `dq`, with `home` as its state. */
export function startQemuWorker(dq: DevQueue, home: string): Child {
  const env = { PERIMETER_HOME: home, PERIMETER_TEMPLATE: findTemplate(vmConfig().home)!.dir, ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey };
  const args = workerArgs(dq, home, ['--max-idle-ms', '60000']).filter((a) => a !== '--no-control');
  args[args.indexOf('--driver') + 1] = 'qemu';
  return runCli(args, env);
}

export function cmdlineOf(pid: string): string | null {
  try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' '); } catch { return null; }
}
const zombie = (pid: string) => { try { return /^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')); } catch { return true; } };

/** Live processes (other than `except`) whose command line names something under `dir`, as "pid: command line". */
export function processesUnder(dir: string, except: number[] = []): string[] {
  // Each command line is read once: a process may exit between two reads.
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p) && !except.includes(Number(p)))
    .map((p) => ({ p, cmdline: zombie(p) ? null : cmdlineOf(p) }))
    .filter(({ cmdline }) => cmdline?.includes(`${dir}/`)).map(({ p, cmdline }) => `${p}: ${cmdline!.slice(0, 160)}`);
}

/** The QEMU processes of the VMs of the companion whose state directory is `home`. */
export const qemusUnder = (home: string) => processesUnder(path.join(home, 'vms')).filter((p) => /qemu-system/.test(p));
