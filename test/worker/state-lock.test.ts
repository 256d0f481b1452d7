// One companion per state directory, with real processes: a second worker CLI on the same home refuses to start and
// names the pid of the first (which keeps serving); a lock left by a SIGKILLed worker is taken over by the next one;
// a lock naming a pid now used by another process, or damaged, is stale; companion processes racing for a stale lock
// get it once.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { acquireStateLock, processStartTime, STATE_LOCK_FILE } from '../../companion/host/state-lock';
import { PerimeterError } from '../../companion/errors';
import type { DevQueue } from '../../companion/devqueue/server';
import { killAll, rmDir, runCli, scenario, startDevQueue, tmpDir, workerArgs, type Child } from './helpers';

async function polling(w: Child): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (/state: polling/.test(w.stderr())) return;
    if (w.proc.exitCode !== null) throw new Error(`the worker exited: ${w.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the worker did not start polling: ${w.stderr()}`);
}

describe('worker: one companion per state directory', function () {
  this.timeout(120_000);
  let dq: DevQueue;
  let home: string;
  const children: Child[] = [];
  beforeEach(async () => { dq = await startDevQueue(); home = tmpDir('perimeter-lock-'); });
  afterEach(async () => {
    await killAll(children);
    await dq.close();
    rmDir(home);
  });

  const worker = () => { const w = runCli(workerArgs(dq, home), { ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey }); children.push(w); return w; };

  it('a second worker on the same home refuses to start naming the first; a SIGKILLed one\'s lock is taken over', async () => {
    const first = worker();
    await polling(first);
    const second = worker();
    const refused = await second.exit;
    assert.equal(refused.code, 1, second.stderr());
    assert.match(second.stderr(), new RegExp(`another companion \\(pid ${first.proc.pid}, running since [^)]+\\) is using the state directory ${home}; stop it first \\(Stop Worker, or kill ${first.proc.pid}\\)`));
    assert.doesNotMatch(second.stderr(), /state: polling/, 'it stopped before serving anything');

    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'echo still-served' }, expectIncludes: ['still-served'] }]));
    await dq.waitFor(() => dq.report(sid).finished, 60_000, 'the first worker to serve a session');
    assert.equal(dq.report(sid).steps[0]!.status, 'passed');

    first.proc.kill('SIGKILL');
    await first.exit;
    const stale = JSON.parse(readFileSync(path.join(home, STATE_LOCK_FILE), 'utf8')) as { pid: number };
    assert.equal(stale.pid, first.proc.pid, 'a SIGKILLed worker leaves its lock behind');
    const third = worker();
    await polling(third);
    assert.equal((JSON.parse(readFileSync(path.join(home, STATE_LOCK_FILE), 'utf8')) as { pid: number }).pid, third.proc.pid);
    third.proc.kill('SIGTERM');
    assert.equal((await third.exit).code, 0, third.stderr());
    assert.equal(existsSync(path.join(home, STATE_LOCK_FILE)), false, 'a worker that stops removes its lock');
  });

  it('a lock naming a reused pid, or a damaged lock, is stale; racing processes take a stale lock once', async () => {
    const file = path.join(home, STATE_LOCK_FILE);
    // This very process, but "started" at another time: the pid was reused.
    writeFileSync(file, JSON.stringify({ pid: process.pid, start: `${processStartTime(process.pid)}0`, token: 'old', since: 1 }));
    const taken = await acquireStateLock(home);
    assert.equal(JSON.parse(readFileSync(file, 'utf8')).pid, process.pid);
    await assert.rejects(acquireStateLock(home), (e: unknown) => e instanceof PerimeterError && e.code === 'state_dir_in_use' && e.message.includes(`pid ${process.pid}`));
    taken.release();
    assert.equal(existsSync(file), false);

    // Damaged, and six companions (processes) released at once against it.
    writeFileSync(file, '{"pid": 12');
    const racers = Array.from({ length: 6 }, () => spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'fixtures', 'lock-racer.ts'), home], { stdio: ['pipe', 'pipe', 'inherit'] }));
    const lines = racers.map((r) => { const got: string[] = []; let buf = ''; r.stdout.on('data', (d: Buffer) => { buf += d; const parts = buf.split('\n'); buf = parts.pop()!; got.push(...parts); }); return got; });
    const exited = racers.map((r) => new Promise((resolve) => r.once('exit', resolve)));
    const line = async (i: number, n: number) => { while (lines[i]!.length < n) await new Promise((r) => setTimeout(r, 20)); return lines[i]![n - 1]!; };
    await Promise.all(racers.map((_, i) => line(i, 1)));   // every one loaded: start them together
    for (const r of racers) r.stdin.write('go\n');
    const results = await Promise.all(racers.map((_, i) => line(i, 2)));
    for (const r of racers) r.stdin.end();
    await Promise.all(exited);
    assert.equal(results.filter((x) => x === 'won').length, 1, `exactly one takes the stale lock: ${results.join(', ')}`);
    assert.deepEqual(results.filter((x) => x !== 'won'), Array(5).fill('state_dir_in_use'));
    assert.equal(existsSync(file), false, 'the winner released it');
  });
});
