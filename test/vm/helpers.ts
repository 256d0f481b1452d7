// Shared setup of the real-VM tests: a QEMU driver over the template built by `perimeter template build` (the
// default state directory, or PERIMETER_HOME). Tests skip, saying why, only when QEMU or the template is genuinely
// absent; everything else is a real failure.
import { execFileSync } from 'node:child_process';
import { loadConfig, type Config } from '../../companion/config';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import { QemuDriver } from '../../companion/sandbox/qemu/driver';
import type { Sandbox } from '../../companion/sandbox/types';
import type { ExecResult } from '../../companion/guest/types';
import { SHELL_BASE_ENV } from '../../companion/guest/ready-shell';

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
