// The worker end to end, in this process, on the process driver, against the dev queue: the bundled scenario,
// concurrency, lease loss (412), an item already stopped (409), a fault storm and SSE drops.
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import Anthropic from '@anthropic-ai/sdk';
import type { DevQueue } from '../../companion/devqueue/server';
import { parseScenario } from '../../companion/devqueue/scenario';
import demo from '../../companion/devqueue/scenarios/demo.json';
import { answeredOnce, rmDir, scenario, startDevQueue, startRuntime, tmpDir } from './helpers';

function lines(file: string): string[] { return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean) : []; }

describe('worker end to end (process driver)', () => {
  let dq: DevQueue;
  const dirs: string[] = [];
  const tmp = () => { const d = tmpDir(); dirs.push(d); return d; };
  afterEach(async () => { await dq?.close(); for (const d of dirs.splice(0)) rmDir(d); });

  it('plays the bundled demo scenario: every call answered once and as expected, item released', async () => {
    dq = await startDevQueue();
    const rt = await startRuntime(dq, { home: tmp() });
    const sid = dq.createSession(parseScenario(demo));
    await dq.waitFor(() => dq.report(sid).finished, 90_000, 'scenario');
    await dq.waitFor(() => dq.workItems().every((w) => w.state === 'stopped'), 20_000, 'release');
    assert.equal(await rt.stop(), 0);
    const rep = dq.report(sid);
    const failed = rep.steps.filter((s) => s.status !== 'passed');
    assert.deepEqual(failed.map((s) => `${s.label}: ${s.reason}`), []);
    const answered = rep.steps.filter((s) => s.reason === null).map((s) => s.toolUseId!);
    assert.deepEqual(answeredOnce(dq, answered), { missing: [], duplicated: [] });
    // The journal knows every executed call as posted, and the denied one as denied (shown, never run or answered).
    const calls = rt.runtime.journal.listCalls(sid, { limit: 100 }).items;
    const denied = rep.steps.filter((s) => s.label === 'denied call').map((s) => s.toolUseId);
    assert.deepEqual(calls.filter((c) => c.state === 'denied').map((c) => c.toolUseId), denied);
    const executed = calls.filter((c) => c.state !== 'denied');
    assert.equal(executed.length, answered.length);
    assert.ok(executed.every((c) => c.state === 'posted'), executed.map((c) => `${c.name}:${c.state}`).join(' '));
    assert.ok(dq.stops.some((s) => s.force && s.status === 204), 'the item was force-stopped');
  });

  it('serves at most --concurrency sessions at once and all of them complete', async () => {
    dq = await startDevQueue();
    const marks = tmp();
    const rt = await startRuntime(dq, { home: tmp(), concurrency: 2 });
    const sids = [0, 1, 2, 3].map((i) => dq.createSession(scenario([
      { tool: 'bash', input: { command: `echo start-${i} >> ${marks}/log; sleep 1; echo end-${i} >> ${marks}/log; echo done-${i}` }, expectIncludes: [`done-${i}`] },
    ])));
    await dq.waitFor(() => sids.every((s) => dq.report(s).finished), 90_000, 'all sessions');
    assert.equal(await rt.stop(), 0);
    let running = 0;
    let peak = 0;
    for (const l of lines(`${marks}/log`)) { running += l.startsWith('start') ? 1 : -1; peak = Math.max(peak, running); }
    assert.ok(peak <= 2, `at most 2 sessions ran calls at once (saw ${peak})`);
    for (const s of sids) assert.equal(dq.report(s).steps[0]!.status, 'passed');
  });

  it('lease lost (412): the call is stopped, no result is posted, the item is not stopped by this worker', async () => {
    dq = await startDevQueue({ leaseTtlSeconds: 2 });
    const marks = tmp();
    const rt = await startRuntime(dq, { home: tmp() });
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: `echo started > ${marks}/s; sleep 20; echo too-late` } }]));
    await dq.waitFor(() => existsSync(`${marks}/s`), 30_000, 'the call to start');
    const workId = dq.workItems().find((w) => w.dataId === sid)!.id;
    dq.stealLease(workId);
    await dq.waitFor(() => rt.runtime.worker.activeSessions().length === 0, 30_000, 'the worker to let go of the session');
    const toolUseId = dq.report(sid).steps[0]!.toolUseId!;
    assert.equal(dq.results.has(toolUseId), false, 'no result posted after the lease was lost');
    assert.equal(dq.stops.filter((s) => s.workId === workId).length, 0, 'the item was not stopped by the worker');
    const session = rt.runtime.journal.listSessions({ limit: 10 }).items.find((s) => s.sessionId === sid)!;
    assert.equal(session.state, 'lost');
    assert.equal(await rt.stop(), 0);
  });

  it('an item stopped elsewhere: stop answers 409, which counts as success', async () => {
    dq = await startDevQueue({ leaseTtlSeconds: 2 });
    const rt = await startRuntime(dq, { home: tmp(), maxIdleMs: 60_000 });
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'echo hi' }, expectIncludes: ['hi'] }]));
    await dq.waitFor(() => dq.report(sid).finished, 30_000, 'scenario');
    const workId = dq.workItems().find((w) => w.dataId === sid)!.id;
    const ops = new Anthropic({ apiKey: null, authToken: dq.environmentKey, baseURL: dq.baseUrl });
    await ops.beta.environments.work.stop(workId, { environment_id: dq.environmentId, force: true });
    await dq.waitFor(() => rt.runtime.worker.activeSessions().length === 0, 30_000, 'the worker to release the session');
    assert.ok(dq.stops.some((s) => s.workId === workId && s.status === 409), 'the worker\'s own stop got a 409');
    const session = rt.runtime.journal.listSessions({ limit: 10 }).items.find((s) => s.sessionId === sid)!;
    assert.equal(session.state, 'ended');
    assert.equal(session.lastError, null);
    assert.equal(await rt.stop(), 0);
  });

  it('a fault storm (hundreds of 429s, 5xx, malformed JSON, SSE drops): no result lost, none duplicated, no call run twice', async function () {
    this.timeout(240_000);
    dq = await startDevQueue({ faults: { status429Every: 4, status5xxEvery: 3, malformedEvery: 4, retryAfterMs: 20, dropStreamAfterEvents: 3 } });
    const marks = tmp();
    const rt = await startRuntime(dq, { home: tmp() });
    const steps = Array.from({ length: 45 }, (_, i) => (i % 3 === 0
      ? { tool: 'bash', input: { command: `echo ${i} >> ${marks}/exec; echo out-${i}` }, expectIncludes: [`out-${i}`] }
      : i % 3 === 1 ? { tool: 'write', input: { file_path: `f${i}.txt`, content: `c${i}` }, expectIncludes: ['wrote'] }
        : { tool: 'glob', input: { pattern: '*.txt' }, expectIncludes: [`f${i - 1}.txt`] }));
    const sid = dq.createSession(scenario(steps));
    await dq.waitFor(() => dq.report(sid).finished, 200_000, 'scenario under faults');
    assert.equal(await rt.stop(), 0);
    const rep = dq.report(sid);
    assert.deepEqual(rep.steps.filter((s) => s.status !== 'passed').map((s) => `${s.label}: ${s.reason}`), []);
    assert.deepEqual(answeredOnce(dq, rep.steps.map((s) => s.toolUseId!)), { missing: [], duplicated: [] });
    const execs = lines(`${marks}/exec`);
    assert.deepEqual(execs, [...new Set(execs)], 'no bash call executed twice');
    assert.equal(execs.length, steps.filter((s) => s.tool === 'bash').length);
    const i = dq.injected;
    const total = i.rateLimited + i.serverErrors + i.malformed + i.streamDrops;
    assert.ok(total >= 200 && i.rateLimited > 0 && i.serverErrors > 0 && i.malformed > 0 && i.streamDrops > 0, `the storm injected every kind of fault (${JSON.stringify(i)})`);
    assert.ok(dq.requests.some((r) => r.route === 'events.stream' && r.status === 200) , 'streams were opened');
  });
});

describe('worker: newest work item per session wins', () => {
  it('a newer item for the same session supersedes the older one; the running call finishes and is answered once', async () => {
    const dq = await startDevQueue();
    const m = tmpDir();
    const rt = await startRuntime(dq, { home: tmpDir() });
    try {
      const sid = dq.createSession(scenario([
        { tool: 'bash', input: { command: `echo x >> ${m}/exec; sleep 2; echo slow-done` }, expectIncludes: ['slow-done'] },
        { tool: 'bash', input: { command: 'echo second' }, expectIncludes: ['second'] },
      ]));
      await dq.waitFor(() => existsSync(`${m}/exec`), 30_000, 'the first call to start');
      const older = dq.workItems().find((w) => w.dataId === sid)!.id;
      const newer = dq.enqueueWork(sid);
      await dq.waitFor(() => dq.report(sid).finished, 60_000, 'scenario');
      const rep = dq.report(sid);
      assert.deepEqual(rep.steps.map((s) => s.status), ['passed', 'passed'], rep.steps.map((s) => s.reason).join(' | '));
      assert.deepEqual(answeredOnce(dq, rep.steps.map((s) => s.toolUseId!)), { missing: [], duplicated: [] });
      assert.equal(lines(`${m}/exec`).length, 1, 'the call ran once');
      // The older handler's teardown posts its stop after its in-flight call drained, which may land after the scenario ended.
      await dq.waitFor(() => dq.stops.some((s) => s.workId === older && s.force), 30_000, 'the older item to be force-stopped');
      await dq.waitFor(() => dq.workItems().find((w) => w.id === newer)!.state !== 'queued', 30_000, 'the newer item to be claimed');
      assert.equal(await rt.stop(), 0);
    } finally { await dq.close(); rmDir(m); rmDir(rt.home); }
  });
});

describe('worker: items it must not serve', () => {
  it('skips healthcheck items and terminated sessions: stopped, no tool runs', async () => {
    const dq = await startDevQueue();
    const m = tmpDir();
    const rt = await startRuntime(dq, { home: tmpDir() });
    try {
      const hc = dq.enqueueWork('hc_local_1', 'healthcheck');
      const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: `touch ${m}/ran` } }]));
      dq.terminateSession(sid);
      const item = dq.workItems().find((w) => w.dataId === sid)!.id;
      await dq.waitFor(() => dq.workItems().filter((w) => w.id === hc || w.id === item).every((w) => w.state === 'stopped'), 30_000, 'both items stopped');
      assert.equal(existsSync(`${m}/ran`), false, 'no tool ran for a terminated session');
      assert.equal(dq.results.size, 0);
      assert.equal(await rt.stop(), 0);
    } finally { await dq.close(); rmDir(m); rmDir(rt.home); }
  });
});

describe('worker: memory stores', () => {
  it('mounts a session\'s memory store at /mnt/memory/<name> in every sandbox and syncs changes back to the store', async () => {
    const dq = await startDevQueue();
    const rt = await startRuntime(dq, { home: tmpDir() });
    try {
      const sid = dq.createSession(scenario([
        { tool: 'read', input: { file_path: '/mnt/memory/prefs/notes.md' }, expectIncludes: ['likes tea'] },
        { tool: 'write', input: { file_path: '/mnt/memory/prefs/learned.md', content: 'prefers short answers\n' }, expectIncludes: ['wrote'] },
        { tool: 'read', input: { file_path: '/mnt/memory/prefs/learned.md' }, expectIncludes: ['prefers short answers'] },
        { tool: 'glob', input: { pattern: '*', path: '/workspace' }, expectExcludes: ['memory'] },
      ], { memoryStores: [{ name: 'prefs', memories: { '/notes.md': 'likes tea\n' } }] }));
      await dq.waitFor(() => dq.report(sid).finished, 60_000, 'scenario');
      const rep = dq.report(sid);
      assert.deepEqual(rep.steps.map((s) => s.status), ['passed', 'passed', 'passed', 'passed'], rep.steps.map((s) => s.reason).join(' | '));
      await dq.waitFor(() => dq.memoryContents(sid, 'prefs')['/learned.md'] !== undefined, 30_000, 'the memory to sync back');
      assert.deepEqual(dq.memoryContents(sid, 'prefs'), { '/notes.md': 'likes tea\n', '/learned.md': 'prefers short answers\n' });
      assert.equal(await rt.stop(), 0);
    } finally { await dq.close(); rmDir(rt.home); }
  });
});

describe('worker: a control plane that stops answering heartbeats', () => {
  it('gives the lease up after its TTL: the call is stopped, nothing is posted, the item is not stopped', async () => {
    const dq = await startDevQueue({ leaseTtlSeconds: 2, requeueLapsedLeases: false });
    const m = tmpDir();
    const rt = await startRuntime(dq, { home: tmpDir() });
    try {
      const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: `touch ${m}/s; sleep 30; echo late` } }]));
      await dq.waitFor(() => existsSync(`${m}/s`), 30_000, 'the call to start');
      dq.faults = { hangHeartbeats: true };
      await dq.waitFor(() => rt.runtime.worker.activeSessions().length === 0, 30_000, 'the worker to give the session up');
      const toolUseId = dq.report(sid).steps[0]!.toolUseId!;
      assert.equal(dq.results.has(toolUseId), false, 'nothing posted after the lease was assumed lost');
      const workId = dq.workItems().find((w) => w.dataId === sid)!.id;
      assert.equal(dq.stops.filter((s) => s.workId === workId).length, 0, 'the item was not stopped');
      assert.equal(rt.runtime.journal.getCall(toolUseId)!.state, 'interrupted');
      dq.faults = {};
      assert.equal(await rt.stop(), 0);
    } finally { await dq.close(); rmDir(m); rmDir(rt.home); }
  });
});
