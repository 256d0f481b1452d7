// The Firecracker driver's session-disk export (companion/sandbox/firecracker/disk-export.ts), with a REAL
// qemu-storage-daemon and a REAL FUSE mount over the session-disk store's real qcow2 layers (companion/persist/disk/).
// Firecracker itself cannot run here (no working KVM), so what it would do with the export file is done by the host:
// raw reads and writes through the file, as another uid (the jailer's), the way Firecracker's Sync engine reads and
// writes a drive (pread/pwrite on the file it opened). Checked: the chain's content (the base's ext4 superblock) is
// visible through the raw file; a block written through it lands in the call's layer, is committed as the next
// generation, and is read back through that generation's export while the older generation keeps its content; only
// the VM's user can open the file; a qsd killed with SIGKILL can never lead to a commit and leaves no mount once
// cleaned up; the startup sweep ends a dead companion's exports (live or killed) and removes their mounts; an export
// mounted after a jailer-style mount namespace was made (the jailer's own steps, up to its pivot_root) reaches it, and
// its end does too. A real jailer and Firecracker run only on a KVM host.
// Needs root (FUSE mounts with allow_other, setpriv to another uid), /dev/fuse and qemu-storage-daemon: a machine
// without them skips under a title that says so.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, closeSync, readSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DiskStore, type PendingLayer } from '../../companion/persist/disk/store';
import { RawExport, shareForExports } from '../../companion/sandbox/firecracker/disk-export';
import { mountPoints, sweepOrphans, unmountUnder } from '../../companion/sandbox/qemu/sweep';

const JAIL = { uid: 65534, gid: 65534 };
const MiB = 1024 * 1024;
const MARK_AT = 40 * MiB;

function missing(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing';
  if (spawnSync('qemu-storage-daemon', ['--version']).status !== 0) return 'qemu-storage-daemon is not installed';
  if (spawnSync('setpriv', ['--version']).status !== 0) return 'setpriv is not installed';
  return null;
}

/** Runs `dd` as `uid` on the export file (what a jailed Firecracker does to its drive). */
function ddAs(uid: number, args: string[], input?: Buffer): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'dd', 'status=none', ...args], { input });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

function readAt(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try { const b = Buffer.alloc(length); readSync(fd, b, 0, length, offset); return b; } finally { closeSync(fd); }
}

const why = missing();
describe(why ? `firecracker session-disk export: SKIPPED (${why})` : 'firecracker session-disk export (real qemu-storage-daemon FUSE export of the store\'s qcow2 layers)', function () {
  let home: string;
  let vmDir: string;
  let store: DiskStore;
  /** Every export a test started (ended after it, whatever it asserted). */
  let started: RawExport[] = [];
  before(function () { if (why) { console.log(`      SKIPPED: ${why}`); this.skip(); } });
  beforeEach(async () => {
    home = mkdtempSync(path.join(os.tmpdir(), 'fc-export-'));
    vmDir = path.join(home, 'vms', 'fc-test');
    mkdirSync(vmDir, { recursive: true });
    // the jailed Firecracker reaches its chroot (the VM's directory) without searching the directories above it
    for (const d of [home, path.dirname(vmDir), vmDir]) chmodSync(d, 0o755);
    store = await DiskStore.open(home, 'sesn_fc', { bytes: 64 * MiB, keepGenerations: 3 });
  });
  afterEach(async () => {
    await Promise.all(started.map((e) => e.kill()));
    started = [];
    await store.idle();
    unmountUnder(home);
    rmSync(home, { recursive: true, force: true });
  });

  /** A layer over generation `over` (CURRENT when absent), exported as a raw file in the VM's directory. */
  async function exported(n: number, over?: number): Promise<{ pending: PendingLayer; exp: RawExport; file: string }> {
    let exp: RawExport | null = null;
    const file = path.join(vmDir, `sdisk-${n}.raw`);
    const pending = await store.openLayer(async (layer, backing) => {
      exp = await RawExport.start({ layers: [layer.path, ...backing], mountpoint: file, pidFile: path.join(vmDir, `qsd-${n}.pid`), owner: JAIL });
      started.push(exp);
    }, over);
    return { pending, exp: exp!, file };
  }

  it('a block written through the raw file is committed as the next generation and read back through its export', async () => {
    const a = await exported(0);
    assert.ok(mountPoints().includes(a.file), 'the export file is a mount point');
    assert.equal(ddAs(JAIL.uid, [`if=${a.file}`, 'bs=1', 'count=0']).status, 0);
    assert.equal(Number(execFileSync('stat', ['-c', '%s', a.file]).toString()), store.bytes, 'the raw file has the disk\'s virtual size');
    assert.deepEqual(readAt(a.file, 1080, 2), Buffer.from([0x53, 0xef]), 'the base layer\'s ext4 superblock shows through the chain');
    assert.match(a.exp.firecrackerDriveId(), /^\d{1,20}$/);

    // the VM's user writes a block; any other user cannot even open the file
    const mark = Buffer.alloc(4096, 0);
    mark.write('generation one was here');
    const w = ddAs(JAIL.uid, [`of=${a.file}`, 'bs=4096', `seek=${MARK_AT / 4096}`, 'conv=notrunc'], mark);
    assert.equal(w.status, 0, w.stderr);
    const other = ddAs(65533, [`if=${a.file}`, 'bs=1', 'count=1']);
    assert.notEqual(other.status, 0);
    assert.match(other.stderr, /Permission denied/);

    await a.exp.stop();
    assert.ok(!mountPoints().includes(a.file), 'a stopped export leaves no mount');
    const gen = await store.commit(a.pending, { shell: null, usage: null });
    assert.equal(gen.generation, 1);

    const b = await exported(1);
    assert.equal(b.pending.over.generation, 1);
    assert.deepEqual(readAt(b.file, MARK_AT, 4096), mark, 'the next generation\'s export shows the committed block');
    assert.deepEqual(readAt(b.file, 1080, 2), Buffer.from([0x53, 0xef]));
    await b.exp.stop();
    await store.discard(b.pending);

    const old = await exported(2, 0);
    assert.deepEqual(readAt(old.file, MARK_AT, 4096), Buffer.alloc(4096), 'generation 0 keeps its content');
    await old.exp.kill();
    await store.discard(old.pending);
  });

  it('an export mounted after the jail\'s mount namespace was made reaches it (the jail root is shared first), for the jail\'s uid', async () => {
    shareForExports(vmDir);
    // the jailer's steps (its chroot.rs): a new mount namespace, every mount made a slave, the chroot bound onto itself
    const jail = spawn('unshare', ['--mount', '--propagation', 'unchanged', 'sh', '-c', `mount --make-rslave / && mount --rbind ${vmDir} ${vmDir} && echo ready && exec sleep 600`], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => { jail.stdout.once('data', () => resolve()); jail.once('exit', (c) => reject(new Error(`unshare exited ${c}`))); });
      const a = await exported(0);
      const inJail = () => readFileSync(`/proc/${jail.pid}/mountinfo`, 'utf8').includes(` ${a.file} `);
      assert.ok(inJail(), 'the export is mounted in the jail\'s namespace');
      const r = spawnSync('nsenter', ['-t', String(jail.pid), '-m', 'setpriv', '--reuid', String(JAIL.uid), '--regid', String(JAIL.gid), '--clear-groups',
        'dd', `if=${a.file}`, 'bs=1', 'skip=1080', 'count=2', 'status=none']);
      assert.deepEqual(r.stdout, Buffer.from([0x53, 0xef]), r.stderr.toString());
      await a.exp.stop();
      assert.ok(!inJail(), 'the end of the export reaches the jail too');
      await store.discard(a.pending);
    } finally { jail.kill('SIGKILL'); }
  });

  it('a qsd killed with SIGKILL cannot lead to a commit, and leaves no mount once its export is ended', async () => {
    const a = await exported(0);
    writeFileSync(a.file, 'x', { flag: 'r+' });
    const pid = Number(readFileSync(path.join(vmDir, 'qsd-0.pid'), 'utf8'));
    process.kill(pid, 'SIGKILL');
    await a.exp.exited;
    assert.ok(mountPoints().includes(a.file), 'the killed qsd left its FUSE mount behind');
    await assert.rejects(a.exp.stop(), /qemu-storage-daemon ended with SIGKILL/);
    assert.ok(!mountPoints().includes(a.file), 'no stale mount after the export ended');
    assert.ok(!existsSync(a.file));
    rmSync(vmDir, { recursive: true });
    await store.discard(a.pending);
    assert.equal((await store.current()).generation, 0);
  });

  it('the startup sweep ends the exports of a companion that died (a live qsd, a killed one, one in a jail directory) and removes their mounts', async () => {
    writeFileSync(path.join(vmDir, 'owner'), '999999999');
    const killed = await exported(0);
    process.kill(Number(readFileSync(path.join(vmDir, 'qsd-0.pid'), 'utf8')), 'SIGKILL');
    await killed.exp.exited;
    const alive = await exported(1);
    assert.equal(mountPoints().filter((m) => m.startsWith(`${vmDir}/`)).length, 2);
    assert.equal(sweepOrphans(path.join(home, 'vms')), 1, 'the live qsd was killed');
    await alive.exp.exited;
    assert.deepEqual(mountPoints().filter((m) => m.startsWith(`${home}/`)), []);
    assert.ok(!existsSync(vmDir), 'the run directory is removed');

    // a jailed VM's directory: <chroot base>/firecracker/<id>/root, its root made a shared mount
    const jailRoot = path.join(home, 'jail', 'firecracker', 'fc-jailed', 'root');
    mkdirSync(jailRoot, { recursive: true });
    writeFileSync(path.join(jailRoot, 'owner'), '999999999');
    shareForExports(jailRoot);
    vmDir = jailRoot;
    const jailed = await exported(2);
    // a jailed Firecracker's command line names its VM id, not its directory
    const firecracker = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 600000)', 'firecracker', '--id', 'fc-jailed', '--api-sock', '/fc.sock'], { stdio: 'ignore' });
    writeFileSync(path.join(jailRoot, 'firecracker.pid'), String(firecracker.pid));
    const firecrackerGone = new Promise((r) => firecracker.once('exit', r));
    assert.equal(sweepOrphans(path.join(home, 'jail', 'firecracker'), 'root'), 2, 'the jail\'s qsd and Firecracker were killed');
    await Promise.all([jailed.exp.exited, firecrackerGone]);
    assert.deepEqual(mountPoints().filter((m) => m.startsWith(`${home}/`)), [], 'the export and the shared root are unmounted');
    assert.ok(!existsSync(path.dirname(jailRoot)), 'the jail directory is removed');
  });
});
