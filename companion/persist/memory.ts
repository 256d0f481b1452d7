// Memory stores in per-call VMs. The SDK's SessionMemoryStores keeps each store in a host directory in sync with
// Anthropic; this mirror copies that directory into every call's VM (at the store's mount path, e.g.
// /mnt/memory/notes) and writes the guest's changes back into it, so the SDK's next sync uploads them.
// Invariants:
// - This is the one place guest names become host paths: each name passes checkGuestPath, every directory on the
//   way is lstat-checked to be a real directory (never a symlink), files are created with O_EXCL|O_NOFOLLOW under a
//   temporary name, fsynced and renamed into place; only regular files are written, replaced or deleted.
// - The store's marker file never crosses the boundary; read-only stores are never written back.
// - A file the SDK changed on the host during the call is not overwritten (the store wins, as in the SDK).
// - A store is never held in memory whole, however large: copy-in lists the store first and reads (and hashes)
//   one batch of at most BATCH_BYTES at a time; copy-out fetches and writes back one batch at a time. A file larger
//   than MAX_FILE_BYTES (memories are small text files; the service refuses large ones) is not carried either way,
//   and the model is told when it wrote one.
import { constants as C, promises as fsp } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { GuestError, type GuestOps, type PutFile } from '../guest/types';
import { logger } from '../log';
import { Refusals, admitEntry } from './admit';
import { checkGuestPath, isWithin } from './paths';
import { readRegularFileHashed, sha256Yielding } from './hash';
import { materialise } from './materialise';
import type { MemoryMount } from './types';

const log = logger('persist:memory');
/** The SDK's store marker (`.anthropic-memory-store`): stays on the host. */
export const MEMORY_MARKER = '.anthropic-memory-store';
const BATCH_BYTES = 16 * 1024 * 1024;
/** The largest memory-store file carried into or out of a VM. */
export const MAX_FILE_BYTES = BATCH_BYTES;

/** Maps the SDK's memory-store roots (`AgentToolContext.allowedRoots` / `readOnlyRoots`, host paths) to guest mounts:
 *  a store with a `mount_path` keeps that path in the guest; a store the SDK placed under `<workdir>/memory/<name>`
 *  appears at `/mnt/memory/<name>`. Roots that fit neither are left out (logged). */
export function memoryMountsFromRoots(roots: readonly string[], readOnlyRoots: readonly string[], workdir: string): MemoryMount[] {
  const fallback = path.join(workdir, 'memory');
  const out: MemoryMount[] = [];
  for (const hostDir of roots) {
    const rel = path.relative(fallback, hostDir);
    const guestPath = !rel.startsWith('..') && !path.isAbsolute(rel) && rel !== '' && !rel.includes('/') ? `/mnt/memory/${rel}` : hostDir;
    if (checkGuestPath(guestPath) || isWithin(guestPath, workdir)) { log.warn(`memory store root ${JSON.stringify(hostDir)} has no guest mount path; not carried into VMs`); continue; }
    out.push({ guestPath, hostDir, readOnly: readOnlyRoots.includes(hostDir) });
  }
  return out;
}

/** Per-session memory mounts, filled by the worker when the SDK has downloaded a session's stores. */
export class MemoryMountRegistry {
  private readonly bySession = new Map<string, MemoryMount[]>();
  set(sessionId: string, mounts: MemoryMount[]): void { this.bySession.set(sessionId, mounts); }
  delete(sessionId: string): void { this.bySession.delete(sessionId); }
  readonly resolve = (sessionId: string): MemoryMount[] => this.bySession.get(sessionId) ?? [];
}

interface HostFile { rel: string; abs: string; size: number }

export class MemoryMirror {
  private readonly mounts: MemoryMount[];
  /** rel path → sha of what copyIn placed into the guest, per mount (the base of the guest's changes). */
  private readonly placed = new Map<MemoryMount, Map<string, string>>();

  constructor(mounts: MemoryMount[]) {
    this.mounts = mounts.filter((m) => {
      const bad = checkGuestPath(m.guestPath) ?? (path.isAbsolute(m.hostDir) ? null : 'host directory is not absolute');
      if (bad) log.warn(`memory store mount ${JSON.stringify(m.guestPath)} ignored: ${bad}`);
      return !bad;
    });
  }

  covers(guestPath: string): boolean { return this.mounts.some((m) => isWithin(guestPath, m.guestPath)); }

  async copyIn(sandbox: GuestOps): Promise<void> {
    for (const mount of this.mounts) {
      const placed = new Map<string, string>();
      this.placed.set(mount, placed);
      let batch: PutFile[] = [];
      let bytes = 0;
      for (const f of await listHostTree(mount.hostDir)) {
        if (f.size > MAX_FILE_BYTES) { log.warn(`memory store ${mount.hostDir}: ${f.rel} is larger than ${MAX_FILE_BYTES} bytes; not placed in the VM`); continue; }
        if (bytes > 0 && bytes + f.size > BATCH_BYTES) { await sandbox.putFiles(batch, []); batch = []; bytes = 0; }
        const read = await readRegularFileHashed(f.abs);
        if (!read) continue;
        placed.set(f.rel, read.sha256);
        batch.push({ path: `${mount.guestPath}/${f.rel}`, data: read.data, mode: 0o644, mtimeMs: read.mtimeMs });
        bytes += read.data.length;
      }
      if (batch.length > 0) await sandbox.putFiles(batch, []);
      batch = [];
      await materialise(sandbox, [{ dir: mount.guestPath }]);
    }
  }

  /** Writes the guest's changes back to the host directories; returns notes for the model. */
  async copyOut(sandbox: GuestOps, limits: { maxBytes: number; maxFiles: number }): Promise<string[]> {
    const notes: string[] = [];
    for (const mount of this.mounts) {
      if (mount.readOnly) continue;
      const placed = this.placed.get(mount) ?? new Map<string, string>();
      const refusals = new Refusals();
      const st = await sandbox.stat(mount.guestPath);
      if (st && st.type !== 'dir') { refusals.add(mount.guestPath, 'the memory store is no longer a directory; nothing written back'); notes.push(...refusals.notes('Memory store:')); continue; }
      const walked = st ? await sandbox.walk(mount.guestPath, { hash: true, maxEntries: limits.maxFiles + 1, skipNames: [MEMORY_MARKER] }) : { entries: [], truncated: false };
      if (!Array.isArray(walked?.entries)) throw new Error('the guest answered walk with garbage');
      if (walked.truncated || walked.entries.length > limits.maxFiles) {
        notes.push(`Memory store ${mount.guestPath}: more than ${limits.maxFiles} entries; nothing written back.`);
        continue;
      }
      const present = new Map<string, { path: string; sha: string; size: number }>();
      let total = 0;
      for (const raw of walked.entries) {
        const a = admitEntry(raw, mount.guestPath, true);
        if (typeof a === 'string') { refusals.add(raw?.path, a); continue; }
        if (a.type === 'dir') continue;
        if (a.type === 'symlink') { refusals.add(a.path, 'memory stores hold regular files only'); continue; }
        const rel = a.path.slice(mount.guestPath.length + 1);
        if (rel === MEMORY_MARKER) continue;
        if (a.size > MAX_FILE_BYTES) { refusals.add(a.path, `larger than ${MAX_FILE_BYTES} bytes (memories are small text files)`); continue; }
        present.set(rel, { path: a.path, sha: a.sha256!, size: a.size });
        total += a.size;
      }
      if (total > limits.maxBytes) { notes.push(`Memory store ${mount.guestPath}: more than ${limits.maxBytes} bytes; nothing written back.`); continue; }
      const changed = [...present].filter(([rel, f]) => placed.get(rel) !== f.sha);
      for (let i = 0; i < changed.length;) {
        const batch: typeof changed = [];
        let bytes = 0;
        while (i < changed.length && (batch.length === 0 || bytes + changed[i]![1].size <= BATCH_BYTES)) { bytes += changed[i]![1].size; batch.push(changed[i]!); i += 1; }
        let got;
        try { got = await sandbox.getFiles(batch.map(([, f]) => f.path), { maxTotalBytes: bytes }); } catch (err) {
          if (!(err instanceof GuestError)) throw err;
          for (const [, f] of batch) refusals.add(f.path, `could not be copied out (${err.code})`);
          continue;
        }
        for (const [rel, f] of batch) {
          const g = Array.isArray(got) ? got.find((x) => x?.path === f.path) : undefined;
          if (!g || !Buffer.isBuffer(g.data) || g.sha256 !== f.sha || await sha256Yielding(g.data) !== f.sha) { refusals.add(f.path, 'changed while being copied out'); continue; }
          const outcome = await writeBack(mount.hostDir, rel, g.data, placed.get(rel) ?? null);
          if (outcome) refusals.add(f.path, outcome);
        }
      }
      for (const [rel, sha] of placed) {
        if (present.has(rel)) continue;
        const outcome = await deleteBack(mount.hostDir, rel, sha);
        if (outcome) refusals.add(`${mount.guestPath}/${rel}`, outcome);
      }
      notes.push(...refusals.notes(`Memory store ${mount.guestPath}, not saved:`));
    }
    return notes;
  }
}

/** Lists a store directory: regular files only (lstat: never following a symlink), without reading them. */
async function listHostTree(root: string): Promise<HostFile[]> {
  const out: HostFile[] = [];
  let rootSt;
  try { rootSt = await fsp.lstat(root); } catch { return out; }
  if (!rootSt.isDirectory()) { log.warn(`memory store directory ${root} is not a directory; nothing copied in`); return out; }
  const visit = async (dir: string, rel: string): Promise<void> => {
    for (const ent of await fsp.readdir(dir, { withFileTypes: true })) {
      const childRel = rel ? `${rel}/${ent.name}` : ent.name;
      const abs = path.join(dir, ent.name);
      if (!rel && ent.name === MEMORY_MARKER) continue;
      if (checkGuestPath(`/${childRel}`)) continue;
      if (ent.isDirectory()) { await visit(abs, childRel); continue; }
      if (!ent.isFile()) continue;
      const st = await fsp.lstat(abs).catch(() => null);
      if (st?.isFile()) out.push({ rel: childRel, abs, size: st.size });
    }
  };
  await visit(root, '');
  return out;
}

/** The real directory for `rel`'s parent below `root`, created as needed; refuses any non-directory on the way. */
async function parentDir(root: string, rel: string, create: boolean): Promise<string | null> {
  const parts = rel.split('/');
  let dir = root;
  for (const seg of parts.slice(0, -1)) {
    dir = path.join(dir, seg);
    try {
      const st = await fsp.lstat(dir);
      if (!st.isDirectory()) return null;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw err;
      await fsp.mkdir(dir, { mode: 0o700 });
    }
  }
  return dir;
}

async function hostSha(file: string): Promise<string | null | 'not-a-file'> {
  const st = await fsp.lstat(file).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? null : err));
  if (st === null) return null;
  if (st instanceof Error || !st.isFile()) return 'not-a-file';
  return (await readRegularFileHashed(file))?.sha256 ?? 'not-a-file';
}

async function writeBack(root: string, rel: string, data: Buffer, placedSha: string | null): Promise<string | null> {
  const bad = checkGuestPath(`/${rel}`);
  if (bad) return bad;
  const rootSt = await fsp.lstat(root).catch(() => null);
  if (!rootSt?.isDirectory()) return 'the store directory is gone on the host';
  const dir = await parentDir(root, rel, true);
  if (!dir) return 'a parent is not a directory on the host';
  const target = path.join(dir, path.basename(rel));
  const now = await hostSha(target);
  if (now === 'not-a-file') return 'not a regular file on the host';
  if (now !== placedSha) {
    log.warn(`memory store ${root}: ${rel} changed on the host during the call; the store's version wins`);
    return null;
  }
  const tmp = path.join(dir, `.perimeter-tmp-${randomBytes(8).toString('hex')}`);
  const h = await fsp.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  try { await h.writeFile(data); await h.sync(); } finally { await h.close(); }
  await fsp.rename(tmp, target);
  return null;
}

async function deleteBack(root: string, rel: string, placedSha: string): Promise<string | null> {
  const dir = await parentDir(root, rel, false).catch(() => null);
  if (!dir) return null;
  const target = path.join(dir, path.basename(rel));
  const now = await hostSha(target);
  if (now === null) return null;
  if (now === 'not-a-file') return 'not a regular file on the host';
  if (now !== placedSha) { log.warn(`memory store ${root}: ${rel} changed on the host during the call; not deleted`); return null; }
  await fsp.unlink(target);
  return null;
}
