// What the worker learns from a session's event history beyond the calls it runs, end to end against the dev queue
// (real SDK, process driver): a call gated by `ask` is journaled and announced as waiting for its confirmation before
// anyone approves it, then runs; a denied one is `denied` and never posted; the session gets its title from the prompt
// and is `idle` as soon as the agent ends its turn; the transcript keeps prompt, verdicts and the agent's message; each
// call records where it ran and what it changed in the persisted files.
import assert from 'node:assert/strict';
import type { DevQueue } from '../../companion/devqueue/server';
import type { ControlEvent } from '../../companion/protocol/control';
import { rmDir, scenario, startDevQueue, startRuntime, tmpDir } from './helpers';

describe('session activity (ask confirmations, transcript, title, idle)', () => {
  let dq: DevQueue;
  const dirs: string[] = [];
  afterEach(async () => { await dq?.close(); for (const d of dirs.splice(0)) rmDir(d); });

  it('shows an ask-gated call as waiting before its confirmation, runs it once allowed, and records the session', async () => {
    dq = await startDevQueue();
    const home = tmpDir(); dirs.push(home);
    const rt = await startRuntime(dq, { home, maxIdleMs: 60_000 });
    const events: ControlEvent[] = [];
    rt.runtime.hub.subscribe((e) => events.push(e));
    const sid = dq.createSession(scenario([
      { tool: 'bash', input: { command: 'echo approved' }, evaluated_permission: 'ask', confirmation: 'allow', confirmAfterMs: 4000, expectIncludes: ['approved'] },
      { tool: 'write', input: { file_path: '/workspace/kept.txt', content: 'kept\n' } },
      { tool: 'bash', input: { command: 'echo never' }, evaluated_permission: 'ask', confirmation: 'deny', confirmAfterMs: 200, expectUnanswered: true },
    ], { prompt: 'Tidy the repository\nand report back' }));
    const journal = rt.runtime.journal;
    const gated = () => dq.report(sid).steps[0]!.toolUseId;
    await dq.waitFor(() => gated() !== null && journal.getCall(gated()!)?.state === 'waiting_confirmation', 30_000, 'the waiting call');
    assert.equal(dq.sessionEvents(sid).some((e) => e.type === 'user.tool_confirmation'), false, 'shown before anyone confirmed it');
    assert.ok(events.some((e) => e.type === 'call.started' && e.call.toolUseId === gated() && e.call.state === 'waiting_confirmation'), 'announced to the panel');
    assert.equal(journal.sessionSummary(journal.getSession(sid)!).title, 'Tidy the repository');

    await dq.waitFor(() => dq.report(sid).finished, 60_000, 'scenario');
    await dq.waitFor(() => journal.getSession(sid)?.state === 'idle', 30_000, 'the session to be idle after end_turn');
    assert.equal(rt.runtime.worker.activeSessions().length, 1, 'idle while the worker still holds the item');
    const [approved, write, denied] = dq.report(sid).steps.map((s) => journal.getCall(s.toolUseId!)!);
    assert.equal(approved!.state, 'posted');
    assert.match(approved!.result!, /approved/);
    assert.equal(denied!.state, 'denied');
    assert.equal(dq.results.has(denied!.toolUseId), false, 'a denied call is never answered');
    assert.deepEqual(write!.ranOn && { hostname: typeof write!.ranOn.hostname, driver: write!.ranOn.driver }, { hostname: 'string', driver: 'process' });
    assert.deepEqual(write!.persist && { added: write!.persist.added, generation: write!.persist.generation > 0 }, { added: ['/workspace/kept.txt'], generation: true });

    const transcript = journal.transcripts.read(sid, { limit: 100 }).items;
    const kinds = transcript.map((e) => (e.kind === 'confirmation' ? `confirmation:${e.result}` : e.kind === 'turn' ? `turn:${e.status}` : e.kind));
    assert.equal(kinds[0], 'prompt');
    assert.ok(kinds.includes('confirmation:allow') && kinds.includes('confirmation:deny'), kinds.join(' '));
    assert.ok(kinds.indexOf('agent') < kinds.lastIndexOf('turn:idle'), kinds.join(' '));
    assert.equal(kinds.filter((k) => k === 'prompt').length, 1, 'history re-read on reconnects is kept once');
    assert.equal(await rt.stop(), 0);
  });
});
