// The dev queue's scripted agent thinks between calls when a step says so (`thinkMs`): the next call is made that long
// after the previous result, not at once, so a session's companion-side idle time between calls (its prepared VM
// waiting) can be exercised (the session-disk soak kills the worker and QEMU there).
import assert from 'node:assert/strict';
import type { DevQueue } from '../../companion/devqueue/server';
import { delay } from '../../extension/launcher/workerHost';
import { rmDir, scenario, startDevQueue, startRuntime, tmpDir, type RuntimeFixture } from './helpers';

describe('dev queue: the scripted agent thinking between calls', () => {
  let dq: DevQueue;
  let rt: RuntimeFixture | null = null;
  const dirs: string[] = [];
  afterEach(async () => { await rt?.stop(); rt = null; await dq?.close(); for (const d of dirs.splice(0)) rmDir(d); });

  it('makes a call with thinkMs only after it has thought', async () => {
    dq = await startDevQueue();
    const home = tmpDir(); dirs.push(home);
    rt = await startRuntime(dq, { home, maxIdleMs: 60_000 });
    const sid = dq.createSession(scenario([
      { tool: 'bash', input: { command: 'echo one' }, expectIncludes: ['one'] },
      { tool: 'bash', input: { command: 'echo two' }, expectIncludes: ['two'] },
      { tool: 'bash', input: { command: 'echo three' }, thinkMs: 600_000 },
    ]));
    await dq.waitFor(() => dq.report(sid).steps[1]!.status === 'passed', 30_000, 'the second call');
    await delay(500);
    const third = dq.report(sid).steps[2]!;
    assert.equal(third.toolUseId, null, 'the agent is still thinking: no third call yet');
    assert.equal(dq.sessionEvents(sid).filter((e) => e.type === 'agent.tool_use').length, 2);
    dq.terminateSession(sid);
  });
});
