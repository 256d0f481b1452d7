// The dev queue under 200 concurrent sessions, the control plane alone: four companions (the built CLI, process
// driver, 50 sessions each) serve one dev queue. Every session's first call holds at a gate (a FIFO the test opens
// only once all 200 calls have started), so all 200 sessions are provably in flight at once; then each makes two more
// calls. No request may fail (no 5xx, no refused credential or malformed request), every call is answered exactly
// once, every step passes and every item is released.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { DevQueue } from '../../companion/devqueue/server';
import { setStderrLogging } from '../../companion/log';
import { answeredOnce, killAll, rmDir, runCli, scenario, startDevQueue, tmpDir, workerArgs, type Child } from './helpers';

const SESSIONS = 200;
const WORKERS = 4;

describe('dev queue at 200 concurrent sessions (process driver)', function () {
  this.timeout(300_000);
  let dq: DevQueue;
  const dirs: string[] = [];
  const children: Child[] = [];
  afterEach(async () => {
    await killAll(children);
    await dq?.close();
    for (const d of dirs.splice(0)) rmDir(d);
  });

  it('serves 200 sessions at once without an error; every call answered once', async () => {
    setStderrLogging(process.env.PERIMETER_TEST_LOGS === '1');
    dq = await startDevQueue();
    const marks = tmpDir('perimeter-scale-marks-');
    dirs.push(marks);
    const gate = path.join(marks, 'gate');
    execFileSync('mkfifo', [gate]);
    for (let w = 0; w < WORKERS; w++) {
      const home = tmpDir('perimeter-scale-home-');
      dirs.push(home);
      children.push(runCli(workerArgs(dq, home, ['--concurrency', String(SESSIONS / WORKERS), '--log-level', 'warn']), { ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey }));
    }
    const sids = Array.from({ length: SESSIONS }, (_, i) => dq.createSession(scenario([
      // `read` takes one line of the FIFO (bash reads a pipe byte by byte), so each call waits for its own line.
      { tool: 'bash', input: { command: `touch ${marks}/started-${i}; read -r go < ${gate}; echo passed-gate-${i}` }, expectIncludes: [`passed-gate-${i}`] },
      { tool: 'write', input: { file_path: `out-${i}.txt`, content: `session ${i}\n` }, expectIncludes: ['wrote'] },
      { tool: 'read', input: { file_path: `out-${i}.txt` }, expectIncludes: [`session ${i}`] },
    ])));
    const started = () => readdirSync(marks).filter((f) => f.startsWith('started-')).length;
    await dq.waitFor(() => started() === SESSIONS || children.some((c) => c.proc.exitCode !== null), 240_000, 'all 200 first calls to be running at once');
    assert.equal(started(), SESSIONS, children.map((c) => c.stderr()).join('\n'));
    const inFlight = dq.workItems().filter((w) => w.state === 'active' || w.state === 'starting').length;
    assert.equal(inFlight, SESSIONS, 'all 200 work items are held at the same time');

    const writer = openSync(gate, 'w');
    try {
      writeSync(writer, 'go\n'.repeat(SESSIONS));
      await dq.waitFor(() => sids.every((s) => dq.report(s).finished), 240_000, 'every session to finish');
    } finally { closeSync(writer); }
    await dq.waitFor(() => dq.workItems().every((w) => w.state === 'stopped'), 60_000, 'every item to be released');

    const failedSteps = sids.flatMap((s) => dq.report(s).steps.filter((st) => st.status !== 'passed').map((st) => `${s} ${st.label}: ${st.reason}`));
    assert.deepEqual(failedSteps, []);
    const ids = sids.flatMap((s) => dq.report(s).steps.map((st) => st.toolUseId!));
    assert.equal(ids.length, SESSIONS * 3);
    assert.deepEqual(answeredOnce(dq, ids), { missing: [], duplicated: [] });
    const errors = dq.requests.filter((r) => r.status >= 500 || r.status < 0 || [400, 401, 403, 404, 413].includes(r.status));
    assert.deepEqual(errors.map((r) => `${r.method} ${r.route} ${r.status}`), [], 'no request failed');
    assert.ok(existsSync(gate));
    for (const c of children) c.proc.kill('SIGTERM');
    for (const c of children) assert.equal((await c.exit).code, 0, c.stderr());
  });
});
