// A memory store of 1 GiB carried into a VM and back never sits in the companion's memory at once: a child process
// (test/persist/fixtures/memory-rss.ts) copies a 1 GiB store in and every file of it back out, and its peak RSS is
// measured by the kernel. The store is written to a tmpfs where this user may mount one (nothing reaches the disk).
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { tempDir } from './helpers';
import { rmSync } from 'node:fs';

const STORE_MIB = 1024;
/** Node, the test loader and two batches of 16 MiB in flight fit well below this; a store held whole cannot. */
const RSS_LIMIT_MIB = 320;

describe('persist: a 1 GiB memory store (companion RSS)', function () {
  this.timeout(300_000);
  let dir: string;
  let mounted = false;
  before(() => {
    dir = tempDir('memory-rss');
    try { execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${STORE_MIB + 256}m`, 'tmpfs', dir], { stdio: 'ignore' }); mounted = true; } catch { /* a plain directory */ }
  });
  after(() => {
    if (mounted) try { execFileSync('umount', ['-l', dir]); } catch { /* gone */ }
    rmSync(dir, { recursive: true, force: true });
  });

  it(`copies ${STORE_MIB} MiB in and back out with a peak RSS under ${RSS_LIMIT_MIB} MiB`, async () => {
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(__dirname, 'fixtures', 'memory-rss.ts'), path.join(dir, 'store'), String(STORE_MIB)],
      { cwd: path.resolve(__dirname, '..', '..'), maxBuffer: 1 << 20 });
    const r = JSON.parse(stdout) as { maxRssMiB: number; placed: number; placedBytes: number; written: number; notes: string[] };
    assert.equal(r.placedBytes, STORE_MIB * 2 ** 20, 'the whole store reached the guest');
    assert.equal(r.written, STORE_MIB / 4, 'every file the guest changed was written back');
    assert.deepEqual(r.notes, []);
    assert.ok(r.maxRssMiB < RSS_LIMIT_MIB, `peak RSS ${r.maxRssMiB.toFixed(0)} MiB`);
  });
});
