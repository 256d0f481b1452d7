// Sessions you can tell apart and their history, without VS Code: the Sessions rows (title, state, start time and age,
// no spinner once the turn ended), the filter, a waiting call's row, the transcript document, the model's transcript
// and cleared-history handling, and this machine's history read from a journal the companion wrote while no worker
// runs (read-only, as the next worker will see it).
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Journal } from '../../companion/journal/journal';
import { PerimeterModel } from '../../extension/views/model';
import { describeCall, describeSession, formatAge, sessionMatches } from '../../extension/views/items';
import { renderTranscript, parseTranscriptUriPath, transcriptUriPath } from '../../extension/documents/transcript';
import { readJournalHistory, readTranscriptFile } from '../../extension/history/journalHistory';
import { OfflineHistory } from '../../extension/history/offlineHistory';
import { call, session } from './control-fixtures';

const NOW = Date.parse('2026-03-01T12:00:00Z');

describe('sessions you can tell apart', () => {
  it('titles a session by its first prompt line and shows state, calls, start time and age', () => {
    const m = new PerimeterModel(() => NOW);
    m.ensureHost('local', 'This machine');
    m.loadSessions('local', [session('sesn_1', { title: 'Tidy the repository', state: 'idle', claimedAt: NOW - 5 * 60_000, callCount: 3 })]);
    const d = describeSession(m.session('local', 'sesn_1')!, false, false, NOW);
    assert.equal(d.label, 'Tidy the repository');
    assert.match(d.description!, /^turn ended · 3 calls · \d\d:\d\d \(5m ago\)$/);
    assert.match(d.tooltip!, /session sesn_1/);
    assert.equal(d.icon, 'check', 'no spinner once the agent ended its turn');
    assert.equal(describeSession(m.session('local', 'sesn_1')!, false, false, NOW + 3 * 3600_000).description!.endsWith('(3h ago)'), true, 'the age moves on');
    m.loadSessions('local', [session('sesn_2', { state: 'running', claimedAt: NOW })]);
    assert.equal(describeSession(m.session('local', 'sesn_2')!, false, false, NOW).label, 'sesn_2', 'the id until a title is known');
    assert.equal(formatAge(2 * 86_400_000), '2d ago');
  });

  it('filters by title, id, host or a call', () => {
    const m = new PerimeterModel(() => NOW);
    m.ensureHost('local', 'This machine');
    m.loadSessions('local', [session('sesn_a', { title: 'Fix the build' })]);
    m.loadCalls('local', 'sesn_a', [call('c1', 'sesn_a', { input: { command: 'make test' } })]);
    const s = m.session('local', 'sesn_a')!;
    for (const f of ['build', 'SESN_A', 'this machine', 'make test', '']) assert.ok(sessionMatches(s, f, 'This machine'), f);
    assert.equal(sessionMatches(s, 'deploy', 'This machine'), false);
  });

  it('shows a call waiting for its confirmation with how long it has waited', () => {
    const d = describeCall('local', call('c1', 's', { state: 'waiting_confirmation', startedAt: NOW - 12_000, finishedAt: null, durationMs: null, exitCode: null, isError: null }), NOW);
    assert.equal(d.description, 'waiting for confirmation · 12.0 s');
  });

  it('keeps live transcript entries once, and cleared sessions stay cleared when history is re-read', () => {
    const m = new PerimeterModel(() => NOW);
    m.ensureHost('local', 'This machine');
    m.loadSessions('local', [session('sesn_1', { state: 'ended' })]);
    const entry = { kind: 'agent' as const, ts: 1, text: 'done', eventId: 'e1' };
    m.applyEvent('local', { type: 'session.transcript', sessionId: 'sesn_1', entry });
    m.applyEvent('local', { type: 'session.transcript', sessionId: 'sesn_1', entry });
    m.loadTranscript('local', 'sesn_1', [entry, { kind: 'prompt', ts: 0, text: 'go', eventId: 'e0' }]);
    assert.deepEqual(m.transcriptOf('local', 'sesn_1').map((e) => e.kind), ['agent', 'prompt']);
    m.forgetSessions('local', ['sesn_1']);
    m.loadSessions('local', [session('sesn_1', { state: 'ended', updatedAt: 99 })]);
    assert.equal(m.session('local', 'sesn_1'), undefined);
  });

  it('renders a transcript in time order with calls, placement, persisted changes, verdicts and egress', () => {
    const text = renderTranscript({
      hostLabel: 'kvmbox', live: false,
      session: session('sesn_1', { title: 'Tidy', state: 'ended', claimedAt: NOW }),
      calls: [call('c1', 'sesn_1', { startedAt: NOW + 2000, name: 'write', input: { file_path: '/workspace/a' }, outputPreview: 'wrote 3 bytes',
        ranOn: { hostname: 'kvmbox', driver: 'qemu', accel: 'kvm', template: 'abcdef' }, persist: { generation: 2, added: ['/workspace/a'], changed: [], removed: ['/workspace/old'], more: 0 } })],
      entries: [
        { kind: 'prompt', ts: NOW + 1000, text: 'Tidy the repository' },
        { kind: 'confirmation', ts: NOW + 1500, toolUseId: 'c1', result: 'allow' },
        { kind: 'egress', ts: NOW + 3000, decision: { ts: NOW + 3000, sessionId: 'sesn_1', host: 'pypi.org', port: 443, kind: 'tls', allowed: false, reason: 'not in the allow-list', address: null } },
        { kind: 'agent', ts: NOW + 4000, text: 'All tidy.' },
      ],
    });
    const order = ['> Tidy the repository', 'approved', 'write: /workspace/a', 'ran on kvmbox · qemu (KVM) · template abcdef', '+ /workspace/a', '- /workspace/old', 'network denied: pypi.org:443', 'All tidy.'];
    let at = 0;
    for (const part of order) { const i = text.indexOf(part, at); assert.ok(i >= at, `${part} after position ${at}:\n${text}`); at = i; }
    assert.match(text, /read-only history/);
    const p = transcriptUriPath({ hostId: 'ssh:dev@box', sessionId: 'sesn_1' }, 'a/b title');
    assert.deepEqual(parseTranscriptUriPath(p), { hostId: 'ssh:dev@box', sessionId: 'sesn_1' });
  });
});

describe('history while no worker runs', () => {
  let home: string;
  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-offline-')); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  function companionWrote(): void {
    const j = Journal.open(path.join(home, 'journal'));
    j.updateSession('sesn_1', { workId: 'w', state: 'running', claimedAt: NOW, title: 'Tidy the repository' });
    j.callStarted({ toolUseId: 'done', sessionId: 'sesn_1', workId: 'w', name: 'bash', input: { command: 'ls' } });
    j.callFinished('done', { text: 'a\nb', isError: false, exitCode: 0 });
    j.callStarted({ toolUseId: 'cut', sessionId: 'sesn_1', workId: 'w', name: 'bash', input: { command: 'sleep 99' } });
    j.callStarted({ toolUseId: 'asked', sessionId: 'sesn_1', workId: 'w', name: 'bash', input: { command: 'rm -rf /' }, state: 'waiting_confirmation' });
    j.transcripts.append('sesn_1', { kind: 'prompt', ts: NOW, text: 'Tidy the repository', eventId: 'e1' });
    j.close();
  }

  it('reads the journal as the next worker will see it, without changing a file', async () => {
    assert.deepEqual(await readJournalHistory(home), { sessions: [], calls: new Map(), unreadable: 0 });
    companionWrote();
    const before = readdirSync(path.join(home, 'journal'), { recursive: true }).map((f) => [f, statSync(path.join(home, 'journal', String(f))).mtimeMs]);
    const h = await readJournalHistory(home, NOW + 1000);
    assert.deepEqual(h.sessions.map((s) => [s.sessionId, s.title, s.state]), [['sesn_1', 'Tidy the repository', 'ended']]);
    assert.deepEqual(h.calls.get('sesn_1')!.map((c) => [c.toolUseId, c.state]).sort(), [['cut', 'interrupted'], ['done', 'done']]);
    assert.deepEqual((await readTranscriptFile(home, 'sesn_1')).map((e) => e.kind), ['prompt']);
    const after = readdirSync(path.join(home, 'journal'), { recursive: true }).map((f) => [f, statSync(path.join(home, 'journal', String(f))).mtimeMs]);
    assert.deepEqual(after, before, 'read-only');
  });

  it('fills the model for this machine only while no worker is connected there', async () => {
    companionWrote();
    const m = new PerimeterModel(() => NOW);
    m.ensureHost('local', 'This machine');
    const errors: string[] = [];
    const offline = new OfflineHistory(m, () => home, (e) => errors.push(e));
    await offline.refresh();
    assert.deepEqual(m.sessionList().map((s) => s.summary.title), ['Tidy the repository']);
    assert.equal(m.callList('local', 'sesn_1').length, 2);
    const connected = new PerimeterModel(() => NOW);
    connected.ensureHost('local', 'This machine');
    connected.setConnection('local', 'connected');
    await new OfflineHistory(connected, () => home, (e) => errors.push(e)).refresh();
    assert.equal(connected.sessionList().length, 0, 'a connected worker\'s history comes from it');
    assert.deepEqual(errors, []);
  });

  it('shows the history of the state directory now configured, not of the previous one', async () => {
    companionWrote();
    const other = mkdtempSync(path.join(os.tmpdir(), 'perimeter-offline-other-'));
    try {
      const j = Journal.open(path.join(other, 'journal'));
      j.updateSession('sesn_other', { workId: 'w', claimedAt: NOW, title: 'Elsewhere' });
      j.close();
      const m = new PerimeterModel(() => NOW);
      m.ensureHost('local', 'This machine');
      let current = other;
      const offline = new OfflineHistory(m, () => current, () => {});
      const first = offline.refresh();
      current = home;
      void offline.refresh();   // asked while the first read runs: read again with the new directory
      await first;
      await offline.refresh();
      assert.deepEqual(m.sessionList().map((s) => s.summary.title), ['Tidy the repository']);
    } finally { rmSync(other, { recursive: true, force: true }); }
  });
});
