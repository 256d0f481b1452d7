// A host cgroup per VM process (cpu, memory, pids), wherever this host lets the companion create one: a delegated
// cgroup v2 subtree (systemd `Delegate=yes`, or the companion in the root of a cgroup namespace), else writable
// cgroup v1 hierarchies for the three controllers (a root companion on a v1 host). Invariants:
// - detection only reads (doctor uses it); the one change to the companion's own placement is `prepareV2`, the
//   documented delegation step (its processes move into a `companion` leaf so the subtree may enable controllers);
// - every VM cgroup is named `perimeter-<vm id>` (the id holds the companion's pid), gets its limits before any
//   process joins it, and is removed with its VM (what is still inside is killed first); `sweepCgroups` removes the
//   ones a dead companion left behind and never touches another live companion's.
import { accessSync, constants, existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const CONTROLLERS = ['cpu', 'memory', 'pids'] as const;
type Controller = typeof CONTROLLERS[number];

export interface CgroupLimits { cpuCores: number; memoryBytes: number; pids: number }
export type HostCgroupSupport =
  | { kind: 'v2'; base: string; detail: string }
  | { kind: 'v1'; bases: Record<Controller, string>; detail: string }
  | { kind: 'none'; reason: string; fix: string };

interface Mount { root: string; point: string; fstype: string; superOpts: string[] }

/** Mounts from /proc/<self>/mountinfo (fields: id parent dev root point opts [optional...] - fstype source superopts). */
export function parseMountinfo(text: string): Mount[] {
  const unescape = (s: string) => s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text.split('\n').filter(Boolean).flatMap((line) => {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) return [];
    const f = pre.split(' ');
    const g = post.split(' ');
    return f.length >= 5 && g.length >= 3 ? [{ root: unescape(f[3]!), point: unescape(f[4]!), fstype: g[0]!, superOpts: g[2]!.split(',') }] : [];
  });
}

/** cgroup membership from /proc/<self>/cgroup: controller (or '' for v2) → path. */
export function parseProcCgroup(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n').filter(Boolean)) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    if (m[1] === '0' && m[2] === '') out.set('', m[3]!);
    else for (const c of m[2]!.split(',')) out.set(c, m[3]!);
  }
  return out;
}

function dirOf(mount: Mount, cgPath: string): string | null {
  const root = mount.root === '/' ? '' : mount.root;
  if (root && cgPath !== root && !cgPath.startsWith(`${root}/`)) return null; // our cgroup is not below this mount
  return path.resolve(mount.point, `.${cgPath.slice(root.length)}`);
}

function writable(dir: string): boolean {
  try { accessSync(dir, constants.W_OK); return true; } catch { return false; }
}

const readText = (f: string) => { try { return readFileSync(f, 'utf8'); } catch { return ''; } };

const DELEGATE_FIX = 'run the companion in a systemd unit with `Delegate=yes` (or `systemd-run -p Delegate=yes …`), or as root on a cgroup v1 host';

/** What this host offers for per-VM cgroups, read from `proc` (default: this process). Changes nothing. */
export function detectHostCgroup(proc = '/proc/self'): HostCgroupSupport {
  const mounts = parseMountinfo(readText(path.join(proc, 'mountinfo')));
  const member = parseProcCgroup(readText(path.join(proc, 'cgroup')));
  const v2 = mounts.find((m) => m.fstype === 'cgroup2');
  const v2Path = member.get('');
  let v2Problem = 'no cgroup v2 hierarchy is mounted';
  if (v2 && v2Path !== undefined) {
    const base = dirOf(v2, v2Path);
    const available = base ? readText(path.join(base, 'cgroup.controllers')).trim().split(/\s+/) : [];
    const missing = CONTROLLERS.filter((c) => !available.includes(c));
    if (!base) v2Problem = `this process's cgroup ${v2Path} is outside the cgroup2 mount`;
    else if (missing.length) v2Problem = `cgroup v2 ${base} has no ${missing.join('/')} controller${missing.length > 1 ? 's' : ''} delegated (it offers: ${available.filter(Boolean).join(' ') || 'none'})`;
    else if (!writable(base)) v2Problem = `cgroup v2 ${base} is not writable by this user (not delegated)`;
    else return { kind: 'v2', base, detail: `cgroup v2, delegated subtree ${base}` };
  }
  const bases: Partial<Record<Controller, string>> = {};
  const v1Problems: string[] = [];
  for (const c of CONTROLLERS) {
    const m = mounts.find((x) => x.fstype === 'cgroup' && x.superOpts.includes(c));
    const p = member.get(c);
    const dir = m && p !== undefined ? dirOf(m, p) : null;
    if (!dir) v1Problems.push(`no ${c} hierarchy`);
    else if (!writable(dir)) v1Problems.push(`${dir} not writable`);
    else bases[c] = dir;
  }
  if (CONTROLLERS.every((c) => bases[c])) {
    return { kind: 'v1', bases: bases as Record<Controller, string>, detail: `cgroup v1 hierarchies (${CONTROLLERS.map((c) => bases[c]).join(', ')}); ${v2Problem}` };
  }
  return { kind: 'none', reason: `${v2Problem}; cgroup v1: ${v1Problems.join(', ')}`, fix: DELEGATE_FIX };
}

const prepared = new Set<string>();
/**
 * Makes a delegated v2 subtree ready for VM cgroups, once per base: a non-root cgroup may enable controllers for its
 * children only when it holds no processes itself, so when this companion is the only process in it, it moves into
 * a `companion` leaf first, as systemd's delegation rules ask. Other processes in the cgroup are never moved.
 */
function prepareV2(base: string): void {
  if (prepared.has(base)) return;
  const control = path.join(base, 'cgroup.subtree_control');
  const enable = CONTROLLERS.map((c) => `+${c}`).join(' ');
  const enabled = readText(control).trim().split(/\s+/);
  if (!CONTROLLERS.every((c) => enabled.includes(c))) {
    try { writeFileSync(control, enable); } catch (err) {
      const procs = readText(path.join(base, 'cgroup.procs')).split('\n').filter(Boolean);
      if (procs.length !== 1 || procs[0] !== String(process.pid)) {
        throw new Error(`cannot enable ${CONTROLLERS.join('/')} for VM cgroups under ${base} (${(err as Error).message}); other processes share that cgroup`);
      }
      const leaf = path.join(base, 'companion');
      mkdirSync(leaf, { recursive: true });
      writeFileSync(path.join(leaf, 'cgroup.procs'), String(process.pid));
      writeFileSync(control, enable);
    }
  }
  prepared.add(base);
}

const CPU_PERIOD_US = 100_000;

/** One VM's cgroup(s): created with their limits set; the VM's launcher writes its pid into `procsFiles`. */
export class VmCgroup {
  private constructor(readonly dirs: string[], readonly procsFiles: string[]) {}

  static create(support: Exclude<HostCgroupSupport, { kind: 'none' }>, vmId: string, limits: CgroupLimits): VmCgroup {
    const name = `perimeter-${vmId}`;
    const quota = String(Math.max(1000, Math.round(limits.cpuCores * CPU_PERIOD_US)));
    const settings: Array<[Controller | 'all', string, string, boolean]> = support.kind === 'v2'
      ? [['all', 'cpu.max', `${quota} ${CPU_PERIOD_US}`, true], ['all', 'memory.max', String(limits.memoryBytes), true],
        ['all', 'memory.swap.max', '0', false], ['all', 'pids.max', String(limits.pids), true]]
      : [['cpu', 'cpu.cfs_period_us', String(CPU_PERIOD_US), true], ['cpu', 'cpu.cfs_quota_us', quota, true],
        ['memory', 'memory.limit_in_bytes', String(limits.memoryBytes), true], ['memory', 'memory.memsw.limit_in_bytes', String(limits.memoryBytes), false],
        ['pids', 'pids.max', String(limits.pids), true]];
    if (support.kind === 'v2') prepareV2(support.base);
    const dirOfController = (c: Controller | 'all') => path.join(support.kind === 'v2' ? support.base : support.bases[c as Controller], name);
    const dirs = [...new Set(settings.map(([c]) => dirOfController(c)))];
    const cg = new VmCgroup(dirs, dirs.map((d) => path.join(d, 'cgroup.procs')));
    try {
      for (const d of dirs) mkdirSync(d);
      for (const [c, file, value, required] of settings) {
        const f = path.join(dirOfController(c), file);
        if (!required && !existsSync(f)) continue;
        writeFileSync(f, value);
      }
    } catch (err) {
      cg.removeNow();
      throw err;
    }
    return cg;
  }

  /** Kills what is left inside and removes the cgroup(s); false when a directory could not be removed yet. */
  removeNow(): boolean {
    let done = true;
    for (const d of this.dirs) if (!removeCgroupDir(d)) done = false;
    return done;
  }

  /** removeNow, retried while the killed processes finish exiting. */
  async remove(): Promise<void> {
    for (let i = 0; i < 50 && !this.removeNow(); i++) await new Promise((r) => setTimeout(r, 20));
  }
}

function removeCgroupDir(dir: string): boolean {
  if (!existsSync(dir)) return true;
  if (existsSync(path.join(dir, 'cgroup.kill'))) { try { writeFileSync(path.join(dir, 'cgroup.kill'), '1'); } catch { /* gone */ } }
  for (const pid of readText(path.join(dir, 'cgroup.procs')).split('\n').filter(Boolean)) {
    try { process.kill(Number(pid), 'SIGKILL'); } catch { /* exited */ }
  }
  try { rmdirSync(dir); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'ENOENT'; }
}

/** Removes VM cgroups whose companion (the pid in their name) is gone, killing what is left in them. */
export function sweepCgroups(support: HostCgroupSupport, companionAlive: (pid: number) => boolean): number {
  if (support.kind === 'none') return 0;
  const bases = support.kind === 'v2' ? [support.base] : [...new Set(Object.values(support.bases))];
  let removed = 0;
  for (const base of bases) {
    let names: string[] = [];
    try { names = readdirSync(base).filter((n) => n.startsWith('perimeter-')); } catch { continue; }
    for (const n of names) {
      const pid = Number(/^perimeter-[a-z]+-(\d+)-/.exec(n)?.[1]);
      if (!pid || pid === process.pid || companionAlive(pid)) continue;
      if (removeCgroupDir(path.join(base, n))) removed++;
    }
  }
  return removed;
}
