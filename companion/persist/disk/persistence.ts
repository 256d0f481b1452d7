// CallPersistence on session disks (store.ts): a call's VM gets a fresh copy-on-write layer over the session's
// CURRENT generation, the guest mounts the disk and finds every persisted root in place (directories bind-mounted, so
// nothing is copied however large the workspace is), and at the end of the call the guest seals the filesystem, QEMU
// is stopped (every write flushed into the layer), the VM is killed and the layer becomes the next generation.
// Critical path: a session in per-call mode keeps its next call's VM prepared between calls (restored, layer
// attached, disk mounted, seal path warmed up), so a call's persistence work is taking it and, at the end, seal +
// stop + fsync + two renames. A call that arrives early, or for a session without a prepared VM, prepares one on the
// spot (the cold path): the same steps, in the call.
// Invariants:
// - One writer per session disk (the store's writer slot): a session's calls run one after another in per-call mode;
//   a prepared VM holds the slot until its call takes it, and gives it up when idle for `preparedIdleMs`.
// - A call commits only when it ended normally and the guest sealed the filesystem: a timed-out call, a sandbox that
//   died or cannot seal, a filesystem the kernel found errors in, commits nothing; the result says so in one line.
// - No persisted state makes a session unusable: a generation whose filesystem cannot be mounted is left out of the
//   VM (the call runs without persisted files and saves nothing), and every result names the generation to roll
//   back to (`perimeter persist rollback --session ID --to N`); other sessions are never affected.
// - The persist list keeps its meaning (paths.ts): each root of the list is a root on the disk; memory stores keep
//   their host mirror (memory.ts) and are not put on the disk; the list itself, and sessions the file store still
//   holds files for, live in the file store (`files`): such a session's files are copied onto its disk once.
// - Nothing for the model names a host path.
// - Retention (retention.ts): a session whose control plane terminated it, or that the service says is archived or
//   terminated (`sessionEnd`, asked before each collection for disks with no recorded end and no call running), has its
//   end recorded on its disk; its disks are deleted persist.retainDays later.
// - Reading a generation from the host (entries, readFile) goes through a short-lived browse VM (`browse`) with a
//   throwaway layer over that generation, the filesystem mounted read-only (ro,noload) and walked without following
//   a symlink; the VM serves the requests for that generation that follow within seconds, then it is destroyed and
//   its layer discarded. The host never mounts or parses the filesystem;
//   every name the guest sends is checked (under a root, no empty, "." or ".." segment, components of at most 255
//   bytes) and one listing holds at most BROWSE_MAX_ENTRIES entries. A file is read only when the listing names it
//   as a regular file (so no symlink along its path is followed in the guest).
import { PERSIST_NOT_FOUND, type CallPersistence, type CommitReport, type MemoryMountResolver, type PersistHistory, type ShellState } from '../types';
import type { Sandbox } from '../../sandbox/types';
import type { SessionDiskPort } from '../../sandbox/session-disk';
import type { DiskRoot, DiskUsage } from '../../guest/session-disk';
import { GuestError } from '../../guest/types';
import type { EventHub } from '../../events';
import type { PersistEntry, PersistGeneration, PersistState } from '../../protocol/control';
import { PerimeterError, errorMessage, fatal, transient } from '../../errors';
import { logger } from '../../log';
import { ALWAYS_PERSISTED, type Persistence, type PersistSettings } from '../persistence';
import { formatBytes } from '../../protocol/format';
import { MemoryMirror } from '../memory';
import { isWithin, parsePatterns, showPath, walkRoots } from '../paths';
import { DEFAULT_SHELL, sanitizeShell } from '../shell';
import { DiskConflictError, DiskStore, type DiskGeneration, type PendingLayer } from './store';
import { collectDisks, disksWithoutEnd, markEnded, type CollectReport } from './retention';

const log = logger('persist:disk');
/** A prepared VM nobody took within this time is released (its layer discarded). */
const PREPARED_IDLE_MS = 10 * 60_000;
/** The session disk counts as full below this much free space. */
const FULL_BYTES = 16 * 1024 * 1024;
/** The guest agent's own directory (the disk is mounted below it): never a persisted root. */
const AGENT_DIR = '/.perimeter';
/** Where the guest agent mounts the session disk's persisted roots (`<DISK_ROOT><guest path>`). */
const DISK_ROOT = '/.perimeter/disk/root';
/** Entries one generation's listing holds at most. */
const BROWSE_MAX_ENTRIES = 50_000;
/** A listing is kept this long for the pages after the first (a generation never changes). */
const BROWSE_CACHE_MS = 60_000;
/** A browse VM nobody used for this long is destroyed. */
const BROWSE_IDLE_MS = 5_000;
const MAX_NAME_BYTES = 255;
/** persist.retainDays when the settings do not say. */
const DEFAULT_RETAIN_DAYS = 7;

export interface DiskPersistenceOptions {
  home: string;
  persist: PersistSettings;
  /** The file store: the persist list lives there, and files it holds for a session move onto the session's disk. */
  files: Persistence;
  hub?: EventHub;
  memoryMounts?: MemoryMountResolver;
  /** per-call: each call's VM is killed at commit and the session's next one prepared ahead; per-session: a
   *  sandbox lives on across calls, each commit switching it to a new layer. */
  mode: 'per-call' | 'per-session';
  preparedIdleMs?: number;
  /** How long a browse VM nobody uses is kept (default BROWSE_IDLE_MS). */
  browseIdleMs?: number;
  /** Entries one listing holds at most (default BROWSE_MAX_ENTRIES). */
  browseMaxEntries?: number;
  /** A fresh sandbox (no network) for reading a generation from the host; absent: generations cannot be browsed. */
  browse?: () => Promise<Sandbox>;
  /** Deletes the disks of sessions that ended `persist.retainDays` ago at start and then this often (retention.ts);
   *  absent: never (the CLI's `persist gc` does it). */
  collectEveryMs?: number;
  /** When a session ended for good (archived or terminated) as the service says, or null while it lives; absent:
   *  only the terminations the worker sees are recorded. */
  sessionEnd?: (sessionId: string) => Promise<number | null>;
}

/** A browse VM showing one generation (read-only, over a throwaway layer). */
interface Browser {
  readonly sessionId: string;
  readonly generation: number;
  readonly sandbox: Sandbox;
  readonly store: DiskStore;
  readonly pending: PendingLayer;
  idle: NodeJS.Timeout | null;
  dead: boolean;
}

/** One generation's files as a browse VM listed them, sorted by path. */
interface Listing { sessionId: string; generation: number; items: PersistEntry[]; byPath: Map<string, PersistEntry>; at: number; truncated: boolean }

/** A sandbox whose session disk is attached for one session. */
interface Attached {
  readonly sessionId: string;
  readonly store: DiskStore;
  readonly sandbox: Sandbox;
  readonly port: SessionDiskPort;
  /** The layer the VM writes, over the generation it started from. */
  pending: PendingLayer;
  readonly roots: DiskRoot[];
  /** The roots asked for (what a prepared VM must match to be used). */
  readonly rootPaths: string;
  readonly release: () => void;
  readonly mirror: MemoryMirror | null;
  mirrorPlaced: boolean;
  /** Set when the generation could not be mounted: the call runs without persisted files. */
  damaged: string | null;
  /** Notes for the model, reported with the commit. */
  notes: string[];
  /** The shell state the call starts from (its generation's, or what the file store kept for a migrated session). */
  shell: ShellState | null;
  /** The VM is gone or its layer was committed (per-call): nothing more to commit or discard. */
  done: boolean;
  /** Commits of a per-session sandbox, one after another. */
  committing: Promise<unknown>;
}

interface SessionState {
  /** The next call's VM, being prepared or ready. */
  ready: Promise<Attached | null> | null;
  idle: NodeJS.Timeout | null;
  /** How the session's calls open a sandbox (the orchestrator's, with its egress); set while its work item runs. */
  open: (() => Promise<Sandbox>) | null;
}

export class DiskPersistence implements CallPersistence, PersistHistory {
  private readonly stores = new Map<string, Promise<DiskStore>>();
  private readonly attached = new WeakMap<Sandbox, Attached>();
  private readonly sessions = new Map<string, SessionState>();
  private closed = false;
  private listing: Promise<Listing> | null = null;
  /** Browse VMs run one at a time. */
  private browsing: Promise<unknown> = Promise.resolve();
  private browser: Browser | null = null;
  private readonly unsubscribe: (() => void) | null;
  private readonly collectTimer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: DiskPersistenceOptions) {
    // A terminated session gets its end recorded on its disk: retention counts from there.
    this.unsubscribe = opts.hub?.subscribe((ev) => {
      if (ev.type !== 'session.transcript' || ev.entry.kind !== 'turn' || ev.entry.status !== 'terminated') return;
      markEnded(opts.home, ev.sessionId, ev.entry.ts).catch((err: Error) => log.warn(`session ${ev.sessionId}: recording its end failed: ${err.message}`));
    }) ?? null;
    if (opts.collectEveryMs) {
      const collect = () => { this.collect().catch((err: unknown) => log.warn(`deleting the disks of ended sessions failed: ${errorMessage(err)}`)); };
      collect();
      this.collectTimer = setInterval(collect, opts.collectEveryMs);
      this.collectTimer.unref();
    }
  }

  /** Deletes the disks of sessions that ended `retainDays` (default: persist.retainDays) ago (and forgets their open
   *  stores). */
  async collect(o: { retainDays?: number } = {}): Promise<CollectReport> {
    await this.recordEnds();
    const report = await collectDisks(this.opts.home, { retainDays: o.retainDays ?? this.opts.persist.retainDays ?? DEFAULT_RETAIN_DAYS });
    for (const id of report.removed) this.stores.delete(id);
    return report;
  }

  /** Records the end of every session with a disk, no recorded end and no call here that the service says ended
   *  (archived or terminated). A session the service does not know (404) keeps its disk; any other failure ends this
   *  round (asked again at the next collection). */
  private async recordEnds(): Promise<void> {
    const lookup = this.opts.sessionEnd;
    if (!lookup) return;
    for (const id of await disksWithoutEnd(this.opts.home)) {
      if (this.closed) return;
      if (this.sessions.has(id)) continue;
      let endedAt: number | null;
      try { endedAt = await lookup(id); } catch (err) {
        if ((err as { status?: unknown }).status === 404) { log.debug(`session ${id}: the service does not know it; its disk is kept`); continue; }
        log.warn(`asking the service whether sessions with a disk ended failed (${errorMessage(err)}); asking again at the next collection`);
        return;
      }
      if (endedAt !== null) await markEnded(this.opts.home, id, endedAt);
    }
  }

  patterns(sessionId: string): Promise<string[]> { return this.opts.files.patterns(sessionId); }

  async setPatterns(sessionId: string, patterns: string[]): Promise<PersistState> {
    await this.dropReady(sessionId);
    return this.opts.files.setPatterns(sessionId, patterns).then((s) => this.withDisk(s));
  }

  async state(sessionId: string): Promise<PersistState> { return this.withDisk(await this.opts.files.state(sessionId)); }

  /** The session's store (opened once per process). */
  store(sessionId: string): Promise<DiskStore> {
    let s = this.stores.get(sessionId);
    if (!s) {
      s = DiskStore.open(this.opts.home, sessionId, { bytes: this.opts.persist.maxBytes, keepGenerations: this.opts.persist.keepGenerations });
      s.catch(() => this.stores.delete(sessionId));
      this.stores.set(sessionId, s);
    }
    return s;
  }

  async acquire(sessionId: string, open: () => Promise<Sandbox>): Promise<Sandbox> {
    if (this.closed) throw transient('persist_closed', 'the companion is shutting down');
    const s = this.session(sessionId);
    s.open = open;
    const ready = this.takeReady(s);
    const a = ready ? await ready.catch(() => null) : null;
    if (a && await this.usable(a)) return a.sandbox;
    if (a) await this.drop(a);
    const sandbox = await open();
    try { await this.attach(sessionId, sandbox); } catch (err) { await sandbox.destroy().catch(() => {}); throw err; }
    return sandbox;
  }

  async prepare(sessionId: string, sandbox: Sandbox): Promise<ShellState> {
    let a = this.attached.get(sandbox);
    if (!a) a = await this.attach(sessionId, sandbox);
    if (a.sessionId !== sessionId) throw fatal('persist_disk_session', 'this sandbox holds another session\'s disk');
    if (a.mirror && !a.damaged) {
      try { await a.mirror.copyIn(sandbox); } catch (err) {
        if (!(err instanceof GuestError)) throw asFailure(a, 'placing the memory stores', err);
        a.mirrorPlaced = false;
        a.notes.push(`Memory stores could not be placed whole in this sandbox (${err.message}); what this call changes under ${ALWAYS_PERSISTED[1]} is not saved.`);
      }
    }
    return a.shell ?? { cwd: DEFAULT_SHELL.cwd, env: {} };
  }

  async commit(sessionId: string, sandbox: Sandbox, shell: ShellState | null, outcome: { timedOut?: boolean } = {}): Promise<CommitReport> {
    const a = this.attached.get(sandbox);
    if (!a || a.sessionId !== sessionId) throw fatal('persist_disk_session', 'commit on a sandbox that was not prepared for this session');
    const run = a.committing.then(() => this.commitAttached(a, shell, outcome));
    a.committing = run.catch(() => undefined);
    return run;
  }

  /** The session's work item ended: its prepared VM is released. */
  async endSession(sessionId: string): Promise<void> {
    const s = this.sessions.get(sessionId);
    if (!s) return;
    s.open = null;
    await this.dropReady(sessionId);
    this.sessions.delete(sessionId);
  }

  async generations(sessionId: string): Promise<{ current: number; generations: PersistGeneration[] }> {
    if (!this.stores.has(sessionId) && !await DiskStore.peek(this.opts.home, sessionId)) return { current: 0, generations: [] };
    const store = await this.store(sessionId);
    const generations = (await store.list()).map((g): PersistGeneration => ({
      generation: g.generation, createdAt: g.createdAt, fileCount: g.usage ? g.usage.inodes - g.usage.freeInodes : 0,
      totalBytes: g.usage ? g.usage.bytes - g.usage.availableBytes : 0, rolledBackFrom: g.rolledBackFrom ?? null,
    }));
    return { current: (await store.current()).generation, generations };
  }

  async entries(sessionId: string, generation: number, page: { limit: number; cursor: string | null }): Promise<{ items: PersistEntry[]; nextCursor: string | null; truncated: boolean }> {
    const { items, truncated } = await this.list(sessionId, generation);
    const start = page.cursor ? Math.max(0, Number.parseInt(page.cursor, 10) || 0) : 0;
    return { items: items.slice(start, start + page.limit), nextCursor: start + page.limit < items.length ? String(start + page.limit) : null, truncated };
  }

  async readFile(sessionId: string, generation: number, guestPath: string, offset: number, length: number): Promise<{ size: number; data: Buffer }> {
    const entry = (await this.list(sessionId, generation)).byPath.get(guestPath);
    if (entry?.type !== 'file') throw fatal(PERSIST_NOT_FOUND, `generation ${generation} of session ${sessionId} has no file ${showPath(guestPath)}`);
    if (offset >= entry.size) return { size: entry.size, data: Buffer.alloc(0) };
    const { data, size } = await this.inBrowseVm(sessionId, generation, (sb) => sb.readFile(DISK_ROOT + guestPath, { offset, length: Math.min(length, entry.size - offset) }));
    if (size !== entry.size || data.length > length) throw fatal('persist_disk_browse', `the browse VM answered inconsistently about ${showPath(guestPath)}`);
    return { size, data };
  }

  /** Makes generation `to`'s content the session's CURRENT again (as a new generation); waits for a running call and
   *  releases the session's prepared VM (it was made over the old CURRENT). */
  async rollback(sessionId: string, to: number): Promise<PersistState> {
    if (!this.stores.has(sessionId) && !await DiskStore.peek(this.opts.home, sessionId)) throw fatal(PERSIST_NOT_FOUND, `session ${sessionId} has no session disk`);
    await this.dropReady(sessionId);
    const store = await this.store(sessionId);
    const release = await store.writer();
    try {
      if (!await store.get(to)) throw fatal(PERSIST_NOT_FOUND, `session ${sessionId} keeps no generation ${to} of its disk`);
      await store.rollback(to);
    } finally { release(); }
    const state = await this.state(sessionId);
    this.opts.hub?.publish({ type: 'persist.changed', persist: state });
    return state;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe?.();
    if (this.collectTimer) clearInterval(this.collectTimer);
    await this.browsing;
    if (this.browser) await this.closeBrowser(this.browser);
    await Promise.all([...this.sessions.keys()].map((id) => this.dropReady(id)));
    for (const s of this.stores.values()) await s.then((st) => st.idle(), () => {});
  }

  // ---- browse ------------------------------------------------------------------------------------------------------

  /** The generation's listing (cached briefly, one at a time: pages of the same generation reuse it). */
  private list(sessionId: string, generation: number): Promise<Listing> {
    const cached = this.listing;
    const fresh = cached?.then((l) => l.sessionId === sessionId && l.generation === generation && Date.now() - l.at < BROWSE_CACHE_MS, () => false);
    const next = (async () => {
      if (cached && await fresh) return cached;
      return this.inBrowseVm(sessionId, generation, async (sb) => {
        const maxEntries = this.opts.browseMaxEntries ?? BROWSE_MAX_ENTRIES;
        const walked = await sb.walk(DISK_ROOT, { hash: false, maxEntries });
        if (walked.truncated) log.warn(`session ${sessionId}: generation ${generation} holds more than ${maxEntries} entries; the listing shows the first`);
        const items: PersistEntry[] = [];
        for (const e of walked.entries) {
          if (e.type === 'other') continue;
          const p = e.path.startsWith(`${DISK_ROOT}/`) ? e.path.slice(DISK_ROOT.length) : null;
          const why = p === null ? 'outside the disk' : checkListedPath(p);
          if (why !== null || p === null) { log.warn(`session ${sessionId}: the browse VM listed a bad name ${showPath(e.path)} (${why}); left out`); continue; }
          items.push({ path: p, type: e.type, size: e.type === 'file' ? e.size : 0, mode: e.type === 'symlink' ? 0o777 : e.mode, mtimeMs: e.mtimeMs, sha256: null, target: e.type === 'symlink' ? e.linkTarget ?? null : null });
        }
        items.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
        return { sessionId, generation, items, byPath: new Map(items.map((i) => [i.path, i])), at: Date.now(), truncated: walked.truncated };
      });
    })();
    this.listing = next;
    next.catch(() => { if (this.listing === next) this.listing = null; });
    return next;
  }

  /** Runs `fn` in a VM with generation `generation` of the session's disk mounted read-only over a throwaway layer:
   *  the browse VM of the previous request when it shows the same generation and is alive, else a fresh one. A browse
   *  VM is destroyed and its layer discarded once idle for BROWSE_IDLE_MS, when another generation is asked for, on a
   *  failure, and at close. */
  private inBrowseVm<T>(sessionId: string, generation: number, fn: (sb: Sandbox) => Promise<T>): Promise<T> {
    const run = this.browsing.then(async () => {
      let b = this.browser;
      if (b && (b.dead || b.sessionId !== sessionId || b.generation !== generation)) { await this.closeBrowser(b); b = null; }
      if (b?.idle) { clearTimeout(b.idle); b.idle = null; }
      b ??= await this.openBrowser(sessionId, generation);
      try {
        const out = await fn(b.sandbox);
        b.idle = setTimeout(() => { this.browsing = this.browsing.then(() => this.closeBrowser(b)); }, this.opts.browseIdleMs ?? BROWSE_IDLE_MS);
        b.idle.unref();
        return out;
      } catch (err) {
        await this.closeBrowser(b);
        if (err instanceof PerimeterError) throw err;
        throw fatal('persist_disk_browse', `reading generation ${generation} of session ${sessionId}'s disk failed (${errorMessage(err)})`, err);
      }
    });
    this.browsing = run.catch(() => undefined);
    return run;
  }

  private async openBrowser(sessionId: string, generation: number): Promise<Browser> {
    if (this.closed) throw transient('persist_closed', 'the companion is shutting down');
    if (!this.opts.browse) throw fatal('persist_disk_browse', 'this companion cannot start a VM to read a session disk\'s generation');
    if (!this.stores.has(sessionId) && !await DiskStore.peek(this.opts.home, sessionId)) throw fatal(PERSIST_NOT_FOUND, `session ${sessionId} has no session disk`);
    const store = await this.store(sessionId);
    if (!await store.get(generation)) throw fatal(PERSIST_NOT_FOUND, `session ${sessionId} keeps no generation ${generation} of its disk`);
    const sandbox = await this.opts.browse();
    let pending: PendingLayer | null = null;
    try {
      const port = sandbox.sessionDisk;
      if (!port) throw fatal('persist_disk_unsupported', 'this sandbox has no session disk (rebuild the template: perimeter template build)');
      if (port.bytes < store.bytes) throw fatal('persist_disk_size', 'the session disk is larger than the template\'s disk device: rebuild the template (perimeter template build)');
      pending = await store.openLayer((layer, backing) => port.attach({ top: layer.path, backing }), generation);
      await port.mount([], { readOnly: true });
      const b: Browser = { sessionId, generation, sandbox, store, pending, idle: null, dead: false };
      void port.closed.then(() => { b.dead = true; });
      this.browser = b;
      return b;
    } catch (err) {
      await sandbox.destroy().catch(() => {});
      if (pending) await store.discard(pending).catch(() => {});
      if (err instanceof PerimeterError) throw err;
      throw fatal('persist_disk_browse', `reading generation ${generation} of session ${sessionId}'s disk failed (${errorMessage(err)})`, err);
    }
  }

  private async closeBrowser(b: Browser): Promise<void> {
    if (b.idle) { clearTimeout(b.idle); b.idle = null; }
    if (this.browser === b) this.browser = null;
    b.dead = true;
    await b.sandbox.destroy().catch(() => {});
    await b.store.discard(b.pending).catch((err: Error) => log.warn(`session ${b.sessionId}: discarding a browse layer failed: ${err.message}`));
  }

  // ---- attach ------------------------------------------------------------------------------------------------------

  /** Takes the session's writer slot and attaches a new layer over CURRENT to `sandbox`'s disk, mounted. */
  private async attach(sessionId: string, sandbox: Sandbox): Promise<Attached> {
    const port = sandbox.sessionDisk;
    if (!port) throw fatal('persist_disk_unsupported', 'this sandbox has no session disk (rebuild the template: perimeter template build)');
    const store = await this.store(sessionId);
    if (port.bytes < store.bytes) {
      throw fatal('persist_disk_size', `the session disk (${formatBytes(store.bytes)}) is larger than the template's disk device (${formatBytes(port.bytes)}): rebuild the template (perimeter template build)`);
    }
    const { rootPaths, mirror } = await this.roots(sessionId);
    const release = await store.writer();
    let pending: PendingLayer | null = null;
    try {
      pending = await store.openLayer((layer, backing) => port.attach({ top: layer.path, backing }));
      const over = pending.over;
      let roots: DiskRoot[] = [];
      let damaged: string | null = null;
      try { roots = await port.mount(rootPaths); } catch (err) {
        if (!(err instanceof GuestError) || err.code !== 'EUCLEAN') throw err;
        damaged = damagedNote(sessionId, over, err.message);
        log.error(`session ${sessionId}: generation ${over.generation} of the session disk cannot be mounted: ${err.message}`);
      }
      const a: Attached = {
        sessionId, store, sandbox, port, pending, roots, rootPaths: rootPaths.join('\0'), release, mirror, mirrorPlaced: true,
        damaged, notes: [], shell: over.shell ?? (damaged ? null : await this.migrate(sessionId, sandbox, over)), done: false, committing: Promise.resolve(),
      };
      this.attached.set(sandbox, a);
      void port.closed.then(() => this.gone(a));
      return a;
    } catch (err) {
      if (pending) await store.discard(pending).catch(() => {});
      release();
      throw asFailure(null, 'attaching the session disk', err);
    }
  }

  /** The disk roots of the session's persist list, and its memory-store mirror (kept off the disk). */
  private async roots(sessionId: string): Promise<{ rootPaths: string[]; mirror: MemoryMirror | null }> {
    const mounts = this.opts.memoryMounts ? await this.opts.memoryMounts(sessionId) : [];
    const mirror = mounts.length > 0 ? new MemoryMirror(mounts) : null;
    const list = [...await this.opts.files.patterns(sessionId), ALWAYS_PERSISTED[0], ...(mirror ? [] : [ALWAYS_PERSISTED[1]])];
    const rootPaths = walkRoots(parsePatterns(list))
      .filter((r) => !isWithin(r, AGENT_DIR) && !mounts.some((m) => isWithin(r, m.guestPath) || isWithin(m.guestPath, r)));
    return { rootPaths, mirror };
  }

  /** A session the file store holds files for starts its disk with them and their shell state (generation 0 only). */
  private async migrate(sessionId: string, sandbox: Sandbox, over: DiskGeneration): Promise<ShellState | null> {
    if (over.generation !== 0 || over.rolledBackFrom !== undefined || (await this.opts.files.state(sessionId)).generation === 0) return null;
    log.info(`session ${sessionId}: copying the file store's files onto the new session disk`);
    return this.opts.files.prepare(sessionId, sandbox);
  }

  // ---- commit ------------------------------------------------------------------------------------------------------

  private async commitAttached(a: Attached, shellIn: ShellState | null, outcome: { timedOut?: boolean }): Promise<CommitReport> {
    const notes = a.notes.splice(0);
    const kept = a.pending.over.generation;
    const keep = (note: string): CommitReport => ({ generation: kept, notes: [...notes, note] });
    if (a.done) throw transient('persist_sandbox_failed', `persisted files: not saved: the sandbox is gone; the session disk stays at generation ${kept}`);
    if (a.damaged) return keep(a.damaged);
    if (outcome.timedOut) return keep(`not saved: the call timed out, so nothing it changed under the persisted paths was kept; the session disk stays at generation ${kept}.`);
    if (a.mirror && a.mirrorPlaced) {
      try { notes.push(...await a.mirror.copyOut(a.sandbox, this.opts.persist)); } catch (err) { throw asFailure(a, 'saving the memory stores', err); }
    }
    const { shell, dropped } = shellIn ? sanitizeShell(shellIn) : { shell: null, dropped: [] };
    if (dropped.length > 0) notes.push(`Not carried to the next call: exported ${dropped.join(', ')}.`);
    let usage: DiskUsage;
    try {
      usage = await a.port.seal(a.roots);
      if (usage.bytes === 0 || usage.bytes > a.port.bytes) throw new GuestError('EUCLEAN', 'the session disk\'s filesystem reports impossible sizes (its superblock is damaged)');
      await a.port.quiesce();
      if (this.opts.mode === 'per-call') { a.done = true; await a.sandbox.destroy(); }
    } catch (err) { throw asFailure(a, 'sealing the session disk', err); }
    let gen: DiskGeneration;
    try {
      gen = await a.store.commit(a.pending, { shell: shell ?? a.shell, usage });
    } catch (err) {
      if (this.opts.mode === 'per-call') { await a.store.discard(a.pending).catch(() => {}); a.release(); }
      if (err instanceof DiskConflictError) return keep(`not saved: ${err.message}`);
      throw asFailure(a, 'committing the session disk', err);
    }
    a.shell = gen.shell;
    const full = fullNote(usage);
    if (full) notes.push(full);
    if (this.opts.mode === 'per-call') {
      a.release();
      this.prepareAhead(a.sessionId);
    } else {
      try {
        a.pending = await a.store.newLayer(gen);
        await a.port.continueOn(a.pending.path);
      } catch (err) {
        await a.sandbox.destroy().catch(() => {});
        notes.push(`The sandbox could not go on with the saved disk (${errorMessage(err)}); the next call gets a fresh one.`);
      }
    }
    return { generation: gen.generation, notes };
  }

  /** The sandbox is gone: an uncommitted layer is discarded and the writer slot freed. */
  private async gone(a: Attached): Promise<void> {
    if (a.done) return;
    a.done = true;
    await a.committing;
    await a.store.discard(a.pending).catch((err: Error) => log.warn(`session ${a.sessionId}: discarding a layer failed: ${err.message}`));
    a.release();
  }

  // ---- prepared VMs ------------------------------------------------------------------------------------------------

  private session(sessionId: string): SessionState {
    let s = this.sessions.get(sessionId);
    if (!s) { s = { ready: null, idle: null, open: null }; this.sessions.set(sessionId, s); }
    return s;
  }

  /** Prepares the session's next call's VM while the model thinks (per-call mode; not when a call already waits). */
  private prepareAhead(sessionId: string): void {
    const s = this.sessions.get(sessionId);
    if (this.closed || this.opts.mode !== 'per-call' || !s?.open || s.ready) return;
    const open = s.open;
    s.ready = (async () => {
      const store = await this.store(sessionId);
      if (store.writerWanted) return null;
      const sandbox = await open();
      try { return await this.attach(sessionId, sandbox); } catch (err) { await sandbox.destroy().catch(() => {}); throw err; }
    })();
    s.ready.catch((err: Error) => log.warn(`session ${sessionId}: preparing the next call's sandbox failed: ${err.message}`));
    s.idle = setTimeout(() => { void this.dropReady(sessionId); }, this.opts.preparedIdleMs ?? PREPARED_IDLE_MS);
    s.idle.unref();
  }

  private takeReady(s: SessionState): Promise<Attached | null> | null {
    const ready = s.ready;
    s.ready = null;
    if (s.idle) { clearTimeout(s.idle); s.idle = null; }
    return ready;
  }

  private async dropReady(sessionId: string): Promise<void> {
    const s = this.sessions.get(sessionId);
    const ready = s ? this.takeReady(s) : null;
    const a = ready ? await ready.catch(() => null) : null;
    if (a) await this.drop(a);
  }

  /** A prepared VM can serve the next call: alive, over CURRENT, for the same persist list. */
  private async usable(a: Attached): Promise<boolean> {
    if (a.done) return false;
    const current = await a.store.current();
    return current.generation === a.pending.over.generation && (await this.roots(a.sessionId)).rootPaths.join('\0') === a.rootPaths;
  }

  private async drop(a: Attached): Promise<void> {
    await a.sandbox.destroy().catch(() => {});
    await this.gone(a);
  }

  /** The persist list with the disk's generation and usage (its files are read through a VM, not listed here). */
  private async withDisk(state: PersistState): Promise<PersistState> {
    const gen = this.stores.has(state.sessionId) ? await (await this.store(state.sessionId)).current() : await DiskStore.peek(this.opts.home, state.sessionId);
    const { fileCount: _listedByGeneration, ...rest } = state;
    if (!gen) return { ...rest, store: 'disk', generation: 0, files: [], totalBytes: 0 };
    return { ...rest, store: 'disk', generation: gen.generation, files: [], totalBytes: gen.usage ? gen.usage.bytes - gen.usage.availableBytes : 0 };
  }
}

/** Why a path listed by a browse VM is refused, or null: absolute, no empty, "." or ".." segment, every component at
 *  most 255 bytes (control characters are data here: displays escape them). */
function checkListedPath(p: string): string | null {
  if (!p.startsWith('/') || p.length > 4096) return 'not an absolute path of at most 4096 characters';
  if (p.includes('\0') || p.includes('\ufffd')) return 'not a valid name';
  for (const seg of p.slice(1).split('/')) {
    if (seg === '' || seg === '.' || seg === '..') return `a "${seg}" segment`;
    if (Buffer.byteLength(seg, 'utf8') > MAX_NAME_BYTES) return `a name longer than ${MAX_NAME_BYTES} bytes`;
  }
  return null;
}

/** The note for a generation whose filesystem cannot be mounted: what happened and where to roll back to. */
function damagedNote(sessionId: string, gen: DiskGeneration, why: string): string {
  const to = gen.parent ?? 0;
  return `the session disk's generation ${gen.generation} is damaged (${why.replace(/^the session disk's filesystem cannot be mounted: /, '')}), `
    + 'so this call ran without the persisted files and nothing from it was saved. To go back to the last generation that '
    + `worked: perimeter persist rollback --session ${sessionId} --to ${to}`;
}

function fullNote(u: DiskUsage): string | null {
  if (u.freeInodes === 0) return `the session disk is full: no file can be created on it (all ${u.inodes} inodes used); delete files to make room.`;
  if (u.availableBytes >= FULL_BYTES) return null;
  return `the session disk is full (${formatBytes(u.bytes - u.availableBytes)} of ${formatBytes(u.bytes)} used); writes fail with "No space left on device" until files are deleted.`;
}

/** A failure of a step: the previous generation stays; the message names no host path. */
function asFailure(a: Attached | null, step: string, err: unknown): PerimeterError {
  if (err instanceof PerimeterError) return err;
  const kept = a ? `; the session disk stays at generation ${a.pending.over.generation}` : '';
  const host = err as NodeJS.ErrnoException;
  let what = errorMessage(err);
  if (!(err instanceof GuestError) && typeof host?.syscall === 'string') {
    log.error(`session disk: ${step}: ${what}`);
    what = `the companion's disk store on the host failed: ${host.code ?? 'EIO'}`;
  }
  return transient('persist_sandbox_failed', `persisted files: not saved: ${step} failed (${what})${kept}`, err);
}
