// The call journal: durable state per tool_use_id, recovery after a crash (running -> interrupted with an explicit
// error, done-but-unposted kept with its result), a torn last line, compaction, and the JournalReader paging.
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Journal, INTERRUPTED_TEXT, JOURNAL_FILE } from '../../companion/journal/journal';
import { setStderrLogging } from '../../companion/log';

describe('journal', () => {
  let dir: string;
  before(() => setStderrLogging(false));
  after(() => setStderrLogging(true));
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-journal-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const call = (j: Journal, id: string, session = 's1') => j.callStarted({ toolUseId: id, sessionId: session, workId: 'w1', name: 'bash', input: { command: `echo ${id}` } });

  it('recovers after a crash: running calls become interrupted errors, unposted results are kept, posted stay posted', () => {
    const j = Journal.open(dir);
    j.updateSession('s1', { workId: 'w1', state: 'running', claimedAt: Date.now() });
    call(j, 'a'); j.callFinished('a', { text: 'A', isError: false, exitCode: 0 }); j.callPosted('a');
    call(j, 'b'); j.callFinished('b', { text: 'B', isError: true, exitCode: 2 });
    call(j, 'c');
    // no close(): the process "dies" here
    const r = Journal.open(dir);
    assert.equal(r.getCall('a')!.state, 'posted');
    assert.deepEqual([r.getCall('b')!.state, r.getCall('b')!.result, r.getCall('b')!.isError], ['failed', 'B', true]);
    assert.deepEqual([r.getCall('c')!.state, r.getCall('c')!.result, r.getCall('c')!.isError], ['interrupted', INTERRUPTED_TEXT, true]);
    assert.equal(r.getSession('s1')!.state, 'ended');
    // The recovered state is itself durable (compacted on open).
    const again = Journal.open(dir);
    assert.equal(again.getCall('c')!.state, 'interrupted');
    r.close(); again.close(); j.close();
  });

  it('ignores a torn last line', () => {
    const j = Journal.open(dir);
    call(j, 'a'); j.callFinished('a', { text: 'A', isError: false, exitCode: 0 });
    j.close();
    appendFileSync(path.join(dir, JOURNAL_FILE), '{"k":"c","toolUseId":"a","state":"pos');
    const r = Journal.open(dir);
    assert.equal(r.getCall('a')!.state, 'done');
    assert.ok(readFileSync(path.join(dir, JOURNAL_FILE), 'utf8').split('\n').filter(Boolean).every((l) => JSON.parse(l)), 'compaction dropped the torn line');
    r.close();
  });

  it('keeps the input digest so a re-delivery with another input is detectable', () => {
    const j = Journal.open(dir);
    const a = call(j, 'a');
    assert.match(a.inputSha256, /^[0-9a-f]{64}$/);
    const b = j.callStarted({ toolUseId: 'b', sessionId: 's1', workId: 'w1', name: 'bash', input: { command: 'echo a' } });
    assert.equal(b.inputSha256, a.inputSha256, 'same input, same digest');
    j.close();
  });

  it('compacts: the file shrinks to one line per live entry and nothing unposted is lost', async () => {
    const j = Journal.open(dir);
    j.updateSession('s1', { workId: 'w1', state: 'running', claimedAt: Date.now() });
    for (let i = 0; i < 300; i++) { call(j, `c${i}`); j.callFinished(`c${i}`, { text: `out ${i}`, isError: false, exitCode: 0 }); if (i % 2) j.callPosted(`c${i}`); }
    await j.compact();
    const linesAfter = readFileSync(path.join(dir, JOURNAL_FILE), 'utf8').split('\n').filter(Boolean).length;
    assert.equal(linesAfter, 301, '1 session + 300 calls, after ~750 appended records');
    j.close();
    const r = Journal.open(dir);
    assert.equal(r.getCall('c0')!.state, 'done');
    assert.equal(r.getCall('c0')!.result, 'out 0');
    assert.equal(r.getCall('c1')!.state, 'posted');
    r.close();
  });

  it('pages sessions and calls newest first and returns a call\'s output', async () => {
    const j = Journal.open(dir);
    for (let i = 0; i < 5; i++) { j.updateSession(`s${i}`, { workId: `w${i}`, state: 'running', claimedAt: 1000 + i }); }
    for (let i = 0; i < 3; i++) { call(j, `k${i}`, 's4'); await new Promise((r) => setTimeout(r, 2)); }
    j.callFinished('k1', { text: 'output of k1', isError: false, exitCode: 0 });
    const p1 = j.listSessions({ limit: 2 });
    assert.deepEqual(p1.items.map((s) => s.sessionId), ['s4', 's3']);
    const p2 = j.listSessions({ limit: 2, cursor: p1.nextCursor });
    assert.deepEqual(p2.items.map((s) => s.sessionId), ['s2', 's1']);
    assert.equal(j.listSessions({ limit: 2, cursor: p2.nextCursor }).nextCursor, null);
    assert.equal(p1.items[0]!.callCount, 3);
    assert.deepEqual(j.listCalls('s4', { limit: 10 }).items.map((c) => c.toolUseId), ['k2', 'k1', 'k0']);
    assert.equal(j.callOutput('k1')!.output, 'output of k1');
    assert.equal(j.callOutput('nope'), null);
    j.close();
  });
});
