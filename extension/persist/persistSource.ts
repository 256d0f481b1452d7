// Reads a session's persisted files through a companion's control API (listGenerations, listPersistFiles,
// readPersistFile): the generation's entries as a directory tree, and a file's bytes in chunks. Plain Node, no
// `vscode`; the FileSystemProvider (persistFileSystem.ts), Compare and Export use it. Invariants:
// - Only the control API: the extension never reads a companion's store, wherever and however it keeps it.
// - Generations never change, so a loaded index is kept (LRU, MAX_CACHED) and never refreshed.
// - Bounded: an index holds at most MAX_ENTRIES entries; a read returns at most `maxBytes` or fails.
import type { ControlClient } from '../launcher/controlClient';
import type { PersistEntry, PersistGeneration } from '../../companion/protocol/control';
import { PERSIST_READ_MAX } from '../../companion/protocol/control';
import { guestBase, guestParent } from './persistUri';

const MAX_ENTRIES = 200_000;
const MAX_CACHED = 16;
const PAGE = 2000;

export type PersistApi = Pick<ControlClient, 'request'>;

export class PersistTooLarge extends Error {
  constructor(readonly size: number, readonly limit: number) { super(`the file is ${size} bytes; at most ${limit} bytes can be opened here`); this.name = 'PersistTooLarge'; }
}

/** One generation's entries by path, and each directory's children (implied directories included). */
export class GenerationIndex {
  readonly entries = new Map<string, PersistEntry>();
  readonly children = new Map<string, Map<string, PersistEntry['type']>>([['/', new Map()]]);
  truncated = false;

  add(e: PersistEntry): void {
    this.entries.set(e.path, e);
    let p = e.path;
    let type: PersistEntry['type'] = e.type;
    if (type === 'dir' && !this.children.has(p)) this.children.set(p, new Map());
    while (p !== '/') {
      const parent = guestParent(p);
      let kids = this.children.get(parent);
      if (!kids) { kids = new Map(); this.children.set(parent, kids); }
      if (kids.has(guestBase(p)) && type === 'dir') break;
      kids.set(guestBase(p), type);
      p = parent;
      type = 'dir';
    }
  }

  /** The entry at `p`: a recorded one, a directory implied by its contents, or undefined. */
  lookup(p: string): PersistEntry | { path: string; type: 'dir' } | undefined {
    return this.entries.get(p) ?? (this.children.has(p) ? { path: p, type: 'dir' } : undefined);
  }
}

export class PersistSource {
  private readonly cache = new Map<string, Promise<GenerationIndex>>();

  constructor(private readonly clientFor: (hostId: string) => PersistApi | null) {}

  api(hostId: string): PersistApi {
    const c = this.clientFor(hostId);
    if (!c) throw new Error(`the worker on ${hostId} is not connected: persisted files are read through it`);
    return c;
  }

  async generations(hostId: string, sessionId: string): Promise<{ current: number; generations: PersistGeneration[] }> {
    return this.api(hostId).request('listGenerations', { sessionId });
  }

  index(hostId: string, sessionId: string, generation: number): Promise<GenerationIndex> {
    const key = `${hostId}\u0000${sessionId}\u0000${generation}`;
    let p = this.cache.get(key);
    if (p) { this.cache.delete(key); this.cache.set(key, p); return p; }
    p = this.load(hostId, sessionId, generation);
    p.catch(() => this.cache.delete(key));
    this.cache.set(key, p);
    while (this.cache.size > MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    return p;
  }

  /** A file's bytes, in chunks of at most PERSIST_READ_MAX, in order. */
  async *chunks(hostId: string, sessionId: string, generation: number, guestPath: string): AsyncGenerator<Uint8Array> {
    const api = this.api(hostId);
    let offset = 0;
    for (;;) {
      const r = await api.request('readPersistFile', { sessionId, generation, path: guestPath, offset, length: PERSIST_READ_MAX });
      const data = Buffer.from(r.data, 'base64');
      if (data.length > 0) yield data;
      offset += data.length;
      if (r.eof || data.length === 0) return;
    }
  }

  /** A whole file, refused (PersistTooLarge) above `maxBytes`. */
  async read(hostId: string, sessionId: string, generation: number, guestPath: string, maxBytes: number): Promise<Uint8Array> {
    const entry = (await this.index(hostId, sessionId, generation)).entries.get(guestPath);
    if (entry && entry.size > maxBytes) throw new PersistTooLarge(entry.size, maxBytes);
    const parts: Uint8Array[] = [];
    let total = 0;
    for await (const chunk of this.chunks(hostId, sessionId, generation, guestPath)) {
      total += chunk.length;
      if (total > maxBytes) throw new PersistTooLarge(total, maxBytes);
      parts.push(chunk);
    }
    return Buffer.concat(parts);
  }

  private async load(hostId: string, sessionId: string, generation: number): Promise<GenerationIndex> {
    const api = this.api(hostId);
    const index = new GenerationIndex();
    let cursor: string | null = null;
    do {
      const page: { items: PersistEntry[]; nextCursor: string | null } = await api.request('listPersistFiles', { sessionId, generation, limit: PAGE, cursor });
      for (const e of page.items) index.add(e);
      cursor = page.nextCursor;
      if (index.entries.size >= MAX_ENTRIES && cursor) { index.truncated = true; break; }
    } while (cursor);
    return index;
  }
}
