// The guest agent's session-disk operations ('D' requests; the agent's "session disk" section is authoritative):
// mount the session's ext4 disk and place each persisted root from it, seal it at the end of a call (roots copied
// back, synced, frozen) and thaw it again. Invariants: the guest answers are bounds-checked and validated here
// (kinds, one per root asked for; usage figures consistent), whatever the guest claims.
import { z } from 'zod';
import { BodyReader, BodyWriter, ProtocolError } from './protocol';
import { GuestError } from './types';

/** How a persisted root was placed: a directory of the disk bind-mounted onto its path, a file or symlink copied in
 *  (and back at seal), or nothing yet (copied onto the disk at seal if the call creates it). */
export type DiskRootKind = 'bound' | 'copied' | 'absent';
export interface DiskRoot { path: string; kind: DiskRootKind }

/** The session disk's filesystem when it was sealed. */
export interface DiskUsage { bytes: number; availableBytes: number; inodes: number; freeInodes: number }

export interface SessionDiskGuest {
  /** Mounts the disk with this serial and places `roots` (read-only: mounted only, nothing placed). */
  mountDisk(serial: string, roots: readonly string[], opts?: { readOnly?: boolean }): Promise<DiskRoot[]>;
  /** Copies the non-bound roots back, syncs and freezes the filesystem. */
  sealDisk(roots: readonly DiskRoot[]): Promise<DiskUsage>;
  thawDisk(): Promise<void>;
}

const KINDS: readonly DiskRootKind[] = ['bound', 'copied', 'absent'];
export const DISK_OP = { mount: 1, seal: 2, thaw: 3 } as const;

export function encodeMount(serial: string, roots: readonly string[], readOnly: boolean): Buffer {
  if (roots.length > 256) throw new ProtocolError('at most 256 persisted roots');
  const w = new BodyWriter().u8(DISK_OP.mount).str(serial).u32(readOnly ? 1 : 0).u32(roots.length);
  for (const r of roots) w.str(r);
  return w.finish();
}

export function decodeMount(body: Buffer, roots: readonly string[], readOnly: boolean): DiskRoot[] {
  const r = new BodyReader(body);
  const n = r.u32();
  if (n !== (readOnly ? 0 : roots.length)) throw new ProtocolError(`disk mount placed ${n} roots of ${roots.length}`);
  const out: DiskRoot[] = [];
  for (let i = 0; i < n; i++) {
    const kind = KINDS[r.u8()];
    if (!kind) throw new ProtocolError('unknown disk root kind');
    out.push({ path: roots[i]!, kind });
  }
  r.done();
  return out;
}

export function encodeSeal(roots: readonly DiskRoot[]): Buffer {
  const w = new BodyWriter().u8(DISK_OP.seal).u32(roots.length);
  for (const r of roots) w.str(r.path).u8(KINDS.indexOf(r.kind));
  return w.finish();
}

const Usage = z.object({
  bytes: z.number().int().nonnegative(),
  availableBytes: z.number().int().nonnegative(),
  inodes: z.number().int().nonnegative(),
  freeInodes: z.number().int().nonnegative(),
}).refine((u) => u.availableBytes <= u.bytes && u.freeInodes <= u.inodes, 'more free than total');

/** The usage a seal reports. A filesystem whose superblock the guest overwrote reports sizes that cannot be: that is
 *  a GuestError (EUCLEAN), not a protocol failure. */
export function decodeSeal(body: Buffer): DiskUsage {
  const r = new BodyReader(body);
  const raw = [r.raw(8), r.raw(8), r.raw(8), r.raw(8)].map((b) => b.readBigUInt64BE());
  r.done();
  const usage = raw.every((v) => v <= BigInt(Number.MAX_SAFE_INTEGER))
    ? Usage.safeParse({ bytes: Number(raw[0]), availableBytes: Number(raw[1]), inodes: Number(raw[2]), freeInodes: Number(raw[3]) })
    : null;
  if (!usage?.success) throw new GuestError('EUCLEAN', 'the session disk\'s filesystem reports impossible sizes (its superblock is damaged)');
  return usage.data;
}

export function encodeThaw(): Buffer { return new BodyWriter().u8(DISK_OP.thaw).finish(); }
