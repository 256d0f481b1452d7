// A session's kept generations as the control API offers them (PersistHistory), on the process driver: the list of
// generations, a generation's entries and a file's bytes (ranges, verified by hash), a rollback that makes a new
// generation with an older content, which the next call then gets; the state lists only files under the session's
// persisted paths; each commit reports what it added, changed and removed.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, rmSync, writeFileSync, writeSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { EventHub } from '../../companion/events';
import { PerimeterError } from '../../companion/errors';
import { PERSIST_NOT_FOUND } from '../../companion/persist/types';
import type { ControlEvent } from '../../companion/protocol/control';
import { newPersistence, processDriver, runCall, tempDir } from './helpers';

describe('persisted-file history: generations, reading, rollback', () => {
  let home: string;
  let sbx: ReturnType<typeof processDriver>;
  beforeEach(() => { home = tempDir('persist-history'); sbx = processDriver(); });
  afterEach(async () => { await sbx.dispose(); rmSync(home, { recursive: true, force: true }); });

  it('lists kept generations and their files, reads a file by range, and rolls back to an older generation', async () => {
    const hub = new EventHub();
    const events: ControlEvent[] = [];
    hub.subscribe((e) => events.push(e));
    const p = newPersistence(home, { hub });
    const first = await runCall(sbx.driver, p, 's1', 'write', { file_path: '/workspace/notes.txt', content: 'first version\n' });
    assert.deepEqual(first.report.changes, { added: ['/workspace/notes.txt'], changed: [], removed: [] });
    const second = await runCall(sbx.driver, p, 's1', 'write', { file_path: '/workspace/notes.txt', content: 'second version, longer\n' });
    assert.deepEqual(second.report.changes, { added: [], changed: ['/workspace/notes.txt'], removed: [] });

    const { current, generations } = await p.generations('s1');
    assert.equal(current, second.report.generation);
    assert.deepEqual(generations.map((g) => g.generation), [second.report.generation, first.report.generation]);
    assert.ok(generations.every((g) => g.fileCount === 1 && g.rolledBackFrom === null && g.createdAt > 0));

    const page = await p.entries('s1', first.report.generation, { limit: 10, cursor: null });
    const file = page.items.find((e) => e.path === '/workspace/notes.txt')!;
    assert.deepEqual([file.type, file.size, file.target], ['file', 'first version\n'.length, null]);
    assert.equal((await p.readFile('s1', first.report.generation, '/workspace/notes.txt', 0, 1024)).data.toString(), 'first version\n');
    const part = await p.readFile('s1', second.report.generation, '/workspace/notes.txt', 7, 7);
    assert.deepEqual([part.size, part.data.toString()], ['second version, longer\n'.length, 'version']);

    for (const bad of [() => p.readFile('s1', 99, '/workspace/notes.txt', 0, 10), () => p.readFile('s1', current, '/workspace/none', 0, 10), () => p.entries('s1', 99, { limit: 1, cursor: null })]) {
      await assert.rejects(bad, (err: unknown) => err instanceof PerimeterError && err.code === PERSIST_NOT_FOUND);
    }

    const state = await p.rollback('s1', first.report.generation);
    assert.equal(state.generation, current + 1);
    const after = await p.generations('s1');
    assert.equal(after.generations[0]!.rolledBackFrom, first.report.generation);
    assert.ok(events.some((e) => e.type === 'persist.changed' && e.persist.generation === current + 1), 'announced');
    const read = await runCall(sbx.driver, p, 's1', 'read', { file_path: '/workspace/notes.txt' });
    assert.match(read.outcome.text, /first version/, 'the next call gets the rolled-back content');
  });

  it('lists only files under the persisted paths: a path no longer persisted leaves the list at once', async () => {
    const p = newPersistence(home);
    await p.setPatterns('s2', ['/workspace/keep', '/workspace/data']);
    await runCall(sbx.driver, p, 's2', 'write', { file_path: '/workspace/data/a.txt', content: 'a\n' });
    await runCall(sbx.driver, p, 's2', 'write', { file_path: '/workspace/keep/w.txt', content: 'w\n' });
    assert.deepEqual((await p.state('s2')).files.map((f) => f.path).sort(), ['/workspace/data/a.txt', '/workspace/keep/w.txt']);
    const state = await p.setPatterns('s2', ['/workspace/keep']);
    assert.deepEqual(state.files.map((f) => f.path), ['/workspace/keep/w.txt']);
    assert.equal(state.totalBytes, 2);
  });

  it('reads a large file slice by slice intact, and refuses a slice once its blob was damaged after a read', async () => {
    const p = newPersistence(home);
    const r = await runCall(sbx.driver, p, 's4', 'bash', { command: 'head -c 20000003 /dev/urandom > big.bin && sha256sum < big.bin | cut -c1-64' });
    const slices: Buffer[] = [];
    let size = Infinity;
    for (let at = 0; at < size; at += 1024 * 1024 - 3) {
      const got = await p.readFile('s4', r.report.generation, '/workspace/big.bin', at, 1024 * 1024 - 3);
      size = got.size;
      slices.push(got.data);
    }
    assert.equal(size, 20000003);
    assert.equal(createHash('sha256').update(Buffer.concat(slices)).digest('hex'), r.outcome.text.trim());
    const blobs = path.join(home, 'sessions', 's4', 'blobs');
    for (const shard of readdirSync(blobs)) for (const b of readdirSync(path.join(blobs, shard))) {
      const file = path.join(blobs, shard, b);
      const fd = openSync(file, 'r+');
      writeSync(fd, Buffer.from('X'), 0, 1, 12_345_678);   // same size, one byte changed far from the slice read next
      closeSync(fd);
    }
    await assert.rejects(() => p.readFile('s4', r.report.generation, '/workspace/big.bin', 0, 10), /damaged/);
  });

  it('refuses to read a blob that was damaged on disk', async () => {
    const p = newPersistence(home);
    const r = await runCall(sbx.driver, p, 's3', 'write', { file_path: '/workspace/x.txt', content: 'intact\n' });
    const blobs = path.join(home, 'sessions', 's3', 'blobs');
    for (const shard of readdirSync(blobs)) for (const b of readdirSync(path.join(blobs, shard))) { rmSync(path.join(blobs, shard, b)); writeFileSync(path.join(blobs, shard, b), 'tampered\n'); }
    await assert.rejects(() => p.readFile('s3', r.report.generation, '/workspace/x.txt', 0, 100), /damaged/);
  });
});
