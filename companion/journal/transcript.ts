// Session transcripts: what a session's tool calls do not tell (the user's prompts, the agent's messages, confirmation
// verdicts, turn changes, egress decisions), one append-only JSONL file per session under
// `<journal dir>/transcripts/` (format: companion/protocol/journal.ts). Invariants:
// - Informational only: a transcript line is not fsynced and a failed write is logged, never thrown (a tool call's
//   durability is the journal's).
// - Bounded: at most MAX_TRANSCRIPT_BYTES per session and MAX_TEXT_CHARS per message; past the byte cap further
//   entries are dropped from the file (connected panels still received them live).
// - Files are created 0600 without following symlinks; a session id that cannot name a file has no transcript.
import { constants as C, closeSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { TranscriptEntry } from '../protocol/control';
import { TRANSCRIPTS_DIR, parseTranscript, transcriptFileName } from '../protocol/journal';
import type { Page } from './types';
import { errorMessage } from '../errors';
import { logger } from '../log';

const log = logger('journal');
export const MAX_TRANSCRIPT_BYTES = 4 * 1024 * 1024;
export const MAX_TEXT_CHARS = 16 * 1024;

export class TranscriptLog {
  readonly dir: string;
  private readonly sizes = new Map<string, number>();

  constructor(journalDir: string) {
    this.dir = path.join(journalDir, TRANSCRIPTS_DIR);
  }

  append(sessionId: string, entry: TranscriptEntry): void {
    const name = transcriptFileName(sessionId);
    if (!name) return;
    const file = path.join(this.dir, name);
    const line = `${JSON.stringify(capText(entry))}\n`;
    try {
      let size = this.sizes.get(sessionId);
      if (size === undefined) {
        mkdirSync(this.dir, { recursive: true, mode: 0o700 });
        try { size = statSync(file).size; } catch { size = 0; }
      }
      if (size + Buffer.byteLength(line) > MAX_TRANSCRIPT_BYTES) { this.sizes.set(sessionId, size); return; }
      const fd = openSync(file, C.O_WRONLY | C.O_APPEND | C.O_CREAT | C.O_NOFOLLOW, 0o600);
      try { writeSync(fd, line); } finally { closeSync(fd); }
      this.sizes.set(sessionId, size + Buffer.byteLength(line));
    } catch (err) {
      log.warn(`cannot write the transcript of session ${sessionId}: ${errorMessage(err)}`);
    }
  }

  /** A page of a session's transcript, oldest first. */
  read(sessionId: string, opts: { limit: number; cursor?: string | null }): Page<TranscriptEntry> {
    const name = transcriptFileName(sessionId);
    let entries: TranscriptEntry[] = [];
    if (name) {
      try { entries = parseTranscript(readFileSync(path.join(this.dir, name), 'utf8')); } catch { entries = []; }
    }
    const start = opts.cursor ? Math.max(0, Number.parseInt(opts.cursor, 10) || 0) : 0;
    const items = entries.slice(start, start + opts.limit);
    return { items, nextCursor: start + opts.limit < entries.length ? String(start + opts.limit) : null };
  }

  /** Removes the transcripts of sessions not in `keep`. */
  retain(keep: Set<string>): void {
    let names: string[];
    try { names = readdirSync(this.dir); } catch { return; }
    const wanted = new Set([...keep].map(transcriptFileName).filter((n): n is string => n !== null));
    for (const n of names) {
      if (wanted.has(n)) continue;
      rmSync(path.join(this.dir, n), { force: true });
      this.sizes.delete(n.replace(/\.jsonl$/, ''));
    }
  }
}

function capText(entry: TranscriptEntry): TranscriptEntry {
  if ((entry.kind === 'prompt' || entry.kind === 'agent') && entry.text.length > MAX_TEXT_CHARS) {
    return { ...entry, text: `${entry.text.slice(0, MAX_TEXT_CHARS)}\n[… ${entry.text.length - MAX_TEXT_CHARS} more characters not kept]` };
  }
  return entry;
}
