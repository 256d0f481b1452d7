// The built CLI worker when whoever read its stdout and stderr goes away (a launcher that exited, a closed terminal):
// its next log lines hit a closed pipe (EPIPE), and it must keep serving, finish the scenario and drain on SIGTERM.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { DevQueue } from '../../companion/devqueue/server';
import { rmDir, runCli, scenario, startDevQueue, tmpDir, workerArgs, type Child } from './helpers';

describe('worker process with its stdout and stderr closed', () => {
  let dq: DevQueue | null = null;
  let worker: Child | null = null;
  const dirs: string[] = [];
  afterEach(async () => {
    if (worker && worker.proc.exitCode === null && worker.proc.signalCode === null) { worker.proc.kill('SIGKILL'); await worker.exit; }
    await dq?.close();
    for (const d of dirs.splice(0)) rmDir(d);
    worker = null; dq = null;
  });

  it('keeps serving after the reader of its output is gone, and still drains on SIGTERM', async () => {
    dq = await startDevQueue({ leaseTtlSeconds: 10 });
    const home = tmpDir(); dirs.push(home);
    const marks = tmpDir(); dirs.push(marks);
    const release = path.join(marks, 'release');
    const sid = dq.createSession(scenario([
      { tool: 'bash', input: { command: `while [ ! -e ${release} ]; do sleep 0.1; done; echo released` }, expectIncludes: ['released'] },
      { tool: 'bash', input: { command: 'echo second' }, expectIncludes: ['second'] },
    ]));
    const w = runCli(workerArgs(dq, home, ['--max-idle-ms', '60000', '--log-level', 'debug']), { ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey });
    worker = w;
    await dq.waitFor(() => dq!.report(sid).steps[0]!.status === 'waiting_result' || w.proc.exitCode !== null, 60_000, 'the first call to be delivered');
    w.proc.stdout!.destroy();
    w.proc.stderr!.destroy();
    writeFileSync(release, '');   // from here on every log line the worker writes goes to a closed pipe
    await dq.waitFor(() => dq!.report(sid).finished || w.proc.exitCode !== null || w.proc.signalCode !== null, 60_000, 'the scenario to finish');
    assert.equal(w.proc.exitCode, null, 'the worker exited after its output was closed');
    assert.equal(w.proc.signalCode, null, 'the worker was killed after its output was closed');
    assert.deepEqual(dq.report(sid).steps.map((s) => s.status), ['passed', 'passed']);
    w.proc.kill('SIGTERM');
    assert.deepEqual(await w.exit, { code: 0, signal: null });
  });
});
