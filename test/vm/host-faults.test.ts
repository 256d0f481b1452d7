// The host through its own failures, with real (confined) QEMU VMs and the built worker CLI:
// - A soak of per-call VMs (PERIMETER_SOAK_CALLS, default 50; 500 for the full run) leaves nothing behind: no process
//   of the VMs' launch chain, no file or socket in the run directories, no mount, no host cgroup, and the worker's
//   own sockets do not grow with the calls it served.
// - A VM killed in the middle of a call: the call gets exactly one result (an error), the next call works, and the
//   killed VM's jail and run directory are gone.
// - The companion killed in the middle of a call: no VM survives it; the next companion on the same state directory
//   answers the re-delivered call with the journal's `interrupted` result, exactly once, never running it again.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { ControlClient } from '../../extension/launcher/controlClient';
import { delay } from '../../extension/launcher/workerHost';
import { INTERRUPTED_TEXT } from '../../companion/journal/journal';
import type { DevQueue } from '../../companion/devqueue/server';
import { cmdlineOf, processesUnder, qemusUnder, skipWithoutVms, startQemuWorker } from './helpers';
import { answeredOnce, connectControl, rmDir, scenario, startDevQueue, tmpDir, type Child } from '../worker/helpers';

const SOAK_CALLS = Number(process.env.PERIMETER_SOAK_CALLS ?? 50);

/** Files, sockets and directories left in the VMs' and sessions' working areas of `home`. */
function filesUnder(home: string): string[] {
  const out: string[] = [];
  for (const area of ['vms', 'work']) {
    const dir = path.join(home, area);
    if (existsSync(dir)) for (const name of readdirSync(dir)) out.push(`${area}/${name}`);
  }
  return out;
}

const mountsUnder = (dir: string) => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(dir));

/** Host cgroups of VMs started by the companion with pid `pid` (named perimeter-vm-<pid>-…). */
function cgroupsOf(pid: number): string[] {
  const found: string[] = [];
  const walk = (dir: string, depth: number) => {
    let entries;
    try { entries = readdirSync(dir, { withFileTypes: true }); } catch { return; }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      if (e.name.startsWith(`perimeter-vm-${pid}-`)) found.push(path.join(dir, e.name));
      else if (depth > 0) walk(path.join(dir, e.name), depth - 1);
    }
  };
  walk('/sys/fs/cgroup', 4);
  return found;
}

function socketsOf(pid: number): number {
  try { return readdirSync(`/proc/${pid}/fd`).filter((fd) => { try { return readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:'); } catch { return false; } }).length; } catch { return 0; }
}

async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(50);
  }
}

describe('the host through its own failures (real VMs, built CLI)', function () {
  this.timeout(1_800_000);
  let dq: DevQueue | null = null;
  const workers: Child[] = [];
  const clients: ControlClient[] = [];
  const dirs: string[] = [];
  before(function () { skipWithoutVms(this); });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const w of workers.splice(0)) if (w.proc.exitCode === null && w.proc.signalCode === null) { w.proc.kill('SIGKILL'); await w.exit; }
    await dq?.close();
    dq = null;
    for (const d of dirs.splice(0)) rmDir(d);
  });

  function home(config: Record<string, unknown> = {}): string {
    const h = tmpDir('perimeter-faults-');
    dirs.push(h);
    writeFileSync(path.join(h, 'config.json'), JSON.stringify(config));
    return h;
  }

  function startWorker(h: string): Child {
    const w = startQemuWorker(dq!, h);
    workers.push(w);
    return w;
  }

  async function waitForOutput(client: ControlClient, marker: string): Promise<void> {
    await new Promise<void>((resolve) => client.onEvent((e) => { if (e.type === 'call.output' && e.chunk.includes(marker)) resolve(); }));
  }

  it(`a soak of ${SOAK_CALLS} per-call VMs leaves no process, file, socket, mount or cgroup behind`, async () => {
    dq = await startDevQueue({ leaseTtlSeconds: 60 });
    const h = home();
    const worker = startWorker(h);
    const pid = worker.proc.pid!;
    clients.push(await connectControl(h, worker));
    const calls = (n: number, from: number) => scenario(Array.from({ length: n }, (_, i) => ({ tool: 'bash', input: { command: `echo soak-${from + i}` }, expectIncludes: [`soak-${from + i}`] })));
    const first = dq.createSession(calls(5, 0));
    await dq.waitFor(() => dq!.report(first).finished, 600_000, 'the first 5 calls');
    const socketsEarly = socketsOf(pid);
    const rest = dq.createSession(calls(SOAK_CALLS - 5, 5));
    await dq.waitFor(() => dq!.report(rest).finished, 1_700_000, `the other ${SOAK_CALLS - 5} calls`);
    const steps = [...dq.report(first).steps, ...dq.report(rest).steps];
    assert.equal(steps.filter((s) => s.status === 'passed').length, SOAK_CALLS, JSON.stringify(steps.find((s) => s.status !== 'passed')));
    assert.ok(qemusUnder(h).length <= 4, `no VMs pile up (the pool, the emulator started ahead, one call): ${qemusUnder(h).join('\n')}`);
    assert.ok(socketsOf(pid) - socketsEarly < 12, `the worker's sockets do not grow with the calls: ${socketsEarly} after 5, ${socketsOf(pid)} after ${SOAK_CALLS}`);

    worker.proc.kill('SIGTERM');
    assert.equal((await worker.exit).code, 0, worker.stderr());
    await until(() => processesUnder(h).length === 0, 'the VMs to go');
    assert.deepEqual(filesUnder(h), [], 'no run directory, socket or session work directory is left');
    assert.deepEqual(mountsUnder(h), []);
    assert.deepEqual(cgroupsOf(pid), []);
  });

  it('a VM killed mid-call: the call gets one error result, the next call works, the jail is gone', async () => {
    dq = await startDevQueue({ leaseTtlSeconds: 60 });
    // One VM at a time, so the running call's QEMU is the only one.
    const h = home({ sandbox: { poolSize: 0, startEmulatorAhead: false } });
    const worker = startWorker(h);
    const client = await connectControl(h, worker);
    clients.push(client);
    const sid = dq.createSession(scenario([
      { tool: 'bash', input: { command: 'echo call-running; sleep 120; echo never' } },
      { tool: 'bash', input: { command: 'echo next-call-works' }, expectIncludes: ['next-call-works'] },
    ]));
    const running = waitForOutput(client, 'call-running');
    await running;
    const qemus = qemusUnder(h);
    assert.equal(qemus.length, 1, qemus.join('\n'));
    const qemuPid = Number(qemus[0]!.split(':')[0]);
    const runDir = new RegExp(`(${h}/vms/vm-[^/\\s]+)`).exec(cmdlineOf(String(qemuPid))!)![1]!;
    process.kill(qemuPid, 'SIGKILL');
    await dq.waitFor(() => dq!.report(sid).finished, 300_000, 'both calls');
    const [killed, next] = dq.report(sid).steps;
    assert.equal(killed!.isError, true, killed!.text ?? '');
    assert.doesNotMatch(killed!.text ?? '', /never/);
    assert.equal(next!.status, 'passed', JSON.stringify(next));
    const ids = dq.sessionEvents(sid).filter((e) => e.type === 'agent.tool_use').map((e) => (e as { id: string }).id);
    assert.deepEqual(answeredOnce(dq, ids), { missing: [], duplicated: [] });
    await until(() => processesUnder(runDir).length === 0 && !existsSync(runDir), 'the killed VM\'s jail and run directory to go');
    worker.proc.kill('SIGTERM');
    assert.equal((await worker.exit).code, 0, worker.stderr());
    assert.deepEqual(processesUnder(h), []);
  });

  it('the companion killed mid-call: no VM survives; the next companion answers the call once, as interrupted', async () => {
    dq = await startDevQueue({ leaseTtlSeconds: 5 });
    const h = home();
    const first = startWorker(h);
    const client = await connectControl(h, first);
    clients.push(client);
    const sid = dq.createSession(scenario([
      { tool: 'bash', input: { command: 'echo call-running; sleep 120; echo never' } },
      { tool: 'bash', input: { command: 'echo after-restart' }, expectIncludes: ['after-restart'] },
    ]));
    await waitForOutput(client, 'call-running');
    first.proc.kill('SIGKILL');
    await first.exit;
    await until(() => qemusUnder(h).length === 0, 'the killed companion\'s VMs to die with it', 10_000);

    const second = startWorker(h);
    await dq.waitFor(() => dq!.report(sid).finished, 300_000, 'the session to finish on the next companion');
    const [interrupted, after] = dq.report(sid).steps;
    assert.equal(interrupted!.isError, true);
    assert.equal(interrupted!.text, INTERRUPTED_TEXT, 'answered from the journal, not run again');
    assert.equal(after!.status, 'passed', JSON.stringify(after));
    const ids = dq.sessionEvents(sid).filter((e) => e.type === 'agent.tool_use').map((e) => (e as { id: string }).id);
    assert.deepEqual(answeredOnce(dq, ids), { missing: [], duplicated: [] }, 'exactly one result per call');
    second.proc.kill('SIGTERM');
    assert.equal((await second.exit).code, 0, second.stderr());
    await until(() => processesUnder(h).length === 0, 'the VMs to go');
    assert.deepEqual(filesUnder(h), []);
  });
});
