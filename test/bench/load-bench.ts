// Load benchmark (the `load` section of `npm run bench`): N concurrent sessions (N = 1, 2, 4, 8), each making M mixed
// tool calls (write, read, bash, edit, grep, glob, in turn), through the real worker (the runtime `perimeter worker`
// assembles, QEMU microVMs from the built template, per-call mode, concurrency N, a warm pool of N) and the embedded
// dev queue over loopback HTTP. Then the control plane alone: 200 concurrent sessions through four companions (the
// built CLI, process driver, 50 sessions each), which must finish without a single failed request or call.
// Per N: throughput (calls per second from the first session created to the last one finished), p50/p99 of the
// call latency the agent sees (the dev queue's tool_use → result), and the peak PSS of all QEMU processes.
import { existsSync, readdirSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { spawn, type ChildProcess } from 'node:child_process';
import { loadConfig } from '../../companion/config';
import { DevQueue } from '../../companion/devqueue/server';
import { parseScenario, type Scenario } from '../../companion/devqueue/scenario';
import { assembleRuntime } from '../../companion/runtime';
import { setStderrLogging } from '../../companion/log';
import type { BenchContext, Metrics, Section } from './bench';

const LEVELS = [1, 2, 4, 8];
const CALLS_PER_SESSION = 6;
const CONTROL_PLANE_SESSIONS = 200;
const CONTROL_PLANE_WORKERS = 4;

function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length ? Math.round(s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!) : NaN;
}

/** M calls of the six tools in turn; each call stands alone (a session's later calls also read what it wrote). */
function mixedScenario(i: number, calls: number): Scenario {
  const cycle = [
    { tool: 'write', input: { file_path: `notes-${i}.txt`, content: `session ${i}\nTODO: measure\n` }, expectIncludes: ['wrote'] },
    { tool: 'read', input: { file_path: `notes-${i}.txt` }, expectIncludes: [`session ${i}`] },
    { tool: 'bash', input: { command: `wc -l notes-${i}.txt && echo bash-${i}` }, expectIncludes: [`bash-${i}`] },
    { tool: 'edit', input: { file_path: `notes-${i}.txt`, old_string: 'TODO: measure', new_string: 'DONE: measured' }, expectIncludes: ['edited'] },
    { tool: 'grep', input: { pattern: 'DONE' }, expectIncludes: [`notes-${i}.txt`] },
    { tool: 'glob', input: { pattern: '*.txt' }, expectIncludes: [`notes-${i}.txt`] },
  ];
  return parseScenario({ name: `load-${i}`, steps: Array.from({ length: calls }, (_, k) => cycle[k % cycle.length]) });
}

/** Sum of the PSS of the QEMU processes whose command line names `marker` (this run's state directory), in MiB. */
function qemuPssMiB(marker: string): number {
  let kib = 0;
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.startsWith('qemu-system') && !cmd.includes('/qemu-system')) continue;
      if (!cmd.includes(marker)) continue;
      kib += Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
    } catch { /* the process ended */ }
  }
  return kib / 1024;
}

interface Level { callsPerSec: number; p50: number; p99: number; vmPssMb: number; failed: number }

/** N sessions at once through one in-process runtime on QEMU. */
async function vmLevel(ctx: BenchContext, n: number): Promise<Level> {
  const home = mkdtempSync(path.join(ctx.tmp, `load-${n}-`));
  const config = loadConfig({
    home, concurrency: n, control: { enabled: false },
    sandbox: { ...ctx.config.sandbox, driver: 'qemu', mode: 'per-call', poolSize: n, template: ctx.template!.dir },
  }, {});
  const dq = new DevQueue({ unansweredWaitMs: 800 });
  await dq.start();
  const runtime = await assembleRuntime({ config, environmentId: dq.environmentId, environmentKey: dq.environmentKey, baseUrl: dq.baseUrl, control: false, maxIdleMs: 500 });
  const running = runtime.run();
  let peak = 0;
  const sampler = setInterval(() => { peak = Math.max(peak, qemuPssMiB(home)); }, 250);
  try {
    await new Promise((r) => setTimeout(r, 3000)); // the warm pool fills, as on a companion that has been up a while
    const t0 = performance.now();
    const sids = Array.from({ length: n }, (_, i) => dq.createSession(mixedScenario(i, CALLS_PER_SESSION)));
    await dq.waitFor(() => sids.every((s) => dq.report(s).finished), 30 * 60_000, `${n} sessions`);
    const secs = (performance.now() - t0) / 1000;
    const steps = sids.flatMap((s) => dq.report(s).steps);
    const ms = steps.flatMap((s) => (s.ms === null ? [] : [s.ms]));
    return {
      callsPerSec: Math.round((steps.length / secs) * 100) / 100, p50: percentile(ms, 50), p99: percentile(ms, 99),
      vmPssMb: Math.round(peak), failed: steps.filter((s) => s.status !== 'passed').length,
    };
  } finally {
    clearInterval(sampler);
    await runtime.worker.drain();
    await running;
    await dq.close();
    rmSync(home, { recursive: true, force: true });
  }
}

/** The control plane alone: 200 sessions at once over four companion processes on the process driver. */
async function controlPlane(ctx: BenchContext): Promise<Metrics> {
  // bench.js sits beside perimeter.js in dist/; run from the sources, the built CLI is in dist/
  const cli = [path.join(__dirname, 'perimeter.js'), path.join(__dirname, '..', '..', 'dist', 'perimeter.js')].find((f) => existsSync(f));
  if (!cli) throw new Error('the built CLI (dist/perimeter.js) is missing: npm run build');
  const dq = new DevQueue({ unansweredWaitMs: 800 });
  await dq.start();
  const homes: string[] = [];
  const workers: ChildProcess[] = [];
  try {
    for (let w = 0; w < CONTROL_PLANE_WORKERS; w++) {
      const home = mkdtempSync(path.join(ctx.tmp, 'load-cp-'));
      homes.push(home);
      workers.push(spawn(process.execPath, [cli, 'worker', '--home', home, '--base-url', dq.baseUrl, '--environment-id', dq.environmentId, '--driver', 'process',
        '--no-control', '--max-idle-ms', '500', '--concurrency', String(CONTROL_PLANE_SESSIONS / CONTROL_PLANE_WORKERS), '--log-level', 'error'], {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey }, stdio: 'ignore',
      }));
    }
    const t0 = performance.now();
    const sids = Array.from({ length: CONTROL_PLANE_SESSIONS }, (_, i) => dq.createSession(mixedScenario(i, 3)));
    let peakHeld = 0;
    await dq.waitFor(() => {
      peakHeld = Math.max(peakHeld, dq.workItems().filter((w) => w.state === 'active' || w.state === 'starting').length);
      return sids.every((s) => dq.report(s).finished);
    }, 10 * 60_000, '200 sessions');
    const secs = (performance.now() - t0) / 1000;
    const steps = sids.flatMap((s) => dq.report(s).steps);
    const ms = steps.flatMap((s) => (s.ms === null ? [] : [s.ms]));
    const failedRequests = dq.requests.filter((r) => r.status >= 500 || r.status < 0 || [400, 401, 403, 404, 413].includes(r.status)).length;
    const errors = failedRequests + steps.filter((s) => s.status !== 'passed').length + dq.duplicateResults.length;
    if (errors > 0) throw new Error(`the control plane run had ${errors} error(s): ${failedRequests} failed request(s), ${dq.duplicateResults.length} duplicate result(s)`);
    return {
      devQueueSessions: CONTROL_PLANE_SESSIONS, devQueuePeakSessionsHeld: peakHeld, devQueueCallsPerSec: Math.round((steps.length / secs) * 10) / 10,
      devQueueP50Ms: percentile(ms, 50), devQueueP99Ms: percentile(ms, 99), devQueueRequests: dq.requests.length, devQueueErrors: errors,
    };
  } finally {
    for (const w of workers) w.kill('SIGTERM');
    await Promise.all(workers.map((w) => new Promise((r) => (w.exitCode !== null ? r(null) : w.once('exit', r)))));
    await dq.close();
    for (const h of homes) rmSync(h, { recursive: true, force: true });
  }
}

export const loadSection: Section = {
  name: 'load',
  about: `N = ${LEVELS.join(', ')} concurrent sessions × ${CALLS_PER_SESSION} mixed tool calls through the real worker, dev queue and QEMU VMs (calls/s, p50/p99 latency, peak QEMU PSS), then ${CONTROL_PLANE_SESSIONS} concurrent sessions on the process driver (the control plane alone)`,
  needsVm: false,
  async run(ctx) {
    setStderrLogging(false);
    const out: Metrics = { loadCallsPerSession: CALLS_PER_SESSION };
    if (ctx.template) {
      const levels: Record<string, Level> = {};
      for (const n of LEVELS) {
        levels[n] = await vmLevel(ctx, n);
        ctx.log(`  N=${n}: ${JSON.stringify(levels[n])}`);
      }
      const by = (k: keyof Level) => Object.fromEntries(LEVELS.map((n) => [String(n), levels[n]![k]]));
      Object.assign(out, { loadCallsPerSec: by('callsPerSec'), loadP50Ms: by('p50'), loadP99Ms: by('p99'), loadVmPssMbPeak: by('vmPssMb'), loadFailedCalls: by('failed') });
    } else out.loadVmSkipped = 'no template (perimeter template build)';
    Object.assign(out, await controlPlane(ctx));
    return out;
  },
};
