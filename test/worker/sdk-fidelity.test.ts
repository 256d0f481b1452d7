// Fidelity of the dev queue: the UNMODIFIED @anthropic-ai/sdk talks to it exactly as it talks to Anthropic:
// resource methods (work poll/ack/heartbeat/stop, sessions retrieve, events list/stream/send, skills) and the
// helpers (WorkPoller, SessionToolRunner). If the dev queue diverged from the wire protocol, these would fail.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { WorkPoller, SessionToolRunner } from '@anthropic-ai/sdk/helpers/beta/environments';
import type { DevQueue } from '../../companion/devqueue/server';
import { scenario, startDevQueue } from './helpers';

function client(dq: DevQueue, token = dq.environmentKey): Anthropic {
  return new Anthropic({ apiKey: null, authToken: token, baseURL: dq.baseUrl, maxRetries: 0 });
}

describe('dev queue wire fidelity (unmodified SDK)', () => {
  let dq: DevQueue;
  beforeEach(async () => { dq = await startDevQueue({ leaseTtlSeconds: 30 }); });
  afterEach(async () => { await dq.close(); });

  it('poll returns null (204) on an empty queue and rejects block_ms=0', async () => {
    const c = client(dq);
    assert.equal(await c.beta.environments.work.poll(dq.environmentId, { block_ms: 50 }), null);
    assert.equal(await c.beta.environments.work.poll(dq.environmentId, {}), null);
    await assert.rejects(c.beta.environments.work.poll(dq.environmentId, { block_ms: 0 }), (e: { status?: number }) => e.status === 400);
  });

  it('poll -> ack -> heartbeat (compare-and-set, 412 for a stale token) -> stop (204, then 409)', async () => {
    const c = client(dq);
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'true' } }]));
    const work = await c.beta.environments.work.poll(dq.environmentId, { block_ms: 500 });
    assert.ok(work);
    assert.equal(work.data.type, 'session');
    assert.equal(work.data.id, sid);
    assert.ok(work.secret, 'the poll response carries the work secret');
    const secret = JSON.parse(Buffer.from(work.secret, 'base64url').toString('utf8')) as { sessions_token: string };
    assert.match(secret.sessions_token, /^sk-ant-/);
    const acked = await c.beta.environments.work.ack(work.id, { environment_id: dq.environmentId });
    assert.equal(acked.state, 'starting');
    assert.equal(acked.secret, null, 'only the poll response carries the secret');
    // Per-item calls work with the sessions token.
    const st = client(dq, secret.sessions_token);
    const hb1 = await st.beta.environments.work.heartbeat(work.id, { environment_id: dq.environmentId, expected_last_heartbeat: 'NO_HEARTBEAT' });
    assert.equal(hb1.lease_extended, true);
    assert.equal(hb1.state, 'active');
    assert.ok(hb1.ttl_seconds > 0);
    const hb2 = await st.beta.environments.work.heartbeat(work.id, { environment_id: dq.environmentId, expected_last_heartbeat: hb1.last_heartbeat });
    assert.notEqual(hb2.last_heartbeat, hb1.last_heartbeat);
    await assert.rejects(
      st.beta.environments.work.heartbeat(work.id, { environment_id: dq.environmentId, expected_last_heartbeat: hb1.last_heartbeat }),
      (e: { status?: number; error?: { error?: { type?: string; details?: { current_state?: { last_heartbeat?: string } } } } }) =>
        e.status === 412 && e.error?.error?.type === 'heartbeat_precondition_failed' && e.error.error.details?.current_state?.last_heartbeat === hb2.last_heartbeat,
    );
    await st.beta.environments.work.stop(work.id, { environment_id: dq.environmentId, force: true });
    await assert.rejects(st.beta.environments.work.stop(work.id, { environment_id: dq.environmentId, force: true }), (e: { status?: number }) => e.status === 409);
    // A sessions token is not valid for another item's session.
    const other = dq.createSession(scenario([{ tool: 'bash', input: { command: 'true' } }]));
    await assert.rejects(st.beta.sessions.retrieve(other), (e: { status?: number }) => e.status === 403);
  });

  it('rejects a bad key and an un-acked item is re-offered after reclaim_older_than_ms', async () => {
    await assert.rejects(client(dq, 'sk-ant-env01-wrong-key-0000000000').beta.environments.work.poll(dq.environmentId, {}), (e: { status?: number }) => e.status === 401);
    const c = client(dq);
    dq.createSession(scenario([{ tool: 'bash', input: { command: 'true' } }]));
    const first = await c.beta.environments.work.poll(dq.environmentId, { block_ms: 200 });
    assert.ok(first);
    assert.equal(await c.beta.environments.work.poll(dq.environmentId, { block_ms: 50, reclaim_older_than_ms: 60_000 }), null);
    const again = await c.beta.environments.work.poll(dq.environmentId, { block_ms: 50, reclaim_older_than_ms: 0 });
    assert.equal(again?.id, first.id);
  });

  it('sessions retrieve, events list (paged), stream (SSE) and send; skills version and archive', async () => {
    const c = client(dq);
    const sid = dq.createSession(scenario([{ tool: 'read', input: { file_path: 'a.txt' }, expectIncludes: ['hello'] }, { tool: 'bash', input: { command: 'true' } }], { skills: [{ name: 'pdf', files: { 'SKILL.md': '# PDF' } }] }));
    const session = await c.beta.sessions.retrieve(sid);
    assert.equal(session.status, 'running');
    assert.equal(session.agent.skills.length, 1);
    const ver = await c.beta.skills.versions.retrieve('latest', { skill_id: session.agent.skills[0]!.skill_id });
    assert.equal(ver.name, 'pdf');
    const archive = Buffer.from(await (await c.beta.skills.versions.download(ver.id, { skill_id: session.agent.skills[0]!.skill_id })).arrayBuffer());
    assert.equal(archive[0], 0x1f, 'a gzip stream');
    const events = [];
    for await (const ev of c.beta.sessions.events.list(sid, { limit: 1 })) events.push(ev);
    const use = events.find((e) => e.type === 'agent.tool_use');
    assert.ok(use && use.type === 'agent.tool_use');
    assert.equal(use.name, 'read');
    const stream = await c.beta.sessions.events.stream(sid);
    const seen: string[] = [];
    const reading = (async () => { for await (const ev of stream) { seen.push(ev.type); if (ev.type === 'agent.tool_use') break; } })();
    await assert.rejects(c.beta.sessions.events.send(sid, { events: [{ type: 'user.tool_result', tool_use_id: use.id, content: [{ type: 'text', text: '' }] }] }), (e: { status?: number }) => e.status === 400);
    const sent = await c.beta.sessions.events.send(sid, { events: [{ type: 'user.tool_result', tool_use_id: use.id, content: [{ type: 'text', text: 'hello' }], is_error: false }] });
    assert.equal(sent.data?.length, 1);
    await reading;
    assert.ok(seen.includes('user.tool_result') && seen.includes('agent.tool_use'), `stream saw ${seen.join(',')}`);
    assert.equal(dq.report(sid).steps[0]!.status, 'passed');
    assert.equal(dq.report(sid).steps[1]!.status, 'waiting_result', 'the scripted agent moved on to the next call');
  });

  it('WorkPoller and SessionToolRunner serve a scripted session: ask-gated call waits, unknown tool is left alone', async () => {
    const c = client(dq);
    const sid = dq.createSession(scenario([
      { tool: 'echo', input: { text: 'one' }, expectIncludes: ['echo: one'] },
      { tool: 'echo', input: { text: 'two' }, evaluated_permission: 'ask', confirmation: 'allow', confirmAfterMs: 200, expectIncludes: ['echo: two'] },
      { tool: 'not_mine', input: {}, expectUnanswered: true },
      { tool: 'echo', input: { text: 'three' }, evaluated_permission: 'ask', confirmation: 'deny', confirmAfterMs: 100, expectUnanswered: true },
    ]));
    const ctrl = new AbortController();
    const poller = new WorkPoller({ client: c, environmentId: dq.environmentId, environmentKey: dq.environmentKey, autoStop: true, signal: ctrl.signal });
    const ran: string[] = [];
    for await (const work of poller) {
      assert.equal(work.data.id, sid);
      const runner = new SessionToolRunner(sid, {
        client: c, maxIdleMs: 300,
        tools: [{ type: 'custom', name: 'echo', description: 'echo', input_schema: { type: 'object', properties: { text: { type: 'string' } } }, parse: (x: unknown) => x as { text: string }, run: (x: { text: string }) => { ran.push(x.text); return `echo: ${x.text}`; } }],
      });
      for await (const call of runner) void call;
      ctrl.abort();
    }
    const rep = dq.report(sid);
    assert.equal(rep.finished, true);
    assert.deepEqual(rep.steps.map((s) => s.status), ['passed', 'passed', 'passed', 'passed']);
    assert.deepEqual(ran, ['one', 'two'], 'the denied call never ran');
    assert.ok(dq.stops.some((s) => s.status === 204), 'WorkPoller(autoStop) stopped the item');
  });
});
