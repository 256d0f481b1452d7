// The on-disk store (companion/persist/store.ts): atomic generations, crash leftovers repaired on open, pruning
// of generations and unreferenced blobs, planted symlinks refused (security-and-reliability.md §6.5, F10).
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SessionStore, sha256 } from '../../companion/persist/store';
import type { Manifest, ManifestEntry } from '../../companion/persist/manifest';

function manifest(generation: number, files: Record<string, string>): { m: Manifest; blobs: Array<[string, Buffer]> } {
  const entries = new Map<string, ManifestEntry>();
  const blobs: Array<[string, Buffer]> = [];
  for (const [p, content] of Object.entries(files)) {
    const data = Buffer.from(content);
    entries.set(p, { type: 'file', path: p, size: data.length, mode: 0o644, mtimeMs: 1, sha256: sha256(data) });
    blobs.push([sha256(data), data]);
  }
  return { m: { generation, entries, shell: { cwd: '/workspace', env: { A: '1' } } }, blobs };
}

async function commit(store: SessionStore, generation: number, files: Record<string, string>): Promise<void> {
  const { m, blobs } = manifest(generation, files);
  const txn = await store.begin();
  for (const [h, d] of blobs) await txn.addBlob(h, d);
  await txn.finish(m);
}

function blobCount(dir: string): number {
  const blobs = path.join(dir, 'blobs');
  return readdirSync(blobs).reduce((n, shard) => n + readdirSync(path.join(blobs, shard)).length, 0);
}

describe('persist: session store', () => {
  let sessions: string;
  beforeEach(() => { sessions = path.join(mkdtempSync(path.join(os.tmpdir(), 'perimeter-store-')), 'sessions'); });
  afterEach(() => rmSync(path.dirname(sessions), { recursive: true, force: true }));

  it('commits generations atomically and reads them back in a new process (fresh open)', async () => {
    const store = await SessionStore.open(sessions, 'sesn_a', 3);
    assert.equal((await store.current()).generation, 0);
    await commit(store, 1, { '/workspace/a.txt': 'one' });
    await commit(store, 2, { '/workspace/a.txt': 'two', '/workspace/b.txt': 'one' });
    const reopened = await SessionStore.open(sessions, 'sesn_a', 3);
    const cur = await reopened.current();
    assert.equal(cur.generation, 2);
    assert.deepEqual(cur.shell, { cwd: '/workspace', env: { A: '1' } });
    const a = cur.entries.get('/workspace/a.txt');
    assert.equal(a?.type, 'file');
    assert.equal((await reopened.readBlob((a as { sha256: string }).sha256)).toString(), 'two');
    assert.equal(readFileSync(path.join(sessions, 'sesn_a', 'CURRENT'), 'utf8'), '2\n');
    assert.equal(blobCount(path.join(sessions, 'sesn_a')), 2, 'identical content is stored once');
  });

  it('prunes old generations and the blobs only they referenced', async () => {
    const store = await SessionStore.open(sessions, 'sesn_p', 2);
    for (let g = 1; g <= 5; g++) {
      await commit(store, g, { '/workspace/v.txt': `version ${g}`, '/workspace/same.txt': 'same' });
      await store.prune(2);
    }
    const dir = path.join(sessions, 'sesn_p');
    assert.deepEqual(readdirSync(path.join(dir, 'gens')).sort(), ['gen-4.json', 'gen-5.json']);
    assert.equal(blobCount(dir), 3, 'same.txt + versions 4 and 5');
  });

  it('repairs crash leftovers on open: staging dirs, manifests newer than CURRENT, orphan blobs', async () => {
    const store = await SessionStore.open(sessions, 'sesn_c', 3);
    await commit(store, 1, { '/workspace/a.txt': 'kept' });
    const dir = path.join(sessions, 'sesn_c');
    // A crash after blobs and gen-2 were written but before CURRENT moved:
    const orphan = Buffer.from('never committed');
    mkdirSync(path.join(dir, 'blobs', sha256(orphan).slice(0, 2)), { recursive: true });
    writeFileSync(path.join(dir, 'blobs', sha256(orphan).slice(0, 2), sha256(orphan)), orphan);
    writeFileSync(path.join(dir, 'gens', 'gen-2.json'), '{"half":');
    mkdirSync(path.join(dir, 'staging', 'commit-dead'));
    writeFileSync(path.join(dir, 'staging', 'commit-dead', 'x'), 'partial');
    const reopened = await SessionStore.open(sessions, 'sesn_c', 3);
    assert.equal((await reopened.current()).generation, 1);
    assert.deepEqual(readdirSync(path.join(dir, 'gens')), ['gen-1.json']);
    assert.deepEqual(readdirSync(path.join(dir, 'staging')), []);
    assert.equal(blobCount(dir), 1);
  });

  it('an aborted commit leaves CURRENT and the blob set unchanged', async () => {
    const store = await SessionStore.open(sessions, 'sesn_x', 3);
    await commit(store, 1, { '/workspace/a.txt': 'a' });
    const txn = await store.begin();
    await txn.addBlob(sha256(Buffer.from('b')), Buffer.from('b'));
    await txn.abort();
    assert.equal(blobCount(path.join(sessions, 'sesn_x')), 1);
    assert.equal((await SessionStore.open(sessions, 'sesn_x', 3).then((s) => s.current())).generation, 1);
  });

  it('detects a damaged blob or manifest instead of placing wrong data', async () => {
    const store = await SessionStore.open(sessions, 'sesn_d', 3);
    await commit(store, 1, { '/workspace/a.txt': 'good' });
    const h = sha256(Buffer.from('good'));
    writeFileSync(path.join(sessions, 'sesn_d', 'blobs', h.slice(0, 2), h), 'evil');
    await assert.rejects(store.readBlob(h), /damaged/);
    writeFileSync(path.join(sessions, 'sesn_d', 'gens', 'gen-1.json'), '{"version":1}');
    await assert.rejects(SessionStore.open(sessions, 'sesn_d', 3), /generation 1 is damaged/);
  });

  it('refuses a staging or session directory planted as a symlink (F10); the canary stays empty', async () => {
    const canary = mkdtempSync(path.join(os.tmpdir(), 'perimeter-canary-'));
    try {
      mkdirSync(path.join(sessions, 'sesn_f'), { recursive: true });
      symlinkSync(canary, path.join(sessions, 'sesn_f', 'staging'));
      await assert.rejects(SessionStore.open(sessions, 'sesn_f', 3), /staging is not a directory/);
      symlinkSync(canary, path.join(sessions, 'sesn_g'));
      await assert.rejects(SessionStore.open(sessions, 'sesn_g', 3), /sesn_g is not a directory/);
      assert.deepEqual(readdirSync(canary), []);
    } finally { rmSync(canary, { recursive: true, force: true }); }
  });

  it('refuses session ids that are not one plain directory name', async () => {
    for (const bad of ['../escape', 'a/b', '..', '']) await assert.rejects(SessionStore.open(sessions, bad, 3), /invalid session id/);
    assert.equal(existsSync(path.join(path.dirname(sessions), 'escape')), false);
  });
});
