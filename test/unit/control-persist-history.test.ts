// The control API's transcript and persisted-file history methods over a real loopback WebSocket, against the real
// Persistence store (generations committed through its store, no sandbox) and the real transcript log: pages, file
// bytes as base64 in size-capped ranges, rollback, typed errors for unknown generations and files, `unavailable`
// without a store.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startControlServer, type ControlServer } from '../../companion/control/server';
import { EventHub } from '../../companion/events';
import { Journal } from '../../companion/journal/journal';
import { TranscriptLog } from '../../companion/journal/transcript';
import { Persistence } from '../../companion/persist/persistence';
import { SessionStore, sha256 } from '../../companion/persist/store';
import type { WorkerControl } from '../../companion/control/types';
import { PERSIST_READ_MAX } from '../../companion/protocol/control';
import { ControlClient, ControlRequestError } from '../../extension/launcher/controlClient';
import { facts } from './control-fixtures';

const worker: WorkerControl = { state: () => 'polling', hostFacts: () => facts(), drain: async () => {}, shutdown: async () => {} };

/** Commits a generation holding `files` (path → content) straight through the store. */
async function commit(home: string, sessionId: string, generation: number, files: Record<string, string>): Promise<void> {
  const store = await SessionStore.open(path.join(home, 'sessions'), sessionId, 3);
  const txn = await store.begin();
  const entries = new Map();
  for (const [p, text] of Object.entries(files)) {
    const data = Buffer.from(text);
    await txn.addBlob(sha256(data), data);
    entries.set(p, { type: 'file', path: p, size: data.length, mode: 0o644, mtimeMs: 1000, sha256: sha256(data) });
  }
  entries.set('/workspace/link', { type: 'symlink', path: '/workspace/link', target: '/etc/passwd', mtimeMs: 1000 });
  await txn.finish({ generation, entries, shell: null });
}

describe('control API: transcripts and persisted-file history', () => {
  let home: string; let server: ControlServer; let client: ControlClient; let journal: Journal; let transcripts: TranscriptLog;

  async function start(withStore: boolean) {
    const hub = new EventHub();
    journal = Journal.open(path.join(home, 'journal'));
    transcripts = new TranscriptLog(path.join(home, 'journal'));
    const persistence = new Persistence({ home, persist: { defaults: ['/workspace'], maxBytes: 1 << 30, maxFiles: 1000, keepGenerations: 3 }, hub });
    server = await startControlServer({ home, hub, worker, journal, transcripts, ...(withStore ? { persistence, persistHistory: persistence } : {}) });
    client = new ControlClient({ port: server.endpoint.port, token: server.endpoint.token });
    await client.connect();
    journal.updateSession('sesn_1', { workId: 'w1', state: 'running' });   // a session this companion served
  }

  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-ctl-hist-')); });
  afterEach(async () => { client?.close(); await server?.close(); journal?.close(); rmSync(home, { recursive: true, force: true }); });

  it('pages a session\'s transcript, oldest first', async () => {
    await start(true);
    for (let i = 0; i < 5; i++) transcripts.append('sesn_1', { kind: 'agent', ts: i, text: `message ${i}`, eventId: `e${i}` });
    const first = await client.request('getTranscript', { sessionId: 'sesn_1', limit: 3 });
    assert.deepEqual(first.items.map((e) => (e.kind === 'agent' ? e.text : e.kind)), ['message 0', 'message 1', 'message 2']);
    const rest = await client.request('getTranscript', { sessionId: 'sesn_1', limit: 3, cursor: first.nextCursor });
    assert.deepEqual([rest.items.length, rest.nextCursor], [2, null]);
    await assert.rejects(client.request('getTranscript', { sessionId: 'sesn_none' }), (err: unknown) => err instanceof ControlRequestError && err.code === 'not_found');
  });

  it('lists generations and entries, reads a file in ranges, rolls back, and names unknown ones not_found', async () => {
    await start(true);
    await commit(home, 'sesn_1', 1, { '/workspace/a.txt': 'version one\n' });
    await commit(home, 'sesn_1', 2, { '/workspace/a.txt': 'version two\n', '/workspace/b.bin': 'x'.repeat(3000) });
    const gens = await client.request('listGenerations', { sessionId: 'sesn_1' });
    assert.deepEqual([gens.current, gens.generations.map((g) => g.generation)], [2, [2, 1]]);
    const entries = await client.request('listPersistFiles', { sessionId: 'sesn_1', generation: 2, limit: 2 });
    assert.deepEqual(entries.items.map((e) => e.path), ['/workspace/a.txt', '/workspace/b.bin']);
    const more = await client.request('listPersistFiles', { sessionId: 'sesn_1', generation: 2, cursor: entries.nextCursor });
    assert.deepEqual(more.items.map((e) => [e.path, e.type, e.target]), [['/workspace/link', 'symlink', '/etc/passwd']]);
    const head = await client.request('readPersistFile', { sessionId: 'sesn_1', generation: 2, path: '/workspace/b.bin', offset: 0, length: 1000 });
    assert.deepEqual([head.size, Buffer.from(head.data, 'base64').length, head.eof], [3000, 1000, false]);
    const tail = await client.request('readPersistFile', { sessionId: 'sesn_1', generation: 2, path: '/workspace/b.bin', offset: 2500, length: 1000 });
    assert.deepEqual([Buffer.from(tail.data, 'base64').length, tail.eof], [500, true]);
    const old = await client.request('readPersistFile', { sessionId: 'sesn_1', generation: 1, path: '/workspace/a.txt' });
    assert.equal(Buffer.from(old.data, 'base64').toString(), 'version one\n');
    await assert.rejects(client.request('readPersistFile', { sessionId: 'sesn_1', generation: 2, path: '/workspace/b.bin', length: PERSIST_READ_MAX + 1 }),
      (err: unknown) => err instanceof ControlRequestError && err.code === 'bad_request');
    for (const req of [
      () => client.request('readPersistFile', { sessionId: 'sesn_1', generation: 9, path: '/workspace/a.txt' }),
      () => client.request('readPersistFile', { sessionId: 'sesn_1', generation: 2, path: '/workspace/link' }),
      () => client.request('rollbackPersist', { sessionId: 'sesn_1', generation: 9 }),
    ]) await assert.rejects(req, (err: unknown) => err instanceof ControlRequestError && err.code === 'not_found');

    const rolled = await client.request('rollbackPersist', { sessionId: 'sesn_1', generation: 1 });
    assert.deepEqual([rolled.generation, rolled.files.map((f) => f.path)], [3, ['/workspace/a.txt']]);
    const now = await client.request('readPersistFile', { sessionId: 'sesn_1', generation: 3, path: '/workspace/a.txt' });
    assert.equal(Buffer.from(now.data, 'base64').toString(), 'version one\n');
  });

  it('answers unavailable when the companion keeps no generations', async () => {
    await start(false);
    await assert.rejects(client.request('listGenerations', { sessionId: 'sesn_1' }), (err: unknown) => err instanceof ControlRequestError && err.code === 'unavailable');
  });
});
