// CallPersistence: carries a session's chosen files (and its shell state) from one tool call's sandbox to the next.
// prepare(): places the latest generation into a fresh sandbox (files via putFiles, empty directories and symlinks by
// a fixed guest script fed on stdin) and returns the shell state. commit(): walks the persisted roots in the guest,
// validates every entry, diffs against the generation the sandbox started from, fetches only changed files, re-hashes
// them on the host, stages blobs and commits a new generation atomically (companion/persist/store.ts). As a
// PersistHistory it also lists the kept generations and their files, reads a file of one (verified by hash), and rolls
// back to one (a new generation with its content).
// Invariants:
// - Everything from the guest is hostile: entries are admitted only after path, type, size, mode and hash checks;
//   refused entries and quota overruns become notes for the model, never silent drops.
// - Quotas (bytes, files) are checked on the walk before any data is fetched, and again on every byte received;
//   an overrun commits nothing and the previous generation stays CURRENT.
// - A sandbox that fails mid-copy rejects the commit; nothing half-done becomes visible.
// - No persisted state makes a session unusable: a generation a fresh sandbox cannot hold (its writable space, when
//   the driver reports one) is refused at commit with a note, and files the guest refuses at copy-in (no space left,
//   a damaged blob) are left out of that sandbox with a note saying what is missing and how to drop it; the call
//   runs, and those files stay saved unchanged until the model replaces them or removes their directory.
// - Nothing for the model names a host path: host-side failures are described in guest terms (details in the log).
// - mtime policy: a file's mtime is recorded when its content or mode changes and restored on copy-in; a change of
//   mtime alone (touch) is not a change. Modes are normalised to 0644/0755; owners are not kept.
// - Calls of one session are serialised around the store; concurrent calls merge by three-way diff against the
//   generation each sandbox started from.
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { GuestError, type GuestOps, type PutFile } from '../guest/types';
import type { Config } from '../config';
import { statePaths } from '../config';
import type { EventHub } from '../events';
import { PerimeterError, fatal, transient, errorMessage } from '../errors';
import { formatBytes } from '../protocol/format';
import { logger } from '../log';
import type { PersistEntry, PersistGeneration, PersistState } from '../protocol/control';
import { type CallPersistence, type CommitReport, type MemoryMountResolver, type PersistHistory, type ShellState, PERSIST_NOT_FOUND } from './types';
import { type Manifest, type ManifestEntry, type FileEntry, sameEntry, totals } from './manifest';
import { type CommitTxn, IO_PARALLEL, SessionStore, forEachLimit } from './store';
import { sha256Yielding } from './hash';
import { type PersistPattern, checkSessionId, isWithin, parentOf, parsePatterns, showPath, walkRoots } from './paths';
import { DEFAULT_SHELL, sameShell, sanitizeShell } from './shell';
import { MemoryMirror } from './memory';
import { type Admitted, Refusals, admitEntry } from './admit';
import { joinParts, materialise, type MaterialiseRecord } from './materialise';

const log = logger('persist');

/** Always carried, whatever the user's list says: the agent's skills and the memory-store mounts. */
export const ALWAYS_PERSISTED = ['/workspace/skills', '/mnt/memory'] as const;
/** Upper bounds of one getFiles/putFiles batch (one guest-agent message holds at most 64 MiB). */
const BATCH_BYTES = 32 * 1024 * 1024;
/** Files above this size cross the boundary in chunks (readFile ranges out, parts joined in the guest in). */
const LARGE_FILE = 16 * 1024 * 1024;
const CHUNK_BYTES = 8 * 1024 * 1024;
const BATCH_FILES = 1000;
/** The guest's writable layer (tmpfs) allocates whole pages. */
const PAGE_BYTES = 4096;
/** Writable space a fresh sandbox keeps free for the call itself, beyond the persisted files (at least this much,
 *  or an eighth of the space when that is more). */
const WORKING_ROOM_BYTES = 16 * 1024 * 1024;
/** Files listed in a PersistState (events and the control API); `fileCount` says how many there are. */
const STATE_FILES_LIMIT = 5000;

const PatternList = z.array(z.string()).max(256);

/** The persist configuration; `changeDetection` defaults to 'hash'. */
export type PersistSettings = Omit<Config['persist'], 'changeDetection' | 'retainDays'> & Partial<Pick<Config['persist'], 'changeDetection' | 'retainDays'>>;

export interface PersistenceOptions {
  home: string;
  persist: PersistSettings;
  hub?: EventHub;
  /** The session's memory stores (host directory the SDK syncs, guest mount path). */
  memoryMounts?: MemoryMountResolver;
}

interface Base {
  sessionId: string;
  manifest: Manifest;
  mirror: MemoryMirror | null;
  /** False when the memory stores could not be placed whole: the guest's view of them is then not written back. */
  mirrorPlaced: boolean;
  /** Files of `manifest` that could not be placed in this sandbox: their absence from it is not a deletion. */
  missing: Map<string, FileEntry>;
  /** Placement notes for the model, reported with the next commit. */
  notes: string[];
}

/** Files left out of a sandbox at copy-in, and why (in the guest's terms). */
interface Placement { missing: Map<string, FileEntry>; reasons: Map<string, string[]> }

type WalkedFile = Extract<Admitted, { type: 'file' }>;

interface Scan {
  entries: Map<string, Admitted>;
  /** Roots whose content is fully known (walked completely, or known to be absent). */
  scannedRoots: string[];
  refusals: Refusals;
  /** Set when the walk hit the entry cap: the file-count quota is exceeded. */
  truncated: boolean;
}

export class Persistence implements CallPersistence, PersistHistory {
  private readonly sessionsDir: string;
  private readonly stores = new Map<string, Promise<SessionStore>>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly bases = new WeakMap<GuestOps, Base>();

  constructor(private readonly opts: PersistenceOptions) {
    this.sessionsDir = statePaths(opts.home).sessions;
  }

  async patterns(sessionId: string): Promise<string[]> {
    if (!await this.known(sessionId)) return [...this.opts.persist.defaults];
    const store = await this.store(sessionId);
    return (await store.readPatterns()) ?? [...this.opts.persist.defaults];
  }

  async setPatterns(sessionId: string, patterns: string[]): Promise<PersistState> {
    const list = PatternList.safeParse(patterns);
    if (!list.success) throw fatal('persist_pattern_invalid', 'persisted paths must be a list of at most 256 strings');
    let parsed: PersistPattern[];
    try { parsed = parsePatterns(list.data); } catch (err) { throw fatal('persist_pattern_invalid', errorMessage(err)); }
    const store = await this.store(sessionId);
    await this.locked(sessionId, () => store.writePatterns(parsed.map((p) => p.text)));
    const state = await this.state(sessionId);
    this.opts.hub?.publish({ type: 'persist.changed', persist: state });
    return state;
  }

  /** The session's list and the files the next call gets: those of CURRENT under the list (a file under a path no
   *  longer persisted is not placed any more and leaves the store with the next commit). */
  async state(sessionId: string): Promise<PersistState> {
    if (!await this.known(sessionId)) return { sessionId, patterns: [...this.opts.persist.defaults], generation: 0, files: [], totalBytes: 0, fileCount: 0 };
    const store = await this.store(sessionId);
    const current = await store.current();
    const patterns = await this.effectivePatterns(sessionId);
    const files = [...current.entries.values()]
      .filter((e): e is FileEntry => e.type === 'file' && patterns.some((pat) => pat.matches(e.path)))
      .sort((a, b) => (a.path < b.path ? -1 : 1));
    return {
      sessionId,
      patterns: await this.patterns(sessionId),
      generation: current.generation,
      files: files.slice(0, STATE_FILES_LIMIT).map((f) => ({ path: f.path, size: f.size, sha256: f.sha256, mode: f.mode })),
      totalBytes: files.reduce((n, f) => n + f.size, 0),
      fileCount: files.length,
    };
  }

  // ---- PersistHistory ------------------------------------------------------------------------------------------

  async generations(sessionId: string): Promise<{ current: number; generations: PersistGeneration[] }> {
    if (!await this.known(sessionId)) return { current: 0, generations: [] };
    const store = await this.store(sessionId);
    const generations: PersistGeneration[] = [];
    for (const g of await store.keptGenerations()) {
      const kept = await store.generation(g);
      if (!kept) continue;
      const t = totals(kept.manifest);
      generations.push({ generation: g, createdAt: kept.createdAt, fileCount: t.files, totalBytes: t.bytes, rolledBackFrom: kept.rolledBackFrom });
    }
    return { current: (await store.current()).generation, generations };
  }

  async entries(sessionId: string, generation: number, page: { limit: number; cursor: string | null }): Promise<{ items: PersistEntry[]; nextCursor: string | null }> {
    const manifest = await this.keptManifest(sessionId, generation);
    const all = [...manifest.entries.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    const start = page.cursor ? Math.max(0, Number.parseInt(page.cursor, 10) || 0) : 0;
    const items = all.slice(start, start + page.limit).map((e): PersistEntry => ({
      path: e.path, type: e.type, size: e.type === 'file' ? e.size : 0, mode: e.type === 'symlink' ? 0o777 : e.mode, mtimeMs: e.mtimeMs,
      sha256: e.type === 'file' ? e.sha256 : null, target: e.type === 'symlink' ? e.target : null,
    }));
    return { items, nextCursor: start + page.limit < all.length ? String(start + page.limit) : null };
  }

  async readFile(sessionId: string, generation: number, guestPath: string, offset: number, length: number): Promise<{ size: number; data: Buffer }> {
    const entry = (await this.keptManifest(sessionId, generation)).entries.get(guestPath);
    if (entry?.type !== 'file') throw fatal(PERSIST_NOT_FOUND, `generation ${generation} of session ${sessionId} has no file ${guestPath}`);
    const store = await this.store(sessionId);
    return { size: entry.size, data: await store.readBlobRange(entry.sha256, offset, length) };
  }

  async rollback(sessionId: string, generation: number): Promise<PersistState> {
    if (!await this.known(sessionId)) throw fatal(PERSIST_NOT_FOUND, `session ${sessionId} has no persisted files`);
    const store = await this.store(sessionId);
    await this.locked(sessionId, () => store.rollback(generation, this.opts.persist.keepGenerations));
    const state = await this.state(sessionId);
    this.opts.hub?.publish({ type: 'persist.changed', persist: state });
    return state;
  }

  private async keptManifest(sessionId: string, generation: number): Promise<Manifest> {
    const kept = await this.known(sessionId) ? await (await this.store(sessionId)).generation(generation) : null;
    if (!kept) throw fatal(PERSIST_NOT_FOUND, `session ${sessionId} keeps no generation ${generation}`);
    return kept.manifest;
  }

  // ---- CallPersistence -----------------------------------------------------------------------------------------

  async prepare(sessionId: string, sandbox: GuestOps): Promise<ShellState> {
    const store = await this.store(sessionId);
    return this.locked(sessionId, async () => {
      const manifest = await store.current();
      const patterns = await this.effectivePatterns(sessionId);
      const mirror = await this.mirror(sessionId);
      const inScope = (p: string) => patterns.some((pat) => pat.matches(p)) && !(mirror?.covers(p) ?? false);
      const notes: string[] = [];
      let placement: Placement;
      let mirrorPlaced = true;
      try {
        placement = await this.copyIn(store, sandbox, [...manifest.entries.values()].filter((e) => inScope(e.path)));
        if (mirror) {
          try { await mirror.copyIn(sandbox); } catch (err) {
            if (!(err instanceof GuestError)) throw err;
            mirrorPlaced = false;
            notes.push(`Memory stores could not be placed whole in this sandbox (${guestReason(err)}); what this call changes under ${ALWAYS_PERSISTED[1]} is not saved.`);
          }
        }
      } catch (err) {
        throw asSandboxFailure('copy-in', err);
      }
      if (placement.missing.size > 0) notes.unshift(missingNote(placement));
      this.bases.set(sandbox, { sessionId, manifest, mirror, mirrorPlaced, missing: placement.missing, notes });
      return manifest.shell ?? { cwd: DEFAULT_SHELL.cwd, env: {} };
    });
  }

  async commit(sessionId: string, sandbox: GuestOps, shell: ShellState | null): Promise<CommitReport> {
    const store = await this.store(sessionId);
    return this.locked(sessionId, async () => {
      const remembered = this.bases.get(sandbox);
      const placementNotes = remembered?.sessionId === sessionId ? remembered.notes.splice(0) : [];
      const report = await this.commitStore(sessionId, store, sandbox, shell);
      report.notes.unshift(...placementNotes);
      const mirror = remembered?.sessionId === sessionId && remembered.mirrorPlaced ? remembered.mirror : null;
      if (mirror) {
        // Memory stores go back to the host directories the SDK syncs (independently of the store's quota).
        try { report.notes.push(...await mirror.copyOut(sandbox, this.opts.persist)); } catch (err) { throw asSandboxFailure('memory copy-out', err); }
      }
      return report;
    });
  }

  // ---- commit ----------------------------------------------------------------------------------------------------

  private async commitStore(sessionId: string, store: SessionStore, sandbox: GuestOps, shellIn: ShellState | null): Promise<CommitReport> {
    const current = await store.current();
    const remembered = this.bases.get(sandbox);
    const base = remembered?.sessionId === sessionId ? remembered.manifest : current;
    const mirror = remembered?.sessionId === sessionId ? remembered.mirror : null;
    const missing = remembered?.sessionId === sessionId ? remembered.missing : new Map<string, FileEntry>();
    const room = roomFor(sandbox.writableBytes);
    const patterns = await this.effectivePatterns(sessionId);
    const inScope = (p: string) => patterns.some((pat) => pat.matches(p)) && !(mirror?.covers(p) ?? false);
    const { maxBytes, maxFiles } = this.opts.persist;
    const notes: string[] = [];
    const keep = (extra: string[] = []): CommitReport => ({ generation: current.generation, notes: [...notes, ...extra] });

    let changes: Map<string, ManifestEntry | null>;
    let toFetch: WalkedFile[];
    let scan: Scan;
    try {
      // 1. A cheap walk without hashes: quotas are checked before the guest hashes or sends anything.
      const sizes = await this.scan(sandbox, patterns, inScope, false);
      const overQuota = quotaProblem(sizes, maxBytes, maxFiles);
      if (overQuota) return keep([overQuota]);
      const kept = [...missing.values()].filter((e) => !sizes.entries.has(e.path));
      const tooBig = room === null ? null : roomProblem([...sizes.entries.values(), ...kept], current, room);
      if (tooBig) return keep([tooBig]);
      // 2. The walk with content hashes (or, with changeDetection 'mtime', the stat walk and a size/mtime/mode quick
      //    check), and the diff against the generation this sandbox started from.
      const byHash = (this.opts.persist.changeDetection ?? 'hash') === 'hash';
      scan = byHash ? await this.scan(sandbox, patterns, inScope, true) : sizes;
      const again = quotaProblem(scan, maxBytes, maxFiles);
      if (again) return keep([again]);
      ({ changes, toFetch } = diff(base, scan, inScope, missing));
      // A metadata-only change reuses the base's blob; if a concurrent commit pruned it meanwhile, fetch the data.
      const fetching = new Set(toFetch.map((f) => f.path));
      for (const [p, e] of changes) {
        if (e?.type !== 'file' || fetching.has(p) || await store.hasBlob(e.sha256)) continue;
        const walked = scan.entries.get(p);
        if (walked?.type === 'file') toFetch.push(walked);
      }
    } catch (err) {
      throw asSandboxFailure('copy-out', err);
    }
    notes.push(...scan.refusals.notes('Not persisted (refused):'));

    // 3. Fetch only what changed, re-hash on the host, stage blobs.
    const txn = await store.begin();
    try {
      const fetchProblems = new Refusals();
      let received = 0;
      for (const batch of batches(toFetch.filter((e) => e.size <= LARGE_FILE))) {
        const got = await this.fetchBatch(sandbox, batch, fetchProblems);
        const blobs: Array<[string, Buffer]> = [];
        for (const [entry, { data, hash }] of got) {
          received += data.length;
          if (received > maxBytes) {
            await txn.abort();
            return keep([`persist quota exceeded: more than ${formatBytes(maxBytes)} of changed files; nothing from this call was persisted and the previous state (generation ${current.generation}) is kept. Delete files or narrow the persisted paths.`]);
          }
          if (entry.sha256 === null) {
            // A single-file root: known by content only now.
            const fetched: FileEntry = { type: 'file', path: entry.path, size: data.length, mode: entry.mode, mtimeMs: entry.mtimeMs, sha256: hash };
            const before = base.entries.get(entry.path);
            if (!sameEntry(before, fetched)) changes.set(entry.path, fetched);
            if (before?.type === 'file' && before.sha256 === hash && await store.hasBlob(hash)) continue;
          }
          blobs.push([hash, data]);
        }
        await forEachLimit(blobs, IO_PARALLEL, ([hash, data]) => txn.addBlob(hash, data));
        for (const entry of batch) if (!got.has(entry)) changes.delete(entry.path);
      }
      for (const entry of toFetch.filter((e) => e.size > LARGE_FILE)) {
        received += entry.size;
        if (received > maxBytes) {
          await txn.abort();
          return keep([`persist quota exceeded: more than ${formatBytes(maxBytes)} of changed files; nothing from this call was persisted and the previous state (generation ${current.generation}) is kept. Delete files or narrow the persisted paths.`]);
        }
        const hash = await this.fetchLarge(sandbox, entry, txn, fetchProblems);
        if (hash === null) { changes.delete(entry.path); continue; }
        if (entry.sha256 === null) {
          const fetched: FileEntry = { type: 'file', path: entry.path, size: entry.size, mode: entry.mode, mtimeMs: entry.mtimeMs, sha256: hash };
          if (!sameEntry(base.entries.get(entry.path), fetched)) changes.set(entry.path, fetched);
        }
      }
      notes.push(...fetchProblems.notes('Not persisted (kept the previous version):'));

      // 4. Shell state.
      const { shell: cleanShell, dropped } = shellIn ? sanitizeShell(shellIn) : { shell: null, dropped: [] };
      if (dropped.length > 0) notes.push(`Not carried to the next call: exported ${dropped.join(', ')}.`);
      const nextShell = cleanShell ?? current.shell;

      // 5. Merge onto CURRENT (not the base: a concurrent call of the same session may have committed meanwhile).
      const merged = new Map<string, ManifestEntry>();
      for (const [p, e] of current.entries) if (inScope(p)) merged.set(p, e);
      for (const [p, e] of changes) { if (e) merged.set(p, e); else merged.delete(p); }
      const entries = dropOrphans(merged);
      const changed = entries.size !== current.entries.size || [...entries].some(([p, e]) => !sameEntry(e, current.entries.get(p)))
        || !sameShell(nextShell, current.shell);
      const count = entries.size;
      const bytes = totals({ generation: 0, entries, shell: null }).bytes;
      if (count > maxFiles || bytes > maxBytes) {
        await txn.abort();
        return keep([quotaMessage(count, bytes, maxFiles, maxBytes, current.generation)]);
      }
      const wontFit = room === null ? null : roomProblem([...entries.values()], current, room);
      if (wontFit) {
        await txn.abort();
        return keep([wontFit]);
      }

      let generation = current.generation;
      if (changed) {
        generation = current.generation + 1;
        await txn.finish({ generation, entries, shell: nextShell });
        await store.prune(this.opts.persist.keepGenerations).catch((err) => log.warn(`session ${sessionId}: pruning failed: ${errorMessage(err)}`));
      } else {
        await txn.abort();
      }

      // In per-session mode the same sandbox serves the next call: its base is now what was just committed, and a
      // file still missing from it is one the call left alone.
      if (remembered?.sessionId === sessionId) {
        const next = await store.current();
        const stillMissing = new Map([...missing].filter(([p, e]) => !scan.entries.has(p) && sameEntry(next.entries.get(p), e)));
        this.bases.set(sandbox, { ...remembered, manifest: next, missing: stillMissing });
      }
      if (changed) this.opts.hub?.publish({ type: 'persist.changed', persist: await this.state(sessionId) });
      return changed ? { generation, notes, changes: changeList(current.entries, entries) } : { generation, notes };
    } catch (err) {
      await txn.abort();
      if (err instanceof PerimeterError) throw err;
      throw asSandboxFailure('copy-out', err);
    }
  }

  /** Walks every root of the patterns. Entries outside the patterns are ignored; hostile ones are refused. */
  private async scan(sandbox: GuestOps, patterns: PersistPattern[], inScope: (p: string) => boolean, hashed: boolean): Promise<Scan> {
    const { maxFiles } = this.opts.persist;
    const entries = new Map<string, Admitted>();
    const refusals = new Refusals();
    const scannedRoots: string[] = [];
    let truncated = false;
    for (const root of walkRoots(patterns)) {
      try {
        const st = await sandbox.stat(root);
        if (st === null) { scannedRoots.push(root); continue; }
        if (typeof st !== 'object') throw new Error(`the guest answered stat(${root}) with garbage`);
        if (st.type === 'file') {
          // A single-file pattern: the walk cannot hash a root, so the file is fetched and compared by content.
          const admitted = admitEntry({ ...st, path: root }, parentOf(root), false);
          if (typeof admitted === 'string') refusals.add(root, admitted);
          else if (inScope(root)) entries.set(root, admitted);
          scannedRoots.push(root);
          continue;
        }
        if (st.type !== 'dir') { refusals.add(root, 'a persisted path must be a directory or a regular file'); continue; }
        const remaining = Math.max(0, maxFiles - entries.size);
        const walked = await sandbox.walk(root, { hash: hashed, maxEntries: remaining + 1 });
        if (!walked || !Array.isArray(walked.entries)) throw new Error(`the guest answered walk(${root}) with garbage`);
        if (walked.truncated || walked.entries.length > remaining) truncated = true;
        if (inScope(root)) entries.set(root, { type: 'dir', path: root, mode: 0o755, mtimeMs: 0 });
        const admittedAll: Admitted[] = [];
        const dirs = new Set<string>([root]);
        const refusedDirs = new Set<string>();
        const seen = new Set<string>();
        for (const raw of walked.entries.slice(0, remaining + 1)) {
          const admitted = admitEntry(raw, root, hashed);
          if (typeof admitted === 'string') {
            refusals.add(raw?.path, admitted);
            if (raw?.type === 'dir' && typeof raw.path === 'string') refusedDirs.add(raw.path);
            continue;
          }
          if (seen.has(admitted.path)) { refusals.add(admitted.path, 'listed twice by the guest'); continue; }
          seen.add(admitted.path);
          if (admitted.type === 'dir') dirs.add(admitted.path);
          admittedAll.push(admitted);
        }
        // Parents sort before their children: an entry is kept only below a kept directory.
        const keptDirs = new Set<string>([root]);
        for (const a of admittedAll.sort((x, y) => (x.path < y.path ? -1 : x.path > y.path ? 1 : 0))) {
          const parent = parentOf(a.path);
          if (!keptDirs.has(parent)) {
            if (!refusedDirs.has(parent) && !dirs.has(parent)) refusals.add(a.path, 'its parent is not a directory');
            if (a.type === 'dir') refusedDirs.add(a.path);
            continue;
          }
          if (a.type === 'dir') keptDirs.add(a.path);
          if (inScope(a.path)) entries.set(a.path, a);
        }
        if (!truncated) scannedRoots.push(root);
      } catch (err) {
        if (!(err instanceof GuestError)) throw err;
        refusals.add(root, `could not be listed (${err.code}); its previous state is kept`);
      }
    }
    return { entries, scannedRoots, refusals, truncated };
  }

  /** Fetches one batch; a batch the guest refuses is retried file by file so one bad file cannot sink the rest. */
  private async fetchBatch(sandbox: GuestOps, batch: WalkedFile[], problems: Refusals): Promise<Map<WalkedFile, { data: Buffer; hash: string }>> {
    const out = new Map<WalkedFile, { data: Buffer; hash: string }>();
    const want = new Map(batch.map((e) => [e.path, e]));
    const maxTotalBytes = batch.reduce((n, e) => n + e.size, 0);
    let got;
    try {
      got = await sandbox.getFiles(batch.map((e) => e.path), { maxTotalBytes });
    } catch (err) {
      if (!(err instanceof GuestError)) throw err;
      if (batch.length === 1) { problems.add(batch[0]!.path, `could not be copied out (${err.code})`); return out; }
      for (const e of batch) for (const [k, v] of await this.fetchBatch(sandbox, [e], problems)) out.set(k, v);
      return out;
    }
    if (!Array.isArray(got)) throw new Error('the guest answered getFiles with garbage');
    const seen = new Set<string>();
    let total = 0;
    for (const f of got) {
      const entry = typeof f?.path === 'string' ? want.get(f.path) : undefined;
      if (!entry || seen.has(f.path) || !Buffer.isBuffer(f.data)) { problems.add(f?.path, 'sent by the guest without being asked for'); continue; }
      seen.add(f.path);
      total += f.data.length;
      if (total > maxTotalBytes) { problems.add(f.path, 'the guest sent more data than the walk announced'); continue; }
      const hostHash = await sha256Yielding(f.data);
      if (f.sha256 !== hostHash) { problems.add(f.path, 'the guest reported a hash that does not match the data'); continue; }
      if ((entry.sha256 !== null && hostHash !== entry.sha256) || f.data.length !== entry.size) { problems.add(f.path, 'changed while being copied out'); continue; }
      out.set(entry, { data: f.data, hash: hostHash });
    }
    for (const e of batch) if (!seen.has(e.path)) problems.add(e.path, 'not returned by the guest');
    return out;
  }

  /** Copies one large file out in ranges, hashing on the host and streaming into staging; null when refused. */
  private async fetchLarge(sandbox: GuestOps, entry: WalkedFile, txn: CommitTxn, problems: Refusals): Promise<string | null> {
    const writer = await txn.openBlobWriter();
    const digest = createHash('sha256');
    let offset = 0;
    try {
      while (offset < entry.size) {
        const want = Math.min(CHUNK_BYTES, entry.size - offset);
        let got: { data: Buffer; size: number };
        try { got = await sandbox.readFile(entry.path, { offset, length: want }); } catch (err) {
          if (!(err instanceof GuestError)) throw err;
          problems.add(entry.path, `could not be copied out (${err.code})`);
          await writer.abort();
          return null;
        }
        if (!Buffer.isBuffer(got?.data) || got.data.length === 0 || got.data.length > want || got.size !== entry.size) {
          problems.add(entry.path, 'changed while being copied out');
          await writer.abort();
          return null;
        }
        digest.update(got.data);
        await writer.write(got.data);
        offset += got.data.length;
      }
      const hash = digest.digest('hex');
      if (entry.sha256 !== null && hash !== entry.sha256) { problems.add(entry.path, 'changed while being copied out'); await writer.abort(); return null; }
      await writer.finish(hash);
      return hash;
    } catch (err) {
      await writer.abort().catch(() => {});
      throw err;
    }
  }

  // ---- copy-in ---------------------------------------------------------------------------------------------------

  /** Places `entries` in the guest: small files in batches, then large ones in parts, smallest first, then empty
   *  directories and symlinks. A file the guest refuses (GuestError: no space left…) or the store cannot give back
   *  (a damaged blob) is left out and reported; any other failure means the sandbox is broken and is thrown. */
  private async copyIn(store: SessionStore, sandbox: GuestOps, entries: ManifestEntry[]): Promise<Placement> {
    const placement: Placement = { missing: new Map(), reasons: new Map() };
    const leaveOut = (f: FileEntry, reason: string) => {
      placement.missing.set(f.path, f);
      placement.reasons.set(reason, [...placement.reasons.get(reason) ?? [], f.path]);
    };
    const files = entries.filter((e): e is FileEntry => e.type === 'file');
    for (const batch of batches(files.filter((e) => e.size <= LARGE_FILE))) {
      const put: PutFile[] = [];
      await forEachLimit(batch, IO_PARALLEL, async (f) => {
        try { put.push({ path: f.path, data: await store.readBlob(f.sha256), mode: f.mode, mtimeMs: f.mtimeMs }); } catch (err) {
          log.error(`session ${store.sessionId}: blob of ${showPath(f.path)} unreadable: ${errorMessage(err)}`);
          leaveOut(f, 'damaged in the companion\'s store');
        }
      });
      put.sort((a, b) => (a.path < b.path ? -1 : 1));
      try { await sandbox.putFiles(put, []); } catch (err) {
        if (!(err instanceof GuestError)) throw err;
        // Retried one by one: the files that fit are placed, the others reported.
        for (const one of put) {
          try { await sandbox.putFiles([one], []); } catch (e) {
            if (!(e instanceof GuestError)) throw e;
            leaveOut(batch.find((f) => f.path === one.path)!, guestReason(e));
          }
        }
      }
    }
    for (const f of files.filter((e) => e.size > LARGE_FILE).sort((a, b) => a.size - b.size)) {
      // Larger than one agent message: placed as parts next to the target, joined in the guest.
      const parts: string[] = [];
      const tag = randomBytes(6).toString('hex');
      let reading = true;
      try {
        for await (const chunk of store.readBlobChunks(f.sha256, CHUNK_BYTES)) {
          reading = false;
          const part = `${parentOf(f.path)}/.perimeter-part-${tag}-${parts.length}`;
          parts.push(part);
          await sandbox.putFiles([{ path: part, data: chunk, mode: 0o600 }], []);
          reading = true;
        }
        reading = false;
        await joinParts(sandbox, f.path, f.mode, f.mtimeMs, parts);
      } catch (err) {
        if (!(err instanceof GuestError) && !reading) throw err;
        // The parts already placed go, so the space they took is free for the call.
        await sandbox.putFiles([], parts).catch((e) => { if (!(e instanceof GuestError)) throw e; });
        if (err instanceof GuestError) leaveOut(f, guestReason(err));
        else {
          log.error(`session ${store.sessionId}: blob of ${showPath(f.path)} unreadable: ${errorMessage(err)}`);
          leaveOut(f, 'damaged in the companion\'s store');
        }
      }
    }
    // Directories that contain nothing placed would not exist otherwise; symlinks are recreated as data.
    const parents = new Set<string>();
    for (const e of entries) if (!placement.missing.has(e.path)) parents.add(parentOf(e.path));
    const records: MaterialiseRecord[] = [];
    for (const e of entries) {
      if (e.type === 'dir' && !parents.has(e.path)) records.push({ dir: e.path });
      if (e.type === 'symlink') records.push({ link: e.path, target: e.target });
    }
    await materialise(sandbox, records);
    return placement;
  }

  // ---- helpers ---------------------------------------------------------------------------------------------------

  private async effectivePatterns(sessionId: string): Promise<PersistPattern[]> {
    return parsePatterns([...await this.patterns(sessionId), ...ALWAYS_PERSISTED]);
  }

  private async mirror(sessionId: string): Promise<MemoryMirror | null> {
    if (!this.opts.memoryMounts) return null;
    const mounts = await this.opts.memoryMounts(sessionId);
    return mounts.length > 0 ? new MemoryMirror(mounts) : null;
  }

  /** Whether the session has a store (reading the state of an unknown session creates nothing). */
  private async known(sessionId: string): Promise<boolean> {
    const bad = checkSessionId(sessionId);
    if (bad) throw fatal('persist_session_invalid', bad);
    if (this.stores.has(sessionId)) return true;
    try { await fsp.lstat(path.join(this.sessionsDir, sessionId)); return true; } catch { return false; }
  }

  private store(sessionId: string): Promise<SessionStore> {
    const bad = checkSessionId(sessionId);
    if (bad) return Promise.reject(fatal('persist_session_invalid', bad));
    let s = this.stores.get(sessionId);
    if (!s) {
      s = SessionStore.open(this.sessionsDir, sessionId, this.opts.persist.keepGenerations);
      s.catch(() => this.stores.delete(sessionId));
      this.stores.set(sessionId, s);
    }
    return s;
  }

  private locked<T>(sessionId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(sessionId) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.locks.set(sessionId, tail);
    void tail.then(() => { if (this.locks.get(sessionId) === tail) this.locks.delete(sessionId); });
    return run;
  }
}

/** Paths of files and symlinks a commit added, changed and removed (directories are implied by their contents). */
function changeList(before: ReadonlyMap<string, ManifestEntry>, after: ReadonlyMap<string, ManifestEntry>): NonNullable<CommitReport['changes']> {
  const added: string[] = []; const changed: string[] = []; const removed: string[] = [];
  for (const [p, e] of after) {
    if (e.type === 'dir') continue;
    const b = before.get(p);
    if (!b || b.type === 'dir') added.push(p);
    else if (!sameEntry(b, e)) changed.push(p);
  }
  for (const [p, e] of before) {
    if (e.type === 'dir') continue;
    const a = after.get(p);
    if (!a || a.type === 'dir') removed.push(p);
  }
  return { added: added.sort(), changed: changed.sort(), removed: removed.sort() };
}

/** The changes a scan makes to the base generation: entry = added or modified, null = deleted. A file `missing` from
 *  the sandbox (never placed) is not deleted by its absence, only with its directory. */
function diff(base: Manifest, scan: Scan, inScope: (p: string) => boolean, missing: ReadonlyMap<string, FileEntry>): { changes: Map<string, ManifestEntry | null>; toFetch: WalkedFile[] } {
  const changes = new Map<string, ManifestEntry | null>();
  const toFetch: WalkedFile[] = [];
  for (const [p, e] of scan.entries) {
    const b = base.entries.get(p);
    if (e.type === 'file') {
      if (b?.type === 'file' && e.sha256 !== null && b.sha256 === e.sha256 && b.size === e.size) {
        // Same content: only a mode change is recorded (mtime alone is not a change; see the module header).
        if (b.mode !== e.mode) changes.set(p, { ...b, mode: e.mode, mtimeMs: e.mtimeMs });
        continue;
      }
      if (e.sha256 === null) {
        // Without a guest hash (single-file roots; changeDetection 'mtime'): unchanged when size, mtime (whole ms, as
        // copy-in restores it) and mode match the stored entry; otherwise fetched and compared by content.
        if (b?.type === 'file' && b.size === e.size && b.mode === e.mode && Math.floor(b.mtimeMs) === Math.floor(e.mtimeMs)) continue;
        toFetch.push(e);
        continue;
      }
      toFetch.push(e);
      changes.set(p, { type: 'file', path: p, size: e.size, mode: e.mode, mtimeMs: e.mtimeMs, sha256: e.sha256 });
    } else if (e.type === 'dir') {
      if (b?.type !== 'dir') changes.set(p, { type: 'dir', path: p, mode: 0o755, mtimeMs: e.mtimeMs });
    } else if (!(b?.type === 'symlink' && b.target === e.target)) {
      changes.set(p, { type: 'symlink', path: p, target: e.target, mtimeMs: e.mtimeMs });
    }
  }
  for (const p of base.entries.keys()) {
    if (scan.entries.has(p) || !inScope(p)) continue;
    const parent = parentOf(p);
    if (missing.has(p) && !(base.entries.get(parent)?.type === 'dir' && !scan.entries.has(parent))) continue;
    if (scan.scannedRoots.some((r) => isWithin(p, r))) changes.set(p, null);
  }
  return { changes, toFetch };
}

/** Drops entries whose parent is recorded as something other than a directory (possible only after a merge). */
function dropOrphans(entries: Map<string, ManifestEntry>): Map<string, ManifestEntry> {
  const out = new Map<string, ManifestEntry>();
  const dropped = new Set<string>();
  for (const p of [...entries.keys()].sort()) {
    const parent = parentOf(p);
    const pe = entries.get(parent);
    if (dropped.has(parent) || (pe && pe.type !== 'dir')) { dropped.add(p); continue; }
    out.set(p, entries.get(p)!);
  }
  return out;
}

function* batches<T extends { size: number }>(items: T[]): Generator<T[]> {
  let batch: T[] = [];
  let bytes = 0;
  for (const item of items) {
    if (batch.length > 0 && (bytes + item.size > BATCH_BYTES || batch.length >= BATCH_FILES)) { yield batch; batch = []; bytes = 0; }
    batch.push(item);
    bytes += item.size;
  }
  if (batch.length > 0) yield batch;
}

function quotaProblem(scan: Scan, maxBytes: number, maxFiles: number): string | null {
  let bytes = 0;
  for (const e of scan.entries.values()) if (e.type === 'file') bytes += e.size;
  if (scan.truncated) return `persist quota exceeded: more than ${maxFiles} files and directories under the persisted paths; nothing from this call was persisted and the previous state is kept. Delete files or narrow the persisted paths.`;
  if (scan.entries.size > maxFiles || bytes > maxBytes) return quotaMessage(scan.entries.size, bytes, maxFiles, maxBytes, null, largest(scan));
  return null;
}

function largest(scan: Scan): string {
  const files = [...scan.entries.values()].filter((e) => e.type === 'file').sort((a, b) => (b as { size: number }).size - (a as { size: number }).size).slice(0, 3);
  return files.length ? ` Largest: ${files.map((f) => `${showPath(f.path)} (${formatBytes((f as { size: number }).size)})`).join(', ')}.` : '';
}

function quotaMessage(count: number, bytes: number, maxFiles: number, maxBytes: number, generation: number | null, detail = ''): string {
  const what = count > maxFiles ? `${count} files and directories (limit ${maxFiles})` : `${formatBytes(bytes)} (limit ${formatBytes(maxBytes)})`;
  const kept = generation === null ? 'the previous state is kept' : `the previous state (generation ${generation}) is kept`;
  return `persist quota exceeded: the persisted paths hold ${what}; nothing from this call was persisted and ${kept}.${detail} Delete files or narrow the persisted paths.`;
}

/** What a fresh sandbox with `writableBytes` of writable space can give the persisted files (null: no limit known). */
function roomFor(writableBytes: number | undefined): { limit: number; writable: number } | null {
  if (writableBytes === undefined || !Number.isFinite(writableBytes) || writableBytes <= 0) return null;
  return { limit: Math.max(0, writableBytes - Math.max(WORKING_ROOM_BYTES, Math.floor(writableBytes / 8))), writable: writableBytes };
}

type Sized = { type: string; path: string; size?: number };

/** The writable space placing `entries` takes in a fresh guest: whole pages per file and symlink, plus one chunk for
 *  the join of a file copied in parts (its parts and the growing file exist together). */
function footprint(entries: readonly Sized[]): number {
  let bytes = 0;
  let parts = false;
  for (const e of entries) {
    if (e.type === 'file') { bytes += Math.ceil((e.size ?? 0) / PAGE_BYTES) * PAGE_BYTES; if ((e.size ?? 0) > LARGE_FILE) parts = true; }
    else if (e.type === 'symlink') bytes += PAGE_BYTES;
  }
  return bytes + (parts ? CHUNK_BYTES : 0);
}

/** A note refusing a generation that a fresh sandbox could not hold, unless it is no larger than the current one. */
function roomProblem(entries: readonly Sized[], current: Manifest, room: { limit: number; writable: number }): string | null {
  const need = footprint(entries);
  if (need <= room.limit || need <= footprint([...current.entries.values()])) return null;
  const files = entries.filter((e) => e.type === 'file').sort((a, b) => (b.size ?? 0) - (a.size ?? 0)).slice(0, 3);
  const largest = files.length ? ` Largest: ${files.map((f) => `${showPath(f.path)} (${formatBytes(f.size ?? 0)})`).join(', ')}.` : '';
  return `not persisted: the persisted paths would need ${formatBytes(need)} in a sandbox, more than a fresh one can hold `
    + `(${formatBytes(room.limit)} of its ${formatBytes(room.writable)} writable space; the rest stays free for the call itself); `
    + `nothing from this call was persisted and the previous state (generation ${current.generation}) is kept.${largest} `
    + 'Delete files or narrow the persisted paths.';
}

/** Tells the model which saved files this sandbox lacks, why, and how to drop them. */
function missingNote(placement: Placement): string {
  const parts = [...placement.reasons].map(([reason, paths]) => {
    const shown = paths.slice(0, 10).map((p) => `${showPath(p)} (${formatBytes(placement.missing.get(p)?.size ?? 0)})`).join(', ');
    return `${reason}: ${shown}${paths.length > 10 ? ` and ${paths.length - 10} more` : ''}`;
  });
  return `Saved files missing from this sandbox (${parts.join('; ')}). They stay saved unchanged; to drop one, `
    + 'overwrite it (e.g. `: > FILE`) and delete it in a later call, or delete its directory. '
    + 'A larger sandbox (sandbox.diskMiB and sandbox.memoryMiB in the companion\'s configuration) would hold them.';
}

/** A guest error in the model's terms: the errno's meaning, never a host detail. */
function guestReason(err: GuestError): string {
  const known: Record<string, string> = { ENOSPC: 'no space left on device', EDQUOT: 'disk quota exceeded', EFBIG: 'file too large', ENOMEM: 'out of memory' };
  return known[err.code] ?? err.code;
}

/** Wraps a failure of a copy step. Host-side failures (the store's files) are described without host paths; their
 *  details go to the companion's log. */
function asSandboxFailure(step: string, err: unknown): PerimeterError {
  if (err instanceof PerimeterError) return err;
  let what = errorMessage(err);
  const host = err as NodeJS.ErrnoException;
  if (!(err instanceof GuestError) && typeof host?.syscall === 'string') {
    log.error(`persisted files: ${step}: ${errorMessage(err)}`);
    what = `the companion's file store on the host failed: ${host.code ?? 'EIO'}`;
  }
  return transient('persist_sandbox_failed', `persisted files: ${step} failed (${what}); the previous state is kept`, err);
}
