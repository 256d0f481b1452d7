// Admission of guest walk entries: every name, type, size, mode and hash the guest reports is checked here before
// anything else looks at it, and refusals are collected as notes the model can read. Pure functions, no I/O.
import type { GuestEntry } from '../guest/types';
import { normaliseMode, SHA256_HEX } from './manifest';
import { checkGuestPath, checkLinkTarget, isWithin, showPath } from './paths';

/** At most this many refused names are listed in one note. */
const NOTE_NAMES = 10;

/** An entry admitted from a walk (validated, mode normalised). */
export type Admitted =
  | { type: 'file'; path: string; size: number; mode: number; mtimeMs: number; sha256: string | null }
  | { type: 'dir'; path: string; mode: number; mtimeMs: number }
  | { type: 'symlink'; path: string; target: string; mtimeMs: number };

/** Collects refused names by reason and renders them as notes for the model. */
export class Refusals {
  private readonly byReason = new Map<string, string[]>();
  add(path: unknown, reason: string): void {
    const list = this.byReason.get(reason) ?? [];
    list.push(showPath(path));
    this.byReason.set(reason, list);
  }
  get size(): number { let n = 0; for (const l of this.byReason.values()) n += l.length; return n; }
  notes(prefix: string): string[] {
    return [...this.byReason].map(([reason, names]) => {
      const shown = names.slice(0, NOTE_NAMES).join(', ');
      const more = names.length > NOTE_NAMES ? ` and ${names.length - NOTE_NAMES} more` : '';
      return `${prefix} ${reason}: ${shown}${more}`;
    });
  }
}

/** Validates one walk entry from the guest; returns the admitted entry or the reason it is refused. */
export function admitEntry(raw: GuestEntry, root: string, hashed: boolean): Admitted | string {
  if (typeof raw !== 'object' || raw === null) return 'malformed entry';
  const bad = checkGuestPath(raw.path);
  if (bad) return bad;
  if (!isWithin(raw.path, root) || raw.path === root) return `outside the walked directory ${root}`;
  const mtimeMs = typeof raw.mtimeMs === 'number' && Number.isFinite(raw.mtimeMs) && raw.mtimeMs >= 0 ? raw.mtimeMs : 0;
  const mode = Number.isInteger(raw.mode) && raw.mode >= 0 && raw.mode <= 0o7777 ? raw.mode : null;
  switch (raw.type) {
    case 'file': {
      if (!Number.isSafeInteger(raw.size) || raw.size < 0) return 'invalid size';
      if (mode === null) return 'invalid mode';
      let hash: string | null = null;
      if (hashed) {
        if (typeof raw.sha256 !== 'string' || !SHA256_HEX.test(raw.sha256)) return 'no valid content hash';
        hash = raw.sha256;
      }
      return { type: 'file', path: raw.path, size: raw.size, mode: normaliseMode(mode, 'file'), mtimeMs, sha256: hash };
    }
    case 'dir': return { type: 'dir', path: raw.path, mode: 0o755, mtimeMs };
    case 'symlink': {
      const badTarget = checkLinkTarget(raw.linkTarget);
      if (badTarget) return badTarget;
      return { type: 'symlink', path: raw.path, target: raw.linkTarget!, mtimeMs };
    }
    case 'other': return 'not a regular file, directory or symlink (device, socket or FIFO)';
    default: return 'unknown file type';
  }
}
