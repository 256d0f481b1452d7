// Root filesystem images for templates, cached by content under <home>/cache/rootfs-image/<key>/rootfs.ext4.
// A Debian template's image comes from `mmdebstrap --mode=unshare` (no root: the companion's own subordinate uids,
// or root's user namespace when run as root) streaming a tarball into the unpack jail (unpack-jail.ts), which writes
// the ext4 image without root; the template file's `files` and `commands` are applied by mmdebstrap's customize
// hooks inside the new root. Invariants:
// - The key covers everything the image is made from: the recipe version, the Debian release and mirror, the sorted
//   package set, each copied file's content, mode and destination, the commands and their environment. A template
//   file that did not change reuses its image (commands that fetch from the network are not re-run: `--force` does).
// - The image is renamed into the cache complete (info.json first); a half-built one is never found.
// - A stopped bootstrap leaves nothing: mmdebstrap runs in its own process group (build-tools.ts) and its temporary
//   root, our scratch directory and the staged image are removed with the build.
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fatal } from '../../errors';
import { SANDBOX_PACKAGES, resolveSpecFile, type LoadedSpec } from './spec';
import { unpackInJail } from './unpack-jail';
import { startHelper, sweepDeadBuilds, trackPartial } from './build-tools';
import { DEFAULT_UNPACK_LIMITS, type UnpackLimits, type UnpackReport } from './unpack';

/** Bump when the way images are made changes (it re-addresses every cached image). */
const ROOTFS_RECIPE = 2;
export const DEFAULT_MIRROR = 'http://deb.debian.org/debian';
/** The tools' working directory (tools/semantics.ts WORKDIR): every image has it; another `workdir` is created. */
const DEFAULT_WORKDIR = '/workspace';
/** Documentation, manuals and translations stay out of images (the copyright notices stay). */
const DPKG_EXCLUDES = ['path-exclude=/usr/share/doc/*', 'path-include=/usr/share/doc/*/copyright', 'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*', 'path-exclude=/usr/share/locale/*', 'path-include=/usr/share/locale/locale.alias'];

export interface RootfsImage {
  /** The cached ext4 image (read-only for every VM). */
  image: string;
  /** What the image is made from, hashed: part of the template's identity. */
  key: string;
  /** A line saying where it came from (the manifest's rootfsSource). */
  source: string;
  /** A Debian root filesystem with every tool the sandbox promises (the template boot checks them). */
  full: boolean;
  cached: boolean;
  /** What an image's config sets for the processes it runs (environment, working directory). */
  env?: Record<string, string>;
  workdir?: string;
}

export interface RootfsContext {
  cache: string;
  progress: (line: string) => void;
  /** Rebuild even when a cached image exists (e.g. to pick up newer packages). */
  force?: boolean;
  /** The uid a root companion unpacks as (sandbox.vmUidBase - 1). */
  rootBuildUid: number;
  limits?: UnpackLimits;
}

const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

/** A hash of a file or directory's names, modes, link targets and contents. */
export function contentHash(p: string): string {
  const h = createHash('sha256');
  const walk = (full: string, rel: string) => {
    const st = lstatSync(full);
    h.update(`${rel}\0${st.mode}\0`);
    if (st.isSymbolicLink()) h.update(readlinkSync(full));
    else if (st.isFile()) h.update(readFileSync(full));
    else if (st.isDirectory()) for (const name of readdirSync(full).sort()) walk(path.join(full, name), `${rel}/${name}`);
    h.update('\n');
  };
  walk(p, '.');
  return h.digest('hex');
}

export function debianPackages(loaded: LoadedSpec): string[] {
  return [...new Set([...SANDBOX_PACKAGES, ...loaded.spec.packages])].sort();
}

/** The cache key of a Debian template file's root filesystem. */
export function debianRootfsKey(loaded: LoadedSpec): string {
  const { spec } = loaded;
  const files = spec.files.map((f) => ({ to: f.to, mode: f.mode ?? null, content: contentHash(resolveSpecFile(loaded.dir!, f.from)) }));
  return sha256(JSON.stringify({ recipe: ROOTFS_RECIPE, base: spec.base, mirror: spec.mirror ?? DEFAULT_MIRROR, packages: debianPackages(loaded),
    files, commands: spec.commands, env: spec.commands.length ? spec.env : {}, ...(spec.workdir !== DEFAULT_WORKDIR ? { workdir: spec.workdir } : {}) })).slice(0, 24);
}

const shQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The mmdebstrap argument list for a template file (hooks read scripts written into `scratch`). */
export function mmdebstrapArgs(loaded: LoadedSpec, scratch: string): string[] {
  const { spec } = loaded;
  const args = ['--mode=unshare', '--variant=minbase', '--format=tar', `--include=${debianPackages(loaded).join(',')}`,
    '--aptopt=Acquire::Retries "3"', ...DPKG_EXCLUDES.map((d) => `--dpkgopt=${d}`)];
  spec.files.forEach((f) => {
    const from = resolveSpecFile(loaded.dir!, f.from);
    const parent = path.posix.dirname(f.to);
    args.push(`--customize-hook=chroot "$1" mkdir -p ${shQuote(statSync(from).isDirectory() ? f.to : parent)}`);
    args.push(statSync(from).isDirectory() ? `--customize-hook=sync-in ${shQuote(from)} ${shQuote(f.to)}` : `--customize-hook=upload ${shQuote(from)} ${shQuote(f.to)}`);
    if (f.mode) args.push(`--customize-hook=chroot "$1" chmod ${f.mode} ${shQuote(f.to)}`);
  });
  spec.commands.forEach((cmd, i) => {
    const script = path.join(scratch, `command-${i + 1}.sh`);
    const env = Object.entries(spec.env).map(([k, v]) => `export ${k}=${shQuote(v)}\n`).join('');
    writeFileSync(script, `set -e\nexport HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive\n${env}cd /\n${cmd}\n`);
    const inside = `/tmp/perimeter-command-${i + 1}.sh`;
    args.push(`--customize-hook=upload ${shQuote(script)} ${inside}`);
    args.push(`--customize-hook=chroot "$1" /bin/sh ${inside}`);
    args.push(`--customize-hook=rm -f "$1${inside}"`);
  });
  if (spec.workdir !== DEFAULT_WORKDIR) args.push(`--customize-hook=chroot "$1" mkdir -p ${shQuote(spec.workdir)}`);
  args.push(spec.base, '-', spec.mirror ?? DEFAULT_MIRROR);
  return args;
}

/** A bootstrap's scratch directories in the system's temporary directory (the group: the building process's pid). */
const BOOTSTRAP_SCRATCH = /^perimeter-mmdebstrap-(?:root-)?(\d+)-/;

function cachedImage(cache: string, key: string): string { return path.join(cache, 'rootfs-image', key, 'rootfs.ext4'); }

/** mmdebstrap's unshare mode maps the new root's users onto subordinate uids and gids of the user who runs it (root
 *  needs none); without a range it fails deep inside, so say what to do instead. */
export function subordinateIdsProblem(user = os.userInfo(), files = { uid: '/etc/subuid', gid: '/etc/subgid' }): string | null {
  if (user.uid === 0) return null;
  const has = (file: string) => {
    try { return readFileSync(file, 'utf8').split('\n').some((l) => { const [who] = l.split(':'); return who === user.username || who === String(user.uid); }); } catch { return false; }
  };
  const missing = [has(files.uid) ? '' : files.uid, has(files.gid) ? '' : files.gid].filter(Boolean);
  if (!missing.length) return null;
  return `${user.username} has no subordinate ids in ${missing.join(' and ')}, which mmdebstrap --mode=unshare needs to build a root filesystem without root (fix, once, as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 ${user.username})`;
}

/** Whether `debianRootfs` would take the image from the cache (no bootstrap, no unpack). */
export function debianRootfsCached(loaded: LoadedSpec, ctx: Pick<RootfsContext, 'cache' | 'force'>): boolean {
  return !ctx.force && existsSync(cachedImage(ctx.cache, debianRootfsKey(loaded)));
}

/** The root filesystem image of a Debian template file: from the cache, or built (mmdebstrap → unpack jail). */
export async function debianRootfs(loaded: LoadedSpec, ctx: RootfsContext): Promise<RootfsImage> {
  const key = debianRootfsKey(loaded);
  const image = cachedImage(ctx.cache, key);
  const pkgs = debianPackages(loaded);
  const source = `mmdebstrap ${loaded.spec.base} minbase + ${pkgs.length} packages${loaded.spec.files.length ? `, ${loaded.spec.files.length} file(s)` : ''}${loaded.spec.commands.length ? `, ${loaded.spec.commands.length} command(s)` : ''}`;
  const result = { image, key: `debian-${key}`, source, full: true };
  if (!ctx.force && existsSync(image)) { ctx.progress(`rootfs: cached image ${image}`); return { ...result, cached: true }; }
  const p = ctx.progress;
  const ids = subordinateIdsProblem();
  if (ids) throw fatal('subordinate_ids_missing', ids);
  p(`rootfs: mmdebstrap --mode=unshare ${loaded.spec.base} minbase + ${pkgs.join(' ')}${loaded.spec.commands.length ? ` and ${loaded.spec.commands.length} command(s)` : ''}`);
  const started = Date.now();
  sweepDeadBuilds(os.tmpdir(), BOOTSTRAP_SCRATCH);
  const scratch = mkdtempSync(path.join(os.tmpdir(), `perimeter-mmdebstrap-${process.pid}-`));
  // mmdebstrap's own temporary root goes into a directory of ours (removed with the build, also a killed one) that,
  // like /tmp, is open to the subordinate uids the new root's files belong to
  const mmTmp = mkdtempSync(path.join(os.tmpdir(), `perimeter-mmdebstrap-root-${process.pid}-`));
  chmodSync(mmTmp, 0o1777);
  const releaseScratch = [trackPartial(scratch), trackPartial(mmTmp)];
  const releaseNew = trackPartial(`${image}.new`);
  try {
    const mm = startHelper('mmdebstrap', mmdebstrapArgs(loaded, scratch), { nice: true, env: { ...process.env, LC_ALL: 'C.UTF-8', TMPDIR: mmTmp } });
    let tail = '';
    let partial = '';
    mm.child.stderr!.on('data', (d: Buffer) => {
      const text = d.toString('utf8');
      tail = (tail + text).slice(-3000);
      const lines = (partial + text).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) if (/^I: (downloading|extracting|installing|running|creating|success)/.test(l)) p(`rootfs: ${l.slice(3)}`);
    });
    let report: UnpackReport;
    try {
      report = await unpackInJail({ layers: [{ stream: mm.child.stdout! }], limits: ctx.limits ?? DEFAULT_UNPACK_LIMITS, prepare: true,
        output: `${image}.new`, stageParent: path.join(ctx.cache, 'rootfs-image'), rootBuildUid: ctx.rootBuildUid });
    } catch (err) {
      mm.end();
      const ended = await mm.exited.catch((e: Error) => e);
      if (ended instanceof Error) throw ended;   // mmdebstrap could not start: that, not the empty unpack, is the error
      if (ended.code) throw fatal('rootfs_build_failed', `mmdebstrap failed (exit ${ended.code}): ${tail.trim().split('\n').slice(-8).join('\n')}`);
      throw err;
    }
    const { code } = await mm.exited;
    if (code !== 0) { rmSync(`${image}.new`, { force: true }); throw fatal('rootfs_build_failed', `mmdebstrap failed (exit ${code}): ${tail.trim().split('\n').slice(-8).join('\n')}`); }
    writeFileSync(path.join(path.dirname(image), 'info.json'), JSON.stringify({ source, packages: pkgs, spec: loaded.spec, report: { ...report, dropped: report.dropped.slice(0, 20) }, builtAt: new Date().toISOString() }, null, 2));
    renameSync(`${image}.new`, image);
    releaseNew();
    p(`rootfs: ${report.entries} entries, ${Math.round(report.bytes / 2 ** 20)} MiB of files, in ${Math.round((Date.now() - started) / 1000)} s`);
    return { ...result, cached: false };
  } finally {
    for (const dir of [scratch, mmTmp]) rmSync(dir, { recursive: true, force: true });
    for (const release of releaseScratch) release();
  }
}
