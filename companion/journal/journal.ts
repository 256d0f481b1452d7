// The call journal: an append-only JSONL file (`<home>/journal/journal.jsonl`) recording every claimed session and
// every tool call by `tool_use_id`: input (and its sha256), state, timings and the full result text. Invariants:
// - Each state change is one line, written and fsynced before the caller continues (the result of a call is
//   durable before it is posted; a post is recorded after the SDK's POST succeeded).
// - Recovery on open: a torn last line is ignored (and dropped by the next compaction); a call left `running` by a
//   crash becomes `interrupted` with an explicit error result; it is never run again. A call that is `done`/`failed`
//   but not `posted` keeps its result, so the re-dispatched call is answered from the journal.
// - Compaction rewrites the file (temp file, fsync, rename, fsync dir) with one line per live session and call,
//   keeping every unposted call and the newest MAX_SESSIONS sessions.
// Only this module writes the journal; the control API reads it through JournalReader.
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { SessionState, SessionSummary, ToolCallState, ToolCallSummary } from '../protocol/control';
import type { JournalReader, Page } from './types';
import { fatal } from '../errors';
import { logger } from '../log';

const log = logger('journal');
export const JOURNAL_FILE = 'journal.jsonl';
const COMPACT_AFTER_RECORDS = 2000;
const MAX_SESSIONS = 500;
const PREVIEW_CHARS = 400;
/** Output kept for calls already posted (the UI only needs a capped copy). */
const POSTED_OUTPUT_KEEP = 64 * 1024;
export const INTERRUPTED_TEXT = 'interrupted: the companion restarted while this call ran; it was not re-run';

export interface SessionEntry {
  sessionId: string;
  workId: string;
  state: SessionState;
  claimedAt: number;
  updatedAt: number;
  endedAt: number | null;
  lastError: string | null;
  /** The worker id that claimed the session's current work item. */
  holder?: string;
}

export interface CallEntry {
  toolUseId: string;
  sessionId: string;
  workId: string;
  name: string;
  input: unknown;
  inputSha256: string;
  state: ToolCallState;
  startedAt: number;
  finishedAt: number | null;
  durationMs: number | null;
  exitCode: number | null;
  isError: boolean | null;
  /** The full result text, as posted (null until the call finished). */
  result: string | null;
  /** How often the same call was re-dispatched and answered from the journal. */
  replays: number;
}

type Line = ({ k: 's' } & Partial<SessionEntry> & { sessionId: string }) | ({ k: 'c' } & Partial<CallEntry> & { toolUseId: string });

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

  private constructor(readonly dir: string) {
    this.file = path.join(dir, JOURNAL_FILE);
    this.fd = -1;
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
    if (existsSync(this.file)) {
      const text = readFileSync(this.file, 'utf8');
      let torn = 0;
      for (const raw of text.split('\n')) {
        if (!raw) continue;
        let line: Line;
        try { line = JSON.parse(raw) as Line; } catch { torn++; continue; }
        if (line.k === 's' && typeof line.sessionId === 'string') {
          const { k: _k, ...rest } = line;
          this.sessions.set(line.sessionId, { ...(this.sessions.get(line.sessionId) ?? blankSession(line.sessionId)), ...rest });
        } else if (line.k === 'c' && typeof line.toolUseId === 'string') {
          const { k: _k, ...rest } = line;
          const prev = this.calls.get(line.toolUseId);
          this.calls.set(line.toolUseId, { ...(prev ?? blankCall(line.toolUseId)), ...rest });
        }
      }
      if (torn) log.warn(`ignored ${torn} unreadable journal line(s) (torn write)`);
    }
    let interrupted = 0;
    let unposted = 0;
    const now = Date.now();
    for (const c of this.calls.values()) {
      if (c.state === 'running' || c.state === 'waiting_confirmation') {
        Object.assign(c, { state: 'interrupted', result: INTERRUPTED_TEXT, isError: true, finishedAt: now, durationMs: now - c.startedAt });
        interrupted++;
      } else if (hasResult(c) && c.state !== 'posted') unposted++;
    }
    for (const s of this.sessions.values()) {
      if (s.state !== 'ended') Object.assign(s, { state: 'ended', endedAt: s.endedAt ?? now, updatedAt: now, lastError: s.lastError ?? 'the companion stopped while serving this session' });
    }
    return { interrupted, unposted };
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

  callStarted(c: { toolUseId: string; sessionId: string; workId: string; name: string; input: unknown; state?: ToolCallState }): CallEntry {
    const entry: CallEntry = {
      ...blankCall(c.toolUseId), sessionId: c.sessionId, workId: c.workId, name: c.name, input: c.input,
      inputSha256: inputDigest(c.input), state: c.state ?? 'running', startedAt: Date.now(),
    };
    this.calls.set(c.toolUseId, entry);
    this.append({ k: 'c', ...entry });
    return entry;
  }

  callFinished(toolUseId: string, r: { text: string; isError: boolean; exitCode: number | null; state?: ToolCallState }): CallEntry {
    const c = this.mustCall(toolUseId);
    const now = Date.now();
    Object.assign(c, { state: r.state ?? (r.isError ? 'failed' : 'done'), result: r.text, isError: r.isError, exitCode: r.exitCode, finishedAt: now, durationMs: now - c.startedAt });
    this.append({ k: 'c', toolUseId, state: c.state, result: c.result, isError: c.isError, exitCode: c.exitCode, finishedAt: c.finishedAt, durationMs: c.durationMs });
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
    return { sessionId: s.sessionId, workId: s.workId, state: s.state, claimedAt: s.claimedAt, updatedAt: s.updatedAt, endedAt: s.endedAt, callCount, lastError: s.lastError, ...(s.holder ? { holder: s.holder } : {}) };
  }

  callSummary(c: CallEntry): ToolCallSummary {
    return {
      toolUseId: c.toolUseId, sessionId: c.sessionId, name: c.name, input: c.input, state: c.state, startedAt: c.startedAt,
      finishedAt: c.finishedAt, durationMs: c.durationMs, exitCode: c.exitCode, isError: c.isError,
      outputPreview: (c.result ?? '').slice(0, PREVIEW_CHARS),
    };
  }

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

function blankSession(sessionId: string): SessionEntry {
  const now = Date.now();
  return { sessionId, workId: '', state: 'claimed', claimedAt: now, updatedAt: now, endedAt: null, lastError: null };
}
function blankCall(toolUseId: string): CallEntry {
  return { toolUseId, sessionId: '', workId: '', name: '', input: null, inputSha256: '', state: 'running', startedAt: Date.now(), finishedAt: null, durationMs: null, exitCode: null, isError: null, result: null, replays: 0 };
}
