// The Firecracker session disk's raw export (companion/sandbox/firecracker/disk-export.ts) under a REAL guest kernel.
// Firecracker cannot run here (no working KVM), so a QEMU microVM of the default template stands in for it, using the
// export the way a Firecracker drive does: its session-disk device is pointed at the export FILE (a plain `file`
// node under the device's raw node; Firecracker opens the file and pread/pwrites it), while the store's qcow2 chain
// stays behind the export in qemu-storage-daemon. The guest agent mounts the session's ext4 through it, writes files
// and seals; the VM is stopped (as Firecracker is paused), the export ended cleanly, the VM killed and the layer
// committed; a second VM mounts the next generation through its own export and finds the files, byte for byte.
// QEMU runs unconfined here: a confined QEMU lives in its own mount namespace, made before the export was mounted
// (the jailer's case, covered in test/unit/firecracker-disk-export.test.ts). Skips (saying why) without VMs, a
// template with a session disk, or what an export needs (root, /dev/fuse, qemu-storage-daemon).
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import path from 'node:path';
import type { QemuDriver, QemuSandbox } from '../../companion/sandbox/qemu/driver';
import { SESSION_DISK_SERIAL } from '../../companion/sandbox/qemu/session-disk';
import { DiskStore, type PendingLayer } from '../../companion/persist/disk/store';
import { RawExport, exportMissing } from '../../companion/sandbox/firecracker/disk-export';
import { mountPoints } from '../../companion/sandbox/qemu/sweep';
import { newDriver, sh, skipWithoutVms, templateDiskBytes, text } from '../vm/helpers';
import { tempDir } from './helpers';

const DISK_BYTES = 256 * 1024 * 1024;

describe('persist: a Firecracker session disk\'s raw export under a real guest kernel (QEMU standing in for Firecracker)', function () {
  let driver: QemuDriver;
  let home: string;
  let store: DiskStore;
  /** Every export a test started (ended after it, whatever it asserted). */
  let started: RawExport[] = [];
  before(function () {
    skipWithoutVms(this);
    const why = !templateDiskBytes() ? 'the template has no session disk (rebuild it: perimeter template build)' : exportMissing();
    if (why) { console.log(`      SKIPPED: ${why}`); this.skip(); }
    driver = newDriver({ poolSize: 0, confinement: 'none' });
  });
  after(async () => { await driver?.close(); });
  beforeEach(async () => {
    home = tempDir('fc-export-vm');
    store = await DiskStore.open(home, 'sesn_fcvm', { bytes: DISK_BYTES, keepGenerations: 3 });
  });
  afterEach(async () => {
    await Promise.all(started.map((e) => e.kill()));
    started = [];
    await store.idle();
    rmSync(home, { recursive: true, force: true });
  });

  /** A VM whose session-disk device reads and writes the raw export of a new layer over CURRENT. */
  async function exportedVm(n: number): Promise<{ sb: QemuSandbox; exp: RawExport; pending: PendingLayer }> {
    const sb = await driver.acquire({ sessionId: 'sesn_fcvm' }) as QemuSandbox;
    let exp: RawExport | null = null;
    try {
      const pending = await store.openLayer(async (layer, backing) => {
        exp = await RawExport.start({ layers: [layer.path, ...backing], mountpoint: path.join(home, `sdisk-${n}.raw`), pidFile: path.join(home, `qsd-${n}.pid`) });
        started.push(exp);
        const q = await sb.vm.qmp();
        await q.cmd('blockdev-add', { driver: 'file', 'node-name': 'fc-export', filename: exp.mountpoint, locking: 'off' });
        await q.cmd('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': 'sdisk', file: 'fc-export' }] });
        await q.cmd('blockdev-del', { 'node-name': 'sdisk-placeholder' });
      });
      return { sb, exp: exp!, pending };
    } catch (err) { await sb.destroy(); await (exp as RawExport | null)?.kill(); throw err; }
  }

  it('files written by the guest through the export are committed and read back through the next generation\'s export', async () => {
    const a = await exportedVm(0);
    const roots = await a.sb.vm.agent.mountDisk(SESSION_DISK_SERIAL, ['/workspace']);
    assert.deepEqual(roots, [{ path: '/workspace', kind: 'bound' }]);
    const write = await sh(a.sb, 'cd /workspace && head -c 20000000 /dev/urandom > big.bin && echo hello > small.txt && sha256sum big.bin small.txt');
    assert.equal(write.exitCode, 0, text(write));
    const usage = await a.sb.vm.agent.sealDisk(roots);
    assert.ok(usage.bytes > 0 && usage.bytes <= DISK_BYTES, `a filesystem of the store's size (${usage.bytes})`);
    await (await a.sb.vm.qmp()).cmd('stop', undefined, 120_000);
    await a.exp.stop();
    assert.ok(!mountPoints().includes(a.exp.mountpoint));
    await a.sb.destroy();
    const gen = await store.commit(a.pending, { shell: null, usage });
    assert.equal(gen.generation, 1);

    const b = await exportedVm(1);
    try {
      const rootsB = await b.sb.vm.agent.mountDisk(SESSION_DISK_SERIAL, ['/workspace']);
      const read = await sh(b.sb, 'cd /workspace && sha256sum big.bin small.txt');
      assert.equal(read.exitCode, 0, text(read));
      assert.equal(text(read), text(write), 'the next generation has the files, byte for byte');
      await b.sb.vm.agent.sealDisk(rootsB);
    } finally {
      await b.sb.destroy();
      await b.exp.kill();
      await store.discard(b.pending);
    }
    assert.deepEqual(mountPoints().filter((m) => m.startsWith(`${home}/`)), []);
  });
});
