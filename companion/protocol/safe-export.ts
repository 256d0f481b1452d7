// Export of persisted files to a host directory under the safe-copy rules, for the extension's Export to Workspace…
// (extension/commands/persistCommands.ts asks where and whether to overwrite) and `perimeter persist export`
// (commands/persist.ts). The callers read the files (through the control API or a browse VM) and hand them over in
// chunks; this module decides what may be written and writes it. Invariants:
// - Names are validated before anything is written: every component of a destination path is a plain name (not
//   empty, `.` or `..`, no `/`, NUL or control character, at most 255 bytes); a persisted name that is not is skipped
//   with its reason.
// - No symlink is followed, on either side: persisted symlinks are not exported (reported), every existing directory
//   on the way to a destination must be a real directory (a symlink there stops the export of that file), and files
//   are opened with O_NOFOLLOW.
// - Only regular files are written: a destination that exists as anything else (directory, device, FIFO, socket,
//   symlink) is refused; an existing regular file is replaced only when the caller confirmed overwriting it.
// - Everything stays below the destination root: relative paths come from validated components only.
import { constants as C, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { PersistEntry } from './control';

export interface ExportPlanItem { guestPath: string; relative: string; size: number }
export interface ExportPlan { files: ExportPlanItem[]; skipped: Array<{ guestPath: string; reason: string }> }

/** Why `name` cannot be a file or directory name here, or null when it can. */
export function badName(name: string): string | null {
  if (name === '' || name === '.' || name === '..') return 'not a plain name';
  if (name.includes('/') || name.includes('\0')) return 'contains a slash or NUL';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return 'contains a control character';
  if (Buffer.byteLength(name) > 255) return 'longer than 255 bytes';
  return null;
}

/**
 * What exporting `root` (a guest file or directory of one generation) writes: each regular file at its path relative
 * to root's parent (so exporting /workspace/src gives src/…), others skipped with a reason.
 */
export function planExport(entries: Iterable<PersistEntry>, root: string): ExportPlan {
  const plan: ExportPlan = { files: [], skipped: [] };
  const base = root === '/' ? '/' : path.posix.dirname(root);
  for (const e of entries) {
    if (e.path !== root && !(root === '/' || e.path.startsWith(`${root}/`))) continue;
    if (e.type === 'dir') continue;
    if (e.type === 'symlink') { plan.skipped.push({ guestPath: e.path, reason: `a symlink (→ ${e.target ?? '?'}): not followed` }); continue; }
    const parts = path.posix.relative(base, e.path).split('/');
    const problem = parts.map(badName).find((p) => p !== null);
    if (problem) { plan.skipped.push({ guestPath: e.path, reason: `its name ${problem}` }); continue; }
    plan.files.push({ guestPath: e.path, relative: parts.join('/'), size: e.size });
  }
  plan.files.sort((a, b) => (a.relative < b.relative ? -1 : 1));
  return plan;
}

export class ExportRefused extends Error {
  constructor(message: string) { super(message); this.name = 'ExportRefused'; }
}

/** What is at `file` now: nothing, a regular file, or something an export must not write to. */
export async function destinationState(file: string): Promise<'absent' | 'file' | 'other'> {
  try {
    const st = await fsp.lstat(file);
    return st.isFile() ? 'file' : 'other';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
    throw err;
  }
}

/** Creates the directories of `relative` below `root` (0755), refusing any existing component that is not a real
 *  directory; returns the absolute path of the file. */
async function prepareParents(root: string, relative: string): Promise<string> {
  const parts = relative.split('/');
  for (const part of parts) { const bad = badName(part); if (bad) throw new ExportRefused(`${relative}: a name ${bad}`); }
  let dir = root;
  for (const part of parts.slice(0, -1)) {
    dir = path.join(dir, part);
    try {
      const st = await fsp.lstat(dir);
      if (st.isSymbolicLink()) throw new ExportRefused(`${path.relative(root, dir)} is a symlink: not followed`);
      if (!st.isDirectory()) throw new ExportRefused(`${path.relative(root, dir)} exists and is not a directory`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await fsp.mkdir(dir, { mode: 0o755 });
    }
  }
  return path.join(root, relative);
}

/** The export folder `folder` (relative, validated names) below the workspace folder `base`, created without following
 *  a symlink on the way; returns its absolute path. */
export async function ensureExportRoot(base: string, folder: string): Promise<string> {
  const parts = folder.split('/').filter(Boolean);
  if (parts.length === 0) return base;
  // The directories of a file placed in the folder are the folder's own components, checked and created one by one.
  return path.dirname(await prepareParents(base, [...parts, 'placeholder'].join('/')));
}

/**
 * Writes one file at `relative` below `root` from `chunks`. `overwrite`: replace an existing regular file (the user
 * confirmed it); otherwise an existing file is refused. The root itself must be a real directory.
 */
export async function writeExported(root: string, relative: string, chunks: AsyncIterable<Uint8Array>, overwrite: boolean): Promise<void> {
  const rootSt = await fsp.lstat(root);
  if (!rootSt.isDirectory()) throw new ExportRefused(`${root} is not a directory`);
  const file = await prepareParents(root, relative);
  const state = await destinationState(file);
  if (state === 'other') throw new ExportRefused(`${relative} exists and is not a regular file (not replaced)`);
  if (state === 'file' && !overwrite) throw new ExportRefused(`${relative} exists (not replaced)`);
  // O_NONBLOCK: should a FIFO appear there meanwhile, opening it fails instead of waiting for a reader.
  const flags = C.O_WRONLY | C.O_CREAT | C.O_NOFOLLOW | C.O_NONBLOCK | (state === 'file' ? C.O_TRUNC : C.O_EXCL);
  const h = await fsp.open(file, flags, 0o644);
  try {
    if (!(await h.stat()).isFile()) throw new ExportRefused(`${relative} is not a regular file (not replaced)`);
    for await (const chunk of chunks) await h.write(chunk);
  } finally { await h.close(); }
}
