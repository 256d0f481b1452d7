// Hashing that keeps the event loop responsive: sha256 over large buffers and files in slices of HASH_SLICE_BYTES,
// yielding between slices (setImmediate), so timers, heartbeats and the control API run while tens of megabytes are
// hashed. A buffer up to one slice is hashed at once (no yield: small files stay as fast as before).
import { createHash } from 'node:crypto';
import { constants as C, promises as fsp } from 'node:fs';

export const HASH_SLICE_BYTES = 1 << 20;

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** sha256 hex of `data`, yielding to the event loop between slices. */
export async function sha256Yielding(data: Buffer): Promise<string> {
  const h = createHash('sha256');
  for (let off = 0; off < data.length; off += HASH_SLICE_BYTES) {
    if (off > 0) await yieldToLoop();
    h.update(data.subarray(off, off + HASH_SLICE_BYTES));
  }
  return h.digest('hex');
}

/** A regular file's content and sha256, read in slices without following a final symlink; null when `file` is not a
 *  regular file (or is gone). */
export async function readRegularFileHashed(file: string): Promise<{ data: Buffer; sha256: string; mtimeMs: number } | null> {
  let handle: fsp.FileHandle;
  try { handle = await fsp.open(file, C.O_RDONLY | C.O_NOFOLLOW); } catch { return null; }
  try {
    const st = await handle.stat();
    if (!st.isFile()) return null;
    const data = Buffer.allocUnsafe(st.size);
    const h = createHash('sha256');
    let off = 0;
    while (off < data.length) {
      const { bytesRead } = await handle.read(data, off, Math.min(HASH_SLICE_BYTES, data.length - off), off);
      if (bytesRead === 0) break;
      h.update(data.subarray(off, off + bytesRead));
      off += bytesRead;
    }
    if (off !== data.length) return null;   // shrank while being read: not what the listing saw
    return { data, sha256: h.digest('hex'), mtimeMs: st.mtimeMs };
  } finally { await handle.close(); }
}
