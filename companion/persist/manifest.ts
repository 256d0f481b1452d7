// One generation of a session's persisted files: what existed under the persisted patterns after a call. Regular
// files point at content-addressed blobs; directories and symlinks are data only (a symlink's target is a string
// that is recreated inside the next VM, never on the host). Modes are normalised to 0644/0755 (no setuid, no
// uid/gid). Manifests are written only by companion/persist/store.ts and parsed with zod when read back.
import { z } from 'zod';

export const SHA256_HEX = /^[0-9a-f]{64}$/;

export const ManifestEntry = z.discriminatedUnion('type', [
  z.object({ type: z.literal('file'), path: z.string(), size: z.number().int().nonnegative(), mode: z.number().int(), mtimeMs: z.number().nonnegative(), sha256: z.string().regex(SHA256_HEX) }),
  z.object({ type: z.literal('dir'), path: z.string(), mode: z.number().int(), mtimeMs: z.number().nonnegative() }),
  z.object({ type: z.literal('symlink'), path: z.string(), target: z.string(), mtimeMs: z.number().nonnegative() }),
]);
export type ManifestEntry = z.infer<typeof ManifestEntry>;
export type FileEntry = Extract<ManifestEntry, { type: 'file' }>;

export const ManifestFile = z.object({
  version: z.literal(1),
  sessionId: z.string(),
  generation: z.number().int().nonnegative(),
  createdAt: z.number(),
  entries: z.array(ManifestEntry),
  shell: z.object({ cwd: z.string(), env: z.record(z.string(), z.string()) }).nullable(),
  /** Set on a generation made by a rollback: the generation whose content it restored. */
  rolledBackFrom: z.number().int().nonnegative().optional(),
});
export type ManifestFile = z.infer<typeof ManifestFile>;

/** An in-memory generation: entries by path. */
export interface Manifest {
  generation: number;
  entries: Map<string, ManifestEntry>;
  shell: ManifestFile['shell'];
}

export const emptyManifest = (): Manifest => ({ generation: 0, entries: new Map(), shell: null });

export function normaliseMode(mode: number, type: 'file' | 'dir'): number {
  if (type === 'dir') return 0o755;
  return (mode & 0o111) !== 0 ? 0o755 : 0o644;
}

export function sameEntry(a: ManifestEntry | undefined, b: ManifestEntry | undefined): boolean {
  if (!a || !b || a.type !== b.type) return a === b;
  switch (a.type) {
    case 'file': return b.type === 'file' && a.sha256 === b.sha256 && a.size === b.size && a.mode === b.mode;
    case 'dir': return true;
    case 'symlink': return b.type === 'symlink' && a.target === b.target;
  }
}

export function toFile(sessionId: string, m: Manifest, createdAt: number, rolledBackFrom?: number): ManifestFile {
  const entries = [...m.entries.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { version: 1, sessionId, generation: m.generation, createdAt, entries, shell: m.shell, ...(rolledBackFrom !== undefined ? { rolledBackFrom } : {}) };
}

export function fromFile(f: ManifestFile): Manifest {
  return { generation: f.generation, entries: new Map(f.entries.map((e) => [e.path, e])), shell: f.shell };
}

export function totals(m: Manifest): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  for (const e of m.entries.values()) if (e.type === 'file') { files += 1; bytes += e.size; }
  return { files, bytes };
}
