// Guest path rules for the persisted-file store: which names may cross the VM boundary, and the persist-list
// patterns (a directory, a file, or a glob such as `/workspace/**`). Invariants:
// - Every check is pure string work done in TypeScript before any I/O; a name that fails is refused with a reason
//   the model can read, never silently rewritten.
// - Guest names are data: the store is content-addressed, so no guest name ever becomes a host path. These rules
//   keep the manifest clean for copy-in and display, and guard the one place names do reach the host (memory stores).
// - Session ids are the only store-path component that comes from outside; `checkSessionId` confines them.

export const PATH_LIMITS = {
  /** Bytes (UTF-8) of a whole path, as Linux PATH_MAX. */
  maxPathBytes: 4096,
  /** Bytes (UTF-8) of one name, as Linux NAME_MAX. */
  maxNameBytes: 255,
  /** Segments of one path. */
  maxDepth: 128,
  /** Bytes of a symlink target (stored as data only). */
  maxLinkTargetBytes: 4096,
} as const;

/** Guest trees that are never persisted: kernel interfaces and runtime state, not user files. */
const RESERVED_ROOTS = ['/proc', '/sys', '/dev', '/run'];

// C0 and C1 control characters (newlines included), DEL, U+FFFD (what an invalid UTF-8 byte decodes to), and the
// bidirectional overrides/isolates that make a name display as something else.
// eslint-disable-next-line no-control-regex
const FORBIDDEN_CHARS = /[\u0000-\u001f\u007f-\u009f\ufffd\u200e\u200f\u202a-\u202e\u2066-\u2069]/u;

// With the `u` flag a surrogate pair is one code point, so this matches only unpaired halves.
const LONE_SURROGATE = /[\ud800-\udfff]/u;

function utf8Bytes(s: string): number { return Buffer.byteLength(s, 'utf8'); }

function checkChars(s: string, what: string): string | null {
  if (LONE_SURROGATE.test(s)) return `${what} is not valid UTF-8`;
  const bad = FORBIDDEN_CHARS.exec(s);
  if (bad) {
    const cp = bad[0].codePointAt(0)!;
    return cp === 0xfffd ? `${what} is not valid UTF-8`
      : `${what} contains the control or direction character U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;
  }
  return null;
}

/** A path as it may appear in a user-visible note: quoted, escaped, bounded (whole with `full`, for listings). */
export function showPath(p: unknown, o: { full?: boolean } = {}): string {
  const s = typeof p === 'string' ? p : String(p);
  const shown = JSON.stringify(s.length > 200 && !o.full ? `${s.slice(0, 200)}…` : s);
  return shown.replace(/[\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu, (c) => `\\u${c.codePointAt(0)!.toString(16).padStart(4, '0')}`);
}

/** Why a guest path may not cross the boundary, or null when it may. The root `/` itself is not an entry. */
export function checkGuestPath(p: unknown): string | null {
  if (typeof p !== 'string') return 'path is not a string';
  if (!p.startsWith('/')) return 'path is not absolute';
  if (p === '/') return 'the root directory is not a file';
  const charProblem = checkChars(p, 'name');
  if (charProblem) return charProblem;
  if (utf8Bytes(p) > PATH_LIMITS.maxPathBytes) return `path is longer than ${PATH_LIMITS.maxPathBytes} bytes`;
  const segments = p.slice(1).split('/');
  if (segments.length > PATH_LIMITS.maxDepth) return `path is deeper than ${PATH_LIMITS.maxDepth} levels`;
  for (const seg of segments) {
    if (seg === '') return 'path has an empty segment';
    if (seg === '.' || seg === '..') return `path has a "${seg}" segment`;
    if (utf8Bytes(seg) > PATH_LIMITS.maxNameBytes) return `a name is longer than ${PATH_LIMITS.maxNameBytes} bytes`;
  }
  return null;
}

/** Why a symlink target may not be stored (as data), or null. Targets may be relative and may contain `..`. */
export function checkLinkTarget(t: unknown): string | null {
  if (typeof t !== 'string') return 'symlink target is not a string';
  if (t === '') return 'symlink target is empty';
  if (utf8Bytes(t) > PATH_LIMITS.maxLinkTargetBytes) return `symlink target is longer than ${PATH_LIMITS.maxLinkTargetBytes} bytes`;
  return checkChars(t, 'symlink target');
}

/** `child` is `parent` or lies below it (both normalised absolute paths). */
export function isWithin(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent === '/' ? '/' : `${parent}/`);
}

export function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
}

const SESSION_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;
/** Session ids name a directory on the host: letters, digits, `_` and `-` only. */
export function checkSessionId(id: unknown): string | null {
  if (typeof id !== 'string' || !SESSION_ID.test(id)) return `invalid session id ${showPath(id)}: expected 1-128 letters, digits, "_" or "-"`;
  return null;
}

// ---- persist-list patterns ----------------------------------------------------------------------------------------

export interface PersistPattern {
  /** The normalised pattern text (what is stored and shown). */
  readonly text: string;
  /** The longest literal prefix: the directory (or file) the copy-out walks. */
  readonly root: string;
  /** Whether `path` is selected: the path itself, or one of its ancestors, matches the pattern. */
  matches(path: string): boolean;
}

const GLOB_SEGMENT_FORBIDDEN = /[[\]{}\\]/;

function segmentRegex(seg: string): RegExp {
  const body = seg.replace(/[.+^$()|]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]');
  return new RegExp(`^${body}$`, 'su');
}

/** Parses one persist-list entry; throws an Error whose message says exactly what is wrong. */
export function parsePattern(raw: unknown): PersistPattern {
  if (typeof raw !== 'string') throw new Error('a persisted path must be a string');
  const shown = showPath(raw);
  let text = raw;
  if (text.length > 1 && text.endsWith('/') && !text.endsWith('//')) text = text.slice(0, -1);
  if (text !== text.normalize('NFC')) throw new Error(`persisted path ${shown}: not in Unicode normal form C`);
  const problem = checkGuestPath(text);
  if (problem) throw new Error(`persisted path ${shown}: ${problem === 'the root directory is not a file' ? 'the whole filesystem cannot be persisted' : problem}`);
  const segments = text.slice(1).split('/');
  const literal: string[] = [];
  let globbing = false;
  const matchers: Array<RegExp | '**'> = [];
  for (const seg of segments) {
    if (GLOB_SEGMENT_FORBIDDEN.test(seg)) throw new Error(`persisted path ${shown}: "[", "]", "{", "}" and "\\" are not supported; use * , ? or **`);
    const isGlob = /[*?]/.test(seg);
    if (seg.includes('**') && seg !== '**') throw new Error(`persisted path ${shown}: "**" must be a whole path segment`);
    if (isGlob) globbing = true;
    if (!globbing) literal.push(seg);
    matchers.push(seg === '**' ? '**' : segmentRegex(seg));
  }
  if (literal.length === 0) throw new Error(`persisted path ${shown}: must start with a literal directory (e.g. /workspace/**)`);
  const root = `/${literal.join('/')}`;
  const reserved = RESERVED_ROOTS.find((r) => isWithin(root, r));
  if (reserved) throw new Error(`persisted path ${shown}: ${reserved} holds kernel and runtime state, not files to persist`);

  const matches = (p: string): boolean => {
    if (!p.startsWith('/')) return false;
    const parts = p === '/' ? [] : p.slice(1).split('/');
    // A pattern selects a path when it fully matches the path or one of its ancestors (everything below a
    // selected directory is selected).
    const memo = new Map<number, boolean>();
    const go = (pi: number, si: number): boolean => {
      if (pi === matchers.length) return true;
      const key = pi * (parts.length + 1) + si;
      const cached = memo.get(key);
      if (cached !== undefined) return cached;
      const m = matchers[pi]!;
      let ok: boolean;
      if (m === '**') ok = go(pi + 1, si) || (si < parts.length && go(pi, si + 1));
      else ok = si < parts.length && m.test(parts[si]!) && go(pi + 1, si + 1);
      memo.set(key, ok);
      return ok;
    };
    return go(0, 0);
  };
  return { text, root, matches };
}

/** Parses a whole persist list: every entry must parse; duplicates are removed, order kept. */
export function parsePatterns(raw: readonly unknown[]): PersistPattern[] {
  const seen = new Set<string>();
  const out: PersistPattern[] = [];
  for (const r of raw) {
    const p = parsePattern(r);
    if (!seen.has(p.text)) { seen.add(p.text); out.push(p); }
  }
  return out;
}

/** The directories (or files) to walk for a set of patterns: each root once, none below another. */
export function walkRoots(patterns: readonly PersistPattern[]): string[] {
  const roots = [...new Set(patterns.map((p) => p.root))].sort();
  return roots.filter((r) => !roots.some((o) => o !== r && isWithin(r, o)));
}
