// The images every session disk starts from, made once per disk size and cached under <home>/cache/session-disk/:
//   ext4-<bytes>-v<N>.qcow2   a blank ext4 filesystem of the disk's size (mke2fs on a fresh sparse file, converted to
//                             qcow2 so only its metadata blocks take space): each session's base is a copy of it
//   empty-<bytes>-v<N>.qcow2  an empty qcow2 of the same size with no backing file: each new layer is a copy of it
//                             (a file copy instead of a `qemu-img create` per call)
// Invariants: the host only ever formats a file it just created (it never mounts, parses or repairs a filesystem a
// guest wrote); the filesystem's features are fixed here, not taken from the host's /etc/mke2fs.conf; a cached image
// is complete once it has its final name (made under a temporary name, renamed into place).
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { fatal } from '../../errors';

const run = promisify(execFile);
/** Bumped whenever the filesystem recipe below changes (a new base for new sessions; existing ones keep theirs). */
const RECIPE = 1;
/** ext4 as Debian 12's mke2fs makes it, spelled out; the journal keeps orphaned inodes and half-written metadata
 *  out of a committed generation even when a guest skips the seal. */
const EXT4_FEATURES = 'has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr';
/** Disk sizes are whole MiB (qcow2 and ext4 both need aligned sizes). */
export const DISK_ALIGN = 1024 * 1024;
export const MIN_DISK_BYTES = 64 * 1024 * 1024;

export interface DiskImages {
  /** A blank filesystem of `bytes`, as a qcow2 with no backing file. */
  blank: string;
  /** An empty qcow2 of `bytes` with no backing file. */
  empty: string;
  bytes: number;
}

export function diskImagesDir(home: string): string { return path.join(home, 'cache', 'session-disk'); }

/** The images for disks of `bytes` (rounded down to whole MiB), made if missing. */
export async function diskImages(home: string, bytes: number): Promise<DiskImages> {
  const size = Math.floor(bytes / DISK_ALIGN) * DISK_ALIGN;
  if (size < MIN_DISK_BYTES) throw fatal('persist_disk_size', `persist.maxBytes must be at least ${MIN_DISK_BYTES / DISK_ALIGN} MiB for a session disk`);
  const dir = diskImagesDir(home);
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const images = { blank: path.join(dir, `ext4-${size}-v${RECIPE}.qcow2`), empty: path.join(dir, `empty-${size}-v${RECIPE}.qcow2`), bytes: size };
  await Promise.all([
    ensure(images.blank, async (tmp) => {
      const raw = `${tmp}.raw`;
      try {
        await (await fsp.open(raw, 'wx', 0o600)).close();
        await fsp.truncate(raw, size);
        await tool('mke2fs', ['-q', '-F', '-b', '4096', '-I', '256', '-i', '16384', '-m', '0', '-L', 'perimeter',
          '-O', EXT4_FEATURES, '-E', 'lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0', raw], { MKE2FS_CONFIG: '/dev/null' });
        await tool('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, tmp]);
      } finally { await fsp.rm(raw, { force: true }); }
    }),
    ensure(images.empty, (tmp) => tool('qemu-img', ['create', '-q', '-f', 'qcow2', tmp, String(size)]).then(() => undefined)),
  ]);
  return images;
}

async function ensure(file: string, make: (tmp: string) => Promise<void>): Promise<void> {
  try { await fsp.access(file); return; } catch { /* made below */ }
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await make(tmp);
    await fsp.chmod(tmp, 0o444);
    await fsp.rename(tmp, file);
  } finally { await fsp.rm(tmp, { force: true }); }
}

async function tool(cmd: string, args: string[], env: Record<string, string> = {}, background = false): Promise<string> {
  const [file, argv] = background ? ['nice', ['-n', '19', 'ionice', '-c', '3', cmd, ...args]] : [cmd, args];
  try {
    const { stdout } = await run(file, argv, { env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C', ...env }, maxBuffer: 1 << 20 });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw fatal('persist_disk_tool', `${file} is not installed (apt-get install ${cmd === 'mke2fs' ? 'e2fsprogs' : 'qemu-utils'})`);
    throw fatal('persist_disk_tool', `${cmd} ${args[0]} failed: ${(e.stderr ?? e.message).trim().slice(0, 500)}`);
  }
}

/** Runs qemu-img at the lowest CPU and I/O priority (the store's compaction: background work that must not slow the
 *  calls it runs beside). */
export function backgroundQemuImg(args: string[]): Promise<string> {
  return tool('qemu-img', args, {}, true);
}
