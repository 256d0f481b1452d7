// A companion's history read straight from its state directory, for when no worker runs there (stopped, or the
// window is in Restricted Mode and starts nothing): the sessions and calls of `<home>/journal/journal.jsonl` and a
// session's transcript file. Plain Node, no `vscode`. Invariants:
// - Read-only: files are opened for reading only, never created, locked or repaired (a worker that starts later does
//   its own recovery); a missing journal is an empty history.
// - Every line is parsed with the protocol's zod schemas (companion/protocol/journal.ts); lines that do not parse are
//   skipped and counted, and the records are shown as the next worker will see them (`recoverJournal`).
// - Bounded: at most MAX_SESSIONS sessions (newest claim first) and MAX_CALLS_PER_SESSION calls each.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { SessionSummary, ToolCallSummary, TranscriptEntry } from '../../companion/protocol/control';
import {
  JOURNAL_FILE, TRANSCRIPTS_DIR, callSummaryOf, foldJournal, parseTranscript, recoverJournal, sessionSummaryOf, transcriptFileName,
} from '../../companion/protocol/journal';

const MAX_SESSIONS = 200;
const MAX_CALLS_PER_SESSION = 500;

export interface JournalHistory {
  sessions: SessionSummary[];
  /** Calls per session id, newest first. */
  calls: Map<string, ToolCallSummary[]>;
  /** Journal lines that could not be read. */
  unreadable: number;
}

export function journalDir(home: string): string { return path.join(home, 'journal'); }

export async function readJournalHistory(home: string, now: number = Date.now()): Promise<JournalHistory> {
  let text: string;
  try { text = await fsp.readFile(path.join(journalDir(home), JOURNAL_FILE), 'utf8'); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { sessions: [], calls: new Map(), unreadable: 0 };
    throw err;
  }
  const folded = foldJournal(text, now);
  recoverJournal(folded, now);
  const bySession = new Map<string, ToolCallSummary[]>();
  for (const c of folded.calls.values()) {
    const list = bySession.get(c.sessionId) ?? [];
    list.push(callSummaryOf(c));
    bySession.set(c.sessionId, list);
  }
  const sessions = [...folded.sessions.values()]
    .sort((a, b) => b.claimedAt - a.claimedAt)
    .slice(0, MAX_SESSIONS)
    .map((s) => sessionSummaryOf(s, bySession.get(s.sessionId)?.length ?? 0));
  const calls = new Map<string, ToolCallSummary[]>();
  for (const s of sessions) {
    const list = (bySession.get(s.sessionId) ?? []).sort((a, b) => b.startedAt - a.startedAt).slice(0, MAX_CALLS_PER_SESSION);
    calls.set(s.sessionId, list);
  }
  return { sessions, calls, unreadable: folded.unreadable };
}

/** A session's transcript from its file ([] when it has none). */
export async function readTranscriptFile(home: string, sessionId: string): Promise<TranscriptEntry[]> {
  const name = transcriptFileName(sessionId);
  if (!name) return [];
  try { return parseTranscript(await fsp.readFile(path.join(journalDir(home), TRANSCRIPTS_DIR, name), 'utf8')); } catch { return []; }
}
