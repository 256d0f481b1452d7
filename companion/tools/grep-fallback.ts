// The grep tool's search where the sandbox has no `rg` (the process driver on a machine without ripgrep, a template
// built from a root filesystem without it), as the reference toolset falls back to a search of its own. It answers in
// the shape of `rg --no-config -n --no-heading -e PATTERN -- PATH` after the tool's path mapping: `/abs/path:N:text`
// lines for a directory, `N:text` for one file, `binary file matches (found "\0" byte around offset N)` for one
// binary file, and the tool adds "no matches" and the output cap exactly as for rg.
//
// It runs on the host over GuestOps (walk + readFile) rather than with programs in the sandbox: the sandbox may have
// no search program at all (or only busybox's), and every driver then answers the same way. The pattern is a
// JavaScript regular expression, as in the reference toolset's own search (a leading `(?i)`, `(?m)` or `(?s)`, which
// rg patterns often start with, becomes the matching flag). Invariants:
// - The model's pattern runs on untrusted text only in a worker thread that is terminated at the deadline, so a
//   catastrophic pattern costs the call its time limit, never the companion's event loop; lines over
//   GREP_MAX_LINE_CHARS characters are skipped (as the reference does), which bounds the cost of one line.
// - As rg does by default: hidden files and directories (a name starting with `.`) are not searched below the root,
//   symbolic links are not followed, a file with a NUL byte is binary (skipped in a directory; reported when searched
//   alone). Unlike rg it reads no .gitignore/.ignore files. Results are ordered by path.
// - Memory is bounded: files are read in READ_CHUNK_BYTES pieces and a line is carried between pieces only while it
//   can still be short enough to be searched.
import { Worker } from 'node:worker_threads';
import type { GuestOps } from '../guest/types';

export const GREP_MAX_LINE_CHARS = 2000;
const WALK_MAX_ENTRIES = 50_000;
const READ_CHUNK_BYTES = 4 << 20;
/** Files whose first chunk is requested ahead of need (the guest answers them while the worker searches). */
const READ_AHEAD_FILES = 8;

export type FallbackSearch =
  | { ok: true; lines: string[]; notes: string[] }
  | { ok: false; reason: 'invalid-regex' | 'timeout'; message: string };

/** A JavaScript RegExp for an rg-style pattern: a leading inline-flag group of i, m and s becomes flags. */
export function compilePattern(pattern: string): RegExp {
  const m = /^\(\?([ims]+)\)/.exec(pattern);
  return m ? new RegExp(pattern.slice(m[0].length), [...new Set(m[1])].join('')) : new RegExp(pattern);
}

// One file at a time: 'start' resets the line state, each chunk answers [line number, text] hits and the offset of
// the first NUL byte seen so far (-1 when none). Lines are split on \n; the text keeps a trailing \r as rg's does.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const re = new RegExp(workerData.source, workerData.flags);
const maxChars = workerData.maxLineChars;
const decoder = new TextDecoder('utf-8');
let carry = null, skipping = false, lineNo = 0, offset = 0, nulAt = -1;
const test = (bytes, hits) => {
  lineNo++;
  if (skipping) { skipping = false; return; }
  const text = decoder.decode(bytes);
  if (text.length > maxChars) return;
  if (re.test(text)) hits.push([lineNo, text]);
};
parentPort.on('message', (m) => {
  if (m.start) { carry = null; skipping = false; lineNo = 0; offset = 0; nulAt = -1; }
  const chunk = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
  const nul = chunk.indexOf(0);
  if (nul >= 0 && nulAt < 0) nulAt = offset + nul;
  offset += chunk.length;
  const data = carry ? Buffer.concat([carry, chunk]) : chunk;
  const hits = [];
  let pos = 0;
  for (let nl = data.indexOf(10); nl >= 0; nl = data.indexOf(10, pos)) { test(data.subarray(pos, nl), hits); pos = nl + 1; }
  carry = pos < data.length ? Buffer.from(data.subarray(pos)) : null;
  if (carry && carry.length > maxChars * 4) { carry = null; skipping = true; }
  if (m.last && (carry || skipping)) test(carry || Buffer.alloc(0), hits);
  if (m.last) carry = null;
  parentPort.postMessage({ hits, nulAt });
});
`;

type Hits = { hits: [number, string][]; nulAt: number };

/** The search worker: one request at a time. */
class Matcher {
  private readonly worker: Worker;
  private waiting: { resolve: (h: Hits) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;

  constructor(re: RegExp) {
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true, workerData: { source: re.source, flags: re.flags, maxLineChars: GREP_MAX_LINE_CHARS },
      env: {}, execArgv: [], stdout: true, stderr: true,
      // V8 compiles a deeply nested pattern recursively; the default thread stack is smaller than the main thread's.
      resourceLimits: { stackSizeMb: 8 },
    });
    this.worker.on('message', (h: Hits) => { const w = this.waiting; this.waiting = null; w?.resolve(h); });
    const fail = (err: Error) => {
      this.failure ??= err;
      const w = this.waiting; this.waiting = null; w?.reject(err);
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => fail(new Error(`the search worker exited (code ${code})`)));
  }

  search(data: Buffer, start: boolean, last: boolean): Promise<Hits> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.worker.postMessage({ data, start, last });
    });
  }

  stop(): void { void this.worker.terminate(); }
}

function isHiddenBelow(root: string, p: string): boolean {
  return p.slice(root === '/' ? 1 : root.length + 1).split('/').some((seg) => seg.startsWith('.'));
}

/**
 * Searches `root` (a directory, or one file) in the sandbox for `pattern`. Lines come in the grep tool's shape
 * (before cleaning); `notes` say where the search was bounded.
 */
export async function searchWithoutRipgrep(
  sandbox: GuestOps, opts: { root: string; rootIsDir: boolean; pattern: string; timeoutMs: number },
): Promise<FallbackSearch> {
  let re: RegExp;
  try { re = compilePattern(opts.pattern); } catch (err) {
    return { ok: false, reason: 'invalid-regex', message: `grep: invalid regex: ${(err as Error).message}` };
  }
  const matcher = new Matcher(re);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), opts.timeoutMs); });
  const searching = search(sandbox, matcher, opts);
  searching.catch(() => {}); // after the deadline nobody waits for it; it ends at its next step (the worker is gone)
  try {
    const outcome = await Promise.race([searching, deadline]);
    if (outcome === 'timeout') return { ok: false, reason: 'timeout', message: `grep: timed out after ${opts.timeoutMs / 1000}s` };
    return outcome;
  } finally {
    clearTimeout(timer);
    matcher.stop();
  }
}

async function search(sandbox: GuestOps, matcher: Matcher, opts: { root: string; rootIsDir: boolean }): Promise<FallbackSearch> {
  const notes: string[] = [];
  let files: string[];
  if (opts.rootIsDir) {
    const walked = await sandbox.walk(opts.root, { hash: false, maxEntries: WALK_MAX_ENTRIES, skipNames: ['.git'] });
    if (walked.truncated) notes.push(`[the search stopped after ${WALK_MAX_ENTRIES} files and directories]`);
    files = walked.entries.filter((e) => e.type === 'file' && !isHiddenBelow(opts.root, e.path)).map((e) => e.path)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  } else {
    files = [opts.root];
  }
  const firstChunks = new Map<number, Promise<{ data: Buffer; size: number } | null>>();
  const readAhead = (i: number) => {
    if (i < files.length && !firstChunks.has(i)) {
      const p = sandbox.readFile(files[i]!, { offset: 0, length: READ_CHUNK_BYTES }).catch(() => null);
      firstChunks.set(i, p);
    }
  };
  const lines: string[] = [];
  for (let i = 0; i < files.length; i++) {
    for (let j = i; j < i + READ_AHEAD_FILES; j++) readAhead(j);
    const first = await firstChunks.get(i)!;
    firstChunks.delete(i);
    if (!first) continue; // gone, or unreadable since the walk
    const file = files[i]!;
    const fileHits: [number, string][] = [];
    let nulAt = -1;
    let chunk: { data: Buffer; size: number } | null = first;
    for (let offset = 0, start = true; chunk; start = false) {
      offset += chunk.data.length;
      const last: boolean = chunk.data.length === 0 || offset >= chunk.size;
      const r = await matcher.search(chunk.data, start, last);
      // In a directory a binary file is skipped from its first NUL byte on, as rg does.
      if (opts.rootIsDir && r.nulAt >= 0) break;
      fileHits.push(...r.hits);
      nulAt = r.nulAt;
      chunk = last ? null : await sandbox.readFile(file, { offset, length: READ_CHUNK_BYTES }).catch(() => null);
    }
    if (!opts.rootIsDir) {
      if (nulAt >= 0) { if (fileHits.length) lines.push(`binary file matches (found "\\0" byte around offset ${nulAt})`); }
      else for (const [n, text] of fileHits) lines.push(`${n}:${text.replace(/\r$/, '')}`);
    } else {
      for (const [n, text] of fileHits) lines.push(`${file}:${n}:${text.replace(/\r$/, '')}`);
    }
  }
  return { ok: true, lines, notes };
}
