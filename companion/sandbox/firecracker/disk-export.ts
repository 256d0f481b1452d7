// A raw view of a session disk's qcow2 layer chain for Firecracker, whose drives are raw files: one
// qemu-storage-daemon (qsd) per attached chain opens the chain (layerChainNode: the same node options QEMU uses) and
// exports its top node through FUSE onto a regular file in the VM's run directory (inside the jailer's chroot), the
// file Firecracker's drive is pointed at. The store, its generations, commit, rollback and compaction stay the ones
// QEMU uses (companion/persist/disk/); only how a VM reaches the chain differs.
// Invariants:
// - The export exists only while its qsd runs: `stop` (SIGTERM: qsd closes the export and flushes its cached qcow2
//   metadata into the top layer, then exits 0) is the only way to a layer the store may commit; any other end of qsd
//   (killed, crashed, non-zero exit) makes `stop` fail, so such a layer is never committed.
// - No FUSE mount outlives its export: `kill`, and the startup sweep for exports whose companion died, lazily unmount
//   whatever is still mounted at or below the VM's directory (a qsd killed with SIGKILL leaves its mount behind).
// - The export file is given to the VM's user (the jailer's uid) and mounted with allow_other where the companion
//   may (root); nobody else can open it.
// - A jailed Firecracker lives in its own mount namespace (the jailer unshares it, makes every mount a slave, binds
//   the chroot onto itself and pivots into it): an export mounted later reaches it only by propagation, so the jail's
//   root is made a shared mount before the jailer starts (shareForExports), whatever the host's / is.
// - qsd runs with an empty environment and parses only layers the store created; the guest writes raw blocks, never
//   qcow2 metadata (qsd writes that).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { accessSync, chownSync, closeSync, constants, openSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { layerChainNode } from '../session-disk';
import { mountPoints, unmountUnder } from '../qemu/sweep';

const NODE = 'sdisk';
const READY_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 60_000;
/** Firecracker hands the guest at most this many bytes of a drive's id (VIRTIO_BLK_ID_BYTES). */
const VIRTIO_BLK_ID_BYTES = 20;

export class DiskExportError extends Error {
  constructor(message: string) { super(message); this.name = 'DiskExportError'; }
}

export interface RawExportOptions {
  /** The chain, writable top first, read-only backing layers after it (absolute host paths). */
  layers: readonly string[];
  /** The regular file the export is mounted on (created here; must not exist). */
  mountpoint: string;
  /** The VM's user, given the export file (a jailed Firecracker runs as another uid). */
  owner?: { uid: number; gid: number };
  /** Where qsd's pid is recorded for the startup sweep. */
  pidFile: string;
  binary?: string;
}

export class RawExport {
  readonly exited: Promise<number | null>;
  private stderr = '';
  private stopping: Promise<void> | null = null;

  private constructor(readonly mountpoint: string, private readonly proc: ChildProcess, private readonly pidFile: string) {
    this.exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
    proc.stderr?.on('data', (d: Buffer) => { if (this.stderr.length < 4096) this.stderr += d.toString(); });
  }

  /** Starts qsd on `layers` and waits until the export file is mounted. */
  static async start(o: RawExportOptions): Promise<RawExport> {
    closeSync(openSync(o.mountpoint, 'wx', 0o600));
    const blockdev = layerChainNode(o.layers, NODE);
    const exportOpts = { type: 'fuse', id: NODE, 'node-name': NODE, mountpoint: o.mountpoint, writable: true, 'allow-other': 'auto' };
    const proc = spawn(o.binary ?? 'qemu-storage-daemon', ['--blockdev', JSON.stringify(blockdev), '--export', JSON.stringify(exportOpts)],
      { env: {}, stdio: ['ignore', 'ignore', 'pipe'] });
    const exp = new RawExport(o.mountpoint, proc, o.pidFile);
    const failed = new Promise<never>((_, reject) => {
      proc.once('error', (err) => reject(new DiskExportError(`cannot start qemu-storage-daemon: ${err.message}`)));
      void exp.exited.then((code) => reject(new DiskExportError(`qemu-storage-daemon exited (${code}) before its export was ready: ${exp.stderr.trim().slice(0, 500)}`)));
    });
    failed.catch(() => {});
    try {
      if (proc.pid) writeFileSync(o.pidFile, String(proc.pid));
      await Promise.race([exp.mounted(), failed]);
      if (o.owner) chownSync(o.mountpoint, o.owner.uid, o.owner.gid);
    } catch (err) {
      await exp.kill();
      throw err;
    }
    return exp;
  }

  /** The id Firecracker gives the guest for a drive backed by this file (the guest's /sys/block/vdX/serial):
   *  "<st_dev><st_rdev><st_ino>" of the file it opened, cut to 20 bytes. */
  firecrackerDriveId(): string {
    const st = statSync(this.mountpoint, { bigint: true });
    return `${st.dev}${st.rdev}${st.ino}`.slice(0, VIRTIO_BLK_ID_BYTES);
  }

  /** Ends the export cleanly: every write the VM made is in the top layer when this resolves. Fails when qsd did not
   *  exit cleanly (killed, crashed, flush failed). */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM');
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
      const code = await this.exited.finally(() => clearTimeout(timer));
      this.cleanup();
      if (code !== 0) throw new DiskExportError(`qemu-storage-daemon ended with ${code ?? this.proc.signalCode}: ${this.stderr.trim().slice(0, 500)}`);
    })();
    return this.stopping;
  }

  /** Ends the export at once (its layer is discarded): qsd killed, its mount removed. */
  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) { try { this.proc.kill('SIGKILL'); } catch { /* gone */ } }
    if (this.proc.pid) await this.exited;
    this.cleanup();
  }

  private cleanup(): void {
    unmountUnder(this.mountpoint);
    rmSync(this.mountpoint, { force: true });
    rmSync(this.pidFile, { force: true });
  }

  /** Resolves once the FUSE file system is mounted on the export file. */
  private async mounted(): Promise<void> {
    const until = Date.now() + READY_TIMEOUT_MS;
    while (!mountPoints().includes(this.mountpoint)) {
      if (Date.now() > until) throw new DiskExportError(`the export was not mounted within ${READY_TIMEOUT_MS} ms`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

/** Makes `dir` a shared mount (bound onto itself), so that exports mounted in it later propagate into a mount
 *  namespace made from this one meanwhile (the jailer's); `unmountUnder(dir)` undoes it. */
export function shareForExports(dir: string): void {
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };
  execFileSync('mount', ['--bind', dir, dir], { env, stdio: 'ignore', timeout: 10_000 });
  execFileSync('mount', ['--make-shared', dir], { env, stdio: 'ignore', timeout: 10_000 });
}

/** What exports need that this host lacks (qemu-storage-daemon, /dev/fuse, root), or null. */
export function exportMissing(binary = 'qemu-storage-daemon'): string | null {
  try { execFileSync(binary, ['--version'], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, stdio: 'ignore', timeout: 10_000 }); } catch { return `${binary}, which is not installed`; }
  try { accessSync('/dev/fuse', constants.R_OK | constants.W_OK); } catch { return '/dev/fuse, which this companion cannot open'; }
  if (process.getuid?.() !== 0) return 'a root companion (FUSE mounts other users can open, the jailer)';
  return null;
}
