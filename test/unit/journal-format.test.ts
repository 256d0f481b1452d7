// The journal's file format as a reader that opens it directly sees it (companion/protocol/journal.ts): what the
// companion's Journal writes folds back into the same records, lines that do not match the format are skipped and
// counted, and recovery forgets a call that only waited for its confirmation (it never ran; after a restart the SDK
// may still run it once approved) while a running one is interrupted.
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Journal } from '../../companion/journal/journal';
import { MAX_TRANSCRIPT_BYTES } from '../../companion/journal/transcript';
import {
  INTERRUPTED_TEXT, JOURNAL_FILE, callSummaryOf, foldJournal, recoverJournal, sessionSummaryOf, transcriptFileName,
} from '../../companion/protocol/journal';

describe('journal file format', () => {
  let dir: string;
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-jfmt-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function write(): void {
    const j = Journal.open(dir);
    j.updateSession('s1', { workId: 'w1', state: 'running', claimedAt: 100, title: 'Tidy the repository' });
    j.callStarted({ toolUseId: 'done', sessionId: 's1', workId: 'w1', name: 'write', input: { file_path: '/workspace/a' }, ranOn: { hostname: 'box', driver: 'qemu', accel: 'kvm', template: 'abc' } });
    j.callFinished('done', { text: 'ok', isError: false, exitCode: 0, persist: { generation: 2, added: ['/workspace/a'], changed: [], removed: [], more: 0 } });
    j.callStarted({ toolUseId: 'waiting', sessionId: 's1', workId: 'w1', name: 'bash', input: { command: 'rm -rf build' }, state: 'waiting_confirmation' });
    j.callStarted({ toolUseId: 'running', sessionId: 's1', workId: 'w1', name: 'bash', input: { command: 'sleep 9' } });
    j.close();
  }

  it('folds what the Journal wrote into the same records and summaries', () => {
    write();
    const folded = foldJournal(readFileSync(path.join(dir, JOURNAL_FILE), 'utf8'));
    assert.equal(folded.unreadable, 0);
    const s = folded.sessions.get('s1')!;
    assert.deepEqual(sessionSummaryOf(s, 3).title, 'Tidy the repository');
    const done = callSummaryOf(folded.calls.get('done')!);
    assert.deepEqual([done.state, done.outputPreview, done.ranOn?.template, done.persist?.added], ['done', 'ok', 'abc', ['/workspace/a']]);
    assert.equal(folded.calls.get('waiting')!.state, 'waiting_confirmation');
  });

  it('skips lines that are not JSON or do not match the format', () => {
    write();
    appendFileSync(path.join(dir, JOURNAL_FILE), '{"k":"c","toolUseId":5}\n{"k":"x","id":"1"}\n{"k":"c","toolUseId":"done","state":"weird"}\n{"k":"s","sessionId":"s1","state":"ended"');
    const folded = foldJournal(readFileSync(path.join(dir, JOURNAL_FILE), 'utf8'));
    assert.equal(folded.unreadable, 4);
    assert.equal(folded.calls.get('done')!.state, 'done');
    assert.equal(folded.sessions.get('s1')!.state, 'running');
  });

  it('recovery interrupts a running call and forgets one that only waited for its confirmation', () => {
    write();
    const folded = foldJournal(readFileSync(path.join(dir, JOURNAL_FILE), 'utf8'));
    assert.deepEqual(recoverJournal(folded, 5000), { interrupted: 1, forgotten: 1, unposted: 1 });
    assert.equal(folded.calls.has('waiting'), false);
    assert.deepEqual([folded.calls.get('running')!.state, folded.calls.get('running')!.result], ['interrupted', INTERRUPTED_TEXT]);
    assert.equal(folded.sessions.get('s1')!.state, 'ended');
    const reopened = Journal.open(dir);
    try {
      assert.equal(reopened.getCall('waiting'), undefined, 'the companion forgets it too: approved later, it runs');
      assert.equal(reopened.getCall('running')!.state, 'interrupted');
    } finally { reopened.close(); }
  });

  it('keeps transcripts per session, capped, and drops those of sessions compaction dropped', () => {
    const j = Journal.open(dir);
    try {
      j.updateSession('s1', { workId: 'w1' });
      j.transcripts.append('s1', { kind: 'prompt', ts: 1, text: 'hello', eventId: 'e1' });
      j.transcripts.append('gone', { kind: 'agent', ts: 1, text: 'bye' });
      j.transcripts.append('../escape', { kind: 'agent', ts: 1, text: 'never written' });
      assert.equal(transcriptFileName('../escape'), null);
      const big = 'x'.repeat(16 * 1024);
      for (let i = 0; i < (MAX_TRANSCRIPT_BYTES / big.length) + 10; i++) j.transcripts.append('s1', { kind: 'agent', ts: 2, text: big });
      const size = readFileSync(path.join(j.transcripts.dir, 's1.jsonl')).length;
      assert.ok(size <= MAX_TRANSCRIPT_BYTES, `capped at ${MAX_TRANSCRIPT_BYTES} (${size})`);
      assert.equal(j.transcripts.read('s1', { limit: 1 }).items[0]!.kind, 'prompt');
      j.compact();
      assert.equal(j.transcripts.read('gone', { limit: 10 }).items.length, 0);
      assert.equal(j.transcripts.read('s1', { limit: 1 }).items.length, 1);
    } finally { j.close(); }
  });
});
