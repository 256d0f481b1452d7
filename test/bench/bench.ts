// `npm run bench [-- --json] [--only a,b] [--vms N] [--n N]`: measures the sandbox on this machine. Each section
// returns a flat record of numbers/strings; `--json` prints one merged object (stdout) and nothing else there.
// Extending: append a Section to SECTIONS (name, what it measures, run(ctx)); sections run in order, share the
// context, and a failing section records `<name>Error` instead of aborting the run.
// Method: medians over N runs, sequential (no parallel noise) unless the section measures concurrency; times are
// wall clock from the host's side (performance.now) and include every host step a real call takes.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { loadConfig, type Config } from '../../companion/config';
import { EventHub } from '../../companion/events';
import { Journal } from '../../companion/journal/journal';
import { CallRunner } from '../../companion/tools/call-runner';
import { ProcessDriver } from '../../companion/sandbox/process/driver';
import { QemuDriver, type QemuSandbox } from '../../companion/sandbox/qemu/driver';
import { QemuVm } from '../../companion/sandbox/qemu/vm';
import { Confinement } from '../../companion/sandbox/qemu/confine';
import { findTemplate, type Template } from '../../companion/sandbox/template/manifest';
import type { SandboxDriver } from '../../companion/sandbox/types';
import type { ExecRequest } from '../../companion/guest/types';
import { SHELL_BASE_ENV, shellArgv } from '../../companion/guest/ready-shell';
import { setLogLevel } from '../../companion/log';
import { persistSection } from './persist-bench';
import { firecrackerDiskSection } from './firecracker-disk-bench';
import { loadSection } from './load-bench';
import { templateSection } from './template-bench';
import { runSessionSoak } from '../vm/session-soak';

/** A section's results: flat values, or values keyed by a parameter (e.g. by the number of concurrent sessions). */
export type Metrics = Record<string, number | string | boolean | Record<string, number>>;
export interface BenchContext {
  config: Config;
  template: Template | null;
  n: number;
  vms: number;
  tmp: string;
  log(line: string): void;
}
export interface Section { name: string; about: string; needsVm: boolean; run(ctx: BenchContext): Promise<Metrics> }

const now = () => performance.now();
export function p50(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return Math.round((s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2) * 10) / 10;
}
const round1 = (x: number) => Math.round(x * 10) / 10;

function memAvailableMiB(): number {
  const m = readFileSync('/proc/meminfo', 'utf8').match(/^MemAvailable:\s+(\d+) kB/m);
  return m ? Number(m[1]) / 1024 : NaN;
}

/** `echo hi` as the bash tool runs a command: its argv and base environment (the guest's ready shell can take it). */
const ECHO_HI: ExecRequest = { argv: shellArgv('echo hi'), env: { ...SHELL_BASE_ENV }, timeoutMs: 30_000, maxOutputBytes: 1024 };

/** `echo hi` through the worker's tool path (CallRunner → driver.acquire → bash tool → destroy), per-call mode. */
async function toolCallTimes(ctx: BenchContext, driver: SandboxDriver, n: number, beforeEach: () => Promise<void>): Promise<number[]> {
  const journalDir = mkdtempSync(path.join(ctx.tmp, 'journal-'));
  const runner = new CallRunner({ driver, journal: Journal.open(journalDir), hub: new EventHub(), mode: 'per-call', callTimeoutMs: 60_000 });
  const session = runner.openSession(`bench-${driver.kind}`, 'work-bench');
  const times: number[] = [];
  for (let i = 0; i < n + 1; i++) {
    await beforeEach();
    const t0 = now();
    const r = await session.run({ id: `toolu_bench_${driver.kind}_${i}`, name: 'bash', input: { command: 'echo hi' } });
    const dt = now() - t0;
    if (r.isError || r.text.trim() !== 'hi') throw new Error(`echo hi via ${driver.kind} returned ${JSON.stringify(r)}`);
    if (i > 0) times.push(dt); // the first call warms caches on the host side
  }
  return times;
}

/**
 * N restores (no pool) per variant, each followed by three `echo hi`: first, back to back, and after the next ready
 * shell. Variants (e.g. confined and unconfined) take turns restore by restore, so they share the machine's load.
 */
async function restoreTimes(ctx: BenchContext, variants: Array<{ startEmulatorAhead: boolean; confinement: 'jail' | 'none' }>) {
  const drivers = variants.map((v) => new QemuDriver(loadConfig({ ...ctx.config, sandbox: { ...ctx.config.sandbox, poolSize: 0, ...v } })));
  const times = drivers.map(() => ({ ready: [] as number[], first: [] as number[], backToBack: [] as number[], next: [] as number[] }));
  try {
    for (const d of drivers) await d.start();
    for (let i = 0; i < ctx.n; i++) {
      for (const [k, driver] of drivers.entries()) await restoreOnce(driver, times[k]!);
    }
  } finally { await Promise.all(drivers.map((d) => d.close())); }
  return times;
}

/** One restore and its three `echo hi`, timed into `t`; `inspect` sees the clone before it is destroyed. */
export async function restoreOnce(driver: QemuDriver, t: { ready: number[]; first: number[]; backToBack: number[]; next: number[] }, inspect?: (s: QemuSandbox) => void): Promise<void> {
  const t0 = now();
  const s = await driver.restore();
  t.ready.push(now() - t0);
  const r = await s.exec(ECHO_HI);
  t.first.push(now() - t0);
  if (r.output.toString() !== 'hi\n') throw new Error(`unexpected output ${JSON.stringify(r.output.toString())}`);
  let t1 = now();
  await s.exec(ECHO_HI); // issued at once: the agent has not started the next ready shell yet
  t.backToBack.push(now() - t1);
  await s.vm.agent.waitReadyShell(); // as between two calls of a session (the model thinks for seconds)
  t1 = now();
  await s.exec(ECHO_HI);
  t.next.push(now() - t1);
  inspect?.(s);
  await s.destroy();
  await new Promise((res) => setTimeout(res, 100)); // the QEMU started ahead is ready, as between real calls
}

export const SECTIONS: Section[] = [
  {
    name: 'machine', about: 'host, QEMU and template facts', needsVm: false,
    async run(ctx) {
      const cpu = readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m)?.[1] ?? 'unknown';
      let qemu = 'absent';
      try { qemu = execFileSync(ctx.config.sandbox.qemuBinary, ['--version'], { encoding: 'utf8' }).split('\n')[0]!; } catch { /* absent */ }
      return {
        machine: `${cpu}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}`,
        qemu,
        accel: ctx.template?.manifest.accel ?? 'none',
        template: ctx.template ? `${ctx.template.manifest.hash} (${ctx.template.manifest.kernel} kernel, ${ctx.template.manifest.memoryMiB} MiB)` : 'none',
        loadAvg1: round1(os.loadavg()[0]!),
      };
    },
  },
  {
    name: 'restore', about: 'snapshot restore → ready (init answered) and → first `echo hi` answered (as the bash tool runs it), no pool, confined VMs; also without a QEMU started ahead, and unconfined (sandbox.confinement "none") in the same run', needsVm: true,
    async run(ctx) {
      const [ahead, unconfined] = await restoreTimes(ctx, [{ startEmulatorAhead: true, confinement: 'jail' }, { startEmulatorAhead: true, confinement: 'none' }]);
      const [cold, coldUnconfined] = await restoreTimes(ctx, [{ startEmulatorAhead: false, confinement: 'jail' }, { startEmulatorAhead: false, confinement: 'none' }]);
      return {
        restoreReadyMsP50: p50(ahead!.ready), restoreToReadyMsP50: p50(ahead!.first),
        backToBackExecMsP50: p50(ahead!.backToBack), warmExecMsP50: p50(ahead!.next),
        restoreToReadyQemuStartMsP50: p50(cold!.first), restoreRuns: ctx.n,
        unconfinedRestoreToReadyMsP50: p50(unconfined!.first),
        confinedRestoreOverheadMs: round1(p50(ahead!.first) - p50(unconfined!.first)),
        confinedQemuStartOverheadMs: round1(p50(cold!.first) - p50(coldUnconfined!.first)),
      };
    },
  },
  {
    name: 'warmCall', about: 'warm-pool `echo hi` bash tool call end to end through the CallRunner (pool refilled between calls)', needsVm: true,
    async run(ctx) {
      const driver = new QemuDriver(loadConfig({ ...ctx.config, sandbox: { ...ctx.config.sandbox, poolSize: 2 } }));
      try {
        const times = await toolCallTimes(ctx, driver, ctx.n, () => driver.warm(120_000));
        return { warmCallMsP50: p50(times), warmCallRuns: times.length };
      } finally { await driver.close(); }
    },
  },
  {
    name: 'warmSandbox', about: 'the sandbox layer alone: take a pooled VM, `bash -c "echo hi"`, destroy (no tool script)', needsVm: true,
    async run(ctx) {
      const driver = new QemuDriver(loadConfig({ ...ctx.config, sandbox: { ...ctx.config.sandbox, poolSize: 2 } }));
      const times: number[] = [];
      try {
        for (let i = 0; i < ctx.n; i++) {
          await driver.warm(120_000);
          const t0 = now();
          const s = await driver.acquire({ sessionId: 'bench' });
          const r = await s.exec({ argv: ['/bin/bash', '--noprofile', '--norc', '-c', 'echo hi'], timeoutMs: 30_000, maxOutputBytes: 1024 });
          await s.destroy();
          times.push(now() - t0);
          if (r.output.toString() !== 'hi\n') throw new Error('unexpected output');
        }
      } finally { await driver.close(); }
      return { warmSandboxEchoMsP50: p50(times) };
    },
  },
  {
    name: 'processCall', about: 'the same `echo hi` tool call through the process driver (no isolation)', needsVm: false,
    async run(ctx) {
      const driver = new ProcessDriver({ baseDir: ctx.tmp });
      try {
        const times = await toolCallTimes(ctx, driver, ctx.n, async () => {});
        return { processCallMsP50: p50(times) };
      } finally { await driver.close(); }
    },
  },
  {
    name: 'coldBoot', about: 'cold boot of the template kernel + initramfs (no snapshot) → first `echo hi` answered', needsVm: true,
    async run(ctx) {
      const t = ctx.template!;
      const times: number[] = [];
      for (let i = 0; i < Math.min(3, ctx.n); i++) {
        const memDir = mkdtempSync(path.join(ctx.tmp, 'cold-'));
        const t0 = now();
        const vm = await QemuVm.spawn(t.image, { binary: ctx.config.sandbox.qemuBinary, accel: t.manifest.accel, vmsDir: path.join(ctx.config.home, 'vms'), memFile: path.join(memDir, 'mem.bin'), role: 'template', confinement: Confinement.fromConfig(ctx.config.sandbox) }, () => {});
        try {
          await vm.agent.waitHello(60_000);
          await vm.agent.exec({ argv: ['/bin/sh', '-c', 'echo hi'], timeoutMs: 30_000, maxOutputBytes: 1024 });
          times.push(now() - t0);
        } finally { await vm.kill(); rmSync(memDir, { recursive: true, force: true }); }
      }
      return { coldBootMs: p50(times) };
    },
  },
  {
    name: 'concurrency', about: 'K idle restored VMs at once: PSS per VM, host MemAvailable drop, `echo` in all of them in parallel', needsVm: true,
    async run(ctx) {
      const driver = new QemuDriver(loadConfig({ ...ctx.config, sandbox: { ...ctx.config.sandbox, poolSize: 0 } }));
      await driver.start();
      const vms: QemuSandbox[] = [];
      const before = memAvailableMiB();
      try {
        for (let i = 0; i < ctx.vms; i++) {
          const s = await driver.restore();
          await s.exec({ argv: ['/bin/sh', '-c', 'echo hi'], timeoutMs: 60_000, maxOutputBytes: 1024 });
          vms.push(s);
        }
        await new Promise((r) => setTimeout(r, 2000)); // let them settle idle
        const pss = vms.map((s) => s.vm.pssMiB() ?? NaN);
        const t0 = now();
        const outs = await Promise.all(vms.map((s) => s.exec({ argv: ['/bin/sh', '-c', 'echo hi'], timeoutMs: 120_000, maxOutputBytes: 1024 })));
        const parallelMs = now() - t0;
        if (outs.some((o) => o.output.toString() !== 'hi\n')) throw new Error('a VM answered wrongly');
        return {
          concurrentVms: vms.length,
          idleVmPssMb: round1(p50(pss)),
          totalPssMb: Math.round(pss.reduce((a, b) => a + b, 0)),
          memAvailableDropMbPerVm: round1((before - memAvailableMiB()) / vms.length),
          parallelEchoAllMs: Math.round(parallelMs),
        };
      } finally {
        await Promise.all(vms.map((s) => s.destroy()));
        await driver.close();
      }
    },
  },
  persistSection,
  firecrackerDiskSection,
  loadSection,
  templateSection,
  {
    name: 'soak', about: `one session of PERIMETER_SOAK_CALLS (default 500) per-call VMs on a session disk through the worker CLI, random file changes, the worker SIGKILLed and the call's QEMU killed at random points (test/vm/session-soak.ts): files lost or stale, calls re-run (all must be 0)`, needsVm: true,
    async run(ctx) {
      const r = await runSessionSoak({ calls: Number(process.env.PERIMETER_SOAK_CALLS ?? 500), seed: 500, killRate: 0.12, log: ctx.log });
      const { firstProblem, ...counts } = r;
      return { soak: counts, ...(firstProblem ? { soakFirstProblem: firstProblem } : {}) };
    },
  },
];

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  setLogLevel('error');
  const config = loadConfig({});
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'perimeter-bench-'));
  let template: Template | null = null;
  try { template = findTemplate(config.home, config.sandbox.template); } catch { /* reported below */ }
  const ctx: BenchContext = {
    config, template, tmp,
    n: Number(arg('--n') ?? 11),
    vms: Number(arg('--vms') ?? 40),
    log: (l) => { if (!json) process.stdout.write(`${l}\n`); else process.stderr.write(`${l}\n`); },
  };
  const only = arg('--only')?.split(',');
  const result: Metrics = {};
  try {
    for (const s of SECTIONS) {
      if (only && !only.includes(s.name)) continue;
      if (s.needsVm && !template) { result[`${s.name}Skipped`] = 'no template (perimeter template build)'; continue; }
      ctx.log(`bench: ${s.name}: ${s.about}`);
      const t0 = now();
      try {
        const m = await s.run(ctx);
        Object.assign(result, m);
        ctx.log(`  ${Object.entries(m).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' ')}  (${Math.round((now() - t0) / 1000)} s)`);
      } catch (err) {
        result[`${s.name}Error`] = (err as Error).message;
        ctx.log(`  FAILED: ${(err as Error).message}`);
      }
    }
  } finally { rmSync(tmp, { recursive: true, force: true }); }
  if (json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  process.exit(Object.keys(result).some((k) => k.endsWith('Error')) ? 1 : 0);
}

if (require.main === module) void main();
