// The on-disk persisted-file store of one session, under `<home>/sessions/<sessionId>/`:
//   CURRENT              the committed generation number ("N\n"), replaced by an atomic rename
//   gens/gen-N.json      one manifest per generation (paths, sizes, modes, hashes, symlink targets, shell state; a
//                        rollback's manifest copies a kept one and names it in `rolledBackFrom`, sharing its blobs)
//   blobs/ab/<sha256>    file contents by hash, shared across generations, mode 0600
//   staging/<random>/    a private 0700 directory per commit (blobs and manifests in flight)
//   patterns.json        the session's persist list, once someone set it
// Invariants: no guest name is ever a host path here (blobs are named by their host-computed hash); every file is
// created with O_CREAT|O_EXCL|O_NOFOLLOW inside a fresh mkdtemp directory, fsynced, then renamed into place; CURRENT
// changes only after the manifest and all its blobs are durable, so a crash at any point leaves the previous
// generation intact. The store's own directories must be real directories (a planted symlink is refused). Errors
// name the store's files relative to the state directory (`<state dir>/sessions/…`), never by their host path.
import { constants as C, promises as fsp } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { fatal } from '../errors';
import { logger } from '../log';
import { checkSessionId } from './paths';
import { PERSIST_NOT_FOUND } from './types';
import { sha256Yielding } from './hash';
import { type Manifest, ManifestFile, emptyManifest, fromFile, toFile, SHA256_HEX } from './manifest';

const log = logger('persist:store');
const CREATE_FLAGS = C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW;
const GEN_FILE = /^gen-(\d{1,15})\.json$/;
/** Read size while a blob is verified whole. */
const BLOB_VERIFY_CHUNK = 8 * 1024 * 1024;
/** Blobs remembered as verified (the set is simply emptied when full). */
const VERIFIED_BLOBS_MAX = 4096;

export function sha256(data: Buffer): string { return createHash('sha256').update(data).digest('hex'); }

async function fsyncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, C.O_RDONLY | C.O_DIRECTORY);
  try { await h.sync(); } finally { await h.close(); }
}

/** Creates `dir` (mode 0700) if missing and checks it is a real directory of ours, not a planted symlink; `shown`
 *  names it in errors. */
async function ensureRealDir(dir: string, shown: string): Promise<void> {
  try { await fsp.mkdir(dir, { mode: 0o700 }); } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err; }
  const st = await fsp.lstat(dir);
  if (!st.isDirectory() || st.isSymbolicLink()) throw fatal('persist_store_tampered', `persist store: ${shown} is not a directory (refusing to use it)`);
  if (typeof process.getuid === 'function' && st.uid !== process.getuid()) throw fatal('persist_store_tampered', `persist store: ${shown} is owned by another user (refusing to use it)`);
}

/** Writes a new file exclusively (never through a symlink, never over an existing file); fsyncs it unless the
 *  caller syncs a whole batch later (`syncFiles`). */
async function writeExclusive(file: string, data: Buffer | string, sync = true): Promise<void> {
  const h = await fsp.open(file, CREATE_FLAGS, 0o600);
  try { await h.writeFile(data); if (sync) await h.sync(); } finally { await h.close(); }
}

/** Runs `fn` over `items` with at most `limit` in flight (fsync and small-file I/O gain a lot from overlap). */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => { while (next < items.length) { const i = next++; await fn(items[i]!); } };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Host file operations kept in flight at once (blob reads and writes, fsyncs). */
export const IO_PARALLEL = 32;

/** fsyncs many files at once: the journal commits overlapping fsyncs together. */
async function syncFiles(files: readonly string[]): Promise<void> {
  await forEachLimit(files, IO_PARALLEL, async (f) => {
    const h = await fsp.open(f, C.O_RDONLY | C.O_NOFOLLOW);
    try { await h.sync(); } finally { await h.close(); }
  });
}

async function readNoFollow(file: string): Promise<Buffer> {
  const h = await fsp.open(file, C.O_RDONLY | C.O_NOFOLLOW);
  try {
    const st = await h.stat();
    if (!st.isFile()) throw Object.assign(new Error('not a regular file'), { code: 'EINVAL' });
    return await h.readFile();
  } finally { await h.close(); }
}

/** A commit in progress: blobs staged in a private directory, published by `finish`, discarded by `abort`. */
export interface BlobWriter {
  write(data: Buffer): Promise<void>;
  finish(hash: string): Promise<void>;
  abort(): Promise<void>;
}

export class CommitTxn {
  /** Blobs written to the staging directory, by hash (published by `finish`). */
  private readonly staged = new Map<string, string>();
  /** One staging operation per hash, claimed synchronously: files with the same content (two empty files, one file
   *  copied twice) are staged once even when they are added concurrently. */
  private readonly claims = new Map<string, Promise<void>>();
  private partials = 0;
  private done = false;
  constructor(private readonly store: SessionStore, readonly stagingDir: string) {}

  /** Stages a blob whose hash the host computed; a blob the store already holds or this commit already stages is
   *  not written again. */
  async addBlob(hash: string, data: Buffer): Promise<void> {
    if (!SHA256_HEX.test(hash)) throw new Error(`invalid blob hash ${hash}`);
    await this.claim(hash, async () => {
      const file = path.join(this.stagingDir, hash);
      try { await writeExclusive(file, data, false); } catch (err) { await fsp.rm(file, { force: true }); throw err; }
      this.staged.set(hash, file);
    });
  }

  /** Runs `stage` for `hash` unless the store holds the blob or another add of the same hash ran or runs; a failed
   *  claim is released so a later add can try again. */
  private claim(hash: string, stage: () => Promise<void>): Promise<void> {
    let claimed = this.claims.get(hash);
    if (!claimed) {
      claimed = (async () => { if (!await this.store.hasBlob(hash)) await stage(); })();
      this.claims.set(hash, claimed);
      claimed.catch(() => { if (this.claims.get(hash) === claimed) this.claims.delete(hash); });
    }
    return claimed;
  }

  /** Streams a large blob into staging; `finish(hash)` stages it under the hash the host computed while writing. */
  async openBlobWriter(): Promise<BlobWriter> {
    const file = path.join(this.stagingDir, `partial-${this.partials++}`);
    const h = await fsp.open(file, CREATE_FLAGS, 0o600);
    let closed = false;
    const close = async () => { if (!closed) { closed = true; await h.close(); } };
    return {
      write: async (data) => { await h.write(data); },
      finish: async (hash) => {
        if (!SHA256_HEX.test(hash)) throw new Error(`invalid blob hash ${hash}`);
        await close();
        let renamed = false;
        await this.claim(hash, async () => {
          const staged = path.join(this.stagingDir, hash);
          await fsp.rename(file, staged);
          renamed = true;
          this.staged.set(hash, staged);
        });
        if (!renamed) await fsp.rm(file, { force: true });
      },
      abort: async () => { await close(); await fsp.rm(file, { force: true }); },
    };
  }

  /** Publishes the staged blobs and `manifest` as the session's new CURRENT generation (`rolledBackFrom`: the kept
   *  generation whose content it restores). */
  async finish(manifest: Manifest, rolledBackFrom?: number): Promise<void> {
    if (this.done) throw new Error('commit already finished');
    this.done = true;
    try { await this.store.publish(this, this.staged, manifest, rolledBackFrom); } finally { await this.cleanup(); }
  }

  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    await this.cleanup();
  }

  private async cleanup(): Promise<void> { await fsp.rm(this.stagingDir, { recursive: true, force: true }); }
}

export class SessionStore {
  readonly dir: string;
  /** The state directory the store lives under (`<state dir>/sessions/<id>`). */
  private readonly stateDir: string;
  private readonly blobsDir: string;
  private readonly gensDir: string;
  private readonly stagingRoot: string;
  private currentManifest: Manifest | null = null;
  /** Blob hash → the file identity (inode, size, mtime) it was last verified whole at (readBlobRange). */
  private readonly verifiedBlobs = new Map<string, string>();
  /** Blob hashes referenced by each kept generation (for pruning without re-reading manifests). */
  private readonly keptRefs = new Map<number, Set<string>>();

  private constructor(sessionsDir: string, readonly sessionId: string) {
    this.dir = path.join(sessionsDir, sessionId);
    this.stateDir = path.dirname(sessionsDir);
    this.blobsDir = path.join(this.dir, 'blobs');
    this.gensDir = path.join(this.dir, 'gens');
    this.stagingRoot = path.join(this.dir, 'staging');
  }

  /** Opens (creating if needed) a session's store and repairs what a crash may have left: staging leftovers,
   *  manifests newer than CURRENT, blobs no kept generation references. */
  static async open(sessionsDir: string, sessionId: string, keepGenerations: number): Promise<SessionStore> {
    const bad = checkSessionId(sessionId);
    if (bad) throw fatal('persist_session_invalid', bad);
    await fsp.mkdir(sessionsDir, { recursive: true, mode: 0o700 });
    const store = new SessionStore(sessionsDir, sessionId);
    for (const d of [store.dir, store.blobsDir, store.gensDir, store.stagingRoot]) await ensureRealDir(d, store.shown(d));
    await store.recover(keepGenerations);
    return store;
  }

  async current(): Promise<Manifest> {
    if (!this.currentManifest) this.currentManifest = await this.loadCurrent();
    return this.currentManifest;
  }

  async begin(): Promise<CommitTxn> {
    await ensureRealDir(this.stagingRoot, this.shown(this.stagingRoot));
    const dir = await fsp.mkdtemp(path.join(this.stagingRoot, 'commit-'));
    return new CommitTxn(this, dir);
  }

  async hasBlob(hash: string): Promise<boolean> {
    try { return (await fsp.lstat(this.blobPath(hash))).isFile(); } catch { return false; }
  }

  /** A blob's content in chunks of at most `chunkBytes`, verified against its name once fully read. */
  async *readBlobChunks(hash: string, chunkBytes: number): AsyncGenerator<Buffer> {
    if (!SHA256_HEX.test(hash)) throw fatal('persist_store_corrupt', `invalid blob hash ${hash}`);
    const h = await fsp.open(this.blobPath(hash), C.O_RDONLY | C.O_NOFOLLOW);
    try {
      if (!(await h.stat()).isFile()) throw fatal('persist_store_corrupt', `blob ${hash} is not a regular file`);
      const digest = createHash('sha256');
      for (;;) {
        const buf = Buffer.alloc(chunkBytes);
        const { bytesRead } = await h.read(buf, 0, chunkBytes, null);
        if (bytesRead === 0) break;
        const chunk = buf.subarray(0, bytesRead);
        digest.update(chunk);
        yield chunk;
      }
      if (digest.digest('hex') !== hash) throw fatal('persist_store_corrupt', `persist store of session ${this.sessionId}: blob ${hash} is damaged`);
    } finally { await h.close(); }
  }

  /**
   * `length` bytes of a blob from `offset` (fewer at its end). The whole blob is verified against its name once, then
   * again only when its file changed (inode, size or mtime): a file read slice by slice costs its size once, not once
   * per slice.
   */
  async readBlobRange(hash: string, offset: number, length: number): Promise<Buffer> {
    if (!SHA256_HEX.test(hash)) throw fatal('persist_store_corrupt', `invalid blob hash ${hash}`);
    const h = await fsp.open(this.blobPath(hash), C.O_RDONLY | C.O_NOFOLLOW);
    try {
      const st = await h.stat();
      if (!st.isFile()) throw fatal('persist_store_corrupt', `blob ${hash} is not a regular file`);
      const identity = `${st.ino}:${st.size}:${st.mtimeMs}`;
      if (this.verifiedBlobs.get(hash) !== identity) {
        const digest = createHash('sha256');
        const buf = Buffer.alloc(Math.min(BLOB_VERIFY_CHUNK, Math.max(1, st.size)));
        for (let at = 0; ;) {
          const { bytesRead } = await h.read(buf, 0, buf.length, at);
          if (bytesRead === 0) break;
          digest.update(buf.subarray(0, bytesRead));
          at += bytesRead;
        }
        if (digest.digest('hex') !== hash) throw fatal('persist_store_corrupt', `persist store of session ${this.sessionId}: blob ${hash} is damaged`);
        if (this.verifiedBlobs.size >= VERIFIED_BLOBS_MAX) this.verifiedBlobs.clear();
        this.verifiedBlobs.set(hash, identity);
      }
      const out = Buffer.alloc(Math.max(0, Math.min(length, st.size - offset)));
      for (let got = 0; got < out.length;) {
        const { bytesRead } = await h.read(out, got, out.length - got, offset + got);
        if (bytesRead === 0) throw fatal('persist_store_corrupt', `persist store of session ${this.sessionId}: blob ${hash} is damaged (shorter than it was)`);
        got += bytesRead;
      }
      return out;
    } finally { await h.close(); }
  }

  /** A blob's content, verified against its name (a damaged store is an error, not wrong data in a VM). */
  async readBlob(hash: string): Promise<Buffer> {
    if (!SHA256_HEX.test(hash)) throw fatal('persist_store_corrupt', `invalid blob hash ${hash}`);
    const data = await readNoFollow(this.blobPath(hash));
    if (await sha256Yielding(data) !== hash) throw fatal('persist_store_corrupt', `persist store of session ${this.sessionId}: blob ${hash} is damaged`);
    return data;
  }

  async readPatterns(): Promise<string[] | null> {
    let raw: Buffer;
    const file = path.join(this.dir, 'patterns.json');
    try { raw = await readNoFollow(file); } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw this.unreadable(file, err);
    }
    const parsed = JSON.parse(raw.toString('utf8')) as { patterns?: unknown };
    if (!Array.isArray(parsed.patterns) || !parsed.patterns.every((p) => typeof p === 'string')) throw fatal('persist_store_corrupt', `persist store: ${this.shown(file)} is damaged`);
    return parsed.patterns as string[];
  }

  async writePatterns(patterns: string[]): Promise<void> {
    const txn = await this.begin();
    try {
      const tmp = path.join(txn.stagingDir, 'patterns.json');
      await writeExclusive(tmp, `${JSON.stringify({ version: 1, patterns }, null, 1)}\n`);
      await fsp.rename(tmp, path.join(this.dir, 'patterns.json'));
      await fsyncDir(this.dir);
    } finally { await txn.abort(); }
  }

  /** The kept generations up to CURRENT, newest first (0, the empty start, only while nothing was committed). */
  async keptGenerations(): Promise<number[]> {
    const current = (await this.current()).generation;
    const gens = (await this.listGenerations()).filter((g) => g <= current);
    if (!gens.includes(current)) gens.push(current);
    return gens.sort((a, b) => b - a);
  }

  /** A kept generation with its creation time and, for one made by a rollback, the generation it restored; null when
   *  the generation is not kept. */
  async generation(gen: number): Promise<{ manifest: Manifest; createdAt: number; rolledBackFrom: number | null } | null> {
    if (!(await this.keptGenerations()).includes(gen)) return null;
    if (gen === 0) return { manifest: emptyManifest(), createdAt: 0, rolledBackFrom: null };
    const file = await this.readGenerationFile(gen);
    return { manifest: fromFile(file), createdAt: file.createdAt, rolledBackFrom: file.rolledBackFrom ?? null };
  }

  /** Commits a new CURRENT generation with the content (files and shell state) of the kept generation `to`; its blobs
   *  are all in the store already, so nothing is copied. Returns the new generation's number. */
  async rollback(to: number, keep: number): Promise<number> {
    const target = await this.generation(to);
    if (!target) throw fatal(PERSIST_NOT_FOUND, `session ${this.sessionId} keeps no generation ${to}`);
    const current = (await this.current()).generation;
    const next = current + 1;
    const txn = await this.begin();
    await txn.finish({ generation: next, entries: new Map(target.manifest.entries), shell: target.manifest.shell }, to);
    await this.prune(keep);
    log.info(`session ${this.sessionId}: rolled back to generation ${to} (now generation ${next})`);
    return next;
  }

  /** Removes generations beyond the newest `keep` (never CURRENT) and the blobs only they referenced. */
  async prune(keep: number): Promise<void> {
    const current = (await this.current()).generation;
    const gens = (await this.listGenerations()).filter((g) => g <= current).sort((a, b) => b - a);
    const drop = gens.slice(Math.max(1, keep));
    if (drop.length === 0) return;
    const candidates = new Set<string>();
    for (const g of drop) {
      for (const h of this.keptRefs.get(g) ?? await this.refsOf(g)) candidates.add(h);
      await fsp.rm(this.genPath(g), { force: true });
      this.keptRefs.delete(g);
    }
    for (const g of gens.slice(0, Math.max(1, keep))) if (!this.keptRefs.has(g)) this.keptRefs.set(g, await this.refsOf(g));
    for (const h of candidates) {
      if ([...this.keptRefs.values()].some((refs) => refs.has(h))) continue;
      await fsp.rm(this.blobPath(h), { force: true });
    }
  }

  // ---- internals used by CommitTxn -------------------------------------------------------------------------------

  async publish(txn: CommitTxn, staged: Map<string, string>, manifest: Manifest, rolledBackFrom?: number): Promise<void> {
    // Blob data is durable before any name points at it; then the renames, then the directories.
    await syncFiles([...staged.values()]);
    const shards = [...new Set([...staged.keys()].map((h) => h.slice(0, 2)))].map((x) => path.join(this.blobsDir, x));
    await forEachLimit(shards, IO_PARALLEL, (d) => ensureRealDir(d, this.shown(d)));
    await forEachLimit([...staged], IO_PARALLEL, ([hash, file]) => fsp.rename(file, path.join(this.blobsDir, hash.slice(0, 2), hash)));
    await forEachLimit(shards, IO_PARALLEL, (d) => fsyncDir(d));
    if (shards.length > 0) await fsyncDir(this.blobsDir);

    const tmpManifest = path.join(txn.stagingDir, 'manifest.json');
    await writeExclusive(tmpManifest, JSON.stringify(toFile(this.sessionId, manifest, Date.now(), rolledBackFrom)));
    await fsp.rename(tmpManifest, this.genPath(manifest.generation));
    await fsyncDir(this.gensDir);

    const tmpCurrent = path.join(txn.stagingDir, 'CURRENT');
    await writeExclusive(tmpCurrent, `${manifest.generation}\n`);
    await fsp.rename(tmpCurrent, path.join(this.dir, 'CURRENT'));
    await fsyncDir(this.dir);
    this.currentManifest = manifest;
    this.keptRefs.set(manifest.generation, refsOfManifest(manifest));
  }

  // ---- internals ---------------------------------------------------------------------------------------------------

  private blobPath(hash: string): string { return path.join(this.blobsDir, hash.slice(0, 2), hash); }
  /** A store path as errors name it: relative to the state directory. */
  private shown(p: string): string { return `<state dir>/${path.relative(this.stateDir, p)}`; }
  private unreadable(file: string, err: unknown): Error {
    return fatal('persist_store_corrupt', `persist store: ${this.shown(file)} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'EIO'})`, err);
  }
  private genPath(gen: number): string { return path.join(this.gensDir, `gen-${gen}.json`); }

  private async currentGeneration(): Promise<number> {
    let raw: Buffer;
    const file = path.join(this.dir, 'CURRENT');
    try { raw = await readNoFollow(file); } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw this.unreadable(file, err);
    }
    const text = raw.toString('utf8').trim();
    if (!/^\d{1,15}$/.test(text)) throw fatal('persist_store_corrupt', `persist store: ${this.shown(file)} is damaged`);
    return Number(text);
  }

  private async readGeneration(gen: number): Promise<Manifest> {
    if (gen === 0) return emptyManifest();
    return fromFile(await this.readGenerationFile(gen));
  }

  private async readGenerationFile(gen: number): Promise<ManifestFile> {
    let raw: Buffer;
    try { raw = await readNoFollow(this.genPath(gen)); } catch (err) {
      throw fatal('persist_store_corrupt', `persist store of session ${this.sessionId}: generation ${gen} is missing or unreadable (${(err as NodeJS.ErrnoException).code ?? 'EIO'})`);
    }
    let json: unknown;
    try { json = JSON.parse(raw.toString('utf8')); } catch { throw fatal('persist_store_corrupt', `persist store of session ${this.sessionId}: generation ${gen} is not valid JSON`); }
    const parsed = ManifestFile.safeParse(json);
    if (!parsed.success || parsed.data.generation !== gen || parsed.data.sessionId !== this.sessionId) {
      throw fatal('persist_store_corrupt', `persist store of session ${this.sessionId}: generation ${gen} is damaged`);
    }
    return parsed.data;
  }

  private async loadCurrent(): Promise<Manifest> { return this.readGeneration(await this.currentGeneration()); }

  private async refsOf(gen: number): Promise<Set<string>> {
    try { return refsOfManifest(await this.readGeneration(gen)); } catch { return new Set(); }
  }

  private async listGenerations(): Promise<number[]> {
    const out: number[] = [];
    for (const name of await fsp.readdir(this.gensDir)) {
      const m = GEN_FILE.exec(name);
      if (m) out.push(Number(m[1]));
    }
    return out;
  }

  private async recover(keep: number): Promise<void> {
    for (const name of await fsp.readdir(this.stagingRoot)) await fsp.rm(path.join(this.stagingRoot, name), { recursive: true, force: true });
    const current = await this.currentGeneration();
    for (const g of await this.listGenerations()) if (g > current) await fsp.rm(this.genPath(g), { force: true });
    this.currentManifest = await this.readGeneration(current);
    this.keptRefs.set(current, refsOfManifest(this.currentManifest));
    await this.prune(keep);
    for (const g of (await this.listGenerations()).filter((x) => x !== current)) this.keptRefs.set(g, await this.refsOf(g));
    // Blobs that no kept generation references: left by a crash between writing blobs and moving CURRENT.
    const referenced = new Set<string>();
    for (const refs of this.keptRefs.values()) for (const h of refs) referenced.add(h);
    let removed = 0;
    for (const shard of await fsp.readdir(this.blobsDir)) {
      const shardDir = path.join(this.blobsDir, shard);
      const st = await fsp.lstat(shardDir);
      if (!st.isDirectory()) { await fsp.rm(shardDir, { force: true }); continue; }
      for (const name of await fsp.readdir(shardDir)) {
        if (!referenced.has(name)) { await fsp.rm(path.join(shardDir, name), { recursive: true, force: true }); removed += 1; }
      }
    }
    if (removed > 0) log.info(`session ${this.sessionId}: removed ${removed} unreferenced blob(s) after a restart`);
  }
}

function refsOfManifest(m: Manifest): Set<string> {
  const refs = new Set<string>();
  for (const e of m.entries.values()) if (e.type === 'file') refs.add(e.sha256);
  return refs;
}
