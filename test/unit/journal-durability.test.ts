// The journal under faults, each done for real: a line damaged in the middle of the file (refused with the file, the
// line and what to do, never skipped), writes that fail on a full device (/dev/full: the journal turns unhealthy, keeps
// its in-memory state, refuses new starts, and recovers by rewriting itself), huge inputs and results (kept as size
// and hash), and a compaction of a large journal that lets the event loop run and keeps what was appended meanwhile.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Journal, JOURNAL_FILE, INTERRUPTED_TEXT, inputDigest } from '../../companion/journal/journal';
import { JournalCorrupt } from '../../companion/journal/journal-file';
import { INPUT_KEEP_BYTES, RESULT_KEEP_BYTES, isCappedInput } from '../../companion/journal/caps';
import { PerimeterError } from '../../companion/errors';
import { setStderrLogging } from '../../companion/log';

describe('journal durability', () => {
  let dir: string;
  let file: string;
  before(() => setStderrLogging(false));
  after(() => setStderrLogging(true));
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-journal-')); file = path.join(dir, JOURNAL_FILE); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const start = (j: Journal, id: string, input: unknown = { command: `echo ${id}` }) =>
    j.callStarted({ toolUseId: id, sessionId: 's1', workId: 'w1', name: 'bash', input });

  it('refuses to open a journal damaged in the middle, naming the file, the line and the way out', () => {
    const j = Journal.open(dir);
    for (const id of ['a', 'b', 'c']) { start(j, id); j.callFinished(id, { text: id.toUpperCase(), isError: false, exitCode: 0 }); }
    j.close();
    const lines = readFileSync(file, 'utf8').split('\n');
    lines[1] = lines[1]!.slice(0, 20) + '\u0000garbage' + lines[1]!.slice(40);
    writeFileSync(file, lines.join('\n'));
    let err: unknown;
    try { Journal.open(dir).close(); } catch (e) { err = e; }
    assert.ok(err instanceof JournalCorrupt, `a typed error, got ${String(err)}`);
    assert.equal(err.code, 'journal_corrupt');
    assert.equal(err.line, 2);
    assert.ok(err.message.includes(file), err.message);
    assert.match(err.message, /line 2 \(not JSON/);
    assert.match(err.message, /not a torn last write/);
    assert.ok(err.message.includes(`mv ${file} ${file}.damaged`), err.message);
    assert.ok(readFileSync(file, 'utf8').includes('garbage'), 'the damaged file is left as it was for a person to look at');
  });

  it('refuses a well-formed JSON line that is not a record when another follows it', () => {
    const j = Journal.open(dir);
    start(j, 'a');
    j.close();
    writeFileSync(file, `${readFileSync(file, 'utf8')}{"k":"x"}\n{"k":"c","toolUseId":"a","state":"done"}\n`);
    assert.throws(() => Journal.open(dir), (e: unknown) => e instanceof JournalCorrupt && e.line === 2 && /not a journal record/.test(e.message));
  });

  it('keeps a huge input as its size and hash, and still recognises a re-delivery', () => {
    const j = Journal.open(dir);
    const content = 'x'.repeat(10 * 1024 * 1024);
    const entry = start(j, 'big', { file_path: '/workspace/big', content });
    assert.ok(isCappedInput(entry.input));
    assert.equal(entry.input.journalCapped.bytes, JSON.stringify({ file_path: '/workspace/big', content }).length);
    assert.equal(entry.inputSha256, inputDigest({ file_path: '/workspace/big', content }), 'the digest is of the whole input');
    j.callFinished('big', { text: 'y'.repeat(3 * RESULT_KEEP_BYTES), isError: false, exitCode: 0 });
    j.close();
    assert.ok(statSync(file).size < INPUT_KEEP_BYTES + RESULT_KEEP_BYTES + 4096, `journal is ${statSync(file).size} bytes`);
    const r = Journal.open(dir);
    const c = r.getCall('big')!;
    assert.equal(c.inputSha256, inputDigest({ file_path: '/workspace/big', content }));
    assert.ok(Buffer.byteLength(c.result!) <= RESULT_KEEP_BYTES, 'the result is cut to the limit, marker included');
    assert.match(c.result!, new RegExp(`\\[journal copy cut: the result is ${3 * RESULT_KEEP_BYTES} bytes \\(sha256 [0-9a-f]{64}\\)`));
    r.close();
  });

  it('compacts a large journal in the background: the event loop runs, and appends made meanwhile survive', async () => {
    const j = Journal.open(dir);
    j.updateSession('s1', { workId: 'w1', state: 'running', claimedAt: Date.now() });
    const result = 'r'.repeat(48 * 1024);
    for (let i = 0; i < 200; i++) { start(j, `c${i}`); j.callFinished(`c${i}`, { text: result, isError: false, exitCode: 0 }); }
    let loopRan = false;
    setImmediate(() => { loopRan = true; });
    const compaction = j.compact();
    start(j, 'during');
    j.callFinished('during', { text: 'appended while compacting', isError: false, exitCode: 0 });
    let loopRanBeforeEnd = false;
    await compaction.then(() => { loopRanBeforeEnd = loopRan; });
    assert.equal(loopRanBeforeEnd, true, 'the event loop ran while the journal was rewritten');
    j.callPosted('during');
    j.close();
    const r = Journal.open(dir);
    assert.equal(r.getCall('during')!.state, 'posted');
    assert.equal(r.getCall('during')!.result, 'appended while compacting');
    assert.equal(r.getCall('c199')!.result, result);
    r.close();
  });

  it('on a full disk: refuses new starts, keeps results in memory, and recovers by rewriting itself', async () => {
    const j = Journal.open(dir);
    start(j, 'ran');
    j.close();
    rmSync(file);
    symlinkSync('/dev/full', file);
    // The result cannot be journaled: it is kept in memory (and posted by the caller); the journal turns unhealthy.
    assert.throws(() => j.callFinished('ran', { text: 'the result', isError: false, exitCode: 0 }), (e: unknown) => e instanceof PerimeterError && e.code === 'journal_write_failed');
    assert.equal(j.healthy, false);
    assert.match(j.problem ?? '', /ENOSPC|no space/i);
    assert.equal(j.getCall('ran')!.result, 'the result');
    // A new call cannot start: it is not recorded, so it is not run.
    assert.throws(() => start(j, 'refused'), (e: unknown) => e instanceof PerimeterError && e.code === 'journal_write_failed');
    assert.equal(j.getCall('refused'), undefined);
    // A crash now: the durable journal says `ran` was running: it comes back interrupted, never re-run.
    rmSync(file);
    writeFileSync(file, `${JSON.stringify({ k: 'c', toolUseId: 'ran', sessionId: 's1', workId: 'w1', name: 'bash', inputSha256: 'x', state: 'running', startedAt: 1, replays: 0 })}\n`);
    const crashed = Journal.open(path.dirname(file));
    assert.deepEqual([crashed.getCall('ran')!.state, crashed.getCall('ran')!.result], ['interrupted', INTERRUPTED_TEXT]);
    crashed.close();
    // Without a crash, space comes back and the journal rewrites itself from memory: the result is durable.
    rmSync(file);
    symlinkSync('/dev/full', file);
    assert.equal(await j.recover(), true);
    assert.equal(j.healthy, true);
    start(j, 'after');
    j.close();
    const r = Journal.open(dir);
    assert.equal(r.getCall('ran')!.result, 'the result');
    assert.equal(r.getCall('ran')!.state, 'done');
    assert.ok(r.getCall('after'));
    r.close();
  });
});
