// The journal's file format, shared by its writer (companion/journal) and by readers that open the files directly while
// no worker runs (the extension's history view). Two kinds of files under `<home>/journal/`:
// - `journal.jsonl`: one JSON line per state change, `{k:"s", sessionId, …changed fields}` for a session and
//   `{k:"c", toolUseId, …changed fields}` for a tool call; a record is the fold of its lines in file order.
// - `transcripts/<sessionId>.jsonl`: one TranscriptEntry per line (prompts, agent messages, verdicts, egress).
// Invariants: every line is parsed with the zod schemas below (a line that does not parse counts as unreadable and is
// skipped, as a torn last write is); recovery (`recoverJournal`) is the one definition of what a crash leaves: a call
// that was running is `interrupted` with an explicit result, a call that only waited for its confirmation never ran
// and is forgotten, and a session that was being served is `ended`.
import { z } from 'zod';
import {
  CallOutcomeFields, CallPlacement, PersistChange, SessionState, TranscriptEntry,
  type SessionSummary, type ToolCallSummary,
} from './control';

export const JOURNAL_FILE = 'journal.jsonl';
export const TRANSCRIPTS_DIR = 'transcripts';
export const INTERRUPTED_TEXT = 'interrupted: the companion restarted while this call ran; it was not re-run';
const PREVIEW_CHARS = 400;

export const JournalSessionFields = z.object({
  workId: z.string(),
  state: SessionState,
  claimedAt: z.number(),
  updatedAt: z.number(),
  endedAt: z.number().nullable(),
  lastError: z.string().nullable(),
  title: z.string().nullable(),
  /** The worker id that claimed the session's current work item. */
  holder: z.string().optional(),
});
export const JournalCallFields = z.object({
  sessionId: z.string(),
  workId: z.string(),
  name: z.string(),
  input: z.unknown(),
  inputSha256: z.string(),
  ...CallOutcomeFields,
  /** The full result text, as posted (null until the call finished). */
  result: z.string().nullable(),
  /** How often the same call was re-dispatched and answered from the journal. */
  replays: z.number().int().nonnegative(),
  ranOn: CallPlacement.nullable(),
  persist: PersistChange.nullable(),
});

export type JournalSession = z.infer<typeof JournalSessionFields> & { sessionId: string };
export type JournalCall = z.infer<typeof JournalCallFields> & { toolUseId: string };

export const JournalLine = z.discriminatedUnion('k', [
  JournalSessionFields.partial().extend({ k: z.literal('s'), sessionId: z.string().min(1) }),
  JournalCallFields.partial().extend({ k: z.literal('c'), toolUseId: z.string().min(1) }),
]);
export type JournalLine = z.infer<typeof JournalLine>;

export function blankSession(sessionId: string, now: number): JournalSession {
  return { sessionId, workId: '', state: 'claimed', claimedAt: now, updatedAt: now, endedAt: null, lastError: null, title: null };
}
export function blankCall(toolUseId: string, now: number): JournalCall {
  return {
    toolUseId, sessionId: '', workId: '', name: '', input: null, inputSha256: '', state: 'running', startedAt: now, finishedAt: null,
    durationMs: null, exitCode: null, isError: null, result: null, replays: 0, ranOn: null, persist: null,
  };
}

export interface FoldedJournal {
  sessions: Map<string, JournalSession>;
  calls: Map<string, JournalCall>;
  /** Lines that were not JSON or did not match the format (a torn last write). */
  unreadable: number;
}

/** Folds the lines of `journal.jsonl` into records, in file order. */
export function foldJournal(text: string, now: number = Date.now()): FoldedJournal {
  const sessions = new Map<string, JournalSession>();
  const calls = new Map<string, JournalCall>();
  let unreadable = 0;
  for (const raw of text.split('\n')) {
    if (!raw) continue;
    let json: unknown;
    try { json = JSON.parse(raw); } catch { unreadable++; continue; }
    const parsed = JournalLine.safeParse(json);
    if (!parsed.success) { unreadable++; continue; }
    const line = parsed.data;
    if (line.k === 's') {
      const { k: _k, ...fields } = line;
      sessions.set(line.sessionId, { ...(sessions.get(line.sessionId) ?? blankSession(line.sessionId, now)), ...definedOnly(fields) });
    } else {
      const { k: _k, ...fields } = line;
      calls.set(line.toolUseId, { ...(calls.get(line.toolUseId) ?? blankCall(line.toolUseId, now)), ...definedOnly(fields) });
    }
  }
  return { sessions, calls, unreadable };
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * What a companion that stopped (cleanly or not) left, as the next one sees it: running calls are interrupted (never
 * re-run), calls that only waited for a confirmation are forgotten (they never ran; the agent's event history still
 * holds them), and sessions being served are ended. Mutates the records; returns what it changed.
 */
export function recoverJournal(j: FoldedJournal, now: number = Date.now()): { interrupted: number; forgotten: number; unposted: number } {
  let interrupted = 0; let forgotten = 0; let unposted = 0;
  for (const [id, c] of j.calls) {
    if (c.state === 'waiting_confirmation') { j.calls.delete(id); forgotten++; continue; }
    if (c.state === 'running') {
      Object.assign(c, { state: 'interrupted', result: INTERRUPTED_TEXT, isError: true, finishedAt: now, durationMs: now - c.startedAt });
      interrupted++;
    } else if (c.result !== null && c.state !== 'posted' && c.state !== 'denied') unposted++;
  }
  for (const s of j.sessions.values()) {
    if (s.state !== 'ended') Object.assign(s, { state: 'ended', endedAt: s.endedAt ?? now, updatedAt: now, lastError: s.lastError ?? 'the companion stopped while serving this session' });
  }
  return { interrupted, forgotten, unposted };
}

export function sessionSummaryOf(s: JournalSession, callCount: number): SessionSummary {
  return {
    sessionId: s.sessionId, workId: s.workId, state: s.state, claimedAt: s.claimedAt, updatedAt: s.updatedAt, endedAt: s.endedAt,
    callCount, lastError: s.lastError, title: s.title, ...(s.holder ? { holder: s.holder } : {}),
  };
}

export function callSummaryOf(c: JournalCall): ToolCallSummary {
  return {
    toolUseId: c.toolUseId, sessionId: c.sessionId, name: c.name, input: c.input, state: c.state, startedAt: c.startedAt,
    finishedAt: c.finishedAt, durationMs: c.durationMs, exitCode: c.exitCode, isError: c.isError,
    outputPreview: (c.result ?? '').slice(0, PREVIEW_CHARS),
    ...(c.ranOn ? { ranOn: c.ranOn } : {}), ...(c.persist ? { persist: c.persist } : {}),
  };
}

/** The transcript file name of a session, or null for an id that cannot name a file safely. */
export function transcriptFileName(sessionId: string): string | null {
  return /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(sessionId) && !sessionId.includes('..') ? `${sessionId}.jsonl` : null;
}

/** Parses a transcript file; lines that do not parse are skipped. */
export function parseTranscript(text: string): TranscriptEntry[] {
  const out: TranscriptEntry[] = [];
  for (const raw of text.split('\n')) {
    if (!raw) continue;
    try {
      const parsed = TranscriptEntry.safeParse(JSON.parse(raw));
      if (parsed.success) out.push(parsed.data);
    } catch { /* a torn last line */ }
  }
  return out;
}
