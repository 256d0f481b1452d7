// Memory stores in per-call sandboxes: the host directory the SDK syncs is copied into each call's sandbox at the
// store's mount path, and the guest's changes (added, modified, deleted files) come back into it, safely: the
// marker stays on the host, symlinks are refused, read-only stores are never written back, a host-side change made
// during the call wins, and a planted host symlink is never followed.
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { MemoryMountRegistry, memoryMountsFromRoots } from '../../companion/persist/memory';
import type { Sandbox } from '../../companion/sandbox/types';
import { fingerprint, newPersistence, processDriver, runCall, tempDir } from './helpers';

describe('persist: memory stores', function () {
  let home: string;
  let memRoot: string;
  let canary: string;
  let sbx: ReturnType<typeof processDriver>;
  const s = 'sesn_memory';
  beforeEach(() => {
    home = tempDir('persist-mem-home');
    memRoot = tempDir('persist-mem');
    canary = tempDir('persist-mem-canary');
    writeFileSync(path.join(canary, 'c.txt'), 'canary');
    sbx = processDriver();
  });
  afterEach(async () => {
    await sbx.dispose();
    for (const d of [home, memRoot, canary]) rmSync(d, { recursive: true, force: true });
  });

  function store(name: string, files: Record<string, string>): string {
    const dir = path.join(memRoot, name);
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, '.anthropic-memory-store'), 'version 1\nmemstore_1');
    for (const [rel, content] of Object.entries(files)) {
      mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
      writeFileSync(path.join(dir, rel), content);
    }
    return dir;
  }

  it('maps SDK roots to guest mount paths', () => {
    const workdir = '/home/u/.local/state/perimeter/work/sesn-1';
    assert.deepEqual(memoryMountsFromRoots(['/mnt/memory/prefs', `${workdir}/memory/notes`], ['/mnt/memory/prefs'], workdir), [
      { guestPath: '/mnt/memory/prefs', hostDir: '/mnt/memory/prefs', readOnly: true },
      { guestPath: '/mnt/memory/notes', hostDir: `${workdir}/memory/notes`, readOnly: false },
    ]);
  });

  it('files travel into each call and the guest\'s changes come back to the host directory', async () => {
    const dir = store('notes', { 'prefs.md': 'likes tea\n', 'old.md': 'obsolete', 'deep/a.md': 'a' });
    const registry = new MemoryMountRegistry();
    registry.set(s, [{ guestPath: '/mnt/memory/notes', hostDir: dir, readOnly: false }]);
    const p = newPersistence(home, { memoryMounts: registry.resolve });
    const r = await runCall(sbx.driver, p, s, 'bash', {
      command: 'M="${PERIMETER_GUEST_PREFIX:-}/mnt/memory/notes"; cat "$M/prefs.md"; test -e "$M/.anthropic-memory-store" && echo marker-visible; echo "likes coffee" >> "$M/prefs.md"; rm "$M/old.md"; mkdir -p "$M/new"; echo fresh > "$M/new/b.md"; ln -s /etc/passwd "$M/link"',
    });
    assert.equal(r.outcome.text.trim(), 'likes tea');
    assert.match(r.report.notes.join('\n'), /Memory store \/mnt\/memory\/notes, not saved: memory stores hold regular files only: "\/mnt\/memory\/notes\/link"/);
    assert.equal(readFileSync(path.join(dir, 'prefs.md'), 'utf8'), 'likes tea\nlikes coffee\n');
    assert.equal(readFileSync(path.join(dir, 'new/b.md'), 'utf8'), 'fresh\n');
    assert.equal(existsSync(path.join(dir, 'old.md')), false);
    assert.equal(existsSync(path.join(dir, 'link')), false);
    assert.equal(readFileSync(path.join(dir, '.anthropic-memory-store'), 'utf8'), 'version 1\nmemstore_1');
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith('.perimeter-tmp')), []);
    assert.deepEqual((await p.state(s)).files, [], 'memory files are not duplicated into the persisted-file store');
    // The next call sees the host directory as it is now.
    const next = await runCall(sbx.driver, p, s, 'bash', { command: 'cd "${PERIMETER_GUEST_PREFIX:-}/mnt/memory/notes" && find . -type f | sort' });
    assert.equal(next.outcome.text.trim(), './deep/a.md\n./new/b.md\n./prefs.md');
  });

  it('read-only stores are copied in but never written back', async () => {
    const dir = store('ro', { 'rules.md': 'be nice' });
    const before = fingerprint(dir);
    const p = newPersistence(home, { memoryMounts: () => [{ guestPath: '/mnt/memory/ro', hostDir: dir, readOnly: true }] });
    const r = await runCall(sbx.driver, p, s, 'bash', { command: 'M="${PERIMETER_GUEST_PREFIX:-}/mnt/memory/ro"; cat "$M/rules.md"; echo evil > "$M/rules.md"; rm -f "$M/.x"' });
    assert.equal(r.outcome.text.trim(), 'be nice');
    assert.equal(fingerprint(dir), before);
  });

  it('a host change during the call wins; a planted host symlink is never followed', async () => {
    const dir = store('race', { 'a.md': 'v1', 'sub/b.md': 'b' });
    const p = newPersistence(home, { memoryMounts: () => [{ guestPath: '/mnt/memory/race', hostDir: dir, readOnly: false }] });
    const canaryBefore = fingerprint(canary);
    await runCall(sbx.driver, p, s, 'bash', { command: 'M="${PERIMETER_GUEST_PREFIX:-}/mnt/memory/race"; echo guest > "$M/a.md"; echo guest > "$M/sub/b.md"' }, async (_sb: Sandbox) => {
      // While the call runs: the SDK pulls a remote change into a.md, and someone swaps sub/ for a symlink.
      writeFileSync(path.join(dir, 'a.md'), 'remote');
      rmSync(path.join(dir, 'sub'), { recursive: true });
      symlinkSync(canary, path.join(dir, 'sub'));
    });
    assert.equal(readFileSync(path.join(dir, 'a.md'), 'utf8'), 'remote');
    assert.ok(lstatSync(path.join(dir, 'sub')).isSymbolicLink());
    assert.equal(fingerprint(canary), canaryBefore);
  });
});
