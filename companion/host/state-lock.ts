// One companion per state directory. `<home>/companion.lock` names the process that uses the directory (its pid and
// the kernel's start time of that pid, so a pid reused by an unrelated process is not mistaken for the owner).
// Invariants:
// - The lock appears whole or not at all: it is written to a private temp file and hard-linked into place, and
//   link(2) fails when a lock exists (O_EXCL semantics without a half-written lock ever being visible).
// - A lock whose owner is alive makes acquireStateLock fail with `state_dir_in_use`, naming the owner's pid; a lock
//   whose owner is gone (dead pid, reused pid, unreadable content) is stale and taken over. Taking over runs under a
//   second exclusive file (`companion.lock.takeover`), so two companions starting at once cannot both take it; a
//   takeover file left by a process that died is removed.
// - release() removes the lock only while it is still this holder's; the process 'exit' hook releases it too.
// Acquire it before anything touches the directory (the sandbox's start-up sweep kills QEMUs left under <home>/vms).
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, linkSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeSync, constants as C } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { fatal } from '../errors';

export const STATE_LOCK_FILE = 'companion.lock';
const TAKEOVER_STALE_MS = 30_000;
const TAKEOVER_ATTEMPTS = 200;
const TAKEOVER_WAIT_MS = 25;

const LockOwner = z.object({ pid: z.number().int().positive(), start: z.string().nullable(), token: z.string(), since: z.number() });
type LockOwner = z.infer<typeof LockOwner>;

export interface StateLock {
  readonly file: string;
  readonly pid: number;
  /** Removes the lock if it is still ours (idempotent). */
  release(): void;
}

/** The kernel's start time of `pid` (field 22 of /proc/<pid>/stat, clock ticks since boot), or null without /proc. */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch { return null; }
}

/** Whether the process the lock names still runs (the same process: a reused pid has another start time). */
function ownerAlive(owner: LockOwner): boolean {
  try { process.kill(owner.pid, 0); } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const start = processStartTime(owner.pid);
  return owner.start === null || start === null || start === owner.start;
}

function readOwner(file: string): LockOwner | null {
  try { return LockOwner.parse(JSON.parse(readFileSync(file, 'utf8'))); } catch { return null; }
}

/** Creates `file` holding `text`, or returns false when it exists. */
function createWhole(file: string, text: string): boolean {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = openSync(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  try { writeSync(fd, text); fsyncSync(fd); } finally { closeSync(fd); }
  try {
    linkSync(tmp, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally { rmSync(tmp, { force: true }); }
}

function inUse(home: string, owner: LockOwner): Error {
  return fatal('state_dir_in_use',
    `another companion (pid ${owner.pid}, running since ${new Date(owner.since).toISOString()}) is using the state directory ${home}; ` +
    `stop it first (Stop Worker, or kill ${owner.pid}), or give this one its own state directory (--home DIR or PERIMETER_HOME)`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Who holds the state directory's lock right now, as `doctor` reports it; null when no lock exists. */
export function stateLockHolder(home: string): { pid: number; since: number; alive: boolean } | null {
  const owner = readOwner(path.join(home, STATE_LOCK_FILE));
  return owner ? { pid: owner.pid, since: owner.since, alive: ownerAlive(owner) } : null;
}

/** Takes the state directory for this process, or fails naming the companion that has it. */
export async function acquireStateLock(home: string): Promise<StateLock> {
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const file = path.join(home, STATE_LOCK_FILE);
  const takeover = `${file}.takeover`;
  const me: LockOwner = { pid: process.pid, start: processStartTime(process.pid), token: randomBytes(16).toString('hex'), since: Date.now() };
  const text = `${JSON.stringify(me)}\n`;
  for (let attempt = 0; attempt < TAKEOVER_ATTEMPTS; attempt++) {
    if (createWhole(file, text)) return holder(file, me);
    const owner = readOwner(file);
    if (owner && ownerAlive(owner)) throw inUse(home, owner);
    // Stale: replace it, but only under the takeover file, and only if it is still the lock we judged stale.
    if (!createWhole(takeover, text)) {
      const other = readOwner(takeover);
      let age = 0;
      try { age = Date.now() - statSync(takeover).mtimeMs; } catch { continue; }
      if (!other || !ownerAlive(other) || age > TAKEOVER_STALE_MS) rmSync(takeover, { force: true });
      else await sleep(TAKEOVER_WAIT_MS);
      continue;
    }
    try {
      const now = readOwner(file);
      const unchanged = owner === null ? now === null : now?.token === owner.token;
      if (unchanged) {
        rmSync(file, { force: true });
        if (createWhole(file, text)) return holder(file, me);
      }
    } finally {
      if (readOwner(takeover)?.token === me.token) rmSync(takeover, { force: true });
    }
  }
  const owner = readOwner(file);
  if (owner) throw inUse(home, owner);
  throw fatal('state_dir_lock_failed', `cannot take the lock ${file} of the state directory ${home}; remove it if no companion runs there`);
}

function holder(file: string, me: LockOwner): StateLock {
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    process.off('exit', release);
    if (readOwner(file)?.token === me.token) rmSync(file, { force: true });
  };
  process.on('exit', release);
  return { file, pid: me.pid, release };
}
