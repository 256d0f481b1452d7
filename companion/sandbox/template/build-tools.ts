// The host programs a template build runs (mmdebstrap, make, tar, apt-get, the unpack jail, …) and the partial
// outputs it writes while they run. Invariants:
// - A program that cannot be started (not on PATH, not executable) fails the build with a typed error naming it and
//   the package that provides it, never an unhandled rejection.
// - Every program runs in its own process group: it and everything it starts (apt and dpkg in mmdebstrap's user
//   namespace, the compiler under make) are SIGKILLed together when the build ends early: `end()`, or this process
//   exiting (the template command turns SIGINT, SIGTERM and SIGHUP into an exit).
// - A partial output (a work directory, a staged image) registered with `trackPartial` is removed when this process
//   exits before the build releases it; what a SIGKILLed build left is removed by the next one (`sweepDeadBuilds`).
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { accessSync, constants, readdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { fatal } from '../../errors';

/** The Debian package that provides each program a build runs (by its name). */
const PACKAGE_OF: Record<string, string> = {
  mmdebstrap: 'mmdebstrap', newuidmap: 'uidmap', newgidmap: 'uidmap', nice: 'coreutils', cp: 'coreutils',
  make: 'build-essential', gcc: 'build-essential', bc: 'bc', bison: 'bison', flex: 'flex', tar: 'tar', xz: 'xz-utils',
  'apt-get': 'apt', 'apt-cache': 'apt', dpkg: 'dpkg', 'dpkg-query': 'dpkg', 'mkfs.ext4': 'e2fsprogs', mke2fs: 'e2fsprogs',
  debugfs: 'e2fsprogs', lz4: 'lz4', bwrap: 'bubblewrap', setpriv: 'util-linux', prlimit: 'util-linux',
};

/** The package that provides `program` (a name or a path). */
export function packageOf(program: string): string {
  const name = path.basename(program);
  return PACKAGE_OF[name] ?? name;
}

/** Where `program` is found as spawn finds it (a path as given, relative to `cwd`; a bare name on `searchPath`):
 *  an executable regular file, or null. */
export function findProgram(program: string, searchPath: string, cwd = process.cwd()): string | null {
  const runnable = (file: string) => {
    try { accessSync(file, constants.X_OK); return statSync(file).isFile(); } catch { return false; }
  };
  if (program.includes('/')) { const p = path.resolve(cwd, program); return runnable(p) ? p : null; }
  for (const dir of searchPath.split(':').filter(Boolean)) {
    const p = path.join(dir, program);
    if (runnable(p)) return p;
  }
  return null;
}

/** The error of a build program that cannot be started. */
export function toolUnavailable(program: string, why: string): Error {
  const pkg = packageOf(program);
  return fatal('build_tool_missing', `the template build cannot start ${path.basename(program)}: ${why} (fix: sudo apt-get install ${pkg})`);
}

export interface Helper {
  child: ChildProcess;
  /** Resolves when the program exits (its output may still be arriving: 'close' follows); rejects with `toolUnavailable` when it could not be started. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILLs the program's process group (the program and everything it started). */
  end(): void;
}

export interface HelperOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  stdio?: StdioOptions;
  /** Run under `nice -n 10` (a long compile or bootstrap yields the CPU to running sessions). */
  nice?: boolean;
}

/** Process groups of this process's running helpers. */
const live = new Set<ChildProcess>();
/** Partial outputs to remove if this process exits before the build releases them. */
const partials = new Set<string>();
let exitHooked = false;

const killGroup = (child: ChildProcess) => {
  if (child.pid === undefined) return;
  try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ }
};

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.on('exit', () => {
    for (const child of live) killGroup(child);
    if (!partials.size) return;
    // a bootstrap's tree or a kernel source tree takes seconds to delete: a detached rm does it, so this process
    // exits at once (whoever stopped it may SIGKILL its process group soon after)
    const rm = findProgram('rm', process.env.PATH ?? '') ?? findProgram('/bin/rm', '');
    if (rm) spawn(rm, ['-rf', '--', ...partials], { detached: true, stdio: 'ignore' }).unref();
    else for (const p of partials) { try { rmSync(p, { recursive: true, force: true }); } catch { /* the next build sweeps it */ } }
  });
}

/** Starts `program` in its own process group; throws `toolUnavailable` at once when it is not on PATH. */
export function startHelper(program: string, args: string[], o: HelperOptions = {}): Helper {
  const env = o.env ?? process.env;
  const searchPath = env.PATH ?? '';
  const resolved = findProgram(program, searchPath, o.cwd);
  if (!resolved) throw toolUnavailable(program, program.includes('/') ? `${program} is missing or not executable` : 'not found on PATH');
  let cmd = resolved;
  let argv = args;
  if (o.nice) {
    const nice = findProgram('nice', searchPath);
    if (!nice) throw toolUnavailable('nice', 'not found on PATH');
    cmd = nice;
    argv = ['-n', '10', resolved, ...args];
  }
  hookExit();
  const child = spawn(cmd, argv, { cwd: o.cwd, env, stdio: o.stdio ?? ['ignore', 'pipe', 'pipe'], detached: true });
  live.add(child);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', (e: NodeJS.ErrnoException) => { live.delete(child); reject(toolUnavailable(cmd === resolved ? program : path.basename(cmd), e.code ?? e.message)); });
    child.once('exit', (code, signal) => {
      live.delete(child);
      // nice's own statuses when it cannot run the program (coreutils: 126 found but not runnable, 127 not found)
      if (o.nice && (code === 126 || code === 127)) reject(toolUnavailable(program, code === 126 ? 'it cannot be executed' : 'it or its interpreter is missing'));
      else resolve({ code, signal });
    });
  });
  exited.catch(() => { /* the caller awaits it; a failed start must never be an unhandled rejection */ });
  return { child, exited, end: () => { if (live.has(child)) killGroup(child); } };
}

/** Registers a partial output (removed if this process exits first); the returned function releases it. */
export function trackPartial(file: string): () => void {
  hookExit();
  partials.add(file);
  return () => { partials.delete(file); };
}

const pidAlive = (pid: number) => {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
};

/** Removes the entries of `dir` that `pattern` matches (its first group: the pid of the build that wrote them) whose
 *  build no longer runs: what a build killed outright (SIGKILL, a crash of the host) left behind. */
export function sweepDeadBuilds(dir: string, pattern: RegExp): string[] {
  let names: string[] = [];
  try { names = readdirSync(dir); } catch { return []; }
  const removed: string[] = [];
  for (const name of names) {
    const pid = Number(pattern.exec(name)?.[1]);
    if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || pidAlive(pid)) continue;
    try { rmSync(path.join(dir, name), { recursive: true, force: true }); removed.push(name); } catch { /* not ours to remove */ }
  }
  return removed;
}
