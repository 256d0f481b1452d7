// SIGTERM drain of the built worker CLI on the QEMU driver: a call that is running in a VM when the signal arrives
// finishes in that live VM, its real output is posted, and what it wrote under /workspace is committed as the
// session's next generation; a call still running at the drain deadline is answered with an error; no QEMU outlives
// the worker, whether it drained or was SIGKILLed (parent-death signal). Each call proves it is running by streaming
// a line over the control API first.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { PersistState } from '../../companion/protocol/control';
import type { ControlClient } from '../../extension/launcher/controlClient';
import { delay } from '../../extension/launcher/workerHost';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import type { DevQueue } from '../../companion/devqueue/server';
import { skipWithoutVms, vmConfig } from './helpers';
import { connectControl, rmDir, runCli, scenario, startDevQueue, tmpDir, workerArgs, type Child } from '../worker/helpers';

/** Live (not zombie) QEMU processes whose run directory is under `home`. */
function qemusOf(home: string): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8');
      if (cmd.startsWith('qemu-system') || cmd.includes('/qemu-system')) {
        if (cmd.includes(`${home}/vms/`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${name}/status`, 'utf8'))) found.push(Number(name));
      }
    } catch { /* exited meanwhile */ }
  }
  return found;
}

async function noQemuLeft(home: string): Promise<number[]> {
  for (let i = 0; i < 100 && qemusOf(home).length > 0; i++) await delay(50);
  return qemusOf(home);
}

describe('worker SIGTERM drain in real VMs (built CLI)', function () {
  this.timeout(300_000);
  let dq: DevQueue | null = null;
  let worker: Child | null = null;
  let client: ControlClient | null = null;
  const dirs: string[] = [];
  before(function () { skipWithoutVms(this); });
  afterEach(async () => {
    client?.close();
    if (worker && worker.proc.exitCode === null && worker.proc.signalCode === null) { worker.proc.kill('SIGKILL'); await worker.exit; }
    await dq?.close();
    for (const d of dirs.splice(0)) rmDir(d);
    client = null; worker = null; dq = null;
  });

  /** Starts the worker CLI on the QEMU driver for one session running `command`; resolves once the call printed `call-running`. */
  async function startCall(command: string, extra: string[] = []): Promise<{ home: string; sid: string; worker: Child }> {
    dq = await startDevQueue({ leaseTtlSeconds: 30 });
    const home = tmpDir('perimeter-drain-home-');
    dirs.push(home);
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command }, expectIncludes: ['call-running'] }]));
    const env = { PERIMETER_HOME: home, PERIMETER_TEMPLATE: findTemplate(vmConfig().home)!.dir, ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey };
    const args = workerArgs(dq, home, ['--max-idle-ms', '60000', ...extra]).filter((a) => a !== '--no-control');
    args[args.indexOf('--driver') + 1] = 'qemu';
    const w = runCli(args, env);
    worker = w;
    client = await connectControl(home, w);
    await new Promise<void>((resolve) => client!.onEvent((e) => { if (e.type === 'call.output' && e.chunk.includes('call-running')) resolve(); }));
    return { home, sid, worker: w };
  }

  it('a call running when SIGTERM arrives finishes in its VM, answers with its output, and its files are committed', async () => {
    const { home, sid, worker } = await startCall('echo call-running; sleep 3; echo done > /workspace/f; echo finished');
    worker.proc.kill('SIGTERM');
    const exit = await worker.exit;
    assert.equal(exit.code, 0, worker.stderr());
    assert.deepEqual(await noQemuLeft(home), [], 'no QEMU outlives the worker');

    const step = dq!.report(sid).steps[0]!;
    assert.equal(step.status, 'passed', `${step.reason ?? ''}\n${step.text ?? ''}\n${worker.stderr()}`);
    assert.equal(step.isError, false);
    assert.match(step.text ?? '', /call-running\s+finished/);

    const ls = runCli(['persist', 'ls', '--session', sid, '--json', '--home', home], { PERIMETER_HOME: home, PERIMETER_TEMPLATE: findTemplate(vmConfig().home)!.dir });
    assert.equal((await ls.exit).code, 0, ls.stderr());
    // A file store lists `files`; a session disk, read through a browse VM, lists `entries` of the generation.
    const raw = JSON.parse(ls.stdout()) as { entries?: Array<{ path: string; type: string }> };
    const listing = PersistState.parse(raw);
    const paths = [...listing.files.map((f) => f.path), ...(raw.entries ?? []).filter((e) => e.type === 'file').map((e) => e.path)];
    assert.ok(paths.includes('/workspace/f'), `the file written during the drain is committed: ${ls.stdout()}`);
  });

  it('a call still running at the drain deadline is answered with an error, and then its VM is killed', async () => {
    const { home, sid, worker } = await startCall('echo call-running; sleep 600; echo never', ['--drain-timeout-ms', '1500']);
    assert.ok(qemusOf(home).length > 0, 'the call runs in a QEMU');
    worker.proc.kill('SIGTERM');
    const exit = await worker.exit;
    assert.equal(exit.code, 0, worker.stderr());
    const step = dq!.report(sid).steps[0]!;
    assert.equal(step.isError, true, step.text ?? '');
    assert.match(step.text ?? '', /drain deadline/);
    assert.deepEqual(await noQemuLeft(home), [], 'no QEMU outlives the worker');
  });

  it('a SIGKILLed worker takes its VMs down with it', async () => {
    const { home, worker } = await startCall('echo call-running; sleep 600');
    assert.ok(qemusOf(home).length > 0, 'the call runs in a QEMU');
    worker.proc.kill('SIGKILL');
    await worker.exit;
    assert.deepEqual(await noQemuLeft(home), [], 'the parent-death signal killed every QEMU');
  });
});
