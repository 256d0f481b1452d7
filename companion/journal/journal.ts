// The call journal: an append-only JSONL file (`<home>/journal/journal.jsonl`) recording every claimed session and
// every tool call by `tool_use_id`: input (and its sha256), state, timings and the full result text. Invariants:
// - Each state change is one line, written and fsynced before the caller continues (the result of a call is
//   durable before it is posted; a post is recorded after the SDK's POST succeeded).
// - The line format and recovery are defined once, in companion/protocol/journal.ts (readers open the file directly
//   while no worker runs). Recovery on open: a torn last line is ignored (and dropped by the next compaction); a call
//   left `running` by a crash becomes `interrupted` with an explicit error result; it is never run again; a call that
//   only waited for its confirmation is forgotten (it never ran). A call that is `done`/`failed` but not `posted`
//   keeps its result, so the re-dispatched call is answered from the journal.
// - Each session's transcript lives in its own file (transcript.ts); compaction removes those of dropped sessions.
// - Compaction rewrites the file (temp file, fsync, rename, fsync dir) with one line per live session and call,
//   keeping every unposted call and the newest MAX_SESSIONS sessions.
// Only this module writes the journal; the control API reads it through JournalReader.
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { SessionSummary, ToolCallState, ToolCallSummary } from '../protocol/control';
import {
  JOURNAL_FILE, type JournalCall, type JournalLine, type JournalSession, blankCall as blankCallAt, blankSession as blankSessionAt,
  callSummaryOf, foldJournal, recoverJournal, sessionSummaryOf,
} from '../protocol/journal';
import type { JournalReader, Page } from './types';
import { TranscriptLog } from './transcript';
import { fatal } from '../errors';
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
  private fd: number;
  private appended = 0;
  private readonly file: string;
  /** False once a write failed (e.g. disk full): the worker stops claiming work it cannot journal. */
  healthy = true;

  /** The sessions' transcripts (prompts, agent messages, verdicts, egress decisions), one file per session. */
  readonly transcripts: TranscriptLog;

  private constructor(readonly dir: string) {
    this.file = path.join(dir, JOURNAL_FILE);
    this.fd = -1;
    this.transcripts = new TranscriptLog(dir);
  }

  /** Opens (creating) the journal under `dir`, recovering state after a crash. */
  static open(dir: string): Journal {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const j = new Journal(dir);
    const recovered = j.load();
    j.compact();
    if (recovered.interrupted || recovered.unposted) log.info(`recovered journal: ${recovered.interrupted} interrupted call(s), ${recovered.unposted} result(s) waiting to be posted`);
    return j;
  }

  private load(): { interrupted: number; unposted: number } {
    const folded = foldJournal(existsSync(this.file) ? readFileSync(this.file, 'utf8') : '');
    if (folded.unreadable) log.warn(`ignored ${folded.unreadable} unreadable journal line(s) (torn write)`);
    const recovered = recoverJournal(folded);
    for (const [id, s] of folded.sessions) this.sessions.set(id, s);
    for (const [id, c] of folded.calls) this.calls.set(id, c);
    return recovered;
  }

  private append(line: Line): void {
    if (this.fd < 0) this.fd = openSync(this.file, 'a', 0o600);
    try {
      writeSync(this.fd, `${JSON.stringify(line)}\n`);
      fsyncSync(this.fd);
    } catch (err) {
      this.healthy = false;
      throw fatal('journal_write_failed', `cannot write the journal (${this.file}): ${(err as Error).message}`, err);
    }
    if (++this.appended >= COMPACT_AFTER_RECORDS) this.compact();
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

  callStarted(c: { toolUseId: string; sessionId: string; workId: string; name: string; input: unknown; state?: ToolCallState; ranOn?: CallEntry['ranOn'] }): CallEntry {
    const entry: CallEntry = {
      ...blankCall(c.toolUseId), sessionId: c.sessionId, workId: c.workId, name: c.name, input: c.input,
      inputSha256: inputDigest(c.input), state: c.state ?? 'running', startedAt: Date.now(), ranOn: c.ranOn ?? null,
    };
    this.calls.set(c.toolUseId, entry);
    this.append({ k: 'c', ...entry });
    return entry;
  }

  callFinished(toolUseId: string, r: { text: string; isError: boolean; exitCode: number | null; state?: ToolCallState; persist?: CallEntry['persist'] }): CallEntry {
    const c = this.mustCall(toolUseId);
    const now = Date.now();
    Object.assign(c, { state: r.state ?? (r.isError ? 'failed' : 'done'), result: r.text, isError: r.isError, exitCode: r.exitCode, finishedAt: now, durationMs: now - c.startedAt });
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

  /** Rewrites the journal with only the live state (atomic rename). */
  compact(): void {
    const keepSessions = [...this.sessions.values()].sort((a, b) => b.claimedAt - a.claimedAt).slice(0, MAX_SESSIONS);
    const keepIds = new Set(keepSessions.map((s) => s.sessionId));
    for (const [id, c] of this.calls) {
      if (!keepIds.has(c.sessionId) && c.state === 'posted') this.calls.delete(id);
      else if (c.state === 'posted' && c.result && c.result.length > POSTED_OUTPUT_KEEP) c.result = `${c.result.slice(0, POSTED_OUTPUT_KEEP)}\n[journal copy truncated]`;
    }
    for (const id of [...this.sessions.keys()]) if (!keepIds.has(id) && ![...this.calls.values()].some((c) => c.sessionId === id)) this.sessions.delete(id);
    this.transcripts.retain(new Set(this.sessions.keys()));
    const lines: string[] = [];
    for (const s of this.sessions.values()) lines.push(JSON.stringify({ k: 's', ...s }));
    for (const c of this.calls.values()) lines.push(JSON.stringify({ k: 'c', ...c }));
    const tmp = `${this.file}.tmp`;
    try {
      const fd = openSync(tmp, 'w', 0o600);
      try { writeSync(fd, lines.length ? `${lines.join('\n')}\n` : ''); fsyncSync(fd); } finally { closeSync(fd); }
      if (this.fd >= 0) { closeSync(this.fd); this.fd = -1; }
      renameSync(tmp, this.file);
      const dfd = openSync(this.dir, 'r');
      try { fsyncSync(dfd); } finally { closeSync(dfd); }
    } catch (err) {
      this.healthy = false;
      throw fatal('journal_write_failed', `cannot compact the journal (${this.file}): ${(err as Error).message}`, err);
    }
    this.appended = 0;
  }

  close(): void {
    if (this.fd >= 0) { closeSync(this.fd); this.fd = -1; }
  }

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
