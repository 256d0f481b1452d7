// The Firecracker side of a sandbox's session disk (the capability is described in sandbox/session-disk.ts; QEMU's
// side is qemu/session-disk.ts). The template snapshot has a second virtio-blk drive, SESSION_DRIVE, on a sparse
// placeholder file of the disk's virtual size that every VM gets its own copy of; the guest never opens it before the
// snapshot (the kernel's partition scan reads zeros, which the agent drops from its cache before it mounts). `attach`
// exports the session's layer chain as a raw file in the VM's directory (disk-export.ts) and points the drive at it
// with PATCH /drives/{id}: Firecracker reopens the file, rereads its size and sends the guest a config-change
// interrupt; the capacity stays what the guest saw when the store's disk has the template's size (a smaller one only
// shrinks it, beyond the end of its filesystem).
// Invariants:
// - The guest finds the drive by the id Firecracker gives it, derived from the file it opened (see
//   RawExport.firecrackerDriveId); it changes with every export, so it is computed after each PATCH, never stored.
// - `quiesce` pauses the VM, then ends the export cleanly (its qsd flushes into the top layer and exits): only then
//   may the store commit. `continueOn` exports the new chain, points the drive at it while the VM is still paused,
//   resumes it and thaws the filesystem.
// - At most one export per VM, ended (killed, its mount removed) when the VM ends, however it ends: `closed`
//   resolves only after that, so the store never discards a layer a qsd still has open.
import path from 'node:path';
import type { DiskRoot, DiskUsage, SessionDiskGuest } from '../../guest/session-disk';
import type { DiskLayers, SessionDiskPort } from '../session-disk';
import type { FirecrackerApi } from './api';
import { RawExport } from './disk-export';
import { logger } from '../../log';

const log = logger('sandbox:firecracker');

/** The drive id (and the placeholder file, relative to the VM's directory) of the session disk. */
export const SESSION_DRIVE = { id: 'sdisk', placeholder: 'sdisk.raw' } as const;

/** What the session disk needs of a Firecracker VM. */
export interface FirecrackerDiskHost {
  /** The VM's directory on the host (Firecracker's working directory, or its jail's root). */
  readonly dir: string;
  readonly api: FirecrackerApi;
  readonly agent: SessionDiskGuest;
  readonly exited: Promise<void>;
  /** The uid/gid Firecracker runs as when it is not the companion's (jailer). */
  readonly owner?: { uid: number; gid: number };
}

export class FirecrackerSessionDisk implements SessionDiskPort {
  readonly closed: Promise<void>;
  private exp: RawExport | null = null;
  /** The attached chain, top first. */
  private chain: string[] = [];
  private exports = 0;
  private ending: Promise<void> | null = null;

  constructor(private readonly vm: FirecrackerDiskHost, readonly bytes: number) {
    this.closed = vm.exited.then(() => this.end()).catch((err: Error) => log.error(`session disk: ending the export of a VM that is gone failed: ${err.message}`));
  }

  async attach(layers: DiskLayers): Promise<void> {
    if (this.chain.length > 0) throw new Error('the session disk is already attached');
    await this.pointAt([layers.top, ...layers.backing]);
  }

  mount(roots: readonly string[], opts: { readOnly?: boolean } = {}): Promise<DiskRoot[]> {
    return this.vm.agent.mountDisk(this.driveId(), roots, opts);
  }

  seal(roots: readonly DiskRoot[]): Promise<DiskUsage> { return this.vm.agent.sealDisk(roots); }

  async quiesce(): Promise<void> {
    if (!this.exp) throw new Error('the session disk is not attached');
    await this.vm.api.pause();
    await this.exp.stop();
  }

  async continueOn(top: string): Promise<void> {
    if (this.chain.length === 0) throw new Error('the session disk is not attached');
    await this.pointAt([top, ...this.chain]);
    await this.vm.api.resume();
    await this.vm.agent.thawDisk();
  }

  /** Kills the export (if any) and removes its mount; no export is made after this. */
  end(): Promise<void> {
    this.ending ??= (async () => {
      const exp = this.exp;
      this.exp = null;
      await exp?.kill();
    })();
    return this.ending;
  }

  /** The id the guest sees for the drive (its /sys/block/vdX/serial). */
  driveId(): string {
    if (!this.exp) throw new Error('the session disk is not attached');
    return this.exp.firecrackerDriveId();
  }

  /** Exports `chain` and points the drive at it (the previous export, stopped or not, is ended). */
  private async pointAt(chain: string[]): Promise<void> {
    if (this.ending) throw new Error('the sandbox is gone');
    await this.exp?.kill();
    this.exp = null;
    const n = this.exports++;
    const file = `sdisk-${n}.raw`;
    const exp = await RawExport.start({ layers: chain, mountpoint: path.join(this.vm.dir, file), pidFile: path.join(this.vm.dir, `qsd-${n}.pid`), owner: this.vm.owner });
    if (this.ending) { await exp.kill(); throw new Error('the sandbox is gone'); }
    this.exp = exp;
    await this.vm.api.patchDrive({ drive_id: SESSION_DRIVE.id, path_on_host: file });
    this.chain = chain;
  }
}
