// The root filesystem unpacker against hostile layers, crafted byte by byte (fixtures/tar-craft.ts): the tree writer
// alone on the host (nothing lands outside its directory, whatever the archive says), then the whole jailed
// pipeline (unpack-jail.ts → rootfs.ext4), read back with debugfs: OCI whiteouts and opaque directories, hardlinks,
// owners and setuid bits only inside the image, devices and sparse entries left out, and the limits that stop
// decompression bombs and lying headers.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { applyLayer, TreeWriter, type UnpackLimits } from '../../companion/sandbox/template/unpack';
import { unpackInJail } from '../../companion/sandbox/template/unpack-jail';
import { craftTar, type CraftEntry } from './fixtures/tar-craft';

const LIMITS: UnpackLimits = { maxEntries: 10_000, maxTotalBytes: 64 * 2 ** 20, maxFileBytes: 16 * 2 ** 20 };
const BUILD_UID = 0x70000000 - 1;

function debugfs(image: string, cmd: string): string {
  return execFileSync('debugfs', ['-R', cmd, image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}
const names = (image: string, dir: string) => debugfs(image, `ls -p ${dir}`).split('\n').filter(Boolean)
  .map((l) => l.split('/')[5]!).filter((n) => n && n !== '.' && n !== '..' && n !== 'lost+found').sort();

describe('root filesystem unpacker', function () {
  this.timeout(120_000);
  let dir: string;
  let canary: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-unpack-'));
    canary = mkdtempSync(path.join(os.tmpdir(), 'perimeter-canary-'));
  });
  afterEach(() => { rmSync(dir, { recursive: true, force: true }); rmSync(canary, { recursive: true, force: true }); });

  /** Applies layers with the tree writer directly (no jail): what it writes is all the host sees. */
  async function writeTree(layers: Buffer[]): Promise<TreeWriter> {
    const tree = path.join(dir, 'tree');
    mkdirSync(tree);
    const w = new TreeWriter(tree, LIMITS);
    for (const l of layers) await applyLayer(Readable.from([l]), w, 2 ** 30);
    return w;
  }

  it('never writes outside its tree: "..", absolute names, symlinked parents, links out', async () => {
    const w = await writeTree([craftTar([
      { name: `../../../../../../..${canary}/dotdot`, data: 'x' },
      { name: 'abs', type: 'symlink', link: canary },
      { name: 'abs/through-absolute-symlink', data: 'x' },
      { name: 'rel', type: 'symlink', link: `../../../../../../../..${canary}` },
      { name: 'rel/through-relative-symlink', data: 'x' },
      { name: 'nested/', type: 'dir' },
      { name: 'nested/deeper', type: 'symlink', link: '/' },
      { name: `nested/deeper${canary}/deep`, data: 'x' },
      { name: 'hl', type: 'hardlink', link: '../../../../../../etc/passwd' },
      { name: 'hl2', type: 'hardlink', link: `abs/x` },
      { name: 'inside.txt', data: 'fine' },
    ]), craftTar([{ name: 'abs/second-layer', data: 'x' }])]);
    assert.deepEqual(readdirSync(canary), [], 'nothing reached the canary directory');
    assert.equal(readFileSync(path.join(dir, 'tree', 'inside.txt'), 'utf8'), 'fine');
    const reasons = new Map(w.dropped.map((d) => [d.path, d.reason]));
    assert.match(reasons.get('abs/through-absolute-symlink') ?? '', /parent \/abs is a symlink/);
    assert.match(reasons.get('rel/through-relative-symlink') ?? '', /parent \/rel is a symlink/);
    assert.match(reasons.get('abs/second-layer') ?? '', /parent \/abs is a symlink/);
    assert.match(reasons.get(`nested/deeper${canary}/deep`) ?? '', /parent \/nested\/deeper is a symlink/);
    assert.ok([...reasons.entries()].some(([p, r]) => p.includes('dotdot') && /"\.\."/.test(r)), 'the ".." entry was refused');
    assert.match(reasons.get('hl') ?? '', /hardlink whose target is refused/);
    assert.match(reasons.get('hl2') ?? '', /parent \/abs is a symlink/);
  });

  it('drops devices, FIFOs and sparse entries, and keeps setuid bits and owners off the host tree', async () => {
    const w = await writeTree([craftTar([
      { name: 'dev/', type: 'dir' }, { name: 'dev/sda', type: 'char' }, { name: 'fifo', type: 'fifo' }, { name: 'sparse', type: 'sparse', data: 'x' },
      { name: 'suid', data: '#!/bin/sh\n', mode: 0o4755, uid: 1000, gid: 50 },
    ])]);
    assert.deepEqual(readdirSync(path.join(dir, 'tree')).sort(), ['dev', 'suid']);
    assert.equal(readdirSync(path.join(dir, 'tree', 'dev')).length, 0);
    const st = execFileSync('stat', ['-c', '%a %u', path.join(dir, 'tree', 'suid')], { encoding: 'utf8' }).trim();
    assert.equal(st, `755 ${process.getuid!()}`, 'no setuid bit, the writer\'s own uid on the host');
    assert.deepEqual(w.fixups.get('suid'), { uid: 1000, gid: 50, mode: 0o4755, kind: 'file' });
    assert.equal(w.droppedCount, 3);
  });

  it('builds the image in the jail: whiteouts, opaque directories, hardlinks, owners and setuid bits', async () => {
    const lower = craftTar([
      { name: 'a/', type: 'dir' }, { name: 'a/keep', data: 'kept' }, { name: 'a/gone', data: 'x' },
      { name: 'o/', type: 'dir' }, { name: 'o/old1', data: 'x' }, { name: 'o/old2/', type: 'dir' }, { name: 'o/old2/f', data: 'x' },
      { name: 'h1', data: 'hello' }, { name: 'del', data: 'x' },
      { name: 'usr/bin/su', data: 'su', mode: 0o4755 }, { name: 'var/mail/', type: 'dir', mode: 0o2775, gid: 8 },
      { name: 'home/user/file', data: 'mine', uid: 1000, gid: 1000 }, { name: 'dev/null', type: 'char' },
    ]);
    const upper = craftTar([
      { name: 'o/new', data: 'new' },              // written by this layer before its own opaque marker: it stays
      { name: 'a/.wh.gone' }, { name: 'o/.wh..wh..opq' }, { name: '.wh.del' },
      { name: 'h2', type: 'hardlink', link: 'h1' },
    ]);
    writeFileSync(path.join(dir, 'lower.tar'), lower);
    writeFileSync(path.join(dir, 'upper.tar.gz'), zlib.gzipSync(upper));
    const image = path.join(dir, 'out', 'rootfs.ext4');
    const report = await unpackInJail({
      layers: [{ file: path.join(dir, 'lower.tar') }, { file: path.join(dir, 'upper.tar.gz') }], limits: LIMITS, prepare: true,
      output: image, stageParent: dir, rootBuildUid: BUILD_UID,
    });
    assert.deepEqual(names(image, '/a'), ['keep']);
    assert.deepEqual(names(image, '/o'), ['new']);
    assert.ok(!names(image, '/').includes('del'), 'the whited-out file is gone');
    assert.equal(debugfs(image, 'cat /a/keep'), 'kept');
    assert.match(debugfs(image, 'stat /h2'), /Links: 2/);
    assert.equal(debugfs(image, 'cat /h2'), 'hello');
    assert.match(debugfs(image, 'stat /usr/bin/su'), /Mode:\s+04755/);
    assert.match(debugfs(image, 'stat /var/mail'), /Mode:\s+02775[\s\S]*Group:\s+8/);
    assert.match(debugfs(image, 'stat /home/user/file'), /User:\s+1000\s+Group:\s+1000/);
    assert.match(debugfs(image, 'stat /a/keep'), /User:\s+0\s+Group:\s+0/);
    assert.equal(debugfs(image, 'cat /etc/resolv.conf').split('\n')[0], 'nameserver 127.0.0.1', 'prepared for the sandbox');
    assert.deepEqual(names(image, '/dev'), []);
    assert.equal(report.diffIds.length, 2);
    assert.deepEqual(report.dropped.map((d) => d.path), ['dev/null']);
    assert.deepEqual(readdirSync(dir).sort(), ['lower.tar', 'out', 'upper.tar.gz'], 'no stage directory left behind');
  });

  it('removes a stage directory a killed unpack left behind (and no one else\'s)', async () => {
    const asRoot = process.getuid?.() === 0;
    const parent = asRoot ? '/var/tmp' : dir;
    const stale = mkdtempSync(path.join(parent, asRoot ? 'perimeter-unpack-' : '.unpack-'));
    const recent = mkdtempSync(path.join(parent, asRoot ? 'perimeter-unpack-' : '.unpack-'));
    try {
      mkdirSync(path.join(stale, 'tree'));
      const hoursAgo = new Date(Date.now() - 3 * 3600_000);
      utimesSync(stale, hoursAgo, hoursAgo);
      writeFileSync(path.join(dir, 'small.tar'), craftTar([{ name: 'f', data: 'x' }]));
      await unpackInJail({ layers: [{ file: path.join(dir, 'small.tar') }], limits: LIMITS, prepare: false, output: path.join(dir, 'out', 'rootfs.ext4'), stageParent: dir, rootBuildUid: BUILD_UID });
      assert.equal(existsSync(stale), false, 'the stale stage is gone');
      assert.equal(existsSync(recent), true, 'a stage that may belong to a running unpack stays');
    } finally { rmSync(stale, { recursive: true, force: true }); rmSync(recent, { recursive: true, force: true }); }
  });

  for (const c of [
    { what: 'a decompression bomb (one file)', entries: [{ name: 'zeros', data: Buffer.alloc(48 * 2 ** 20) }], error: /over the 16777216-byte limit per file/ },
    { what: 'a decompression bomb (many files)', entries: Array.from({ length: 6 }, (_, i) => ({ name: `z${i}`, data: Buffer.alloc(12 * 2 ** 20) })), error: /more than 67108864 bytes of files/ },
    { what: 'a header claiming a huge file', entries: [{ name: 'huge', data: 'x', size: 2 ** 40 }], error: /over the 16777216-byte limit per file/ },
    { what: 'too many entries', entries: Array.from({ length: 101 }, (_, i) => ({ name: `f${i}` })), error: /more than 100 entries/, limits: { ...LIMITS, maxEntries: 100 } },
  ] satisfies Array<{ what: string; entries: CraftEntry[]; error: RegExp; limits?: UnpackLimits }>) {
    it(`stops at its limits: ${c.what}`, async () => {
      writeFileSync(path.join(dir, 'bomb.tar.gz'), zlib.gzipSync(craftTar(c.entries)));
      const image = path.join(dir, 'out', 'rootfs.ext4');
      await assert.rejects(unpackInJail({ layers: [{ file: path.join(dir, 'bomb.tar.gz') }], limits: c.limits ?? LIMITS, prepare: false, output: image, stageParent: dir, rootBuildUid: BUILD_UID }), c.error);
      assert.ok(!existsSync(image));
      assert.deepEqual(readdirSync(dir), ['bomb.tar.gz'], 'the stage directory is removed');
    });
  }
});
