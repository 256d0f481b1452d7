// The QEMU side of a sandbox's session disk (the capability is described in sandbox/session-disk.ts).
// The template boots with a virtio-blk device on a `raw` node (DEVICE_NODE) whose `file` child is a `null-co`
// placeholder of the disk's virtual size; the guest never opens it before the snapshot (the kernel's partition scan
// reads zeros, which the agent drops from its cache before it mounts). A clone's QEMU is started with the same nodes
// (a snapshot restores only into the same devices); `attach` adds the session's layer chain with one `blockdev-add`
// (layerChainNode) and swaps the raw node's `file` child to it with `blockdev-reopen` (QEMU >= 6.0), then deletes the
// placeholder.
// Invariants:
// - QEMU opens only links to the layers inside the VM's own run directory (what a confined QEMU can see), the top
//   layer owned by the VM's user, the lower ones read-only (and not writable by that user).
// - `quiesce` (QMP `stop`) writes QEMU's cached qcow2 metadata into the top layer before it returns.
import { chownSync, linkSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import type { DiskRoot, DiskUsage } from '../../guest/session-disk';
import { layerChainNode, type DiskLayers, type SessionDiskPort } from '../session-disk';
import type { QemuVm } from './vm';

export const SESSION_DISK_SERIAL = 'perimeter-disk';
const DEVICE_NODE = 'sdisk';
const PLACEHOLDER_NODE = 'sdisk-placeholder';

/** QEMU arguments of the session-disk device (none for a template without one). */
export function sessionDiskArgs(bytes: number | undefined): string[] {
  if (bytes === undefined) return [];
  return [
    '-blockdev', `driver=null-co,node-name=${PLACEHOLDER_NODE},size=${bytes},read-zeroes=on`,
    '-blockdev', `driver=raw,node-name=${DEVICE_NODE},file=${PLACEHOLDER_NODE}`,
    '-device', `virtio-blk-device,drive=${DEVICE_NODE},serial=${SESSION_DISK_SERIAL}`,
  ];
}

export class QemuSessionDisk implements SessionDiskPort {
  readonly closed: Promise<void>;
  private topNode: string | null = null;
  private layers = 0;
  private linked = 0;

  constructor(private readonly vm: QemuVm, readonly bytes: number) {
    this.closed = vm.exited.then(() => undefined);
  }

  async attach(layers: DiskLayers): Promise<void> {
    if (this.topNode) throw new Error('the session disk is already attached');
    const name = this.nextNode();
    const files = [this.reachable(layers.top, true), ...layers.backing.map((f) => this.reachable(f, false))];
    const q = await this.vm.qmp();
    await q.cmd('blockdev-add', layerChainNode(files, name));
    await q.cmd('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': DEVICE_NODE, file: name }] });
    await q.cmd('blockdev-del', { 'node-name': PLACEHOLDER_NODE });
    this.topNode = name;
  }

  mount(roots: readonly string[], opts: { readOnly?: boolean } = {}): Promise<DiskRoot[]> {
    return this.vm.agent.mountDisk(SESSION_DISK_SERIAL, roots, opts);
  }

  seal(roots: readonly DiskRoot[]): Promise<DiskUsage> { return this.vm.agent.sealDisk(roots); }

  async quiesce(): Promise<void> {
    await (await this.vm.qmp()).cmd('stop', undefined, 120_000);
  }

  async continueOn(top: string): Promise<void> {
    if (!this.topNode) throw new Error('the session disk is not attached');
    const name = this.nextNode();
    const q = await this.vm.qmp();
    await q.cmd('blockdev-add', layerChainNode([this.reachable(top, true)], name));
    await q.cmd('blockdev-snapshot', { node: this.topNode, overlay: name });
    this.topNode = name;
    await q.cmd('cont');
    await this.vm.agent.thawDisk();
  }

  private nextNode(): string { return `sdl${this.layers++}`; }

  /** A link to `file` in the VM's run directory (what a confined QEMU can open); the top layer is given to the VM's
   *  user. Where no link can be made (another filesystem), the file itself. */
  private reachable(file: string, writable: boolean): string {
    const owner = statSync(this.vm.dir);
    const dir = path.join(this.vm.dir, 'disk');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const link = path.join(dir, `${this.linked++}-${path.basename(file)}`);
    let target = link;
    try { linkSync(file, link); } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      target = file;
    }
    if (owner.uid !== process.getuid?.()) {
      chownSync(dir, owner.uid, owner.gid);
      if (writable) chownSync(target, owner.uid, owner.gid);
    }
    return target;
  }
}
