// The worker on a state directory that runs out of space, for real: a small tmpfs mounted as the companion's home.
// Below minFreeMiB the worker stops claiming (no poll reaches the service, the state is `paused` with the reason, which
// a panel connecting then is told too, and `doctor` says so) and resumes by itself when space returns; a disk so full that the journal cannot be written turns the journal
// unhealthy (the running call's result is still posted once, the next call is answered "not run"), and the journal
// recovers by itself once space returns, with the result it could not write then made durable.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../companion/config';
import { EventHub } from '../../companion/events';
import { assembleRuntime, type Runtime } from '../../companion/runtime';
import type { ControlEvent } from '../../companion/protocol/control';
import { setStderrLogging } from '../../companion/log';
import type { DevQueue } from '../../companion/devqueue/server';
import { Journal } from '../../companion/journal/journal';
import { ControlClient } from '../../extension/launcher/controlClient';
import { answeredOnce, rmDir, runCli, scenario, startDevQueue, tmpDir } from './helpers';

const MiB = 2 ** 20;

/** Mounts a tmpfs of `sizeMiB` on a fresh directory; null (with the reason) where this user cannot mount. */
function mountTmpfs(sizeMiB: number): { dir: string; unmount(): void } | string {
  const dir = tmpDir('perimeter-tmpfs-');
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0700`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (err) {
    rmDir(dir);
    return `cannot mount a tmpfs here (${(err as Error).message.split('\n')[0]}); this test needs root`;
  }
  return { dir, unmount: () => { try { execFileSync('umount', ['-l', dir]); } catch { /* already gone */ } rmDir(dir); } };
}

const freeBytes = (dir: string) => { const st = statfsSync(dir); return st.bavail * st.bsize; };

/** Writes zeros to `file` until only `leaveBytes` are free in its filesystem (or the disk is full). */
function fillUntil(file: string, leaveBytes: number): void {
  const fd = openSync(file, 'a');
  const chunk = Buffer.alloc(256 * 1024);
  try {
    for (;;) {
      const free = freeBytes(path.dirname(file));
      if (free <= leaveBytes) return;
      try { writeSync(fd, chunk, 0, Math.min(chunk.length, Math.max(4096, free - leaveBytes))); } catch { return; }
    }
  } finally { closeSync(fd); }
}

function nextState(hub: EventHub, state: string): Promise<Extract<ControlEvent, { type: 'worker.state' }>> {
  return new Promise((resolve) => {
    const off = hub.subscribe((e) => { if (e.type === 'worker.state' && e.state === state) { off(); resolve(e); } });
  });
}

describe('worker: a state directory that runs out of space (tmpfs)', function () {
  this.timeout(120_000);
  let dq: DevQueue;
  let mount: { dir: string; unmount(): void } | null = null;
  let runtime: Runtime | null = null;
  let running: Promise<number> | null = null;

  before(function () {
    const probe = mountTmpfs(1);
    if (typeof probe === 'string') { console.log(`      SKIPPED: ${probe}`); this.skip(); }
    probe.unmount();
  });
  beforeEach(async () => { dq = await startDevQueue(); setStderrLogging(process.env.PERIMETER_TEST_LOGS === '1'); });
  afterEach(async () => {
    if (runtime) { await runtime.worker.drain(); await running; }
    runtime = null; running = null;
    await dq.close();
    mount?.unmount();
    mount = null;
  });

  async function start(home: string, minFreeMiB: number, hub: EventHub): Promise<void> {
    const config = loadConfig({ home, minFreeMiB, sandbox: { driver: 'process', mode: 'per-call' }, control: { enabled: false } }, {});
    runtime = await assembleRuntime({ config, hub, environmentId: dq.environmentId, environmentKey: dq.environmentKey, baseUrl: dq.baseUrl, control: true, maxIdleMs: 800, healthCheckMs: 100 });
    running = runtime.run();
  }

  it('below minFreeMiB claims nothing (no poll reaches the service) and resumes by itself when space returns', async () => {
    const m = mountTmpfs(48);
    assert.ok(typeof m !== 'string', String(m));
    mount = m;
    const home = path.join(m.dir, 'home');
    mkdirSync(home);
    writeFileSync(path.join(home, 'config.json'), JSON.stringify({ minFreeMiB: 16 }));   // what `doctor` reads
    const hub = new EventHub();
    await start(home, 16, hub);
    await dq.waitFor(() => dq.requests.some((r) => r.route === 'work.poll'), 30_000, 'the first poll');

    const paused = nextState(hub, 'paused');
    const filler = path.join(m.dir, 'filler');
    fillUntil(filler, 8 * MiB);
    const event = await paused;
    assert.match(event.detail ?? '', /^disk low: .* free in .*home, below minFreeMiB \(16 MiB\); not claiming new work until space returns$/);
    assert.equal(runtime!.worker.state(), 'paused');
    assert.match(runtime!.health.state().blocked ?? '', /disk low/);
    // What the panel gets when it connects now: the state and why.
    const panel = new ControlClient({ port: runtime!.control!.endpoint.port, token: runtime!.control!.endpoint.token });
    const hello = await panel.connect();
    panel.close();
    assert.equal(hello.state, 'paused');
    assert.equal(hello.stateDetail, event.detail);
    const doctor = runCli(['doctor', '--json', '--home', home]);
    await doctor.exit;
    const checks = (JSON.parse(doctor.stdout()) as { checks: Array<{ name: string; ok: boolean; detail: string }> }).checks;
    const disk = checks.find((c) => c.name === 'disk')!;
    assert.equal(disk.ok, false);
    assert.match(disk.detail, /disk low: .* below minFreeMiB \(16 MiB\)/);
    assert.match(checks.find((c) => c.name === 'companion')!.detail, new RegExp(`a companion \\(pid ${process.pid},`));

    // A poll already on the wire when the disk filled ends within the service's block_ms (999 ms); then none follow.
    await new Promise((r) => setTimeout(r, 1500));
    const pollsWhilePaused = dq.requests.filter((r) => r.route === 'work.poll').length;
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'echo served' }, expectIncludes: ['served'] }]));
    // The SDK's poller asks again 1–3 s after an empty answer: 6 s would see at least one poll if any got through.
    await new Promise((r) => setTimeout(r, 6000));
    assert.equal(dq.requests.filter((r) => r.route === 'work.poll').length, pollsWhilePaused, 'no poll reached the service while paused');
    assert.deepEqual(dq.workItems().map((w) => w.state), ['queued'], 'the session is not claimed');
    assert.equal(runtime!.worker.state(), 'paused');

    const resumed = nextState(hub, 'polling');
    rmSync(filler);
    await resumed;
    await dq.waitFor(() => dq.report(sid).finished, 60_000, 'the session to be served after space returned');
    assert.equal(dq.report(sid).steps[0]!.status, 'passed', JSON.stringify(dq.report(sid).steps[0]));
  });

  it('a journal that cannot be written: the result is posted once, the next call is not run, and the journal recovers', async () => {
    const m = mountTmpfs(48);
    assert.ok(typeof m !== 'string', String(m));
    mount = m;
    const home = path.join(m.dir, 'home');
    const hub = new EventHub();
    await start(home, 0, hub);
    const sid = dq.createSession(scenario([
      // A result of many pages: a small line could still land in the journal's last, partly used page.
      { tool: 'bash', input: { command: "echo started; sleep 2; head -c 60000 /dev/zero | tr '\\0' x; echo; echo first-done" } },
      { tool: 'bash', input: { command: 'echo second' } },
    ]));
    await new Promise<void>((resolve) => { const off = hub.subscribe((e) => { if (e.type === 'call.output' && e.chunk.includes('started')) { off(); resolve(); } }); });
    const paused = nextState(hub, 'paused');
    const filler = path.join(m.dir, 'filler');
    fillUntil(filler, 0);
    await dq.waitFor(() => dq.report(sid).finished, 60_000, 'both calls answered');
    const [first, second] = dq.report(sid).steps;
    const ids = dq.sessionEvents(sid).filter((e) => e.type === 'agent.tool_use').map((e) => (e as { id: string }).id);
    assert.deepEqual(answeredOnce(dq, ids), { missing: [], duplicated: [] }, 'each call answered exactly once');
    assert.match(first!.text ?? '', /first-done/, 'the running call\'s result is posted although it could not be journaled');
    assert.equal(second!.isError, true);
    assert.match(second!.text ?? '', /^not run: .*cannot be written|^not run: cannot write the journal/);
    assert.equal(runtime!.journal.healthy, false);
    assert.match((await paused).detail ?? '', /the journal cannot be written/);

    const resumed = nextState(hub, 'polling');
    rmSync(filler);
    await resumed;
    assert.equal(runtime!.journal.healthy, true, 'the journal recovered by itself');
    await runtime!.worker.drain();
    await running;
    runtime = null;
    const journal = Journal.open(path.join(home, 'journal'));
    try {
      const first = journal.getCall(ids[0]!)!;
      assert.match(first.result ?? '', /first-done/, 'the result the journal could not write is durable now');
      assert.equal(journal.getCall(ids[1]!), undefined, 'the call that was not run was never recorded as started');
    } finally { journal.close(); }
  });
});
