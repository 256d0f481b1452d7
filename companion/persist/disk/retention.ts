// Retention of session disks: a session that ended for good (its control plane said `session.status_terminated`, or
// its record at the service says it is archived or terminated: persistence.ts asks for the disks `disksWithoutEnd`
// lists) gets an ENDED marker in its disk directory (<home>/disks/<sessionId>/ENDED, "<epoch ms>\n", written once: the
// first end counts); `collectDisks` deletes the whole directory of every session whose marker is at least
// `retainDays` old (`perimeter persist gc`, and the companion periodically). Invariants:
// - Only directories named by a valid session id with a valid marker are deleted; nothing without a marker is ever
//   collected (a session not known to have ended keeps its disk).
// - A directory disappears atomically: it is renamed to `.gc-*` first and removed after; a `.gc-*` left by a crash is
//   removed by the next collection. Markers and directories are never followed through a symlink.
import { constants as C, promises as fsp } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { checkSessionId } from '../paths';
import { logger } from '../../log';
import { disksDir } from './store';

const log = logger('persist:disk');
const ENDED_FILE = 'ENDED';
const DAY_MS = 24 * 60 * 60 * 1000;
const GC_PREFIX = '.gc-';

/** Records that `sessionId` ended at `endedAt` (epoch ms), when it has a session disk and no earlier end recorded. */
export async function markEnded(home: string, sessionId: string, endedAt: number): Promise<void> {
  if (checkSessionId(sessionId) !== null) return;
  const dir = path.join(disksDir(home), sessionId);
  const st = await fsp.lstat(dir).catch(() => null);
  if (!st?.isDirectory() || await readEnded(dir) !== null) return;
  const tmp = path.join(dir, `.ended-${randomBytes(6).toString('hex')}`);
  const h = await fsp.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  try { await h.writeFile(`${Math.max(0, Math.floor(endedAt))}\n`); await h.sync(); } finally { await h.close(); }
  await fsp.rename(tmp, path.join(dir, ENDED_FILE));
}

/** When the session whose disk directory is `dir` ended, or null (no marker, or one that is not a plain number). */
async function readEnded(dir: string): Promise<number | null> {
  let text: string;
  try {
    const h = await fsp.open(path.join(dir, ENDED_FILE), C.O_RDONLY | C.O_NOFOLLOW);
    try { text = (await h.read(Buffer.alloc(32), 0, 32, 0)).buffer.toString('utf8', 0, 32); } finally { await h.close(); }
  } catch { return null; }
  const m = /^(\d{1,15})\n/.exec(text);
  return m ? Number(m[1]) : null;
}

/** Sessions with a session disk and no recorded end (whose end retention does not know yet). */
export async function disksWithoutEnd(home: string): Promise<string[]> {
  let names: string[];
  try { names = await fsp.readdir(disksDir(home)); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: string[] = [];
  for (const name of names.sort()) {
    if (checkSessionId(name) !== null) continue;
    const dir = path.join(disksDir(home), name);
    if ((await fsp.lstat(dir).catch(() => null))?.isDirectory() && await readEnded(dir) === null) out.push(name);
  }
  return out;
}

export interface CollectReport {
  /** Sessions whose disks were deleted. */
  removed: string[];
  /** Sessions that ended but are kept until their retention has passed. */
  retained: string[];
}

/** Deletes the disks of every session that ended at least `retainDays` before `now`. */
export async function collectDisks(home: string, o: { retainDays: number; now?: number }): Promise<CollectReport> {
  const root = disksDir(home);
  const now = o.now ?? Date.now();
  const report: CollectReport = { removed: [], retained: [] };
  let names: string[];
  try { names = await fsp.readdir(root); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return report;
    throw err;
  }
  for (const name of names.sort()) {
    const dir = path.join(root, name);
    if (name.startsWith(GC_PREFIX)) { await fsp.rm(dir, { recursive: true, force: true }); continue; }
    if (checkSessionId(name) !== null || !(await fsp.lstat(dir)).isDirectory()) continue;
    const ended = await readEnded(dir);
    if (ended === null) continue;
    if (now - ended < o.retainDays * DAY_MS) { report.retained.push(name); continue; }
    const doomed = path.join(root, `${GC_PREFIX}${name}-${randomBytes(6).toString('hex')}`);
    await fsp.rename(dir, doomed);
    await fsp.rm(doomed, { recursive: true, force: true });
    log.info(`session ${name}: its session disk was deleted (ended ${new Date(ended).toISOString()}, kept ${o.retainDays} day(s))`);
    report.removed.push(name);
  }
  return report;
}
