// The call journal: an append-only JSONL file (`<home>/journal/journal.jsonl`) recording every claimed session and
// every tool call by `tool_use_id`: input (and its sha256), state, timings and the full result text. Invariants:
// - Each state change is one line, written and fsynced before the caller continues (the result of a call is
//   durable before it is posted; a post is recorded after the SDK's POST succeeded). The file itself (strict reading,
//   durable appends, rewrites off the event loop) is journal-file.ts; what of a call is kept is caps.ts.
// - A write that fails (disk full) makes the journal unhealthy: the in-memory state stays the truth, every later
//   append is refused, the worker claims no new work (host/health.ts), and recover() rewrites the file from memory
//   once the disk allows it. What that means for a call:
//   - its start cannot be journaled: the call is not run; its result says so (it can never run twice, since it
//     never ran; it is not lost, since the model gets that result);
//   - its result cannot be journaled: the result is still posted from memory (not lost), and the journal keeps
//     saying `running`, durably, until recover() writes the result: if the companion dies first, the call comes back
//     `interrupted` and is answered with INTERRUPTED_TEXT, never run again.
// - The line format and recovery are defined once, in companion/protocol/journal.ts (readers open the file directly
//   while no worker runs). Recovery on open: a torn last line is ignored (and dropped by the next compaction), an
//   unreadable line anywhere else stops the companion with JournalCorrupt (file, line, what to do); a call
//   left `running` by a crash becomes `interrupted` with an explicit error result; it is never run again; a call that
//   only waited for its confirmation is forgotten (it never ran). A call that is `done`/`failed` but not `posted`
//   keeps its result, so the re-dispatched call is answered from the journal.
// - Each session's transcript lives in its own file (transcript.ts); compaction removes those of dropped sessions.
// - Compaction rewrites the file (temp file, fsync, rename, fsync dir) with one line per live session and call,
//   keeping every unposted call and the newest MAX_SESSIONS sessions; after COMPACT_AFTER_RECORDS appends it runs in
//   the background, in chunks, while appends go on.
// Only this module writes the journal; the control API reads it through JournalReader.
import { mkdirSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { SessionSummary, ToolCallState, ToolCallSummary } from '../protocol/control';
import {
  JOURNAL_FILE, type JournalCall, type JournalLine, type JournalSession, blankCall as blankCallAt, blankSession as blankSessionAt,
  JournalLine as JournalLineSchema, callSummaryOf, foldJournal, recoverJournal, sessionSummaryOf,
} from '../protocol/journal';
import type { JournalReader, Page } from './types';
import { TranscriptLog } from './transcript';
import { JournalFile, readJournalText } from './journal-file';
import { capInput, capResult } from './caps';
import { errorMessage, fatal } from '../errors';
import { logger } from '../log';

const log = logger('journal');
export { JOURNAL_FILE, INTERRUPTED_TEXT } from '../protocol/journal';
const COMPACT_AFTER_RECORDS = 2000;
const MAX_SESSIONS = 500;
/** Output kept for calls already posted (the UI only needs a capped copy). */
const POSTED_OUTPUT_KEEP = 64 * 1024;

export type SessionEntry = JournalSession;
export type CallEntry = JournalCall;
type Line = JournalLine;

export function inputDigest(input: unknown): string {
  return createHash('sha256').update(stableJson(input)).digest('hex');
}
function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${stableJson((v as Record<string, unknown>)[k])}`).join(',')}}`;
  return JSON.stringify(v ?? null);
}

/** Results the worker can hand back for a call: finished (done/failed/interrupted) or posted. */
export function hasResult(c: CallEntry): boolean {
  return c.result !== null && (c.state === 'done' || c.state === 'failed' || c.state === 'interrupted' || c.state === 'posted');
}

export class Journal implements JournalReader {
  private readonly sessions = new Map<string, SessionEntry>();
  private readonly calls = new Map<string, CallEntry>();
  private readonly file: JournalFile;
  private appended = 0;

  /** The sessions' transcripts (prompts, agent messages, verdicts, egress decisions), one file per session. */
  readonly transcripts: TranscriptLog;

  private constructor(readonly dir: string) {
    this.file = new JournalFile(path.join(dir, JOURNAL_FILE));
    this.transcripts = new TranscriptLog(dir);
  }

  /** Opens (creating) the journal under `dir`, recovering state after a crash. */
  static open(dir: string): Journal {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const j = new Journal(dir);
    const recovered = j.load();
    j.file.rewriteSync(j.retainedLines());
    if (recovered.interrupted || recovered.unposted) log.info(`recovered journal: ${recovered.interrupted} interrupted call(s), ${recovered.unposted} result(s) waiting to be posted`);
    return j;
  }

  private load(): { interrupted: number; unposted: number } {
    const { text, torn } = readJournalText(this.file.file, (json) => JournalLineSchema.safeParse(json).success);
    const folded = foldJournal(text);
    if (torn) log.warn('ignored the torn last line of the journal (a write cut off by a crash)');
    const recovered = recoverJournal(folded);
    for (const [id, s] of folded.sessions) this.sessions.set(id, s);
    for (const [id, c] of folded.calls) this.calls.set(id, c);
    return recovered;
  }

  /** False once a write failed (e.g. disk full) until recover() succeeds: the worker claims no work meanwhile. */
  get healthy(): boolean { return this.file.healthy; }
  /** Why the journal cannot be written (null while it can). */
  get problem(): string | null { return this.file.problem; }

  private append(line: Line): void {
    this.file.append(JSON.stringify(line));
    if (++this.appended >= COMPACT_AFTER_RECORDS && !this.file.rewriteInProgress) {
      this.compact().catch((err: unknown) => log.warn(`compaction failed (the journal keeps growing until one succeeds): ${errorMessage(err)}`));
    }
  }

  /** Rewrites the file from memory after a failed write; resolves true once the journal can be written again. */
  async recover(): Promise<boolean> {
    if (this.healthy) return true;
    try { await this.compact(); } catch (err) { log.debug(`the journal cannot be rewritten yet: ${errorMessage(err)}`); }
    return this.healthy;
  }

  // ---- writers -------------------------------------------------------------------------------------------------

  updateSession(sessionId: string, patch: Partial<Omit<SessionEntry, 'sessionId'>>): SessionEntry {
    const now = Date.now();
    const s = { ...(this.sessions.get(sessionId) ?? blankSession(sessionId)), ...patch, updatedAt: now };
    this.sessions.set(sessionId, s);
    this.append({ k: 's', ...s });
    return s;
  }

  getCall(toolUseId: string): CallEntry | undefined { return this.calls.get(toolUseId); }
  getSession(sessionId: string): SessionEntry | undefined { return this.sessions.get(sessionId); }
  hasSession(sessionId: string): boolean { return this.sessions.has(sessionId); }

  callStarted(c: { toolUseId: string; sessionId: string; workId: string; name: string; input: unknown; state?: ToolCallState; ranOn?: CallEntry['ranOn'] }): CallEntry {
    const entry: CallEntry = {
      ...blankCall(c.toolUseId), sessionId: c.sessionId, workId: c.workId, name: c.name, input: capInput(c.input),
      inputSha256: inputDigest(c.input), state: c.state ?? 'running', startedAt: Date.now(), ranOn: c.ranOn ?? null,
    };
    // Only a start that is durable counts: a call whose start could not be journaled is not run (see the header).
    this.append({ k: 'c', ...entry });
    this.calls.set(c.toolUseId, entry);
    return entry;
  }

  callFinished(toolUseId: string, r: { text: string; isError: boolean; exitCode: number | null; state?: ToolCallState; persist?: CallEntry['persist'] }): CallEntry {
    const c = this.mustCall(toolUseId);
    const now = Date.now();
    Object.assign(c, { state: r.state ?? (r.isError ? 'failed' : 'done'), result: capResult(r.text), isError: r.isError, exitCode: r.exitCode, finishedAt: now, durationMs: now - c.startedAt });
    if (r.persist) c.persist = r.persist;
    this.append({ k: 'c', toolUseId, state: c.state, result: c.result, isError: c.isError, exitCode: c.exitCode, finishedAt: c.finishedAt, durationMs: c.durationMs, ...(r.persist ? { persist: r.persist } : {}) });
    return c;
  }

  /** A call that waited for its confirmation when its session's item ended here: it did not run and has no result. */
  callUnconfirmed(toolUseId: string): CallEntry {
    const c = this.mustCall(toolUseId);
    const now = Date.now();
    Object.assign(c, { state: 'interrupted', result: null, isError: true, finishedAt: now, durationMs: now - c.startedAt });
    this.append({ k: 'c', toolUseId, state: c.state, result: null, isError: true, finishedAt: now, durationMs: c.durationMs });
    return c;
  }

  callPosted(toolUseId: string): CallEntry | undefined {
    const c = this.calls.get(toolUseId);
    if (!c || c.state === 'posted') return c;
    c.state = 'posted';
    this.append({ k: 'c', toolUseId, state: 'posted' });
    return c;
  }

  callReplayed(toolUseId: string): void {
    const c = this.mustCall(toolUseId);
    c.replays += 1;
    this.append({ k: 'c', toolUseId, replays: c.replays });
  }

  private mustCall(id: string): CallEntry {
    const c = this.calls.get(id);
    if (!c) throw fatal('journal_unknown_call', `no journal entry for tool call ${id}`);
    return c;
  }

  /** Rewrites the journal with only the live state, in the background (journal-file.ts). */
  compact(): Promise<void> {
    const lines = this.retainedLines();
    return this.file.rewrite(() => lines).then(() => { this.appended = 0; });
  }

  /** Drops what is no longer kept and returns the live state, one line per session and call (serialised lazily). */
  private retainedLines(): Iterable<string> {
    const keepSessions = [...this.sessions.values()].sort((a, b) => b.claimedAt - a.claimedAt).slice(0, MAX_SESSIONS);
    const keepIds = new Set(keepSessions.map((s) => s.sessionId));
    for (const [id, c] of this.calls) {
      if (!keepIds.has(c.sessionId) && c.state === 'posted') this.calls.delete(id);
      else if (c.state === 'posted' && c.result) c.result = capResult(c.result, POSTED_OUTPUT_KEEP);
    }
    for (const id of [...this.sessions.keys()]) if (!keepIds.has(id) && ![...this.calls.values()].some((c) => c.sessionId === id)) this.sessions.delete(id);
    this.transcripts.retain(new Set(this.sessions.keys()));
    const sessions = [...this.sessions.values()];
    const calls = [...this.calls.values()];
    return (function* () {
      for (const s of sessions) yield JSON.stringify({ k: 's', ...s });
      for (const c of calls) yield JSON.stringify({ k: 'c', ...c });
    })();
  }

  close(): void { this.file.close(); }

  // ---- JournalReader -------------------------------------------------------------------------------------------

  sessionSummary(s: SessionEntry): SessionSummary {
    let callCount = 0;
    for (const c of this.calls.values()) if (c.sessionId === s.sessionId) callCount++;
    return sessionSummaryOf(s, callCount);
  }

  callSummary(c: CallEntry): ToolCallSummary { return callSummaryOf(c); }

  listSessions(opts: { limit: number; cursor?: string | null }): Page<SessionSummary> {
    const all = [...this.sessions.values()].sort((a, b) => b.claimedAt - a.claimedAt || b.updatedAt - a.updatedAt);
    return page(all.map((s) => this.sessionSummary(s)), opts);
  }

  listCalls(sessionId: string, opts: { limit: number; cursor?: string | null }): Page<ToolCallSummary> {
    const all = [...this.calls.values()].filter((c) => c.sessionId === sessionId).sort((a, b) => b.startedAt - a.startedAt);
    return page(all.map((c) => this.callSummary(c)), opts);
  }

  callOutput(toolUseId: string): { call: ToolCallSummary; output: string } | null {
    const c = this.calls.get(toolUseId);
    return c ? { call: this.callSummary(c), output: c.result ?? '' } : null;
  }
}

function page<T>(all: T[], opts: { limit: number; cursor?: string | null }): Page<T> {
  const start = opts.cursor ? Math.max(0, Number.parseInt(opts.cursor, 10) || 0) : 0;
  const limit = Math.max(1, Math.min(opts.limit, 1000));
  const items = all.slice(start, start + limit);
  return { items, nextCursor: start + limit < all.length ? String(start + limit) : null };
}

function blankSession(sessionId: string): SessionEntry { return blankSessionAt(sessionId, Date.now()); }
function blankCall(toolUseId: string): CallEntry { return blankCallAt(toolUseId, Date.now()); }
