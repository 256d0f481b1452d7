// The control API server against fake worker/journal/persistence implementations, spoken to over real loopback
// WebSockets: with the extension's ControlClient for the happy paths and raw `ws` for hostile input.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, statSync, existsSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { startControlServer, type ControlServer } from '../../companion/control/server';
import { EventHub } from '../../companion/events';
import { addLogSink } from '../../companion/log';
import type { WorkerControl } from '../../companion/control/types';
import type { SessionSummary, ToolCallSummary, WorkerState, PersistState } from '../../companion/protocol/control';
import type { JournalReader, Page } from '../../companion/journal/types';
import type { CallPersistence } from '../../companion/persist/types';
import { ControlClient, ControlRequestError } from '../../extension/launcher/controlClient';
import { facts, session, call } from './control-fixtures';

class FakeWorker implements WorkerControl {
  current: WorkerState = 'polling';
  drained = 0; shutdowns = 0;
  state() { return this.current; }
  hostFacts() { return facts(); }
  async drain() { this.drained++; this.current = 'stopped'; }
  async shutdown() { this.shutdowns++; }
}

class FakeJournal implements JournalReader {
  sessions = ['s1', 's2', 's3'].map((id) => session(id));
  failNext = false;
  listSessions(opts: { limit: number; cursor?: string | null }): Page<SessionSummary> {
    if (this.failNext) { this.failNext = false; throw new Error('journal unreadable'); }
    const start = opts.cursor ? Number(opts.cursor) : 0;
    const items = this.sessions.slice(start, start + opts.limit);
    const next = start + opts.limit < this.sessions.length ? String(start + opts.limit) : null;
    return { items, nextCursor: next };
  }
  /** Calls of session `wide`: many long input fields each, so a page overflows its byte budget. */
  wideCalls = Array.from({ length: 120 }, (_, i) => call(`w${String(i).padStart(3, '0')}`, 'wide', {
    name: 'custom', input: Object.fromEntries(Array.from({ length: 40 }, (_, k) => [`field${k}`, 'y'.repeat(3000)])),
  }));
  listCalls(sessionId: string, opts: { limit: number; cursor?: string | null } = { limit: 100 }): Page<ToolCallSummary> {
    if (sessionId !== 'wide') return { items: [call('c1', sessionId)], nextCursor: null };
    const start = opts.cursor ? Number(opts.cursor) : 0;
    const end = start + opts.limit;
    return { items: this.wideCalls.slice(start, end), nextCursor: end < this.wideCalls.length ? String(end) : null };
  }
  hasSession(sessionId: string) { return this.sessions.some((s) => s.sessionId === sessionId) || sessionId === 'wide' || sessionId.startsWith('known'); }
  callOutput(toolUseId: string) { return toolUseId === 'c1' ? { call: call('c1', 's1'), output: 'full output' } : null; }
}

/** Honours the CallPersistence contract: setPatterns announces the change on the hub itself. */
class FakePersistence implements Pick<CallPersistence, 'state' | 'setPatterns'> {
  patterns = new Map<string, string[]>();
  constructor(private readonly hub: EventHub) {}
  async state(sessionId: string): Promise<PersistState> {
    return { sessionId, patterns: this.patterns.get(sessionId) ?? ['/workspace'], generation: 0, files: [], totalBytes: 0 };
  }
  async setPatterns(sessionId: string, patterns: string[]): Promise<PersistState> {
    this.patterns.set(sessionId, patterns);
    const state = await this.state(sessionId);
    this.hub.publish({ type: 'persist.changed', persist: state });
    return state;
  }
}

/** A raw socket that collects parsed messages; `next(pred)` waits for the first one matching. */
function rawSocket(port: number, headers: Record<string, string> = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers });
  const seen: any[] = [];
  const waiters: Array<{ pred: (m: any) => boolean; resolve: (m: any) => void }> = [];
  ws.on('message', (d) => {
    const m = JSON.parse(d.toString());
    seen.push(m);
    for (const w of [...waiters]) if (w.pred(m)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(m); }
  });
  const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
  ws.on('error', () => {});
  return {
    ws, seen, closed,
    open: () => new Promise<void>((r, j) => { ws.once('open', () => r()); ws.once('unexpected-response', (_q, res) => j(new Error(`HTTP ${res.statusCode}`))); ws.once('error', j); }),
    next: (pred: (m: any) => boolean) => {
      const found = seen.find(pred);
      return found ? Promise.resolve(found) : new Promise<any>((resolve) => waiters.push({ pred, resolve }));
    },
  };
}

describe('control server', () => {
  let home: string; let hub: EventHub; let worker: FakeWorker; let journal: FakeJournal; let persistence: FakePersistence;
  let server: ControlServer; let client: ControlClient;

  async function start(withPersistence = true) {
    server = await startControlServer({ home, hub, worker, journal, persistence: withPersistence ? persistence as unknown as CallPersistence : undefined });
    client = new ControlClient({ port: server.endpoint.port, token: server.endpoint.token });
    return client.connect();
  }

  beforeEach(() => {
    home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-ctl-'));
    hub = new EventHub(); worker = new FakeWorker(); journal = new FakeJournal(); persistence = new FakePersistence(hub);
  });
  afterEach(async () => { client?.close(); await server?.close(); rmSync(home, { recursive: true, force: true }); });

  it('writes control.json with mode 0600 naming the port, token and pid, and removes it on close', async () => {
    await start();
    const file = path.join(home, 'control.json');
    const written = JSON.parse(readFileSync(file, 'utf8'));
    assert.equal(written.port, server.endpoint.port);
    assert.equal(written.pid, process.pid);
    assert.ok(written.token.length >= 32);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    client.close();
    await server.close();
    assert.equal(existsSync(file), false);
  });

  it('sends a hello snapshot with worker state and host facts after authenticating', async () => {
    const hello = await start();
    assert.equal(hello.state, 'polling');
    assert.equal(hello.facts.hostname, 'box');
    assert.equal(hello.protocol, 1);
  });

  it('accepts the token as an auth first message', async () => {
    await start();
    const raw = rawSocket(server.endpoint.port);
    await raw.open();
    raw.ws.send(JSON.stringify({ id: 1, method: 'auth', params: { token: server.endpoint.token } }));
    assert.equal((await raw.next((m) => m.type === 'hello')).state, 'polling');
    raw.ws.close();
  });

  it('refuses a wrong token and answers nothing else', async () => {
    await start();
    const bad = new ControlClient({ port: server.endpoint.port, token: 'x'.repeat(43) });
    await assert.rejects(bad.connect(3000), /closed|timed out/);
    const raw = rawSocket(server.endpoint.port);
    await raw.open();
    raw.ws.send(JSON.stringify({ id: 7, method: 'listSessions', params: {} }));
    const err = await raw.next((m) => m.type === 'error');
    assert.deepEqual([err.id, err.code], [7, 'unauthorized']);
    assert.equal(await raw.closed, 4401);
    assert.equal(raw.seen.some((m) => m.type === 'response' || m.type === 'hello'), false);
  });

  it('refuses WebSocket upgrades from web pages (Origin header)', async () => {
    await start();
    const raw = rawSocket(server.endpoint.port, { origin: 'https://evil.example', authorization: `Bearer ${server.endpoint.token}` });
    await assert.rejects(raw.open(), /401|403/);
  });

  it('answers malformed messages with typed errors and keeps serving', async () => {
    await start();
    const raw = rawSocket(server.endpoint.port, { authorization: `Bearer ${server.endpoint.token}` });
    await raw.open();
    await raw.next((m) => m.type === 'hello');
    raw.ws.send('{not json');
    raw.ws.send(JSON.stringify({ id: 2, method: 'rm -rf', params: {} }));
    raw.ws.send(JSON.stringify({ id: 3, method: 'listCalls', params: { sessionId: 42 } }));
    raw.ws.send(JSON.stringify({ id: 4, method: 'setPersist', params: { sessionId: 's1', patterns: ['relative/path'] } }));
    raw.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    raw.ws.send(JSON.stringify({ id: 5, method: 'ping' }));
    const pong = await raw.next((m) => m.type === 'response' && m.id === 5);
    assert.equal(pong.result.state, 'polling');
    const errors = raw.seen.filter((m) => m.type === 'error');
    assert.equal(errors.length, 5);
    assert.ok(errors.every((e) => e.code === 'bad_request'));
    assert.deepEqual(errors.map((e) => e.id).sort(), [2, 3, 4, null, null].sort());
    assert.match(errors.find((e) => e.id === 4).message, /absolute path/);
    raw.ws.close();
  });

  it('pushes hub events to authenticated clients', async () => {
    await start();
    const got: string[] = [];
    client.onEvent((e) => got.push(e.type));
    const seen = new Promise<void>((r) => client.onEvent((e) => { if (e.type === 'call.finished') r(); }));
    hub.publish({ type: 'session.claimed', session: session('s9') });
    hub.publish({ type: 'call.output', sessionId: 's9', toolUseId: 'c9', chunk: 'abc' });
    hub.publish({ type: 'call.finished', call: call('c9', 's9') });
    await seen;
    assert.deepEqual(got, ['session.claimed', 'call.output', 'call.finished']);
  });

  it('pages sessions and calls from the journal and fetches full output', async () => {
    await start();
    const first = await client.request('listSessions', { limit: 2 });
    assert.deepEqual(first.items.map((s) => s.sessionId), ['s1', 's2']);
    const second = await client.request('listSessions', { limit: 2, cursor: first.nextCursor });
    assert.deepEqual(second.items.map((s) => s.sessionId), ['s3']);
    assert.equal(second.nextCursor, null);
    const calls = await client.request('listCalls', { sessionId: 's1' });
    assert.equal(calls.items[0]!.toolUseId, 'c1');
    assert.equal((await client.request('getCallOutput', { toolUseId: 'c1' })).output, 'full output');
    await assert.rejects(client.request('getCallOutput', { toolUseId: 'nope' }), (e: ControlRequestError) => e.code === 'not_found');
  });

  it('cuts a page at its byte budget and continues where it stopped; long input strings are cut in summaries', async () => {
    await start();
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page: Page<ToolCallSummary> = await client.request('listCalls', { sessionId: 'wide', limit: 100, cursor });
      assert.ok(JSON.stringify(page).length < 1024 * 1024, 'a page stays near its budget');
      seen.push(...page.items.map((c) => c.toolUseId));
      cursor = page.nextCursor;
      pages++;
    } while (cursor);
    assert.deepEqual(seen, journal.wideCalls.map((c) => c.toolUseId), 'every call once, in order');
    assert.ok(pages > 2, `the budget cut the pages (${pages})`);
    const first = (await client.request('listCalls', { sessionId: 'wide', limit: 1 })).items[0]!;
    assert.equal(first.inputTruncated, true);
    assert.match((first.input as Record<string, string>).field0!, /^y{2048}… \[952 more characters\]$/);
    assert.equal(((await client.request('listCalls', { sessionId: 's1' })).items[0]!).inputTruncated, undefined, 'short inputs are whole');
  });

  it('disconnects a client that stopped reading, once its backlog stops shrinking', async () => {
    server = await startControlServer({ home, hub, worker, journal, stallMs: 50 });
    const raw = rawSocket(server.endpoint.port, { authorization: `Bearer ${server.endpoint.token}` });
    await raw.open();
    await raw.next((m) => m.type === 'hello');
    const socket = (raw.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
    socket.pause();
    let dropped = false;
    const stopLogSink = addLogSink((r) => { if (/not reading; disconnecting/.test(r.message)) dropped = true; });
    try {
      const chunk = 'z'.repeat(1024 * 1024);
      while (!dropped) {
        hub.publish({ type: 'call.output', sessionId: 's1', toolUseId: 'c1', chunk });
        await new Promise((r) => setTimeout(r, 5));
      }
    } finally { stopLogSink(); }
    socket.resume();
    assert.equal(await raw.closed, 1006, 'cut off without a close handshake');
  });

  it('turns a failing journal into an internal error reply and stays up', async () => {
    await start();
    journal.failNext = true;
    await assert.rejects(client.request('listSessions'), (e: ControlRequestError) => e.code === 'internal' && /unreadable/.test(e.message));
    assert.equal((await client.request('listSessions')).items.length, 3);
  });

  it('changes a session\'s persist list and announces it', async () => {
    await start();
    const announced: string[][] = [];
    client.onEvent((e) => { if (e.type === 'persist.changed') announced.push(e.persist.patterns); });
    const state = await client.request('setPersist', { sessionId: 's1', patterns: ['/workspace', '/data'] });
    assert.deepEqual(state.patterns, ['/workspace', '/data']);
    await client.request('ping');   // events sent before the ping's reply have arrived
    assert.deepEqual(announced, [['/workspace', '/data']], 'announced exactly once');
    assert.deepEqual((await client.request('getPersist', { sessionId: 's1' })).patterns, ['/workspace', '/data']);
  });

  it('reports a missing persisted-file store as unavailable', async () => {
    await start(false);
    await assert.rejects(client.request('getPersist', { sessionId: 's1' }), (e: ControlRequestError) => e.code === 'unavailable');
  });

  it('drains and shuts the worker down on request', async () => {
    await start();
    assert.equal((await client.request('drain')).state, 'stopped');
    assert.equal(worker.drained, 1);
    assert.equal((await client.request('shutdown')).accepted, true);
    await new Promise((r) => setImmediate(r));
    assert.equal(worker.shutdowns, 1);
  });

  it('drops a connection whose peer stopped answering WebSocket pings (half-open tunnel)', async () => {
    server = await startControlServer({ home, hub, worker, journal, livenessIntervalMs: 50 });
    const mute = new WebSocket(`ws://127.0.0.1:${server.endpoint.port}/`, { headers: { authorization: `Bearer ${server.endpoint.token}` }, autoPong: false });
    const code = await new Promise<number>((r) => mute.on('close', (c) => r(c)));
    assert.equal(code, 1006, 'terminated without a close handshake');
    client = new ControlClient({ port: server.endpoint.port, token: server.endpoint.token });
    await client.connect();
    await new Promise((r) => setTimeout(r, 200));          // several liveness rounds
    assert.equal((await client.request('ping')).state, 'polling', 'a client that answers pings stays connected');
  });

  it('tells connected clients when it closes', async () => {
    await start();
    const closed = new Promise<string>((r) => client.onClose((c) => r(c.reason)));
    await server.close();
    assert.equal(await closed, 'closed');
  });
});
