// The session-disk capability of a sandbox (companion/persist/disk/ drives it; the QEMU driver implements it in
// qemu/session-disk.ts). A template with a session disk restores every VM with a block device on a placeholder of the
// disk's virtual size; `attach` points that device at a session's copy-on-write layers, the guest agent mounts the
// filesystem and places the persisted roots, and at the end of a call `seal` + `quiesce` leave every byte the guest
// wrote in the top layer, which the store then commits as the session's next generation.
// Invariants:
// - Layers are qcow2 files the store created; the sandbox never creates, moves or deletes one. The top layer is the
//   only one the VM may write; every layer below it is opened read-only.
// - A device is attached at most once per sandbox, before the guest mounted anything from it.
// - After `quiesce` resolved, the VM writes nothing more to the top layer: the store may fsync and commit it.
// - A chain is opened with every layer named explicitly (`layerChainNode`, for QEMU and qemu-storage-daemon alike):
//   the chain is the store's, never what a qcow2 header says; image locking is off (the store guarantees one writer
//   per layer and compacts only layers no VM writes); the top layer ignores flush requests (durability comes from
//   the host's fsync at commit).
import type { DiskRoot, DiskUsage } from '../guest/session-disk';

export interface DiskLayers {
  /** The writable layer (empty when attached): everything the guest writes goes here. */
  top: string;
  /** The read-only layers under it, newest first; the last one is the session's base image. */
  backing: readonly string[];
}

export interface SessionDiskPort {
  /** The virtual size of the disk device (a session's layers have exactly this size). */
  readonly bytes: number;
  /** Points the device at `layers`. */
  attach(layers: DiskLayers): Promise<void>;
  /** Mounts the filesystem and places `roots` (read-only: mounted at the agent's private mount point only). */
  mount(roots: readonly string[], opts?: { readOnly?: boolean }): Promise<DiskRoot[]>;
  /** Copies the roots that are not bind mounts back onto the disk, syncs and freezes the filesystem. */
  seal(roots: readonly DiskRoot[]): Promise<DiskUsage>;
  /** Pauses the VM with every write of the guest flushed into the top layer. */
  quiesce(): Promise<void>;
  /** Per-session sandboxes: makes `top` (a new empty layer) the writable layer over the sealed one, which becomes
   *  read-only, resumes the VM and thaws the filesystem. */
  continueOn(top: string): Promise<void>;
  /** Resolves once the sandbox is gone (destroyed, or its VM died). */
  readonly closed: Promise<void>;
}

/** The QEMU block options (blockdev-add / --blockdev) of a layer chain: files[0] is the writable top named `name`,
 *  each next one its read-only backing. */
export function layerChainNode(files: readonly string[], name: string, i = 0): Record<string, unknown> {
  return {
    driver: 'qcow2',
    'node-name': i === 0 ? name : `${name}-b${i}`,
    'read-only': i > 0,
    file: { driver: 'file', filename: files[i], locking: 'off' },
    backing: i + 1 < files.length ? layerChainNode(files, name, i + 1) : null,
    ...(i === 0 ? { cache: { 'no-flush': true } } : {}),
  };
}
