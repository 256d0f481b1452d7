// Whether a state directory knows a session: its journal recorded it, or it holds a persisted-file store
// (`<home>/sessions/<id>`) or a session disk (`<home>/disks/<id>`) for it. The control API and `perimeter persist`
// answer a question about any other session with an error (SESSION_UNKNOWN / `not_found`), never with an empty store:
// a mistyped id must not look like a session that persisted nothing. Changing the persist list of a session not seen
// yet stays allowed (it prepares that session's list).
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { statePaths } from '../config';
import { fatal, type PerimeterError } from '../errors';
import { readJournalText } from '../journal/journal-file';
import { JOURNAL_FILE, JournalLine } from '../protocol/journal';
import { disksDir } from './disk/store';
import { checkSessionId } from './paths';

export const SESSION_UNKNOWN = 'session_unknown';

export function unknownSessionMessage(sessionId: string): string {
  return `no session ${JSON.stringify(sessionId)}: this companion has not served it and holds no persisted files for it ` +
    '(check the id: the Sessions view lists the sessions it served)';
}

export function unknownSession(sessionId: string): PerimeterError {
  return fatal(SESSION_UNKNOWN, unknownSessionMessage(sessionId));
}

/** A persisted-file store or a session disk exists for the session. */
export async function hasSessionStore(home: string, sessionId: string): Promise<boolean> {
  if (checkSessionId(sessionId)) return false;
  for (const dir of [path.join(statePaths(home).sessions, sessionId), path.join(disksDir(home), sessionId)]) {
    try { await fsp.lstat(dir); return true; } catch { /* not this kind of store */ }
  }
  return false;
}

/** The session is in the journal file (read directly: no companion runs on `home`), or has a store. A damaged
 *  journal is an error (JournalCorrupt), not an unknown session. */
export async function sessionKnownOnDisk(home: string, sessionId: string): Promise<boolean> {
  if (await hasSessionStore(home, sessionId)) return true;
  const { text } = readJournalText(path.join(statePaths(home).journal, JOURNAL_FILE), (json) => JournalLine.safeParse(json).success);
  for (const raw of text.split('\n')) {
    if (!raw.includes(sessionId)) continue;
    try {
      const line = JournalLine.safeParse(JSON.parse(raw));
      if (line.success && line.data.sessionId === sessionId) return true;
    } catch { /* the torn last line */ }
  }
  return false;
}
