// The session disk of one session: its generations, each a chain of qcow2 copy-on-write layers over the session's
// base image. On disk, under <home>/disks/<sessionId>/:
//   CURRENT          "N\n": the committed generation, replaced by an atomic rename (temp + fsync, rename, fsync dir)
//   gen-N.json       one record per kept generation (DiskGeneration): its layer chain, top first and base last; the
//                    generation it was made from; the shell state and disk usage of the call that made it
//   layers/          base-<rand>.qcow2: the session's own copy of the blank filesystem (images.ts);
//                    L-<rand>.qcow2: one layer per committed generation, read-only (0444) once committed, and the
//                    layer a VM is writing (referenced by no generation until it is committed)
// API (companion/persist/disk/persistence.ts drives calls with it; host-side readers such as a browse VM, export,
// rollback and gc use the same functions):
//   DiskStore.open(home, sessionId, { bytes, keepGenerations })    opens (creating generation 0, an empty disk) and
//                                                                  repairs what a crash left
//   current(), get(n), list()                                      the generations (list: kept ones, newest first)
//   chain(gen)                                                     absolute paths of a generation's layers, top first
//   writer()                                                       the session's one writer slot (in this process)
//   openLayer(open, over?) / newLayer(over) → PendingLayer; commit(pending, meta); discard(pending)
//   rollback(to)                                                   a new generation with the content of `to`
//   compact()                                                      merges the oldest layer into the base (background)
// Invariants:
// - A generation's content never changes: a layer is written by exactly one VM, before it is committed; after that
//   it is read-only. The host never opens a layer's filesystem; only QEMU and qemu-img read the qcow2 format.
// - Commit order: the layer's data is fsynced, then the generation record, then CURRENT; a crash at any point leaves
//   CURRENT at the previous generation or the new one, each complete. Layers no kept generation references (a call
//   that failed, or a crash) are deleted when the store is opened; records newer than CURRENT too.
// - A commit applies only on top of the generation its layer was made over and which is still CURRENT; anything else
//   (a rollback meanwhile, another process) is refused and nothing changes.
// - Layer chains are the store's: QEMU is given every layer explicitly (no qcow2 header names a backing file), so
//   compaction changes records, never a file a VM has open, except the base, into which it writes only clusters
//   that the layer above it, present in every kept generation and every open chain, hides.
// - Every chain a VM of this process has open (a call's, a browse VM's, also of a generation whose record was pruned
//   meanwhile) is leased from newLayer until its layer is committed or discarded; compaction merges nothing a leased
//   chain lacks, and tries again when the lease ends.
// - Chains stay short: after a commit, compaction merges the layer right above the base into it (`qemu-img commit`)
//   while more than keepGenerations + 2 layers sit above the base and every kept generation contains that layer.
// - Errors name files relative to the state directory, never by host path.
import { constants as C, promises as fsp } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { fatal, PerimeterError } from '../../errors';
import { logger } from '../../log';
import { checkSessionId } from '../paths';
import { PERSIST_NOT_FOUND } from '../types';
import { backgroundQemuImg, diskImages, type DiskImages } from './images';

const log = logger('persist:disk');
const GEN_FILE = /^gen-(\d{1,15})\.json$/;
const LAYER_FILE = /^(?:base|L)-[0-9a-f]{16}\.qcow2$/;
/** Layers above the base beyond keepGenerations before compaction merges one into it. */
const COMPACT_SLACK = 2;

const UsageSchema = z.object({ bytes: z.number().int().nonnegative(), availableBytes: z.number().int().nonnegative(), inodes: z.number().int().nonnegative(), freeInodes: z.number().int().nonnegative() });
const GenerationSchema = z.object({
  version: z.literal(1),
  sessionId: z.string(),
  generation: z.number().int().nonnegative(),
  layers: z.array(z.string().regex(LAYER_FILE)).min(1).max(256),
  parent: z.number().int().nonnegative().nullable(),
  createdAt: z.number(),
  shell: z.object({ cwd: z.string(), env: z.record(z.string(), z.string()) }).nullable(),
  usage: UsageSchema.nullable(),
  /** A generation made by rollback: the generation whose content it has. */
  rolledBackFrom: z.number().int().nonnegative().optional(),
});
export type DiskGeneration = z.infer<typeof GenerationSchema>;
export type DiskUsageRecord = z.infer<typeof UsageSchema>;

/** A writable layer over generation `over`, not committed yet. */
export interface PendingLayer {
  readonly name: string;
  readonly path: string;
  readonly over: DiskGeneration;
}

export interface DiskStoreOptions {
  /** The disk's virtual size (persist.maxBytes). */
  bytes: number;
  keepGenerations: number;
}

/** A commit refused because the session's disk moved on meanwhile (nothing was changed). */
export class DiskConflictError extends PerimeterError {
  constructor(message: string) { super(message, 'transient', 'persist_disk_conflict'); this.name = 'DiskConflictError'; }
}

export function disksDir(home: string): string { return path.join(home, 'disks'); }

async function fsyncPath(p: string, flags = C.O_RDONLY): Promise<void> {
  const h = await fsp.open(p, flags);
  try { await h.datasync(); } finally { await h.close(); }
}

async function writeSynced(file: string, text: string): Promise<void> {
  const h = await fsp.open(file, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  try { await h.writeFile(text); await h.sync(); } finally { await h.close(); }
}

function rand(): string { return randomBytes(8).toString('hex'); }

/** One writer at a time, first come first served. */
class WriterSlot {
  private held = false;
  private readonly waiting: Array<() => void> = [];
  async take(): Promise<() => void> {
    if (this.held) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.held = true;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next(); else this.held = false;
    };
  }
  get contended(): boolean { return this.waiting.length > 0; }
}

export class DiskStore {
  readonly dir: string;
  private readonly layersDir: string;
  private readonly stateDir: string;
  private readonly slot = new WriterSlot();
  /** Serialises changes of the records (commit, rollback, compaction's record rewrite). */
  private meta: Promise<unknown> = Promise.resolve();
  private compacting: Promise<void> | null = null;
  /** The chains open in VMs (layer names, top first, base last), by the name of the layer written over them. */
  private readonly leases = new Map<string, readonly string[]>();

  private constructor(home: string, readonly sessionId: string, private readonly images: DiskImages, private readonly keep: number) {
    this.stateDir = home;
    this.dir = path.join(disksDir(home), sessionId);
    this.layersDir = path.join(this.dir, 'layers');
  }

  /** Opens a session's disk, creating it (generation 0: the blank filesystem) when it does not exist. */
  static async open(home: string, sessionId: string, o: DiskStoreOptions): Promise<DiskStore> {
    const bad = checkSessionId(sessionId);
    if (bad) throw fatal('persist_session_invalid', bad);
    const images = await diskImages(home, o.bytes);
    const store = new DiskStore(home, sessionId, images, o.keepGenerations);
    await fsp.mkdir(disksDir(home), { recursive: true, mode: 0o700 });
    for (const d of [store.dir, store.layersDir]) await store.ensureDir(d);
    if (!await store.exists('CURRENT')) await store.create();
    await store.recover();
    return store;
  }

  /** A session's CURRENT generation without opening (or creating) its disk; null when it has none. */
  static async peek(home: string, sessionId: string): Promise<DiskGeneration | null> {
    const bad = checkSessionId(sessionId);
    if (bad) throw fatal('persist_session_invalid', bad);
    const dir = path.join(disksDir(home), sessionId);
    let n: string;
    try { n = (await fsp.readFile(path.join(dir, 'CURRENT'), 'utf8')).trim(); } catch { return null; }
    try { return GenerationSchema.parse(JSON.parse(await fsp.readFile(path.join(dir, `gen-${n}.json`), 'utf8'))); } catch { return null; }
  }

  /** The disk's virtual size. */
  get bytes(): number { return this.images.bytes; }

  async current(): Promise<DiskGeneration> {
    const n = await this.currentNumber();
    const gen = await this.get(n);
    if (!gen) throw this.corrupt(`generation ${n} (CURRENT) has no record`);
    return gen;
  }

  async get(n: number): Promise<DiskGeneration | null> {
    let raw: string;
    try { raw = await fsp.readFile(path.join(this.dir, `gen-${n}.json`), 'utf8'); } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw this.corrupt(`generation ${n} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'EIO'})`);
    }
    let parsed: DiskGeneration;
    try { parsed = GenerationSchema.parse(JSON.parse(raw)); } catch { throw this.corrupt(`generation ${n}'s record is damaged`); }
    if (parsed.generation !== n || parsed.sessionId !== this.sessionId) throw this.corrupt(`generation ${n}'s record is damaged`);
    return parsed;
  }

  /** The kept generations, newest first. */
  async list(): Promise<DiskGeneration[]> {
    const out: DiskGeneration[] = [];
    for (const n of (await this.numbers()).sort((a, b) => b - a)) {
      const g = await this.get(n);
      if (g) out.push(g);
    }
    return out;
  }

  /** Absolute paths of `gen`'s layers, top first, base last. */
  chain(gen: DiskGeneration): string[] { return gen.layers.map((l) => path.join(this.layersDir, l)); }

  /** Waits for the session's writer slot (one VM writes the disk at a time); call the result to release it. */
  writer(): Promise<() => void> { return this.slot.take(); }
  /** Someone waits for the writer slot. */
  get writerWanted(): boolean { return this.slot.contended; }

  /** A new empty writable layer over `over` (its directory entry durable; its data fsynced at commit). */
  async newLayer(over: DiskGeneration): Promise<PendingLayer> {
    const name = `L-${rand()}.qcow2`;
    const file = path.join(this.layersDir, name);
    await fsp.copyFile(this.images.empty, file, C.COPYFILE_EXCL);
    await fsp.chmod(file, 0o600);
    await fsyncPath(this.layersDir);
    this.leases.set(name, over.layers);
    return { name, path: file, over };
  }

  /** Deletes an uncommitted layer; the chain under it is no longer leased (a compaction it held back may run now). */
  async discard(pending: PendingLayer): Promise<void> {
    await fsp.rm(pending.path, { force: true });
    if (this.leases.delete(pending.name)) this.compactSoon();
  }

  /** A new writable layer over CURRENT (or over the kept generation `over`, for a reader whose layer is discarded),
   *  handed with its chain to `open` (which links or opens the chain's files) while no compaction can delete a layer
   *  of that chain; the layer is discarded when `open` fails. */
  async openLayer(open: (pending: PendingLayer, backing: string[]) => Promise<void>, over?: number): Promise<PendingLayer> {
    return this.locked(async () => {
      const gen = over === undefined ? await this.current() : await this.get(over);
      if (!gen) throw fatal(PERSIST_NOT_FOUND, `session ${this.sessionId} keeps no generation ${over} of its disk`);
      const pending = await this.newLayer(gen);
      try { await open(pending, this.chain(pending.over)); } catch (err) { await this.discard(pending); throw err; }
      return pending;
    });
  }

  /** Makes `pending` (whose writer is stopped) the next generation, atomically. */
  async commit(pending: PendingLayer, meta: { shell: DiskGeneration['shell']; usage: DiskUsageRecord | null }): Promise<DiskGeneration> {
    return this.locked(async () => {
      const base = await this.current();
      if (base.generation !== pending.over.generation) {
        throw new DiskConflictError(`the session disk moved to generation ${base.generation} while this call ran on generation ${pending.over.generation}`);
      }
      const gen: DiskGeneration = {
        version: 1, sessionId: this.sessionId, generation: base.generation + 1, layers: [pending.name, ...base.layers],
        parent: base.generation, createdAt: Date.now(), shell: meta.shell, usage: meta.usage,
      };
      await this.publish(gen, this.seal(pending.path));
      this.leases.delete(pending.name);
      this.compactSoon();
      return gen;
    });
  }

  /** A written layer becomes immutable: fsynced, owned by the companion again (a VM's user wrote it), read-only. */
  private async seal(file: string): Promise<void> {
    await fsyncPath(file);
    const uid = process.getuid?.(), gid = process.getgid?.();
    if (uid === 0 && gid !== undefined) await fsp.chown(file, uid, gid);
    await fsp.chmod(file, 0o444);
  }

  /** A new generation whose content is generation `to`'s (the newer ones stay, as history). The caller holds the
   *  writer slot. */
  async rollback(to: number): Promise<DiskGeneration> {
    return this.locked(async () => {
      const target = await this.get(to);
      if (!target) {
        const kept = (await this.numbers()).sort((a, b) => a - b);
        throw fatal('persist_rollback_unknown', `session ${this.sessionId} has no generation ${to} (kept: ${kept.join(', ')})`);
      }
      const base = await this.current();
      const gen: DiskGeneration = {
        version: 1, sessionId: this.sessionId, generation: base.generation + 1, layers: [...target.layers],
        parent: to, createdAt: Date.now(), shell: target.shell, usage: target.usage, rolledBackFrom: to,
      };
      await this.publish(gen);
      return gen;
    });
  }

  /** Merges the layer right above the base into the base while the chain is longer than it must be. Runs in the
   *  background after commits; a failure is logged and leaves every generation as it was. */
  async compact(): Promise<number> {
    let merged = 0;
    for (;;) {
      const plan = await this.locked(async () => {
        await this.prune();
        const gens = await this.list();
        const top = gens[0];
        if (!top || top.layers.length <= this.keep + 1 + COMPACT_SLACK) return null;
        const [baseName, layerName] = [top.layers[top.layers.length - 1]!, top.layers[top.layers.length - 2]!];
        const chains = [...gens.map((g) => g.layers), ...this.leases.values()];
        const all = chains.every((c) => c.length >= 2 && c[c.length - 1] === baseName && c[c.length - 2] === layerName);
        return all ? { baseName, layerName } : null;
      });
      if (!plan) return merged;
      const base = path.join(this.layersDir, plan.baseName);
      const layer = path.join(this.layersDir, plan.layerName);
      const started = Date.now();
      await Promise.all([fsp.chmod(base, 0o644), fsp.chmod(layer, 0o644)]);
      try {
        await backgroundQemuImg(['commit', '-q', '-d', '-t', 'writeback', `json:${JSON.stringify(chainSpec([layer, base]))}`]);
        await fsyncPath(base);
      } finally { await fsp.chmod(base, 0o444); }
      await this.locked(async () => {
        for (const g of await this.list()) {
          if (g.layers[g.layers.length - 2] !== plan.layerName) continue;
          await this.rewrite({ ...g, layers: [...g.layers.slice(0, -2), plan.baseName] });
        }
        await fsyncPath(this.dir);
        await fsp.rm(layer, { force: true });
      });
      merged += 1;
      log.info(`session ${this.sessionId}: merged a layer into the disk's base in ${Date.now() - started} ms`);
    }
  }

  /** Starts a compaction unless one runs (background; never awaited by a call). */
  compactSoon(): void {
    if (this.compacting) return;
    this.compacting = this.compact().then(() => undefined, (err: Error) => log.warn(`session ${this.sessionId}: disk compaction failed: ${err.message}`))
      .finally(() => { this.compacting = null; });
  }

  /** Resolves when no compaction runs (tests, shutdown). */
  async idle(): Promise<void> { while (this.compacting) await this.compacting; }

  // ---- internals ---------------------------------------------------------------------------------------------------

  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.meta.then(fn, fn);
    this.meta = run.catch(() => undefined);
    return run;
  }

  /** Writes `gen`'s record and points CURRENT at it, once `durable` (the new layer's fsync) resolved too. */
  private async publish(gen: DiskGeneration, durable: Promise<void> = Promise.resolve()): Promise<void> {
    const tag = rand();
    const tmpGen = path.join(this.dir, `.gen-${tag}`);
    const tmpCurrent = path.join(this.dir, `.current-${tag}`);
    try {
      await Promise.all([writeSynced(tmpGen, `${JSON.stringify(gen)}\n`), writeSynced(tmpCurrent, `${gen.generation}\n`), durable]);
      try { await fsp.link(tmpGen, path.join(this.dir, `gen-${gen.generation}.json`)); } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new DiskConflictError(`generation ${gen.generation} of session ${this.sessionId} already exists`);
        throw err;
      }
      if (await this.currentNumber() !== gen.generation - 1) {
        await fsp.rm(path.join(this.dir, `gen-${gen.generation}.json`), { force: true });
        throw new DiskConflictError(`the session disk of ${this.sessionId} moved on while this generation was written`);
      }
      await fsp.rename(tmpCurrent, path.join(this.dir, 'CURRENT'));
      await fsyncPath(this.dir);
    } finally {
      await Promise.all([fsp.rm(tmpGen, { force: true }), fsp.rm(tmpCurrent, { force: true })]);
    }
  }

  /** Replaces a kept generation's record with an equivalent one (same content, another chain). */
  private async rewrite(gen: DiskGeneration): Promise<void> {
    const tmp = path.join(this.dir, `.gen-${rand()}`);
    try {
      await writeSynced(tmp, `${JSON.stringify(gen)}\n`);
      await fsp.rename(tmp, path.join(this.dir, `gen-${gen.generation}.json`));
    } finally { await fsp.rm(tmp, { force: true }); }
  }

  /** Generation 0: a copy of the blank filesystem as the session's base. */
  private async create(): Promise<void> {
    const baseName = `base-${rand()}.qcow2`;
    await fsp.copyFile(this.images.blank, path.join(this.layersDir, baseName), C.COPYFILE_EXCL | C.COPYFILE_FICLONE);
    await fsp.chmod(path.join(this.layersDir, baseName), 0o444);
    await fsyncPath(path.join(this.layersDir, baseName));
    await fsyncPath(this.layersDir);
    const gen: DiskGeneration = { version: 1, sessionId: this.sessionId, generation: 0, layers: [baseName], parent: null, createdAt: Date.now(), shell: null, usage: null };
    const tmp = path.join(this.dir, `.gen-${rand()}`);
    await writeSynced(tmp, `${JSON.stringify(gen)}\n`);
    await fsp.rename(tmp, path.join(this.dir, 'gen-0.json'));
    const cur = path.join(this.dir, `.current-${rand()}`);
    await writeSynced(cur, '0\n');
    await fsp.rename(cur, path.join(this.dir, 'CURRENT'));
    await fsyncPath(this.dir);
  }

  /** Removes what a crash or a failed call left: temporary files, records newer than CURRENT, unreferenced layers;
   *  and generations beyond the kept ones. */
  private async recover(): Promise<void> {
    const current = await this.currentNumber();
    for (const name of await fsp.readdir(this.dir)) {
      const m = GEN_FILE.exec(name);
      if (name.startsWith('.gen-') || name.startsWith('.current-') || (m && Number(m[1]) > current)) await fsp.rm(path.join(this.dir, name), { force: true });
    }
    if (!await this.get(current)) throw this.corrupt(`generation ${current} (CURRENT) has no record`);
    await this.prune();
    const referenced = new Set<string>();
    for (const g of await this.list()) for (const l of g.layers) referenced.add(l);
    let removed = 0;
    for (const name of await fsp.readdir(this.layersDir)) {
      if (referenced.has(name)) continue;
      await fsp.rm(path.join(this.layersDir, name), { force: true, recursive: true });
      removed += 1;
    }
    if (removed > 0) log.info(`session ${this.sessionId}: removed ${removed} uncommitted disk layer(s)`);
  }

  /** Drops the records of generations older than the kept ones (their layers stay while newer chains use them). */
  private async prune(): Promise<void> {
    const current = await this.currentNumber();
    const drop = (await this.numbers()).filter((n) => n < current - this.keep);
    for (const n of drop) await fsp.rm(path.join(this.dir, `gen-${n}.json`), { force: true });
  }

  private async numbers(): Promise<number[]> {
    const out: number[] = [];
    for (const name of await fsp.readdir(this.dir)) {
      const m = GEN_FILE.exec(name);
      if (m) out.push(Number(m[1]));
    }
    return out;
  }

  private async currentNumber(): Promise<number> {
    let raw: string;
    try { raw = await fsp.readFile(path.join(this.dir, 'CURRENT'), 'utf8'); } catch (err) {
      throw this.corrupt(`CURRENT cannot be read (${(err as NodeJS.ErrnoException).code ?? 'EIO'})`);
    }
    if (!/^\d{1,15}\n?$/.test(raw)) throw this.corrupt('CURRENT is damaged');
    return Number(raw.trim());
  }

  private async exists(name: string): Promise<boolean> {
    try { await fsp.lstat(path.join(this.dir, name)); return true; } catch { return false; }
  }

  private async ensureDir(d: string): Promise<void> {
    try { await fsp.mkdir(d, { mode: 0o700 }); } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err; }
    const st = await fsp.lstat(d);
    if (!st.isDirectory()) throw fatal('persist_store_tampered', `session disk: ${this.shown(d)} is not a directory (refusing to use it)`);
  }

  private shown(p: string): string { return `<state dir>/${path.relative(this.stateDir, p)}`; }
  private corrupt(what: string): PerimeterError {
    return fatal('persist_disk_corrupt', `session disk of ${this.sessionId} (${this.shown(this.dir)}): ${what}`);
  }
}

/** qemu-img/QEMU options of a layer chain given explicitly (top first), image locking off (see the module header). */
export function chainSpec(files: readonly string[], i = 0): Record<string, unknown> {
  return {
    driver: 'qcow2',
    file: { driver: 'file', filename: files[i], locking: 'off' },
    backing: i + 1 < files.length ? chainSpec(files, i + 1) : null,
  };
}
