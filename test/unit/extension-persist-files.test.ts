// Persisted files as files, without VS Code: the `perimeter-persist:` addresses, a generation's directory tree as the
// FileSystemProvider lists it (implied directories, symlinks as data), reading through the control API in chunks
// with a size cap, and Export to Workspace's safe-copy rules on a real directory (names validated, no symlink
// followed on either side, nothing but regular files written, an existing file replaced only when confirmed).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PersistEntry } from '../../companion/protocol/control';
import { parsePersistUriPath, persistUriPath } from '../../extension/persist/persistUri';
import { GenerationIndex, PersistSource, PersistTooLarge, type PersistApi } from '../../extension/persist/persistSource';
import { ExportRefused, badName, ensureExportRoot, planExport, writeExported } from '../../companion/protocol/safe-export';

const file = (p: string, size = 3): PersistEntry => ({ path: p, type: 'file', size, mode: 0o644, mtimeMs: 1, sha256: 'a'.repeat(64), target: null });
const link = (p: string, target: string): PersistEntry => ({ path: p, type: 'symlink', size: 0, mode: 0o777, mtimeMs: 1, sha256: null, target });
async function* chunksOf(...parts: string[]) { for (const p of parts) yield Buffer.from(p); }

describe('persisted files as files', () => {
  it('round-trips addresses and refuses anything else', () => {
    const ref = { hostId: 'ssh:dev@box', sessionId: 'sesn_01', generation: 4, guestPath: '/workspace/src/a b.txt' };
    assert.deepEqual(parsePersistUriPath(persistUriPath(ref)), ref);
    assert.deepEqual(parsePersistUriPath('/local/s/3'), { hostId: 'local', sessionId: 's', generation: 3, guestPath: '/' });
    for (const bad of ['/local/s/x/a', '/local/s/3/a/../b', '/local/s/3//a', '/local/s/3/./a', '/local/s', '/local/s/3/a/']) assert.equal(parsePersistUriPath(bad), null, bad);
  });

  it('lists a generation as a tree with implied directories; symlinks stay data', () => {
    const index = new GenerationIndex();
    for (const e of [file('/workspace/src/a.ts'), file('/workspace/README'), link('/workspace/ln', '/etc/passwd')]) index.add(e);
    assert.deepEqual([...index.children.get('/')!], [['workspace', 'dir']]);
    assert.deepEqual([...index.children.get('/workspace')!].sort(), [['README', 'file'], ['ln', 'symlink'], ['src', 'dir']]);
    assert.equal(index.lookup('/workspace/src')?.type, 'dir');
    assert.equal(index.lookup('/workspace/nope'), undefined);
  });

  it('reads a file through the control API in chunks and refuses one above the cap', async () => {
    const content = Buffer.from('x'.repeat(2500));
    const requests: string[] = [];
    const api = {
      request: async (method: string, params: { offset?: number; length?: number; cursor?: string | null }) => {
        requests.push(method);
        if (method === 'listPersistFiles') return { sessionId: 's', generation: 1, items: [file('/workspace/big', content.length)], nextCursor: null };
        const off = params.offset ?? 0;
        const data = content.subarray(off, off + 1000);
        return { size: content.length, offset: off, data: data.toString('base64'), eof: off + data.length >= content.length };
      },
    } as unknown as PersistApi;
    const source = new PersistSource(() => api);
    const parts: number[] = [];
    for await (const c of source.chunks('local', 's', 1, '/workspace/big')) parts.push(c.length);
    assert.deepEqual(parts, [1000, 1000, 500]);
    assert.equal(Buffer.from(await source.read('local', 's', 1, '/workspace/big', 4096)).toString(), content.toString());
    await assert.rejects(source.read('local', 's', 1, '/workspace/big', 2000), PersistTooLarge);
    assert.equal(requests.filter((m) => m === 'listPersistFiles').length, 1, 'a generation is listed once');
    assert.throws(() => new PersistSource(() => null).api('ssh:box'), /not connected/);
  });

  describe('Export to Workspace (safe copy)', () => {
    let ws: string;
    beforeEach(() => { ws = mkdtempSync(path.join(os.tmpdir(), 'perimeter-export-')); });
    afterEach(() => rmSync(ws, { recursive: true, force: true }));

    it('plans regular files below the chosen root and skips symlinks and unsafe names', () => {
      const plan = planExport([file('/workspace/src/a.ts'), file('/workspace/src/\u0007bell'), link('/workspace/src/ln', '/etc'), file('/workspace/other')], '/workspace/src');
      assert.deepEqual(plan.files.map((f) => f.relative), ['src/a.ts']);
      assert.deepEqual(plan.skipped.map((s) => s.guestPath).sort(), ['/workspace/src/\u0007bell', '/workspace/src/ln']);
      assert.deepEqual(planExport([file('/workspace/src/a.ts')], '/workspace/src/a.ts').files.map((f) => f.relative), ['a.ts']);
      for (const bad of ['', '.', '..', 'a/b', 'x\u0000', 'y'.repeat(256)]) assert.ok(badName(bad), JSON.stringify(bad));
    });

    it('writes new files, refuses to replace one unless confirmed, and never writes through a symlink', async () => {
      await writeExported(ws, 'out/a.txt', chunksOf('one'), false);
      assert.equal(readFileSync(path.join(ws, 'out/a.txt'), 'utf8'), 'one');
      await assert.rejects(writeExported(ws, 'out/a.txt', chunksOf('two'), false), ExportRefused);
      await writeExported(ws, 'out/a.txt', chunksOf('two'), true);
      assert.equal(readFileSync(path.join(ws, 'out/a.txt'), 'utf8'), 'two');

      const outside = mkdtempSync(path.join(os.tmpdir(), 'perimeter-outside-'));
      try {
        symlinkSync(outside, path.join(ws, 'linked'));
        await assert.rejects(writeExported(ws, 'linked/x.txt', chunksOf('x'), true), /symlink/);
        await assert.rejects(ensureExportRoot(ws, 'linked/deeper'), /symlink/);
        writeFileSync(path.join(outside, 'target'), 'keep');
        symlinkSync(path.join(outside, 'target'), path.join(ws, 'out', 'b.txt'));
        await assert.rejects(writeExported(ws, 'out/b.txt', chunksOf('x'), true), /not a regular file/);
        assert.equal(readFileSync(path.join(outside, 'target'), 'utf8'), 'keep', 'the link target is untouched');
        assert.equal(existsSync(path.join(outside, 'x.txt')), false);
      } finally { rmSync(outside, { recursive: true, force: true }); }

      execFileSync('mkfifo', [path.join(ws, 'out', 'fifo')]);
      await assert.rejects(writeExported(ws, 'out/fifo', chunksOf('x'), true), /not a regular file/);
      mkdirSync(path.join(ws, 'out', 'dir'));
      await assert.rejects(writeExported(ws, 'out/dir', chunksOf('x'), true), /not a regular file/);
      await assert.rejects(writeExported(ws, '../escape.txt', chunksOf('x'), true), /not a plain name/);
      assert.equal(path.join(await ensureExportRoot(ws, 'a/b'), ''), path.join(ws, 'a', 'b'));
    });
  });
});
