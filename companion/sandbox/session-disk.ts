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
