// Starts the unpack program (unpack-main.ts → dist/guest/perimeter-unpack.js) in a jail and collects its image.
// The jail (bubblewrap): a user namespace in which the program is "root" but outside it an unprivileged uid (the
// companion's own, or for a root companion `sandbox.vmUidBase - 1`, a uid nothing else uses), new mount, PID,
// network, IPC and UTS namespaces, /usr read-only, an empty root otherwise, and one writable directory: the stage
// directory, which belongs to that uid. The layers are handed over as open file descriptors (the jail never sees a
// path of the host's), the program as a copy. Invariants:
// - Nothing an archive holds is ever written by root or outside the stage directory; a root companion never lets
//   the unprivileged uid reach its state directory (the stage lives in /var/tmp, mode 0700, owned by that uid).
// - The jail is killed at the deadline, when the build ends early (its own process group, build-tools.ts) and with
//   the companion (--die-with-parent); its stage goes with it, and a stage a SIGKILLed companion left
//   behind is removed by a later unpack.
// - What comes back is checked: report.json against its schema, rootfs.ext4 a regular file of the stage directory.
import { chownSync, closeSync, existsSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { fatal } from '../../errors';
import { findAsset } from './build';
import { startHelper, trackPartial, type Helper } from './build-tools';
import { BWRAP, SETPRIV } from '../qemu/confine';
import { UnpackReportSchema, type UnpackLimits, type UnpackReport, type UnpackRequest } from './unpack';

export type JailLayer = { file: string; start?: number; end?: number } | { stream: Readable };

export interface UnpackJailOptions {
  layers: JailLayer[];
  limits: UnpackLimits;
  /** Adjust the tree for sandbox use (unpack.ts TreeWriter.prepare). */
  prepare: boolean;
  /** Where the finished image goes (renamed into place, or copied sparse across filesystems). */
  output: string;
  /** Where an unprivileged companion stages (a directory on the output's filesystem). */
  stageParent: string;
  /** The uid a root companion unpacks as. */
  rootBuildUid: number;
}

/** An unpack still running after this is killed. */
const UNPACK_DEADLINE_MS = 60 * 60_000;
/** A stage this old belongs to no running unpack. */
const STALE_STAGE_MS = 2 * UNPACK_DEADLINE_MS;

function bwrapArgs(programFd: number, node: { fd: number } | { path: string }): string[] {
  const a = ['--unshare-user', '--uid', '0', '--gid', '0', '--unshare-pid', '--unshare-net', '--unshare-ipc', '--unshare-uts',
    '--die-with-parent', '--new-session', '--clearenv', '--setenv', 'PATH', '/usr/bin:/usr/sbin', '--setenv', 'HOME', '/tmp',
    '--ro-bind', '/usr', '/usr'];
  for (const d of ['/bin', '/sbin', '/lib', '/lib64']) {
    let target: string;
    try { target = realpathSync(d); } catch { continue; }
    if (target.startsWith('/usr/')) a.push('--symlink', path.relative('/', target), d);
    else a.push('--ro-bind', d, d);
  }
  if (existsSync('/etc/ld.so.cache')) a.push('--dir', '/etc', '--ro-bind', '/etc/ld.so.cache', '/etc/ld.so.cache');
  a.push('--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--perms', '0644', '--file', String(programFd), '/unpack.js');
  if ('fd' in node) a.push('--perms', '0755', '--file', String(node.fd), '/node');
  return a;
}

/** Stage directories an unpack left behind when its companion was killed (older than STALE_STAGE_MS) go. */
function sweepStages(parent: string, prefix: string): void {
  let names: string[] = [];
  try { names = readdirSync(parent).filter((n) => n.startsWith(prefix)); } catch { return; }
  for (const n of names) {
    const dir = path.join(parent, n);
    try { if (Date.now() - lstatSync(dir).mtimeMs > STALE_STAGE_MS) rmSync(dir, { recursive: true, force: true }); } catch { /* gone meanwhile */ }
  }
}

/** Unpacks `layers` into one root filesystem image at `output`; returns what the unpack reported. */
export async function unpackInJail(o: UnpackJailOptions): Promise<UnpackReport> {
  const root = process.getuid?.() === 0;
  if (root) sweepStages('/var/tmp', 'perimeter-unpack-'); else sweepStages(o.stageParent, '.unpack-');
  const program = findAsset('perimeter-unpack.js');
  const stage = root ? mkdtempSync('/var/tmp/perimeter-unpack-') : (mkdirSync(o.stageParent, { recursive: true }), mkdtempSync(path.join(o.stageParent, '.unpack-')));
  const fds: number[] = [];
  let jail: Helper | null = null;
  const release = [trackPartial(stage), trackPartial(`${o.output}.tmp-${process.pid}`)];
  try {
    if (root) chownSync(stage, o.rootBuildUid, o.rootBuildUid);
    const open = (f: string) => { const fd = openSync(f, 'r'); fds.push(fd); return fd; };
    const stdio: Array<'ignore' | 'pipe' | number | Readable> = ['ignore', 'ignore', 'pipe'];
    const slot = (fd: number) => { stdio.push(fd); return stdio.length - 1; };
    const programSlot = slot(open(program));
    const nodeUnderUsr = process.execPath.startsWith('/usr/');
    const nodeSlot = nodeUnderUsr ? null : slot(open(process.execPath));
    const layers: UnpackRequest['layers'] = [];
    let stdinUsed = false;
    for (const l of o.layers) {
      if ('stream' in l) {
        if (stdinUsed) throw new Error('only one layer can come from a stream');
        stdinUsed = true;
        stdio[0] = l.stream;
        layers.push({ fd: 0 });
      } else {
        layers.push({ fd: slot(open(l.file)), ...(l.start !== undefined ? { start: l.start } : {}), ...(l.end !== undefined ? { end: l.end } : {}) });
      }
    }
    const req: UnpackRequest = { layers, out: '/out', limits: o.limits, prepare: o.prepare };
    const fsizeBytes = Math.ceil(o.limits.maxTotalBytes * 1.3) + 256 * 2 ** 20;
    const inner = [BWRAP, ...bwrapArgs(programSlot, nodeSlot === null ? { path: process.execPath } : { fd: nodeSlot }), '--bind', stage, '/out',
      '--', nodeUnderUsr ? process.execPath : '/node', '/unpack.js', JSON.stringify(req)];
    const prlimit = ['/usr/bin/prlimit', `--fsize=${fsizeBytes}`, '--core=0', '--nofile=1024', '--'];
    const argv = root
      ? [SETPRIV, `--reuid=${o.rootBuildUid}`, `--regid=${o.rootBuildUid}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', '--', ...prlimit, ...inner]
      : [SETPRIV, '--no-new-privs', '--', ...prlimit, ...inner];
    const started = startHelper(argv[0]!, argv.slice(1), { stdio, env: {} });
    jail = started;
    let stderr = '';
    started.child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString('utf8')).slice(-4000); });
    const timer = setTimeout(() => started.end(), UNPACK_DEADLINE_MS);
    const { code } = await started.exited.finally(() => clearTimeout(timer));
    if (code !== 0) throw fatal('image_unpack_failed', `unpacking the root filesystem failed: ${stderr.trim().split('\n').slice(-3).join(' ') || `exit ${code}`}`);
    const report = UnpackReportSchema.parse(JSON.parse(readFileSync(path.join(stage, 'report.json'), 'utf8')));
    const image = path.join(stage, 'rootfs.ext4');
    if (!lstatSync(image).isFile()) throw fatal('image_unpack_failed', 'the unpack jail left no root filesystem image');
    mkdirSync(path.dirname(o.output), { recursive: true });
    const tmp = `${o.output}.tmp-${process.pid}`;
    try { renameSync(image, tmp); } catch {
      const cp = await startHelper('cp', ['--sparse=always', image, tmp], { stdio: 'ignore' }).exited;
      if (cp.code !== 0) throw new Error(`cp exited ${cp.code ?? cp.signal}`);
    }
    if (root) chownSync(tmp, 0, 0);
    renameSync(tmp, o.output);
    return report;
  } finally {
    jail?.end();
    for (const fd of fds) closeSync(fd);
    rmSync(stage, { recursive: true, force: true });
    rmSync(`${o.output}.tmp-${process.pid}`, { force: true });
    for (const r of release) r();
  }
}
