// Turns tar layers (a Debian bootstrap's tarball, or an OCI image's layers) into a root filesystem image, inside the
// unpack jail (unpack-jail.ts: an unprivileged user, alone in its user, mount, PID, network and IPC namespaces, with
// only its output directory writable). Layers are hostile input. Invariants:
// - node-tar parses the archive format; every entry is then written here, one after another, never through a
//   symlink: each parent directory is checked (lstat) to be a real directory before anything is created in it, files
//   are created with O_EXCL|O_NOFOLLOW after whatever was at the path is removed, hardlinks only to regular files
//   reached the same way. Paths with "..", control characters or invalid UTF-8 are dropped (and counted).
// - Only regular files, directories, symlinks (their targets are data: resolved inside the VM only) and hardlinks are
//   created; devices, FIFOs, sparse and unknown entries are dropped. setuid/setgid/sticky bits and owners other than
//   root never exist on the host tree: they are recorded and applied to the image (debugfs), where only the VM sees
//   them.
// - Limits: entries, bytes per file and in total, and decompressed bytes per layer (a decompression bomb stops at
//   the cap); crossing one fails the unpack with a message naming the limit.
// - OCI layer semantics: `.wh.NAME` removes NAME of lower layers, `.wh..wh..opq` hides a directory's lower content;
//   entries of the same layer are never removed by its own whiteouts.
import { createHash } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { constants, createReadStream, createWriteStream, lstatSync, promises as fsp, readdirSync, type Stats } from 'node:fs';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { z } from 'zod';

export const UnpackLimitsSchema = z.object({
  maxEntries: z.number().int().positive(),
  maxTotalBytes: z.number().int().positive(),
  maxFileBytes: z.number().int().positive(),
});
export type UnpackLimits = z.infer<typeof UnpackLimitsSchema>;

export const DEFAULT_UNPACK_LIMITS: UnpackLimits = { maxEntries: 2_000_000, maxTotalBytes: 16 * 2 ** 30, maxFileBytes: 8 * 2 ** 30 };

export const UnpackRequestSchema = z.object({
  /** Layers, lowest first: an inherited file descriptor (0 = stdin) and the byte range of the layer in it. */
  layers: z.array(z.object({ fd: z.number().int().min(0), start: z.number().int().min(0).optional(), end: z.number().int().min(0).optional() })).min(1),
  /** The output directory (inside the jail). rootfs.ext4 and report.json are written there. */
  out: z.string(),
  limits: UnpackLimitsSchema,
  /** Adjust the tree for sandbox use (DNS through the agent, no machine identity, /workspace). */
  prepare: z.boolean(),
});
export type UnpackRequest = z.infer<typeof UnpackRequestSchema>;

export const UnpackReportSchema = z.object({
  entries: z.number().int(),
  bytes: z.number().int(),
  imageBytes: z.number().int(),
  /** sha256 of each layer's uncompressed tar stream (an image config's diff_ids), lowest first. */
  diffIds: z.array(z.string()),
  droppedCount: z.number().int(),
  dropped: z.array(z.object({ path: z.string(), reason: z.string() })),
  fixups: z.number().int(),
});
export type UnpackReport = z.infer<typeof UnpackReportSchema>;

/** An entry that cannot be extracted: dropped and reported, the unpack goes on. */
class Dropped extends Error {}
/** A limit or a broken archive: the unpack fails. */
export class UnpackError extends Error {}

interface Fixup { uid: number; gid: number; mode: number; kind: 'file' | 'dir' }

const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const MAX_DROPPED_LISTED = 200;

/** A relative, normalised path for a tar entry name, or a Dropped error. Leading "/" and "./" are removed. */
export function entryPath(name: string): string {
  if (name.includes('\uFFFD')) throw new Dropped('the name is not valid UTF-8');
  if (/[\p{Cc}"]/u.test(name)) throw new Dropped('the name has control characters or double quotes');
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new Dropped('the path has ".." segments');
  if (parts.length > 256 || name.length > 4096 || parts.some((p) => Buffer.byteLength(p) > 255)) throw new Dropped('the path is too long');
  return parts.join('/');
}

export class TreeWriter {
  readonly fixups = new Map<string, Fixup>();
  readonly dropped: Array<{ path: string; reason: string }> = [];
  droppedCount = 0;
  entries = 0;
  bytes = 0;
  /** Relative paths of directories known to be real directories (not symlinks) in the tree. */
  private readonly dirs = new Set<string>(['']);
  /** Paths written by the layer being applied (its own whiteouts never remove them). */
  private layerPaths = new Set<string>();

  constructor(readonly root: string, readonly limits: UnpackLimits) {}

  private full(rel: string): string { return rel ? path.join(this.root, rel) : this.root; }

  startLayer(): void { this.layerPaths = new Set(); }

  drop(p: string, reason: string): void {
    this.droppedCount++;
    if (this.dropped.length < MAX_DROPPED_LISTED) this.dropped.push({ path: p, reason });
  }

  /** Makes every parent of `rel` a real directory (creating missing ones 0755); refuses to pass a symlink or file. */
  private async parents(rel: string): Promise<void> {
    const parts = rel.split('/');
    let cur = '';
    for (const part of parts.slice(0, -1)) {
      cur = cur ? `${cur}/${part}` : part;
      if (this.dirs.has(cur)) continue;
      let st: Stats | null = null;
      try { st = await fsp.lstat(this.full(cur)); } catch { /* absent */ }
      if (st?.isSymbolicLink()) throw new Dropped(`its parent /${cur} is a symlink`);
      if (st && !st.isDirectory()) throw new Dropped(`its parent /${cur} is not a directory`);
      if (!st) await fsp.mkdir(this.full(cur), { mode: 0o755 });
      this.dirs.add(cur);
    }
  }

  /** Removes whatever is at `rel` (recursively for a directory) and forgets what was known below it. */
  private async remove(rel: string): Promise<void> {
    await fsp.rm(this.full(rel), { recursive: true, force: true });
    for (const d of [...this.dirs]) if (d === rel || d.startsWith(`${rel}/`)) this.dirs.delete(d);
    for (const k of [...this.fixups.keys()]) if (k === rel || k.startsWith(`${rel}/`)) this.fixups.delete(k);
  }

  private async lstat(rel: string): Promise<Stats | null> {
    try { return await fsp.lstat(this.full(rel)); } catch { return null; }
  }

  private record(rel: string, e: ReadEntry, kind: 'file' | 'dir', hostMode: number): void {
    const mode = (e.mode ?? (kind === 'dir' ? 0o755 : 0o644)) & 0o7777;
    const uid = e.uid ?? 0, gid = e.gid ?? 0;
    if (uid !== 0 || gid !== 0 || mode !== hostMode) this.fixups.set(rel, { uid, gid, mode, kind });
    else this.fixups.delete(rel);
    this.layerPaths.add(rel);
  }

  /** Whether `rel` and each of its parents is a real directory (no symlink on the way); creates nothing. */
  private async isRealDir(rel: string): Promise<boolean> {
    if (this.dirs.has(rel)) return true;
    let cur = '';
    for (const part of rel.split('/')) {
      cur = cur ? `${cur}/${part}` : part;
      if (this.dirs.has(cur)) continue;
      if (!(await this.lstat(cur))?.isDirectory()) return false;
      this.dirs.add(cur);
    }
    return true;
  }

  /** `.wh.NAME` in `dirRel`: NAME of the lower layers goes. */
  private async whiteout(dirRel: string, name: string): Promise<void> {
    const rel = dirRel ? `${dirRel}/${name}` : name;
    if (this.layerPaths.has(rel) || !(await this.isRealDir(dirRel))) return;
    await this.remove(rel);
  }

  /** `.wh..wh..opq` in `dirRel`: the directory's content from lower layers goes (what this layer wrote stays). */
  private async opaque(dirRel: string): Promise<void> {
    if (!(await this.isRealDir(dirRel))) return;
    const clear = async (d: string): Promise<void> => {
      for (const name of await fsp.readdir(this.full(d))) {
        const rel = d ? `${d}/${name}` : name;
        if (!this.layerPaths.has(rel)) await this.remove(rel);
        else if ((await this.lstat(rel))?.isDirectory()) await clear(rel);
      }
    };
    await clear(dirRel);
  }

  /** Applies one tar entry. Resolves once it is on disk (or dropped). */
  async apply(e: ReadEntry): Promise<void> {
    let rel: string;
    try {
      rel = entryPath(e.path);
      if (e.path.split('/').some((p) => p.startsWith('GNUSparseFile.'))) throw new Dropped('a sparse file');
    } catch (err) {
      e.resume();
      if (err instanceof Dropped) { this.drop(e.path, err.message); return; }
      throw err;
    }
    if (++this.entries > this.limits.maxEntries) throw new UnpackError(`the image has more than ${this.limits.maxEntries} entries`);
    try {
      const base = path.posix.basename(rel);
      if (base.startsWith('.wh.')) {
        e.resume();
        const dir = path.posix.dirname(rel) === '.' ? '' : path.posix.dirname(rel);
        if (base === '.wh..wh..opq') await this.opaque(dir);
        else await this.whiteout(dir, base.slice(4));
        return;
      }
      if (rel === '') { e.resume(); return; }   // the root directory itself
      switch (e.type) {
        case 'Directory': return await this.directory(rel, e);
        case 'File': case 'OldFile': case 'ContiguousFile': return await this.file(rel, e);
        case 'SymbolicLink': return await this.symlink(rel, e);
        case 'Link': return await this.hardlink(rel, e);
        default: e.resume(); throw new Dropped(`a ${e.type} entry (only files, directories and links are extracted)`);
      }
    } catch (err) {
      e.resume();
      if (err instanceof Dropped) { this.drop(rel, err.message); return; }
      throw err;
    }
  }

  private async directory(rel: string, e: ReadEntry): Promise<void> {
    e.resume();
    await this.parents(rel);
    const st = await this.lstat(rel);
    const hostMode = ((e.mode ?? 0o755) & 0o777) | 0o700;
    if (st && !st.isDirectory()) await this.remove(rel);
    if (st?.isDirectory()) await fsp.chmod(this.full(rel), hostMode);
    else await fsp.mkdir(this.full(rel), { mode: hostMode });
    await fsp.chmod(this.full(rel), hostMode);
    if (e.mtime) await fsp.lutimes(this.full(rel), e.mtime, e.mtime);
    this.dirs.add(rel);
    this.record(rel, e, 'dir', hostMode);
  }

  private async file(rel: string, e: ReadEntry): Promise<void> {
    if (e.size > this.limits.maxFileBytes) throw new UnpackError(`/${rel} is ${e.size} bytes, over the ${this.limits.maxFileBytes}-byte limit per file`);
    if ((this.bytes += e.size) > this.limits.maxTotalBytes) throw new UnpackError(`the image holds more than ${this.limits.maxTotalBytes} bytes of files`);
    await this.parents(rel);
    const st = await this.lstat(rel);
    if (st) await this.remove(rel);
    const hostMode = ((e.mode ?? 0o644) & 0o777) | 0o600;
    const fh = await fsp.open(this.full(rel), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    let written = 0;
    try {
      const out = createWriteStream('', { fd: fh.fd, autoClose: false } as Parameters<typeof createWriteStream>[1]);
      const count = new Transform({ transform(chunk: Buffer, _enc, cb) { written += chunk.length; cb(null, chunk); } });
      await pipeline(e as unknown as Readable, count, out);
      if (written !== e.size) throw new UnpackError(`/${rel}: the archive ended inside it`);
      await fh.chmod(hostMode);
      if (e.mtime) await fh.utimes(e.mtime, e.mtime);
    } finally { await fh.close(); }
    this.record(rel, e, 'file', hostMode);
  }

  private async symlink(rel: string, e: ReadEntry): Promise<void> {
    e.resume();
    const target = e.linkpath ?? '';
    if (!target || target.length > 4095 || target.includes('\0')) throw new Dropped('a symlink without a valid target');
    await this.parents(rel);
    if (await this.lstat(rel)) await this.remove(rel);
    await fsp.symlink(target, this.full(rel));
    this.fixups.delete(rel);
    this.layerPaths.add(rel);
  }

  private async hardlink(rel: string, e: ReadEntry): Promise<void> {
    e.resume();
    let target: string;
    try { target = entryPath(e.linkpath ?? ''); } catch (err) { throw new Dropped(`a hardlink whose target is refused (${(err as Error).message})`); }
    if (!target || target === rel) throw new Dropped('a hardlink without a valid target');
    await this.parents(target);
    const st = await this.lstat(target);
    if (!st?.isFile()) throw new Dropped(`a hardlink to /${target}, which is not a regular file in the image`);
    await this.parents(rel);
    if (await this.lstat(rel)) await this.remove(rel);
    await fsp.link(this.full(target), this.full(rel));
    this.layerPaths.add(rel);
  }

  /** The sandbox's adjustments (what every template needs), made the same safe way. */
  async prepare(): Promise<void> {
    const write = async (rel: string, data: string) => {
      await this.parents(rel);
      if (await this.lstat(rel)) await this.remove(rel);
      await fsp.writeFile(this.full(rel), data, { flag: constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode: 0o644 });
      this.fixups.delete(rel);
    };
    /** A directory that must exist (one the image has keeps its own mode unless `mode` is forced). */
    const dir = async (rel: string, mode: number, force = false) => {
      await this.parents(rel);
      const st = await this.lstat(rel);
      if (st?.isDirectory() && !force) { this.dirs.add(rel); return; }
      if (st && !st.isDirectory()) await this.remove(rel);
      if (!st?.isDirectory()) await fsp.mkdir(this.full(rel));
      await fsp.chmod(this.full(rel), mode | 0o700);
      this.dirs.add(rel);
      if ((mode | 0o700) !== mode) this.fixups.set(rel, { uid: 0, gid: 0, mode, kind: 'dir' });
      else this.fixups.delete(rel);
    };
    await dir('etc', 0o755);
    await write('etc/resolv.conf', 'nameserver 127.0.0.1\noptions attempts:1 timeout:5\n');
    await write('etc/hostname', 'sandbox\n');
    await write('etc/hosts', '127.0.0.1 localhost sandbox\n::1 localhost\n');
    await write('etc/machine-id', '');
    for (const d of ['var/lib/apt/lists', 'var/cache/apt/archives']) {
      if (!(await this.isRealDir(d))) continue;
      for (const f of await fsp.readdir(this.full(d))) if (f !== 'partial' && f !== 'lock') await this.remove(`${d}/${f}`);
    }
    for (const f of ['var/lib/systemd/random-seed', 'var/lib/urandom/random-seed']) if (await this.lstat(f)) await this.remove(f);
    await dir('workspace', 0o755);
    await dir('root', 0o700);
    await dir('tmp', 0o1777, true);
  }

  /** debugfs commands giving the image its owners and special bits (names with double quotes never get here, see
   *  entryPath; one with a backslash, which debugfs would read as an escape, keeps root and plain bits). */
  debugfsScript(): string {
    const lines: string[] = [];
    for (const [rel, f] of this.fixups) {
      if (rel.includes('\\')) continue;
      const p = `"/${rel}"`;
      lines.push(`sif ${p} mode 0${((f.kind === 'dir' ? S_IFDIR : S_IFREG) | f.mode).toString(8)}`);
      if (f.uid !== 0) lines.push(`sif ${p} uid ${f.uid}`);
      if (f.gid !== 0) lines.push(`sif ${p} gid ${f.gid}`);
    }
    return lines.join('\n');
  }
}

const GZIP = Buffer.from([0x1f, 0x8b]);
const ZSTD = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const XZ = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a]);

/** Reads one layer (plain or gzip tar) into the tree; returns the sha256 of its uncompressed stream. */
export async function applyLayer(input: Readable, tree: TreeWriter, maxStreamBytes: number): Promise<string> {
  const head: Buffer[] = [];
  let headBytes = 0;
  const it = input[Symbol.asyncIterator]();
  while (headBytes < 6) {
    const r = await it.next();
    if (r.done) break;
    head.push(r.value as Buffer);
    headBytes += (r.value as Buffer).length;
  }
  const first = Buffer.concat(head);
  if (first.subarray(0, 4).equals(ZSTD)) throw new UnpackError('zstd-compressed layers are not supported (save the image with gzip layers, e.g. docker save)');
  if (first.subarray(0, 5).equals(XZ)) throw new UnpackError('xz-compressed layers are not supported');
  const gz = first.subarray(0, 2).equals(GZIP);
  const source = async function* () { if (first.length) yield first; for (let r = await it.next(); !r.done; r = await it.next()) yield r.value as Buffer; };
  const hash = createHash('sha256');
  let streamBytes = 0;
  const limit = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      streamBytes += chunk.length;
      if (streamBytes > maxStreamBytes) { cb(new UnpackError(`a layer decompresses to more than ${maxStreamBytes} bytes (the image limit)`)); return; }
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  tree.startLayer();
  const parser = new Parser({ strict: false });
  let failure: Error | null = null;
  let chain: Promise<void> = Promise.resolve();
  parser.on('warn', (code: string, message: string | Error) => {
    if (code === 'TAR_BAD_ARCHIVE' || code === 'TAR_ABORT') failure ??= new UnpackError(`the layer is not a valid tar archive: ${message instanceof Error ? message.message : message}`);
    else tree.drop('(archive)', `${code}: ${message instanceof Error ? message.message : message}`);
  });
  parser.on('ignoredEntry', (e: ReadEntry) => tree.drop(e.path, `a ${e.type} entry (only files, directories and links are extracted)`));
  parser.on('entry', (e: ReadEntry) => {
    e.pause();
    chain = chain.then(() => (failure ? void e.resume() : tree.apply(e))).catch((err: Error) => { failure ??= err; e.resume(); });
  });
  const ended = new Promise<void>((resolve) => parser.on('end', () => resolve()));
  const feed = async (chunks: AsyncIterable<Buffer>) => {
    for await (const chunk of chunks) {
      if (failure) throw failure;
      if (!parser.write(chunk)) await new Promise((resolve) => parser.once('drain', resolve));
    }
    parser.end();
  };
  const stream = Readable.from(source(), { objectMode: false });
  try {
    if (gz) await pipeline(stream, zlib.createGunzip(), limit, feed);
    else await pipeline(stream, limit, feed);
    await ended;
    await chain;
  } catch (err) {
    throw failure ?? err;
  }
  if (failure) throw failure;
  return hash.digest('hex');
}

/** Space and inodes the tree needs in an ext4 image (blocks of 4 KiB; a hardlinked file is counted once per name). */
function treeBytes(root: string): { bytes: number; inodes: number } {
  let bytes = 0, inodes = 0;
  const walk = (d: string) => {
    for (const ent of readdirSync(d, { withFileTypes: true })) {
      inodes++;
      const p = path.join(d, ent.name);
      if (ent.isDirectory()) { bytes += 4096; walk(p); } else if (ent.isFile()) bytes += Math.ceil(lstatSync(p).size / 4096) * 4096; else bytes += 4096;
    }
  };
  walk(root);
  return { bytes, inodes };
}

/** The whole unpack: layers → tree → rootfs.ext4 (mke2fs -d, then debugfs for owners and special bits). */
export async function unpackRootfs(req: UnpackRequest, open: (layer: UnpackRequest['layers'][number]) => Readable = openLayer): Promise<UnpackReport> {
  const tree = path.join(req.out, 'tree');
  const image = path.join(req.out, 'rootfs.ext4');
  await fsp.rm(tree, { recursive: true, force: true });
  await fsp.mkdir(tree, { mode: 0o755 });
  const writer = new TreeWriter(tree, req.limits);
  const diffIds: string[] = [];
  const maxStream = Math.floor(req.limits.maxTotalBytes * 1.1) + 64 * 2 ** 20;
  for (const layer of req.layers) diffIds.push(`sha256:${await applyLayer(open(layer), writer, maxStream)}`);
  if (req.prepare) await writer.prepare();
  const { bytes, inodes } = treeBytes(tree);
  const mib = Math.ceil((bytes * 1.2) / 2 ** 20) + 64;
  execFileSync('/usr/sbin/mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'root', '-O', '^has_journal', '-E', 'root_owner=0:0',
    '-N', String(Math.max(16384, Math.ceil(inodes * 1.3) + 1024)), '-d', tree, image, `${mib}M`], { stdio: ['ignore', 'ignore', 'pipe'] });
  const script = writer.debugfsScript();
  if (script) {
    const scriptFile = path.join(req.out, 'fixups.debugfs');
    await fsp.writeFile(scriptFile, `${script}\n`);
    const res = spawnSync('/usr/sbin/debugfs', ['-w', '-f', scriptFile, image], { encoding: 'utf8' });
    const problems = (res.stderr ?? '').split('\n').filter((l) => l && !/^debugfs \d/.test(l));
    if (res.status !== 0 || problems.length) throw new UnpackError(`debugfs could not set owners and modes in the image: ${problems.slice(0, 5).join('; ') || `exit ${res.status}`}`);
  }
  await fsp.rm(tree, { recursive: true, force: true });
  const st = await fsp.stat(image);
  return { entries: writer.entries, bytes: writer.bytes, imageBytes: st.size, diffIds, droppedCount: writer.droppedCount, dropped: writer.dropped, fixups: writer.fixups.size };
}

function openLayer(layer: UnpackRequest['layers'][number]): Readable {
  return createReadStream('', { fd: layer.fd, start: layer.start, end: layer.end, autoClose: false, highWaterMark: 1 << 20 } as Parameters<typeof createReadStream>[1]);
}
