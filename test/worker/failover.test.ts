// Failover between two hosts: two companions (the built CLI, each with its own state directory, concurrency 4) serve
// one dev queue; 8 sessions are in flight, 4 on each; SIGKILL one companion. Every session then finishes on the other
// once its lease lapses (the SDK's reconcile finds the calls the dead host never answered), and every call is answered
// exactly once: the dev queue records every result posted, duplicates included. The survivor's journal names itself
// as the holder of every session it took over.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { DevQueue } from '../../companion/devqueue/server';
import { setStderrLogging } from '../../companion/log';
import { answeredOnce, killAll, rmDir, runCli, scenario, startDevQueue, tmpDir, workerArgs, type Child } from './helpers';

const SESSIONS = 8;
const LEASE_TTL_S = 3;

/** Session lines of a companion's journal (JSON lines, the newest state of each session wins). */
function journalSessions(home: string): Map<string, { holder?: string; state?: string }> {
  const file = path.join(home, 'journal', 'journal.jsonl');
  const out = new Map<string, { holder?: string; state?: string }>();
  if (!existsSync(file)) return out;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    let rec: { k?: string; sessionId?: string; holder?: string; state?: string };
    try { rec = JSON.parse(line) as typeof rec; } catch { continue; }
    if (rec.k === 's' && rec.sessionId) out.set(rec.sessionId, { ...out.get(rec.sessionId), ...rec });
  }
  return out;
}

describe('failover: two companions on one queue, one killed', function () {
  this.timeout(240_000);
  let dq: DevQueue;
  const dirs: string[] = [];
  const children: Child[] = [];
  afterEach(async () => {
    await killAll(children);
    await dq?.close();
    for (const d of dirs.splice(0)) rmDir(d);
  });

  it('every session finishes on the survivor after the lease lapses; every call answered exactly once', async () => {
    setStderrLogging(process.env.PERIMETER_TEST_LOGS === '1');
    dq = await startDevQueue({ leaseTtlSeconds: LEASE_TTL_S });
    const marks = tmpDir('perimeter-failover-marks-');
    const [homeA, homeB] = [tmpDir('perimeter-failover-a-'), tmpDir('perimeter-failover-b-')];
    dirs.push(marks, homeA, homeB);
    const start = (home: string, id: string) => {
      const c = runCli(workerArgs(dq, home, ['--concurrency', '4', '--worker-id', id, '--drain-timeout-ms', '5000']), { ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey });
      children.push(c);
      return c;
    };
    const a = start(homeA, 'host-a');
    const b = start(homeB, 'host-b');
    // Each session: a call that marks its start, then calls slow enough that the kill lands while they run.
    const sids = Array.from({ length: SESSIONS }, (_, i) => dq.createSession(scenario([
      { tool: 'bash', input: { command: `touch ${marks}/started-${i}; echo first-${i}` }, expectIncludes: [`first-${i}`] },
      { tool: 'bash', input: { command: `sleep 1; echo second-${i}` }, expectIncludes: [`second-${i}`] },
      { tool: 'bash', input: { command: `sleep 1; echo third-${i}` }, expectIncludes: [`third-${i}`] },
      { tool: 'bash', input: { command: `sleep 1; echo fourth-${i}` }, expectIncludes: [`fourth-${i}`] },
    ])));
    await dq.waitFor(() => sids.every((_, i) => existsSync(`${marks}/started-${i}`)), 60_000, 'all 8 sessions to be in flight');
    const onA = [...journalSessions(homeA).keys()];
    const onB = [...journalSessions(homeB).keys()];
    assert.equal(onA.length + onB.length, SESSIONS, 'each session is held by one companion');
    assert.equal(onA.length, 4, 'host A holds four sessions (its concurrency)');
    assert.ok(sids.every((s) => !dq.report(s).finished), 'no session has finished before the kill');

    a.proc.kill('SIGKILL');
    assert.equal((await a.exit).signal, 'SIGKILL');
    await dq.waitFor(() => sids.every((s) => dq.report(s).finished), 180_000, 'every session to finish on host B');

    for (const s of sids) {
      const failed = dq.report(s).steps.filter((st) => st.status !== 'passed');
      assert.deepEqual(failed.map((st) => `${s} ${st.label}: ${st.reason}`), []);
    }
    const toolUseIds = sids.flatMap((s) => dq.report(s).steps.map((st) => st.toolUseId!));
    assert.equal(toolUseIds.length, SESSIONS * 4);
    assert.deepEqual(answeredOnce(dq, toolUseIds), { missing: [], duplicated: [] });
    const onBAfter = journalSessions(homeB);
    for (const s of onA) assert.equal(onBAfter.get(s)?.holder, 'host-b', `host B holds ${s} now`);
    for (const s of onB) assert.equal(onBAfter.get(s)?.holder, 'host-b');
    assert.ok(onA.every((s) => journalSessions(homeA).get(s)?.holder === 'host-a'), 'host A\'s journal names it as the holder it was');
    b.proc.kill('SIGTERM');
    assert.equal((await b.exit).code, 0, b.stderr());
  });
});
