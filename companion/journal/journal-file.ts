// The journal's file: reading it strictly, appending durably, and rewriting it without blocking the event loop.
// Invariants:
// - Reading (readJournalText): every line must be a journal record; only the last line may be unreadable (a write
//   torn by a crash or power loss). An unreadable line anywhere else is damage, never skipped: JournalCorrupt names
//   the file and the line and says what to do.
// - append(): one line, written whole and fsynced, or the journal is unhealthy. A short or failed write is cut back
//   off the file (ftruncate to the length before it), so no torn line stays in the middle; while unhealthy every
//   append is refused, until a rewrite has replaced the file (the in-memory state is then durable again).
// - rewrite(): the new content goes to `<file>.tmp` in bounded chunks (the event loop runs between them) and is
//   fsynced; lines appended meanwhile still go to the old file (durable as always) and are also queued, then written
//   after the snapshot; the temp file replaces the file by rename and the directory is fsynced. A crash at any point
//   leaves either the old file or the new one, whole. Folding is idempotent (each line carries absolute field values),
//   so a record both in the snapshot and in a queued line folds to the same state.
import {
  closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, readFileSync, renameSync, rmSync, writeSync, existsSync, promises as fsp,
} from 'node:fs';
import path from 'node:path';
import { PerimeterError, errorMessage, fatal } from '../errors';

/** Bytes of serialised lines gathered before one write of a rewrite (then the event loop runs). */
const REWRITE_CHUNK_BYTES = 1 << 20;
/** How many characters of a damaged line its error quotes. */
const QUOTE_CHARS = 80;

/** The journal has an unreadable line before its last one. */
export class JournalCorrupt extends PerimeterError {
  constructor(readonly file: string, readonly line: number, readonly reason: string) {
    super(
      `the journal ${file} is damaged at line ${line} (${reason}); it is not a torn last write, so it is not skipped. ` +
      `Stop the companion, then repair or remove that line, or move the file aside (mv ${file} ${file}.damaged) to ` +
      'start with an empty call history (calls recorded only there are then neither answered from it nor refused as duplicates)',
      'fatal', 'journal_corrupt');
    this.name = 'JournalCorrupt';
  }
}

/**
 * The text of a journal file after checking every line with `isRecord`: `torn` is set when the last line is not a
 * record (it is left to the reader's fold to skip). Throws JournalCorrupt for an unreadable line before the last.
 */
export function readJournalText(file: string, isRecord: (json: unknown) => boolean): { text: string; torn: boolean } {
  if (!existsSync(file)) return { text: '', torn: false };
  const text = readFileSync(file, 'utf8');
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    let reason = 'not a journal record';
    try { if (isRecord(JSON.parse(raw))) continue; } catch (err) { reason = `not JSON: ${errorMessage(err)}`; }
    if (i === lines.length - 1) return { text, torn: true };
    const quoted = raw.length > QUOTE_CHARS ? `${raw.slice(0, QUOTE_CHARS)}…` : raw;
    throw new JournalCorrupt(file, i + 1, `${reason}: ${JSON.stringify(quoted)}`);
  }
  return { text, torn: false };
}

export class JournalFile {
  private fd = -1;
  /** Length of the file as written so far (where a failed write is cut back to). */
  private size = 0;
  private failure: string | null = null;
  /** Appends refused or failed so far: a rewrite that saw one begin may not declare the journal healthy. */
  private faults = 0;
  private pending: string[] | null = null;
  private rewriting: Promise<void> | null = null;

  constructor(readonly file: string) {}

  get healthy(): boolean { return this.failure === null; }
  /** Why the journal cannot be written (null while it can). */
  get problem(): string | null { return this.failure; }
  get rewriteInProgress(): boolean { return this.rewriting !== null; }

  /** Appends one line (without its newline) durably; throws `journal_write_failed` and turns unhealthy when it cannot. */
  append(line: string): void {
    if (this.failure) {
      this.faults++;
      throw fatal('journal_write_failed', `the journal ${this.file} cannot be written (${this.failure})`);
    }
    const buf = Buffer.from(`${line}\n`, 'utf8');
    try {
      if (this.fd < 0) {
        this.fd = openSync(this.file, 'a', 0o600);
        this.size = fstatSync(this.fd).size;
      }
      const n = writeSync(this.fd, buf);
      if (n !== buf.length) throw new Error(`short write (${n} of ${buf.length} bytes): the disk is probably full`);
      fsyncSync(this.fd);
    } catch (err) {
      this.fail(errorMessage(err));
      throw fatal('journal_write_failed', `cannot write the journal (${this.file}): ${errorMessage(err)}`, err);
    }
    this.size += buf.length;
    this.pending?.push(line);
  }

  /** Replaces the file with `lines` (see the header); concurrent calls share one rewrite. */
  rewrite(lines: () => Iterable<string>): Promise<void> {
    this.rewriting ??= this.doRewrite(lines).finally(() => { this.rewriting = null; });
    return this.rewriting;
  }

  /** The same, synchronously (at open, before the companion serves anything). */
  rewriteSync(lines: Iterable<string>): void {
    const tmp = `${this.file}.tmp`;
    try {
      const fd = openSync(tmp, 'w', 0o600);
      try {
        for (const chunk of chunked(lines)) writeAll(fd, chunk);
        fsyncSync(fd);
      } finally { closeSync(fd); }
      this.replaceWith(tmp);
      this.failure = null;
    } catch (err) {
      rmSync(tmp, { force: true });
      throw fatal('journal_write_failed', `cannot rewrite the journal (${this.file}): ${errorMessage(err)}`, err);
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  private fail(reason: string): void {
    this.failure = reason;
    this.faults++;
    if (this.fd >= 0) {
      try { ftruncateSync(this.fd, this.size); } catch { /* the rewrite that recovers the journal replaces the file */ }
      this.close();
    }
  }

  private async doRewrite(lines: () => Iterable<string>): Promise<void> {
    const tmp = `${this.file}.tmp`;
    const faultsAtStart = this.faults;
    this.pending = [];
    let handle: fsp.FileHandle | null = null;
    try {
      handle = await fsp.open(tmp, 'w', 0o600);
      for (const chunk of chunked(lines())) {
        await handle.write(chunk);
        await new Promise((r) => setImmediate(r));
      }
      await handle.sync();
      await handle.close();
      handle = null;
      // From here on synchronous: nothing can be appended between the queued lines and the rename.
      const queued = this.pending;
      if (queued.length > 0) {
        const fd = openSync(tmp, 'a');
        try { writeAll(fd, Buffer.from(`${queued.join('\n')}\n`, 'utf8')); fsyncSync(fd); } finally { closeSync(fd); }
      }
      this.replaceWith(tmp);
      // Healthy again only if no change was refused meanwhile (it may have missed the snapshot).
      if (this.faults === faultsAtStart) this.failure = null;
    } catch (err) {
      await handle?.close().catch(() => {});
      rmSync(tmp, { force: true });
      throw fatal('journal_write_failed', `cannot rewrite the journal (${this.file}): ${errorMessage(err)}`, err);
    } finally {
      this.pending = null;
    }
  }

  private replaceWith(tmp: string): void {
    this.close();
    renameSync(tmp, this.file);
    const dfd = openSync(path.dirname(this.file), 'r');
    try { fsyncSync(dfd); } finally { closeSync(dfd); }
  }
}

/** Serialised lines in buffers of about REWRITE_CHUNK_BYTES. */
function* chunked(lines: Iterable<string>): Generator<Buffer> {
  let parts: string[] = [];
  let bytes = 0;
  for (const line of lines) {
    parts.push(line);
    bytes += line.length + 1;
    if (bytes >= REWRITE_CHUNK_BYTES) { yield Buffer.from(`${parts.join('\n')}\n`, 'utf8'); parts = []; bytes = 0; }
  }
  if (parts.length > 0) yield Buffer.from(`${parts.join('\n')}\n`, 'utf8');
}

function writeAll(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) {
    const n = writeSync(fd, buf, off);
    if (n <= 0) throw new Error('the write made no progress: the disk is probably full');
    off += n;
  }
}
