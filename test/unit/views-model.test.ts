// The extension's view model and tree descriptors against a fake event stream (no VS Code).
import assert from 'node:assert/strict';
import { PerimeterModel, type ModelChange } from '../../extension/views/model';
import { describeCall, describeHost, describeHostDetails, describeSession, formatDuration, hostStateLabel, pollTrouble, summarizeInput } from '../../extension/views/items';
import { hostNotices, withActionLinks } from '../../extension/views/notices';
import { statusBarText } from '../../extension/views/statusText';
import { renderCallDocument, callUriPath, parseCallUriPath } from '../../extension/documents/callDocument';
import type { ControlEvent, HelloMessage } from '../../companion/protocol/control';
import { facts, session, call } from './control-fixtures';

function hello(state: HelloMessage['state'] = 'polling'): HelloMessage {
  return { type: 'hello', protocol: 1, version: '0.1.0', state, facts: facts({ startedAt: 0, driver: 'qemu', accel: 'kvm' }), serverTime: 0 };
}

describe('view model', () => {
  let now: number; let model: PerimeterModel; let changes: ModelChange[];
  beforeEach(() => {
    now = 1_000_000;
    model = new PerimeterModel(() => now);
    changes = [];
    model.onDidChange((c) => changes.push(c));
    model.ensureHost('local', 'This machine');
  });

  it('builds sessions and calls from pushed events, newest call first', () => {
    const events: ControlEvent[] = [
      { type: 'session.claimed', session: session('s1', { claimedAt: 1 }) },
      { type: 'call.started', call: call('c1', 's1', { state: 'running', startedAt: 10, finishedAt: null, durationMs: null, exitCode: null, isError: null }) },
      { type: 'call.finished', call: call('c1', 's1', { startedAt: 10 }) },
      { type: 'call.started', call: call('c2', 's1', { name: 'read', input: { file_path: '/workspace/a.txt' }, state: 'running', startedAt: 20, finishedAt: null, durationMs: null }) },
    ];
    for (const e of events) model.applyEvent('local', e);
    assert.deepEqual(model.callList('local', 's1').map((c) => [c.toolUseId, c.state]), [['c2', 'running'], ['c1', 'done']]);
    assert.ok(changes.some((c) => c.kind === 'session' && c.sessionId === 's1'), 'a targeted session change is announced');
  });

  it('accumulates live output and announces each chunk', () => {
    const grown: string[] = [];
    model.onDidAppendOutput((o) => grown.push(o.toolUseId));
    model.applyEvent('local', { type: 'call.output', sessionId: 's1', toolUseId: 'c1', chunk: 'hel' });
    model.applyEvent('local', { type: 'call.output', sessionId: 's1', toolUseId: 'c1', chunk: 'lo' });
    assert.equal(model.liveOutputOf('local', 'c1'), 'hello');
    assert.deepEqual(grown, ['c1', 'c1']);
  });

  it('forgets live output of older finished calls (their full output is in the journal)', () => {
    for (let i = 0; i < 25; i++) {
      model.applyEvent('local', { type: 'call.output', sessionId: 's1', toolUseId: `c${i}`, chunk: `out${i}` });
      model.applyEvent('local', { type: 'call.finished', call: call(`c${i}`, 's1') });
    }
    assert.equal(model.liveOutputOf('local', 'c0'), '');
    assert.equal(model.liveOutputOf('local', 'c24'), 'out24');
    assert.equal(model.liveOutputOf('local', 'c5'), 'out5');
  });

  it('keeps history across a lost connection and merges the journal on reconnect', () => {
    model.setConnection('local', 'connected');
    model.applyHello('local', hello());
    model.applyEvent('local', { type: 'session.claimed', session: session('s1', { updatedAt: 5 }) });
    model.setConnection('local', 'reconnecting', 'control connection closed');
    assert.equal(model.sessionList().length, 1, 'history stays visible while disconnected');
    assert.equal(model.host('local')!.problem, 'control connection closed');
    model.loadSessions('local', [session('s1', { state: 'ended', updatedAt: 9 }), session('s2', { claimedAt: 3 })]);
    assert.deepEqual(model.sessionList().map((s) => [s.summary.sessionId, s.summary.state]), [['s2', 'running'], ['s1', 'ended']]);
    model.setConnection('local', 'connected');
    assert.equal(model.host('local')!.problem, null);
  });

  it('ignores an older journal summary than the one an event delivered', () => {
    model.applyEvent('local', { type: 'session.ended', session: session('s1', { state: 'ended', updatedAt: 50 }) });
    model.loadSessions('local', [session('s1', { state: 'running', updatedAt: 40 })]);
    assert.equal(model.session('local', 's1')!.summary.state, 'ended');
  });

  it('flags a session stuck when its running call shows no progress, even with a healthy connection', () => {
    model.setConnection('local', 'connected');
    model.applyEvent('local', { type: 'session.claimed', session: session('s1') });
    model.applyEvent('local', { type: 'call.started', call: call('c1', 's1', { state: 'running', finishedAt: null, durationMs: null }) });
    now += 60_000;
    assert.equal(model.stuckSessions(120_000).length, 0);
    now += 61_000;
    assert.deepEqual(model.stuckSessions(120_000).map((s) => s.summary.sessionId), ['s1']);
    model.applyEvent('local', { type: 'call.output', sessionId: 's1', toolUseId: 'c1', chunk: '.' });
    assert.equal(model.stuckSessions(120_000).length, 0, 'output is progress');
    now += 200_000;
    model.applyEvent('local', { type: 'call.finished', call: call('c1', 's1') });
    assert.equal(model.stuckSessions(120_000).length, 0, 'a finished call is not stuck');
  });

  it('keeps hosts apart', () => {
    model.ensureHost('ssh:box', 'box');
    model.applyEvent('local', { type: 'session.claimed', session: session('s1') });
    model.applyEvent('ssh:box', { type: 'session.claimed', session: session('s1') });
    model.applyEvent('ssh:box', { type: 'call.started', call: call('c9', 's1', { state: 'running' }) });
    assert.equal(model.sessionList('local')[0]!.calls.size, 0);
    assert.equal(model.sessionList('ssh:box')[0]!.calls.size, 1);
    assert.equal(model.findCall('local', 'c9'), undefined);
    model.removeHost('ssh:box');
    assert.equal(model.sessionList().length, 1);
  });

  it('stores persist state from events', () => {
    model.applyEvent('local', { type: 'persist.changed', persist: { sessionId: 's1', patterns: ['/workspace', '/data'], generation: 2, files: [], totalBytes: 0 } });
    assert.deepEqual(model.persistOf('local', 's1')!.patterns, ['/workspace', '/data']);
  });
});

describe('tree item descriptors', () => {
  it('formats durations', () => {
    assert.deepEqual([formatDuration(850), formatDuration(1234), formatDuration(125_000), formatDuration(3_780_000), formatDuration(null)],
      ['850 ms', '1.2 s', '2m 05s', '1h 03m', '']);
  });

  it('summarises tool inputs in one short line', () => {
    assert.equal(summarizeInput('bash', { command: 'ls -la\necho 2' }), 'ls -la');
    assert.equal(summarizeInput('read', { file_path: '/workspace/x' }), '/workspace/x');
    assert.equal(summarizeInput('grep', { pattern: 'TODO' }), 'TODO');
    assert.equal(summarizeInput('bash', { command: 'x'.repeat(100) }).length, 60);
  });

  it('gives calls stable ids, a state icon, duration and exit code', () => {
    const failed = describeCall('local', call('c1', 's1', { isError: true, exitCode: 2, durationMs: 1500 }), 0);
    assert.equal(failed.id, 'call:local:c1');
    assert.equal(failed.label, 'bash: echo hi');
    assert.equal(failed.description, 'error · 1.5 s · exit 2');
    assert.match(failed.icon, /^error/);
    assert.equal(failed.contextValue, 'call finished');
    const running = describeCall('local', call('c2', 's1', { state: 'running', startedAt: 1000, durationMs: null, finishedAt: null, exitCode: null, isError: null }), 4000);
    assert.equal(running.description, 'running · 3.0 s');
    assert.equal(running.icon, 'loading~spin');
    assert.equal(running.contextValue, 'call running');
    const waiting = describeCall('local', call('c3', 's1', { state: 'waiting_confirmation', durationMs: null, exitCode: null, isError: null }), 10);
    assert.match(waiting.description!, /^waiting for confirmation/);
  });

  it('describes hosts with menus-friendly context values and fact rows', () => {
    const m = new PerimeterModel(() => 10_000);
    const h = m.ensureHost('local', 'This machine');
    assert.equal(describeHost(h).contextValue, 'host stopped local');
    m.setConnection('local', 'connected');
    m.applyHello('local', hello());
    assert.equal(describeHost(h).contextValue, 'host running local');
    assert.equal(describeHost(h).description, 'polling');
    const rows = describeHostDetails(h, { activeSessions: 1, runningCalls: 2 }, 70_000);
    const byKey = Object.fromEntries(rows.map((r) => [r.id.split(':').pop(), r.description]));
    assert.equal(byKey.uptime, '1m 10s');
    assert.equal(byKey.driver, 'qemu');
    assert.equal(byKey.concurrency, '2');
    assert.match(byKey.queue!, /1 active session, 2 running calls/);
    assert.equal(byKey.sandbox, undefined, 'no sandbox row while the sandbox is ready');
    m.applyEvent('local', { type: 'host.facts', facts: { ...hello().facts, sandboxNote: 'remaking the template snapshot for QEMU 9: boot: starting the template VM' } });
    const remaking = describeHostDetails(h, { activeSessions: 0, runningCalls: 0 }, 70_000);
    assert.deepEqual(remaking.slice(2, 4).map((r) => [r.label, r.description]), [['Sandbox driver', 'qemu'], ['Sandbox', 'remaking the template snapshot for QEMU 9: boot: starting the template VM']]);
    m.setConnection('local', 'reconnecting', 'SSH tunnel closed');
    assert.match(describeHost(h).description!, /reconnecting · SSH tunnel closed/);
  });

  it('marks stuck sessions', () => {
    const m = new PerimeterModel(() => 0);
    m.ensureHost('local', 'x');
    m.applyEvent('local', { type: 'session.claimed', session: session('s1') });
    const d = describeSession(m.session('local', 's1')!, true, false);
    assert.match(d.description!, /stuck/);
    assert.match(d.contextValue, /\bstuck\b/);
    assert.match(d.contextValue, /\bactive\b/);
  });

  it('renders the status bar from the model', () => {
    const m = new PerimeterModel(() => 0);
    m.ensureHost('local', 'This machine');
    assert.match(statusBarText(m, 1000).text, /stopped/);
    m.setConnection('local', 'connected');
    m.applyHello('local', hello());
    m.applyEvent('local', { type: 'session.claimed', session: session('s1') });
    m.applyEvent('local', { type: 'call.started', call: call('c1', 's1', { state: 'running' }) });
    const s = statusBarText(m, 1000);
    assert.equal(s.text, '$(vm-running) Perimeter: This machine · polling · 1 session · 1 running');
    assert.equal(s.warning, false);
    m.setConnection('local', 'reconnecting', 'lost');
    assert.equal(statusBarText(m, 1000).warning, true);
  });

  it('names the host in the status bar, and counts hosts when several run', () => {
    const m = new PerimeterModel(() => 0);
    m.ensureHost('local', 'This machine');
    m.ensureHost('ssh:kvmbox', 'kvmbox');
    m.setConnection('ssh:kvmbox', 'connected');
    m.applyHello('ssh:kvmbox', hello());
    m.applyEvent('ssh:kvmbox', { type: 'session.claimed', session: session('s1') });
    assert.equal(statusBarText(m, 1000).text, '$(vm-running) Perimeter: kvmbox · polling · 1 session');
    m.setConnection('local', 'connected');
    assert.equal(statusBarText(m, 1000).text, '$(vm-running) Perimeter: 2 hosts · 2 connected · 1 session');
  });

  it('turns repeated poll failures into a warning state with the last error and a fix-it action', () => {
    const m = new PerimeterModel(() => 0);
    const h = m.ensureHost('ssh:kvmbox', 'kvmbox');
    m.setConnection('ssh:kvmbox', 'connected');
    m.applyHello('ssh:kvmbox', hello());
    const failing = (failures: number, lastStatus: number | null, lastError: string) =>
      m.applyEvent('ssh:kvmbox', { type: 'host.facts', facts: { ...hello().facts, poll: { failures, lastError, lastStatus, lastFailureAt: 1, lastSuccessAt: null } } });
    failing(2, null, 'fetch failed: getaddrinfo ENOTFOUND api.anthropic.com');
    assert.equal(pollTrouble(h), null, 'a transient network error or two is no warning yet');
    assert.equal(statusBarText(m, 1000).warning, false);
    failing(3, null, 'fetch failed: getaddrinfo ENOTFOUND api.anthropic.com');
    const status = statusBarText(m, 1000);
    assert.equal(status.warning, true);
    assert.equal(status.text, '$(warning) Perimeter: kvmbox · cannot poll · 0 sessions');
    assert.match(status.tooltip, /last poll error: fetch failed: getaddrinfo ENOTFOUND/);
    assert.match(describeHost(h).icon, /^warning/);
    assert.match(describeHost(h).contextValue, /\bwarning\b/);
    const row = describeHostDetails(h, { activeSessions: 0, runningCalls: 0 }, 0).find((r) => r.label === 'Polling')!;
    assert.equal(row.description, '3 failed in a row: fetch failed: getaddrinfo ENOTFOUND api.anthropic.com');
    assert.equal(row.command?.command, 'perimeter.showWorkerLog');
    const [notice] = hostNotices(m);
    assert.equal(notice!.transient, true);
    assert.match(notice!.message, /cannot poll its queue: no answer from the API \(check kvmbox's network/);
    failing(1, 401, '401 invalid credential');
    assert.equal(pollTrouble(h)?.kind, 'credentials', 'a refused key is a warning from the first failure');
    assert.equal(hostNotices(m)[0]!.actions[0]!.command, 'perimeter.connectEnvironment');
    assert.match(withActionLinks(hostNotices(m)[0]!), /\[Connect Environment\]\(command:perimeter\.connectEnvironment\)/);
    failing(0, null, '');
    assert.equal(hostNotices(m).length, 0, 'the notice goes away once polls work again');
    assert.equal(statusBarText(m, 1000).warning, false);
  });

  it('offers Reconnect for a lost SSH link and Restart Worker for a dead worker; a reconnect clears the notice', () => {
    const m = new PerimeterModel(() => 0);
    const h = m.ensureHost('ssh:kvmbox', 'kvmbox');
    m.setConnection('ssh:kvmbox', 'reconnecting', 'SSH tunnel to kvmbox closed (SIGKILL)', 'link');
    assert.equal(hostStateLabel(h), 'SSH connection lost');
    let [n] = hostNotices(m);
    assert.deepEqual([n!.transient, n!.message], [true, 'Perimeter: SSH connection to kvmbox lost; reconnecting (the worker there keeps running).']);
    m.setConnection('ssh:kvmbox', 'failed', 'cannot reach kvmbox over SSH: Connection refused; gave up after 6 attempts', 'link');
    [n] = hostNotices(m);
    assert.equal(n!.transient, true, 'it closes once reconnected, however that happens');
    assert.deepEqual(n!.actions.map((a) => a.title), ['Reconnect', 'Show Worker Log']);
    assert.match(withActionLinks(n!), /\[Reconnect\]\(command:perimeter\.reconnect\?%5B%22ssh%3Akvmbox%22%5D\)/);
    assert.doesNotMatch(n!.message, /Restart|code 1006/);
    assert.match(describeHost(h).contextValue, /\blinkDown\b/);
    m.setConnection('ssh:kvmbox', 'connected');
    assert.equal(hostNotices(m).length, 0);
    m.setConnection('ssh:kvmbox', 'failed', 'gave up after 6 attempts to restart or reconnect; use Restart Worker', 'worker');
    assert.deepEqual(hostNotices(m)[0]!.actions.map((a) => a.title), ['Restart Worker', 'Show Worker Log']);
    assert.equal(hostNotices(m)[0]!.transient, false, 'a worker that keeps dying waits for the user');
  });

  it('marks the selected host', () => {
    const m = new PerimeterModel(() => 0);
    const h = m.ensureHost('ssh:kvmbox', 'kvmbox');
    assert.equal(describeHost(h, true).description, 'selected · stopped');
    assert.match(describeHost(h, true).contextValue, /\bselected\b/);
    assert.doesNotMatch(describeHost(h, false).contextValue, /\bselected\b/);
  });
});

describe('call documents', () => {
  it('round-trips the URI path and rejects anything else', () => {
    const p = callUriPath({ hostId: 'ssh:user@box', toolUseId: 'toolu_01/x' }, 'bash');
    assert.deepEqual(parseCallUriPath(p), { hostId: 'ssh:user@box', toolUseId: 'toolu_01/x' });
    assert.equal(parseCallUriPath('/a/b'), null);
    assert.equal(parseCallUriPath('/a/b/c/d'), null);
  });

  it('shows input and output, and says when it follows live output', () => {
    const text = renderCallDocument(call('c1', 's1', { state: 'running', finishedAt: null, exitCode: null }), 'partial', { live: true });
    assert.match(text, /## input\n\{\n {2}"command": "echo hi"\n\}/);
    assert.match(text, /## output\npartial\n/);
    assert.match(text, /follows the live output/);
    assert.match(renderCallDocument(call('c1', 's1'), '', { live: false }), /\(empty output\)/);
  });
});
