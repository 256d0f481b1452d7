// The call orchestrator: a tool_use_id runs at most once (re-dispatch answers from the journal, concurrent
// duplicates share one execution, the same id with another input is refused), sandboxes are destroyed after each
// call in per-call mode, invalid input never starts a sandbox, skills are copied in, abort kills the call, and a
// session's sandboxes come from its template (its environment; its working directory for the first call).
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ProcessDriver } from '../../companion/sandbox/process/driver';
import type { AcquireOptions, Sandbox } from '../../companion/sandbox/types';
import { Journal } from '../../companion/journal/journal';
import { EventHub } from '../../companion/events';
import { CallRunner } from '../../companion/tools/call-runner';
import { setStderrLogging } from '../../companion/log';

class CountingDriver extends ProcessDriver {
  acquired = 0;
  alive = 0;
  override async acquire(opts: AcquireOptions): Promise<Sandbox> {
    const sb = await super.acquire(opts);
    this.acquired++; this.alive++;
    const destroy = sb.destroy.bind(sb);
    let done = false;
    sb.destroy = async () => { if (!done) { done = true; this.alive--; } await destroy(); };
    return sb;
  }
}

describe('call orchestrator', () => {
  let dir: string;
  let journal: Journal;
  let driver: CountingDriver;
  const hub = new EventHub();
  before(() => setStderrLogging(false));
  after(() => setStderrLogging(true));
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-calls-'));
    journal = Journal.open(path.join(dir, 'journal'));
    driver = new CountingDriver({ baseDir: dir });
  });
  afterEach(async () => { journal.close(); await driver.close(); rmSync(dir, { recursive: true, force: true }); });

  const runner = (mode: 'per-call' | 'per-session' = 'per-call') => new CallRunner({ driver, journal, hub, mode, callTimeoutMs: 20_000 });

  it('runs a tool_use_id once: a re-dispatch gets the stored result, a different input is refused', async () => {
    const calls = runner().openSession('s1', 'w1');
    const mark = path.join(dir, 'count');
    const input = { command: `echo x >> ${mark}; echo ran` };
    assert.deepEqual(await calls.run({ id: 't1', name: 'bash', input }), { text: 'ran', isError: false });
    assert.deepEqual(await calls.run({ id: 't1', name: 'bash', input }), { text: 'ran', isError: false });
    const other = await calls.run({ id: 't1', name: 'bash', input: { command: 'echo other' } });
    assert.equal(other.isError, true);
    assert.match(other.text, /already executed with a different input/);
    assert.equal((await import('node:fs')).readFileSync(mark, 'utf8'), 'x\n');
    assert.equal(journal.getCall('t1')!.replays, 1);
    assert.equal(driver.acquired, 1);
    assert.equal(driver.alive, 0, 'per-call sandboxes are destroyed');
  });

  it('concurrent duplicate dispatches share one execution', async () => {
    const calls = runner().openSession('s1', 'w1');
    const mark = path.join(dir, 'count');
    const input = { command: `echo x >> ${mark}; sleep 0.3; echo ran` };
    const [a, b] = await Promise.all([calls.run({ id: 't2', name: 'bash', input }), calls.run({ id: 't2', name: 'bash', input })]);
    assert.deepEqual(a, b);
    assert.equal((await import('node:fs')).readFileSync(mark, 'utf8'), 'x\n');
  });

  it('invalid input is answered without a sandbox; unknown tools are an error result', async () => {
    const calls = runner().openSession('s1', 'w1');
    const r = await calls.run({ id: 't3', name: 'read', input: { file_path: 12 } });
    assert.equal(r.isError, true);
    assert.match(r.text, /read: invalid input/);
    assert.equal(driver.acquired, 0);
    assert.match((await calls.run({ id: 't4', name: 'launch', input: {} })).text, /unknown tool/);
  });

  it('the journal life of a call is announced in order: started, finished with its result, posted once the service took it', async () => {
    const events: string[] = [];
    const unsubscribe = hub.subscribe((e) => {
      if (e.type === 'call.started' || e.type === 'call.finished') events.push(`${e.type}:${e.call.toolUseId}:${e.call.state}`);
    });
    try {
      journal.updateSession('s1', { workId: 'w1', state: 'running' });
      const r = runner();
      const calls = r.openSession('s1', 'w1');
      assert.deepEqual(await calls.run({ id: 'j1', name: 'bash', input: { command: 'echo one' } }), { text: 'one', isError: false });
      assert.equal((await calls.run({ id: 'j2', name: 'read', input: {} })).isError, true);
      r.resultPosted('j1');
      await calls.run({ id: 'j1', name: 'bash', input: { command: 'echo one' } });
      assert.deepEqual(events, [
        'call.started:j1:running', 'call.finished:j1:done',
        'call.started:j2:running', 'call.finished:j2:failed',
        'call.finished:j1:posted',
      ]);
      assert.equal(journal.getCall('j1')!.state, 'posted');
      assert.equal(journal.getCall('j1')!.replays, 1, 'the re-dispatch was answered from the journal, not announced as a new call');
    } finally { unsubscribe(); }
  });

  it('per-session mode keeps one sandbox; files and shell state carry over; close destroys it', async () => {
    const calls = runner('per-session').openSession('s1', 'w1');
    await calls.run({ id: 'a', name: 'write', input: { file_path: 'k.txt', content: 'kept' } });
    await calls.run({ id: 'b', name: 'bash', input: { command: 'mkdir -p d && cd d && export V=1' } });
    assert.deepEqual(await calls.run({ id: 'c', name: 'bash', input: { command: 'cat ../k.txt; echo " $V"; basename $PWD' } }), { text: 'kept 1\nd', isError: false });
    assert.equal(driver.acquired, 1);
    await calls.close();
    assert.equal(driver.alive, 0);
  });

  it('copies the session\'s skills into /workspace/skills on every fresh sandbox', async () => {
    const skills = path.join(dir, 'skills');
    mkdirSync(path.join(skills, 'greeter'), { recursive: true });
    writeFileSync(path.join(skills, 'greeter', 'SKILL.md'), '# Greeter');
    const calls = runner().openSession('s1', 'w1', { skillsDir: skills });
    assert.deepEqual(await calls.run({ id: 'a', name: 'read', input: { file_path: '/workspace/skills/greeter/SKILL.md' } }), { text: '# Greeter', isError: false });
  });

  it('an aborted call is killed and answered with an explicit interrupted error', async () => {
    const calls = runner().openSession('s1', 'w1');
    const ctrl = new AbortController();
    const p = calls.run({ id: 'z', name: 'bash', input: { command: 'echo partial; sleep 30' } }, ctrl.signal);
    await new Promise((r) => setTimeout(r, 500));
    ctrl.abort(new Error('the runner stopped'));
    const r = await p;
    assert.equal(r.isError, true);
    assert.match(r.text, /interrupted: the runner stopped/);
    assert.equal(journal.getCall('z')!.state, 'interrupted');
    assert.equal(driver.alive, 0);
  });

  it('publishes slow, small output while the call runs, not only when it ends', async () => {
    // The command prints one short line, then waits (up to 10 s) for a file the test creates only once that line
    // arrived as a call.output event: with end-of-call batching the line would never arrive in time.
    const go = path.join(dir, 'go');
    const seen: string[] = [];
    let finishedBeforeFirstChunk = false;
    const unsubscribe = hub.subscribe((e) => {
      if (e.type === 'call.output' && e.toolUseId === 'live') {
        seen.push(e.chunk);
        if (seen.join('').includes('first')) writeFileSync(go, '');
      }
      if (e.type === 'call.finished' && e.call.toolUseId === 'live' && !seen.join('').includes('first')) finishedBeforeFirstChunk = true;
    });
    try {
      const calls = runner().openSession('s1', 'w1');
      const command = `echo first; for i in $(seq 100); do [ -e ${go} ] && break; sleep 0.1; done; [ -e ${go} ] && echo released || echo 'never released'`;
      const r = await calls.run({ id: 'live', name: 'bash', input: { command } });
      assert.equal(finishedBeforeFirstChunk, false, 'the first line was published before the call finished');
      assert.deepEqual(r, { text: 'first\nreleased', isError: false });
      assert.equal(seen.join(''), 'first\nreleased\n', 'every byte is published exactly once');
      assert.ok(seen.length >= 2, 'the output arrived in more than one event');
    } finally { unsubscribe(); }
  });

  it('gives calls their template\'s environment and starts a session\'s first call in its working directory', async () => {
    const profiled = new (class extends CountingDriver {
      readonly templates: Array<string | undefined> = [];
      override async acquire(opts: AcquireOptions): Promise<Sandbox> {
        this.templates.push(opts.template);
        const sb = await super.acquire(opts);
        await sb.putFiles([{ path: '/workspace/app/.keep', data: Buffer.alloc(0), mode: 0o644 }], []);
        return Object.assign(sb, { profile: { env: { TEAM: 'platform', HOME: '/template-home' }, workdir: '/workspace/app' } });
      }
    })({ baseDir: dir });
    try {
      const calls = new CallRunner({ driver: profiled, journal, hub, mode: 'per-call', callTimeoutMs: 20_000 }).openSession('s-tpl', 'w1');
      calls.useTemplate('node-tools');
      const first = await calls.run({ id: 'p1', name: 'bash', input: { command: 'pwd; echo "TEAM=$TEAM"; export TEAM=mine' } });
      assert.match(first.text, /\/workspace\/app\nTEAM=platform$/, 'the first call starts in the template\'s workdir with its env');
      await calls.run({ id: 'p2', name: 'bash', input: { command: 'cd ..' } });
      const third = await calls.run({ id: 'p3', name: 'bash', input: { command: 'pwd; echo "TEAM=$TEAM"' } });
      assert.match(third.text, /\/workspace\nTEAM=mine$/, 'later calls continue where the session left off; its own exports win');
      assert.deepEqual(profiled.templates, ['node-tools', 'node-tools', 'node-tools'], 'every sandbox comes from the session\'s template');
    } finally { await profiled.close(); }
  });
});
