// Addresses of persisted files as files: `perimeter-persist:/<host>/<session>/<generation><guest path>`, e.g.
// `perimeter-persist:/local/sesn_01/4/workspace/notes.txt` is /workspace/notes.txt as generation 4 of session
// sesn_01 on this machine kept it. Pure. Invariants: a generation never changes, so an address always names the same
// bytes; parsing accepts only what `persistUriPath` builds (host and session URI-encoded, a decimal generation, an
// absolute guest path without `.`/`..` segments, empty segments or NUL).
export const PERSIST_SCHEME = 'perimeter-persist';

export interface PersistRef { hostId: string; sessionId: string; generation: number; guestPath: string }

export function persistUriPath(ref: PersistRef): string {
  const guest = ref.guestPath === '/' ? '' : ref.guestPath;
  return `/${encodeURIComponent(ref.hostId)}/${encodeURIComponent(ref.sessionId)}/${ref.generation}${guest}`;
}

export function parsePersistUriPath(p: string): PersistRef | null {
  const m = /^\/([^/]+)\/([^/]+)\/(\d{1,15})(\/.*)?$/.exec(p);
  if (!m) return null;
  const guestPath = m[4] ?? '/';
  if (guestPath !== '/' && (guestPath.includes('\0') || guestPath.split('/').slice(1).some((seg) => seg === '' || seg === '.' || seg === '..'))) return null;
  try { return { hostId: decodeURIComponent(m[1]!), sessionId: decodeURIComponent(m[2]!), generation: Number(m[3]), guestPath }; } catch { return null; }
}

/** The parent directory of a guest path ('/' for a top-level entry). */
export function guestParent(p: string): string {
  const i = p.lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
}

export function guestBase(p: string): string { return p.slice(p.lastIndexOf('/') + 1); }
