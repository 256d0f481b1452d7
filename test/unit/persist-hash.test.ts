// Hashing large data keeps the event loop running (a timer or a heartbeat scheduled meanwhile runs before the hash is
// done) and gives the same digest as hashing at once; reading a store file never follows a symlink.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HASH_SLICE_BYTES, readRegularFileHashed, sha256Yielding } from '../../companion/persist/hash';

describe('persist: hashing off the event loop', () => {
  it('hashes 64 MiB in slices: the event loop runs in between, and the digest is the same', async () => {
    const data = Buffer.alloc(64 * 1024 * 1024);
    for (let i = 0; i < data.length; i += 4096) data[i] = i % 251;
    const ticks: number[] = [];
    const timer = setInterval(() => ticks.push(Date.now()), 0);
    let immediate = false;
    setImmediate(() => { immediate = true; });
    const digest = await sha256Yielding(data).finally(() => clearInterval(timer));
    assert.equal(immediate, true, 'a callback queued after the hash started ran before it finished');
    assert.ok(ticks.length > 0, 'timers ran during the hash');
    assert.equal(digest, createHash('sha256').update(data).digest('hex'));
    assert.equal(await sha256Yielding(Buffer.from('abc')), createHash('sha256').update('abc').digest('hex'));
  });

  it('reads a regular file with its hash in slices; a symlink or a directory is not read', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-hash-'));
    try {
      const data = Buffer.alloc(3 * HASH_SLICE_BYTES + 17, 7);
      writeFileSync(path.join(dir, 'f'), data);
      symlinkSync(path.join(dir, 'f'), path.join(dir, 'link'));
      const read = await readRegularFileHashed(path.join(dir, 'f'));
      assert.ok(read);
      assert.ok(read.data.equals(data));
      assert.equal(read.sha256, createHash('sha256').update(data).digest('hex'));
      assert.equal(await readRegularFileHashed(path.join(dir, 'link')), null);
      assert.equal(await readRegularFileHashed(dir), null);
      assert.equal(await readRegularFileHashed(path.join(dir, 'missing')), null);
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });
});
