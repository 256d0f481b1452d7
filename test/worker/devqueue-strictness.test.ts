// The dev queue is as strict as the documented service (../shared/docs/anthropic-worker-protocol.md), so a worker
// that breaks the protocol fails here and not first against Anthropic: one result per tool call, the event list's
// `types[]` and `created_at` filters, the `anthropic-version` header, a sessions token confined to its own session's
// skills and memory stores, and work retrieve only with an API key. Driven by the unmodified SDK where it exposes the
// call, raw fetch otherwise; every refusal must carry the API's error shape and status.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import type { DevQueue } from '../../companion/devqueue/server';
import { scenario, startDevQueue } from './helpers';

function client(dq: DevQueue, token = dq.environmentKey): Anthropic {
  return new Anthropic({ apiKey: null, authToken: token, baseURL: dq.baseUrl, maxRetries: 0 });
}

/** Asserts an SDK APIError with this status and the API's error body `{type:'error', error:{type, message}}`. */
function apiError(status: number, type: string) {
  return (e: unknown) => {
    const err = e as { status?: number; error?: { type?: string; error?: { type?: string; message?: unknown } } };
    assert.equal(err.status, status, `status of ${String(e)}`);
    assert.equal(err.error?.type, 'error');
    assert.equal(err.error?.error?.type, type);
    assert.equal(typeof err.error?.error?.message, 'string');
    return true;
  };
}

async function claim(dq: DevQueue): Promise<{ workId: string; sessionsToken: string }> {
  const work = await client(dq).beta.environments.work.poll(dq.environmentId, { block_ms: 500 });
  assert.ok(work?.secret);
  await client(dq).beta.environments.work.ack(work.id, { environment_id: dq.environmentId });
  const { sessions_token } = JSON.parse(Buffer.from(work.secret, 'base64url').toString('utf8')) as { sessions_token: string };
  return { workId: work.id, sessionsToken: sessions_token };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('dev queue strictness (as documented by the service)', () => {
  let dq: DevQueue;
  beforeEach(async () => { dq = await startDevQueue(); });
  afterEach(async () => { await dq.close(); });

  it('refuses a second result for the same tool call (400), for built-in and custom tools, also within one post', async () => {
    const c = client(dq);
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'true' } }, { tool: 'echo', custom: true, input: {} }, { tool: 'bash', input: { command: 'true' } }]));
    const uses = () => dq.sessionEvents(sid).filter((e) => e.type === 'agent.tool_use' || e.type === 'agent.custom_tool_use');
    const first = uses()[0]!.id;
    await c.beta.sessions.events.send(sid, { events: [{ type: 'user.tool_result', tool_use_id: first, content: [{ type: 'text', text: 'ok' }] }] });
    await assert.rejects(c.beta.sessions.events.send(sid, { events: [{ type: 'user.tool_result', tool_use_id: first, content: [{ type: 'text', text: 'again' }] }] }), apiError(400, 'invalid_request_error'));

    await dq.waitFor(() => uses().length === 2, 5000, 'the custom call');
    const custom = uses()[1]!.id;
    await c.beta.sessions.events.send(sid, { events: [{ type: 'user.custom_tool_result', custom_tool_use_id: custom, content: [{ type: 'text', text: 'ok' }] }] });
    await assert.rejects(c.beta.sessions.events.send(sid, { events: [{ type: 'user.custom_tool_result', custom_tool_use_id: custom, content: [{ type: 'text', text: 'again' }] }] }), apiError(400, 'invalid_request_error'));

    await dq.waitFor(() => uses().length === 3, 5000, 'the third call');
    const third = uses()[2]!.id;
    const twice = { type: 'user.tool_result' as const, tool_use_id: third, content: [{ type: 'text' as const, text: 'ok' }] };
    await assert.rejects(c.beta.sessions.events.send(sid, { events: [twice, twice] }), apiError(400, 'invalid_request_error'));

    assert.deepEqual(dq.duplicateResults, [first, custom, third]);
    const results = dq.sessionEvents(sid).filter((e) => e.type === 'user.tool_result' || e.type === 'user.custom_tool_result');
    assert.equal(results.length, 2, 'only the first result of each call is in the history; the refused post left nothing');
    assert.deepEqual(dq.report(sid).steps.map((s) => s.status), ['passed', 'passed', 'waiting_result']);
  });

  it('the event list honours types[] and created_at[gt|gte|lt|lte] (compared with processed_at)', async () => {
    const c = client(dq);
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'true' } }]));
    await sleep(5);
    dq.userEvent(sid, { type: 'user.message', content: [{ type: 'text', text: 'later' }] });
    await sleep(5);
    dq.userEvent(sid, { type: 'user.interrupt' });
    const all = dq.sessionEvents(sid);
    const later = all.find((e) => e.type === 'user.message' && JSON.stringify(e.content).includes('later'))!;
    const list = async (params: Anthropic.Beta.Sessions.EventListParams) => {
      const out: Array<{ id: string; type: string }> = [];
      for await (const ev of c.beta.sessions.events.list(sid, { limit: 2, ...params })) out.push(ev);
      return out.map((e) => e.id);
    };
    const ids = (pred: (e: (typeof all)[number]) => boolean) => all.filter(pred).map((e) => e.id);

    assert.deepEqual(await list({ types: ['agent.tool_use'] }), ids((e) => e.type === 'agent.tool_use'));
    assert.equal((await list({ types: ['agent.tool_use'] })).length, 1);
    assert.deepEqual(await list({ types: ['user.message', 'user.interrupt'] }), ids((e) => e.type === 'user.message' || e.type === 'user.interrupt'));
    assert.deepEqual(await list({ 'created_at[gte]': later.processed_at }), ids((e) => e.processed_at >= later.processed_at));
    assert.deepEqual(await list({ 'created_at[gte]': later.processed_at }), all.slice(all.indexOf(later)).map((e) => e.id));
    assert.deepEqual(await list({ 'created_at[gt]': later.processed_at }), [all.at(-1)!.id]);
    assert.deepEqual(await list({ 'created_at[lt]': later.processed_at }), all.slice(0, all.indexOf(later)).map((e) => e.id));
    assert.deepEqual(await list({ 'created_at[lte]': later.processed_at, types: ['user.message'] }), ids((e) => e.type === 'user.message'));
    assert.deepEqual(await list({ 'created_at[gte]': later.processed_at, 'created_at[lte]': later.processed_at }), [later.id]);
    await assert.rejects(list({ 'created_at[gt]': 'yesterday' }), apiError(400, 'invalid_request_error'));
  });

  it('requires a supported anthropic-version header (400 without one or with an unknown one)', async () => {
    const url = `${dq.baseUrl}/v1/environments/${dq.environmentId}/work/poll`;
    const headers = { authorization: `Bearer ${dq.environmentKey}`, 'anthropic-beta': 'managed-agents-2026-04-01' };
    for (const version of [undefined, '2099-01-01', '']) {
      const res = await fetch(url, { headers: { ...headers, ...(version === undefined ? {} : { 'anthropic-version': version }) } });
      assert.equal(res.status, 400, `anthropic-version ${String(version)}`);
      const body = await res.json() as { type: string; error: { type: string; message: string } };
      assert.equal(body.type, 'error');
      assert.equal(body.error.type, 'invalid_request_error');
      assert.match(body.error.message, /anthropic-version/);
    }
    for (const version of ['2023-06-01', '2026-10-21']) {
      assert.equal((await fetch(url, { headers: { ...headers, 'anthropic-version': version } })).status, 204, `anthropic-version ${version}`);
    }
    assert.equal(await client(dq).beta.environments.work.poll(dq.environmentId, {}), null, 'the SDK\'s own version is accepted');
  });

  it('a sessions token reaches only its own session\'s skills and memory stores (403 for another session\'s)', async () => {
    const withResources = (tag: string) => scenario([{ tool: 'bash', input: { command: 'true' } }], {
      skills: [{ name: `skill-${tag}`, files: { 'SKILL.md': tag } }],
      memoryStores: [{ name: `store-${tag}`, memories: { '/note.md': tag } }],
    });
    const sidA = dq.createSession(withResources('a'));
    const { sessionsToken } = await claim(dq);
    const sidB = dq.createSession(withResources('b'));
    const ek = client(dq);
    const [a, b] = [await ek.beta.sessions.retrieve(sidA), await ek.beta.sessions.retrieve(sidB)];
    const storeOf = (s: typeof a) => (s.resources[0] as { memory_store_id: string }).memory_store_id;
    const st = client(dq, sessionsToken);

    const ownSkill = a.agent.skills[0]!.skill_id;
    const ownVersion = await st.beta.skills.versions.retrieve('latest', { skill_id: ownSkill });
    assert.equal(ownVersion.name, 'skill-a');
    assert.ok((await st.beta.skills.versions.download(ownVersion.id, { skill_id: ownSkill })).ok);
    const ownMemories = [];
    for await (const m of st.beta.memoryStores.memories.list(storeOf(a), { view: 'full' })) ownMemories.push(m);
    assert.deepEqual(ownMemories.map((m) => (m as { content?: string }).content), ['a']);

    const otherSkill = b.agent.skills[0]!.skill_id;
    await assert.rejects(st.beta.skills.versions.retrieve('latest', { skill_id: otherSkill }), apiError(403, 'permission_error'));
    const otherVersion = await ek.beta.skills.versions.retrieve('latest', { skill_id: otherSkill });
    await assert.rejects(st.beta.skills.versions.download(otherVersion.id, { skill_id: otherSkill }), apiError(403, 'permission_error'));
    await assert.rejects(st.beta.memoryStores.memories.list(storeOf(b), { view: 'full' }).then((page) => page.data), apiError(403, 'permission_error'));
    await assert.rejects(st.beta.memoryStores.memories.create(storeOf(b), { path: '/planted.md', content: 'x' }), apiError(403, 'permission_error'));
    assert.deepEqual(dq.memoryContents(sidB, 'store-b'), { '/note.md': 'b' }, 'the other session\'s store is unchanged');
  });

  it('work retrieve accepts an API key only: the environment key and a sessions token get 401', async () => {
    dq.createSession(scenario([{ tool: 'bash', input: { command: 'true' } }]));
    const { workId, sessionsToken } = await claim(dq);
    const params = { environment_id: dq.environmentId };
    await assert.rejects(client(dq).beta.environments.work.retrieve(workId, params), apiError(401, 'authentication_error'));
    await assert.rejects(client(dq, sessionsToken).beta.environments.work.retrieve(workId, params), apiError(401, 'authentication_error'));
    await assert.rejects(new Anthropic({ apiKey: 'sk-ant-api03-wrong', baseURL: dq.baseUrl, maxRetries: 0 }).beta.environments.work.retrieve(workId, params), apiError(401, 'authentication_error'));
    const work = await new Anthropic({ apiKey: dq.apiKey, baseURL: dq.baseUrl, maxRetries: 0 }).beta.environments.work.retrieve(workId, params);
    assert.equal(work.id, workId);
    assert.equal(work.state, 'starting');
    assert.equal(work.secret, null, 'retrieve never carries the secret');
    const raw = (headers: Record<string, string>) => fetch(`${dq.baseUrl}/v1/environments/${dq.environmentId}/work/${workId}`, { headers: { 'anthropic-version': '2023-06-01', 'anthropic-beta': 'managed-agents-2026-04-01', ...headers } });
    assert.equal((await raw({ 'x-api-key': dq.apiKey })).status, 200, 'an API key as x-api-key (the docs\' curl form)');
    const refused = await raw({ 'x-api-key': dq.environmentKey });
    assert.equal(refused.status, 401);
    assert.equal(((await refused.json()) as { error: { type: string } }).error.type, 'authentication_error');
    // An API key is no worker credential: it cannot poll.
    await assert.rejects(new Anthropic({ apiKey: dq.apiKey, baseURL: dq.baseUrl, maxRetries: 0 }).beta.environments.work.poll(dq.environmentId, {}), apiError(401, 'authentication_error'));
  });
});
