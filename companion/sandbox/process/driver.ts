// The `process` sandbox driver: DEVELOPMENT ONLY, NO ISOLATION. Each sandbox is a private temporary directory that
// stands in for the guest's root filesystem: guest paths (`/workspace/a.txt`) map onto `<root>/workspace/a.txt`.
// Commands run as host processes (`/bin/bash` in a detached process group), so they can read and change anything
// the companion's user can. It exists so the worker, the tools and the dev queue can be developed and tested on a
// machine without KVM. Invariants:
// - Every start prints a loud warning; `select.ts` picks it only when named (or for the demo's own embedded queue).
// - File operations never leave the sandbox root: guest paths are normalised lexically, and the resolved host path
//   (symlinks followed for every parent component) must stay under the root.
// - Commands get only the environment the caller passes (plus PERIMETER_GUEST_PREFIX, see below), stdin from
//   /dev/null, stdout and stderr merged; on timeout, and whenever the main process exits, the whole process group
//   is killed, so a background job holding the pipe can never hang a call.
// - Commands see host paths. Absolute guest paths inside a command are NOT translated; the driver exports
//   PERIMETER_GUEST_PREFIX=<root> so the tools' shell prelude can map its cwd (VM drivers leave it unset).
// - No host path leaves the driver: errors name guest paths and the system's own text for the errno (as the guest
//   agent's do), and the root is mapped back to `/` in command output.
import { spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { promises as fs, constants as fsc } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { getSystemErrorMap } from 'node:util';
import { logger } from '../../log';
import type { AcquireOptions, DriverInfo, DriverProbe, Sandbox, SandboxDriver } from '../types';
import {
  GuestError, type ExecRequest, type ExecResult, type GotFile, type GuestEntry, type GuestStat, type PutFile, type EntryType,
} from '../../guest/types';

const log = logger('sandbox:process');
/** After the main process exits while something (a background job) still holds its output pipe open, how long to
 *  keep reading before the group is killed. Without such a holder the call ends as soon as the pipes close. */
const EXIT_DRAIN_MS = 150;

export const PROCESS_DRIVER_WARNING =
  'sandbox driver "process": NO ISOLATION, development only. Tool calls run as host processes with your user\'s rights.';

export interface ProcessDriverOptions {
  /** Parent directory for sandbox roots (default: the OS temp dir). */
  baseDir?: string;
}

export class ProcessDriver implements SandboxDriver {
  readonly kind = 'process' as const;
  private readonly live = new Set<ProcessSandbox>();
  private warned = false;

  constructor(private readonly opts: ProcessDriverOptions = {}) {}

  async probe(): Promise<DriverProbe> {
    return { ok: true, accel: 'none', detail: 'host processes in a temp directory (no isolation)', fixes: [] };
  }

  async acquire(opts: AcquireOptions): Promise<Sandbox> {
    if (!this.warned) { log.warn(PROCESS_DRIVER_WARNING); this.warned = true; }
    const base = this.opts.baseDir ?? os.tmpdir();
    await fs.mkdir(base, { recursive: true });
    const root = await fs.realpath(await fs.mkdtemp(path.join(base, 'perimeter-sbx-')));
    for (const d of ['workspace', 'tmp', 'root', 'run/perimeter']) await fs.mkdir(path.join(root, d), { recursive: true, mode: 0o755 });
    const sb = new ProcessSandbox(root, opts.sessionId, () => this.live.delete(sb));
    this.live.add(sb);
    return sb;
  }

  info(): DriverInfo { return { kind: 'process', accel: 'none', running: this.live.size, pooled: 0 }; }

  async close(): Promise<void> {
    await Promise.all([...this.live].map((sb) => sb.destroy()));
  }
}

/** Normalises a guest path; it must be absolute. Returns the POSIX-normalised form without a trailing slash. */
export function normaliseGuestPath(p: string): string {
  if (typeof p !== 'string' || !p.startsWith('/') || p.includes('\0')) throw new GuestError('EINVAL', `not an absolute guest path: ${JSON.stringify(p)}`);
  const n = path.posix.normalize(p);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

function errnoCode(err: unknown): string {
  return (err as NodeJS.ErrnoException)?.code ?? 'EIO';
}
/** The system's description of an errno ("Not a directory"), as strerror words it in the guest. */
function describeErrno(err: NodeJS.ErrnoException | undefined, code: string): string {
  const known = typeof err?.errno === 'number' ? getSystemErrorMap().get(err.errno) : undefined;
  const text = known?.[1] ?? code;
  return text.charAt(0).toUpperCase() + text.slice(1);
}
function typeOf(st: import('node:fs').Stats): EntryType {
  return st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
}

class ProcessSandbox implements Sandbox {
  readonly id = `proc-${randomUUID().slice(0, 8)}`;
  readonly driver = 'process' as const;
  private destroyed = false;
  private readonly groups = new Set<number>();

  constructor(readonly root: string, readonly sessionId: string, private readonly onDestroy: () => void) {}

  /** The guest path of a host path under the root (`<root>/workspace/a` -> `/workspace/a`). */
  private guestPathOf(hostPath: string): string {
    if (hostPath === this.root) return '/';
    if (hostPath.startsWith(this.root + path.sep)) return hostPath.slice(this.root.length);
    return '(a path outside the sandbox)';
  }

  /** A host file-system error in guest terms: `<syscall> <guest path>: <description>`, never a host path. */
  private guestErr(err: unknown, guestPath: string): GuestError {
    if (err instanceof GuestError) return err;
    const e = err as NodeJS.ErrnoException | undefined;
    const code = errnoCode(err);
    const where = typeof e?.path === 'string' ? this.guestPathOf(e.path) : guestPath;
    return new GuestError(code, `${e?.syscall ? `${e.syscall} ` : ''}${where}: ${describeErrno(e, code)}`);
  }

  /** Command output with the root mapped back to `/` (commands run on the host and may print host paths). */
  private guestOutput(out: Buffer): Buffer {
    const root = Buffer.from(this.root, 'utf8').toString('latin1');
    const text = out.toString('latin1');
    if (!text.includes(root)) return out;
    return Buffer.from(text.split(`${root}/`).join('/').split(root).join('/'), 'latin1');
  }

  /** Host path for a guest path; parents are resolved so a symlink cannot lead the operation out of the root. */
  private async host(guestPath: string, opts: { followLeaf?: boolean } = {}): Promise<string> {
    const g = normaliseGuestPath(guestPath);
    const lexical = path.join(this.root, g);
    // Resolve the deepest existing ancestor (and the leaf when asked) and check it is inside the root.
    let probe = opts.followLeaf ? lexical : path.dirname(lexical);
    let rest = opts.followLeaf ? '' : path.basename(lexical);
    for (;;) {
      try {
        const real = await fs.realpath(probe);
        if (real !== this.root && !real.startsWith(this.root + path.sep)) throw new GuestError('EACCES', `${g}: resolves outside the sandbox`);
        return rest ? path.join(real, rest) : real;
      } catch (err) {
        if (err instanceof GuestError) throw err;
        if (errnoCode(err) !== 'ENOENT' || probe === this.root) throw this.guestErr(err, g);
        rest = rest ? path.join(path.basename(probe), rest) : path.basename(probe);
        probe = path.dirname(probe);
      }
    }
  }

  private live(): void { if (this.destroyed) throw new GuestError('ESHUTDOWN', 'sandbox destroyed'); }

  exec(req: ExecRequest, onOutput?: (chunk: Buffer) => void): Promise<ExecResult> {
    this.live();
    return this.execInner(req, onOutput);
  }

  private async execInner(req: ExecRequest, onOutput?: (chunk: Buffer) => void): Promise<ExecResult> {
    const started = Date.now();
    let cwd = path.join(this.root, 'workspace');
    if (req.cwd) { try { cwd = await this.host(req.cwd, { followLeaf: true }); } catch { /* keep /workspace */ } }
    const env: Record<string, string> = { ...(req.env ?? { PATH: '/usr/local/bin:/usr/bin:/bin' }), PERIMETER_GUEST_PREFIX: this.root };
    if (env.HOME?.startsWith('/')) env.HOME = path.join(this.root, env.HOME);
    if (!env.TMPDIR) env.TMPDIR = path.join(this.root, 'tmp');
    const [cmd, ...args] = req.argv;
    if (!cmd) throw new GuestError('EINVAL', 'empty argv');
    const cap = new HeadTailBuffer(req.maxOutputBytes);
    return await new Promise<ExecResult>((resolve) => {
      const child = spawn(cmd, args, { cwd, env, detached: true, stdio: [req.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
      const pid = child.pid;
      if (pid) this.groups.add(pid);
      let timedOut = false;
      let finished = false;
      const killGroup = () => { if (pid) { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } } };
      const onData = (chunk: Buffer) => { cap.push(chunk); onOutput?.(this.guestOutput(chunk)); };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      if (req.stdin && child.stdin) { child.stdin.on('error', () => {}); child.stdin.end(req.stdin); }
      const timer = setTimeout(() => { timedOut = true; killGroup(); }, req.timeoutMs);
      const finish = (exitCode: number) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        killGroup();
        if (pid) this.groups.delete(pid);
        child.stdout!.destroy(); child.stderr!.destroy();
        const [head, tail] = [this.guestOutput(cap.headBytes()), this.guestOutput(cap.tailBytes())];
        resolve({
          exitCode, timedOut, output: Buffer.concat([head, tail]),
          droppedBytes: cap.dropped, droppedAt: cap.dropped > 0 ? head.length : head.length + tail.length, droppedNewlines: cap.droppedNewlines,
          durationMs: Date.now() - started,
        });
      };
      child.on('error', (err) => { cap.push(Buffer.from(`${cmd}: ${err.message}\n`)); finish(127); });
      const exitCodeOf = (code: number | null, signal: NodeJS.Signals | null) => code ?? (signal ? 128 + (os.constants.signals[signal] ?? 9) : 1);
      // The usual end: the process exited and its output pipes reached end-of-file (nothing else holds them).
      child.on('close', (code, signal) => finish(exitCodeOf(code, signal)));
      // Background jobs may keep the pipe open: read what is already there, then kill the group.
      child.on('exit', (code, signal) => { setTimeout(() => finish(exitCodeOf(code, signal)), EXIT_DRAIN_MS); });
    });
  }

  async readFile(p: string, opts: { offset?: number; length?: number } = {}): Promise<{ data: Buffer; size: number }> {
    this.live();
    const h = await this.host(p, { followLeaf: true });
    let fh: fs.FileHandle | undefined;
    try {
      fh = await fs.open(h, fsc.O_RDONLY | fsc.O_NONBLOCK);
      const st = await fh.stat();
      if (st.isDirectory()) throw new GuestError('EISDIR', `${p}: is a directory`);
      if (!st.isFile()) throw new GuestError('EINVAL', `${p}: not a regular file`);
      const offset = Math.max(0, opts.offset ?? 0);
      const length = Math.max(0, Math.min(opts.length ?? st.size, st.size - offset));
      const data = Buffer.alloc(length);
      let read = 0;
      while (read < length) {
        const r = await fh.read(data, read, length - read, offset + read);
        if (r.bytesRead === 0) break;
        read += r.bytesRead;
      }
      return { data: data.subarray(0, read), size: st.size };
    } catch (err) { throw this.guestErr(err, p); } finally { await fh?.close(); }
  }

  async writeFile(p: string, data: Buffer, opts: { mode?: number } = {}): Promise<void> {
    this.live();
    const h = await this.host(p);
    const tmp = path.join(path.dirname(h), `.perimeter-tmp-${randomUUID()}`);
    try {
      await this.mkdirs(path.dirname(h));
      await fs.writeFile(tmp, data, { mode: opts.mode ?? 0o644, flag: 'wx' });
      await fs.rename(tmp, h);
    } catch (err) {
      await fs.rm(tmp, { force: true }).catch(() => {});
      throw this.guestErr(err, p);
    }
  }

  /** `mkdir -p` with the guest's answer when a component is not a directory (ENOTDIR, where Node says EEXIST). */
  private async mkdirs(hostDir: string): Promise<void> {
    try { await fs.mkdir(hostDir, { recursive: true, mode: 0o755 }); } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code !== 'EEXIST') throw err;
      throw new GuestError('ENOTDIR', `mkdir ${this.guestPathOf(e.path ?? hostDir)}: Not a directory`);
    }
  }

  async stat(p: string): Promise<GuestStat | null> {
    this.live();
    const g = normaliseGuestPath(p);
    try {
      const st = await fs.lstat(await this.host(g));
      return { path: g, type: typeOf(st), size: st.size, mode: st.mode & 0o7777, mtimeMs: st.mtimeMs };
    } catch (err) {
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return null;
      throw this.guestErr(err, g);
    }
  }

  async walk(root: string, opts: { hash: boolean; maxEntries: number; skipNames?: string[] }): Promise<{ entries: GuestEntry[]; truncated: boolean }> {
    this.live();
    const g = normaliseGuestPath(root);
    const hostRoot = await this.host(g, { followLeaf: true });
    const skip = new Set(opts.skipNames ?? []);
    const entries: GuestEntry[] = [];
    let truncated = false;
    const visit = async (hostDir: string, guestDir: string): Promise<void> => {
      let names: string[];
      try { names = (await fs.readdir(hostDir)).sort(); } catch { return; }
      for (const name of names) {
        if (entries.length >= opts.maxEntries) { truncated = true; return; }
        if (skip.has(name)) continue;
        const hp = path.join(hostDir, name);
        const gp = guestDir === '/' ? `/${name}` : `${guestDir}/${name}`;
        let st: import('node:fs').Stats;
        try { st = await fs.lstat(hp); } catch { continue; }
        const e: GuestEntry = { path: gp, type: typeOf(st), size: st.size, mode: st.mode & 0o7777, mtimeMs: st.mtimeMs };
        if (e.type === 'symlink') { try { e.linkTarget = await fs.readlink(hp); } catch { /* raced */ } }
        if (e.type === 'file' && opts.hash) { try { e.sha256 = createHash('sha256').update(await fs.readFile(hp)).digest('hex'); } catch { /* raced */ } }
        entries.push(e);
        if (e.type === 'dir') await visit(hp, gp);
        if (truncated) return;
      }
    };
    await visit(hostRoot, g);
    return { entries, truncated };
  }

  async putFiles(files: PutFile[], deletes: string[]): Promise<void> {
    this.live();
    for (const d of deletes) {
      const h = await this.host(d);
      try { await fs.rm(h, { recursive: true, force: true }); } catch (err) { throw this.guestErr(err, d); }
    }
    for (const f of files) {
      await this.writeFile(f.path, f.data, { mode: f.mode & 0o777 });
      if (f.mtimeMs !== undefined) {
        const h = await this.host(f.path);
        await fs.utimes(h, f.mtimeMs / 1000, f.mtimeMs / 1000).catch(() => {});
      }
    }
  }

  async getFiles(paths: string[], opts: { maxTotalBytes: number }): Promise<GotFile[]> {
    this.live();
    const out: GotFile[] = [];
    let total = 0;
    for (const p of paths) {
      const st = await this.stat(p);
      if (!st || st.type !== 'file') throw new GuestError('EINVAL', `${p}: not a regular file`);
      const { data } = await this.readFile(p);
      total += data.length;
      if (total > opts.maxTotalBytes) throw new GuestError('EFBIG', `copy-out exceeds ${opts.maxTotalBytes} bytes`);
      out.push({ path: normaliseGuestPath(p), data, mode: st.mode, sha256: createHash('sha256').update(data).digest('hex') });
    }
    return out;
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const pid of this.groups) { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } }
    this.groups.clear();
    await fs.rm(this.root, { recursive: true, force: true }).catch((err) => log.warn(`could not remove ${this.root}: ${(err as Error).message}`));
    this.onDestroy();
  }
}

/** Keeps the first and last `cap/2` bytes of a stream and counts what was dropped in between (bytes, newlines). */
export class HeadTailBuffer {
  private head: Buffer[] = [];
  private headLen = 0;
  private tail: Buffer[] = [];
  private tailLen = 0;
  dropped = 0;
  droppedNewlines = 0;
  private readonly headCap: number;
  private readonly tailCap: number;

  constructor(cap: number) {
    this.headCap = Math.floor(Math.max(0, cap) / 2);
    this.tailCap = Math.max(0, cap) - this.headCap;
  }

  push(chunk: Buffer): void {
    if (this.headLen < this.headCap) {
      const take = Math.min(chunk.length, this.headCap - this.headLen);
      this.head.push(chunk.subarray(0, take));
      this.headLen += take;
      chunk = chunk.subarray(take);
      if (chunk.length === 0) return;
    }
    this.tail.push(chunk);
    this.tailLen += chunk.length;
    while (this.tailLen > this.tailCap && this.tail.length > 0) {
      const over = this.tailLen - this.tailCap;
      const first = this.tail[0]!;
      const gone = first.subarray(0, Math.min(over, first.length));
      this.dropped += gone.length;
      for (let i = gone.indexOf(0x0a); i >= 0; i = gone.indexOf(0x0a, i + 1)) this.droppedNewlines++;
      if (gone.length === first.length) this.tail.shift(); else this.tail[0] = first.subarray(gone.length);
      this.tailLen -= gone.length;
    }
  }

  /** The kept bytes that came before the dropped ones. */
  headBytes(): Buffer { return Buffer.concat(this.head); }
  /** The kept bytes that came after the dropped ones (or after the head, when nothing was dropped). */
  tailBytes(): Buffer { return Buffer.concat(this.tail); }
}
