// Confinement of every QEMU process, on the model of Firecracker's jailer, with bubblewrap (Debian's `bubblewrap`).
// The launch chain: setpriv --pdeathsig TERM → /bin/sh, the launcher (joins the VM's host cgroup, sets rlimits,
// starts the jail, records its pid, SIGKILLs it on SIGTERM) → bwrap (new mount, PID, IPC, network, UTS and cgroup
// namespaces; bwrap's reaper is PID 1 there) → setpriv (the VM's uid/gid, no capabilities, no_new_privs) → QEMU with
// its seccomp `-sandbox`. A jail ends with its bwrap: the kernel then kills everything in its PID namespace. bwrap
// (Debian's 0.8) drops its capabilities and with them a parent-death signal, and a namespace's PID 1 ignores one,
// so the launcher stays between the companion and bwrap: it dies with the companion (SIGTERM) and takes the jail.
// Invariants:
// - A VM process sees /usr read-only (QEMU and its libraries), a minimal /dev (plus /dev/kvm under KVM), the
//   template's kernel, initramfs, root image and memory file read-only (each at its host path) and its own run
//   directory read-write: nothing else of the state directory (journal, stores, control.json, keys, other VMs) exists
//   in its mount namespace. Its network namespace is empty (no NIC, not even the host's loopback).
// - A root companion gives each live VM its own uid and gid (`sandbox.vmUidBase` + n, never the companion's), with
//   no supplementary group except kvm under KVM; an unprivileged companion runs VMs as itself inside a user namespace
//   that may not create further ones. Either way: no capabilities, no_new_privs, core dumps off, rlimits on open
//   files and address space (and processes, for the per-VM uid).
// - The template's memory file is opened read-only by clones (QEMU >= 8.2: `readonly=on,rom=off`; older QEMU: a
//   preload adapter turns QEMU's read-write open of exactly that file into a read-only one; the mapping stays
//   private and writable). It is owned by the companion, mode 0444, on a read-only mount: no VM can change what the
//   next clone starts from. A template boot (which writes it) gets its own file in its build directory.
// - A host cgroup per VM (cpu, memory, pids) wherever this host delegates one (qemu/cgroup.ts); `hostCgroup:
//   "required"` refuses VMs without one.
// - Fail closed: when any of this cannot be set up, `check()` and `enter()` throw a fatal error naming the reason and
//   the fix. Only `sandbox.confinement: "none"` runs QEMU unconfined, and every driver start logs it as a warning.
import { execFileSync } from 'node:child_process';
import { accessSync, chownSync, closeSync, constants, existsSync, openSync, readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { Config } from '../../config';
import { fatal } from '../../errors';
import { detectHostCgroup, VmCgroup, type HostCgroupSupport } from './cgroup';
import { qemuVersion } from './accel';

export type ConfinementSettings = Pick<Config['sandbox'], 'confinement' | 'vmUidBase' | 'vmUidCount' | 'hostCgroup'>;

export const BWRAP = '/usr/bin/bwrap';
export const SETPRIV = '/usr/bin/setpriv';
const SH = '/bin/sh';
/** The preload adapter for QEMU < 8.2 (companion/sandbox/qemu/readonly-ram.c, built by scripts/build.mjs). */
export const READONLY_RAM_ADAPTER = 'perimeter-readonly-ram.so';
export const QEMU_SECCOMP = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';
/** Open files a QEMU process may hold (it needs about 30). */
const NOFILE = 256;
/** Address space beyond guest RAM and the TCG translation cache (libraries, heap, thread stacks and arenas). */
const ADDRESS_SPACE_EXTRA_MIB = 2048;
/** Memory charged to a VM's host cgroup beyond guest RAM (QEMU's own heap, translation cache, page tables). */
const CGROUP_MEMORY_EXTRA_MIB = 256;
/** Threads of one QEMU process (vCPUs, main loop, RCU, up to 64 block I/O workers) with room to spare. */
const VM_TASKS = 256;

/** What every VM gets on this host, for `doctor --json` and the driver's probe. */
export interface ConfinementReport {
  mode: 'jail' | 'none';
  ok: boolean;
  namespaces: string[];
  uid: string;
  capabilities: string;
  noNewPrivs: boolean;
  seccomp: string;
  filesystem: string;
  memoryFile: string;
  rlimits: { core: number; nofile: number; addressSpace: string; nproc: number | null };
  cgroup: { limited: boolean; detail: string; fix: string | null };
  problems: string[];
  fixes: string[];
}

export interface JailRequest {
  id: string;
  role: 'template' | 'clone';
  runDir: string;
  binary: string;
  kvm: boolean;
  /** Files QEMU reads (kernel, initramfs, root image). */
  readOnly: string[];
  memFile: string;
  memoryMiB: number;
  vcpus: number;
  tcgCacheMiB: number;
}

/** One VM's confinement, from `enter()` to `release()`. */
export interface VmJail {
  /** uid/gid QEMU runs as (files it must create or open for writing are given to it); null: the companion's own. */
  readonly owner: { uid: number; gid: number } | null;
  /** Appended to the clone's memory-backend-file options (read-only open of the template's RAM). */
  readonly ramOptions: string;
  /** Extra stdio slot the jail reports its reaper's host pid on (bwrap --info-fd), or null. */
  readonly infoFd: number | null;
  /** The signal that ends the launched process and everything in the jail (the launcher traps SIGTERM). */
  readonly stopSignal: 'SIGTERM' | 'SIGKILL';
  /** QEMU's host pid: the child of the jail's reaper (`reaperPid` from the info record), or the launched process. */
  vmmPid(reaperPid: number): number;
  /** The command that starts `binary args` confined, with its environment. */
  command(args: string[]): { cmd: string; argv: string[]; env: Record<string, string> };
  /** Where the jail's host pid is recorded (for the startup sweep), or null. */
  readonly pidFile: string | null;
  /** Frees the uid and removes the host cgroup (killing what is left in it). Idempotent. */
  release(): Promise<void>;
}

const InfoSchema = z.object({ 'child-pid': z.number().int().positive() }).passthrough();
/** The host pid of the jail's reaper (PID 1 inside) from what bwrap wrote on --info-fd, or null while incomplete. */
export function parseJailInfo(text: string): number | null {
  try { return InfoSchema.parse(JSON.parse(text))['child-pid']; } catch { return null; }
}

/** [major, minor] of a `qemu-system-x86_64 --version` line. */
export function qemuMajorMinor(version: string): [number, number] | null {
  const m = /version (\d+)\.(\d+)/.exec(version);
  return m ? [Number(m[1]), Number(m[2])] : null;
}
/** QEMU >= 8.2 maps a read-only memory backend writable and private with `rom=off`. */
export function hasRomOff(version: string): boolean {
  const v = qemuMajorMinor(version);
  return !!v && (v[0] > 8 || (v[0] === 8 && v[1] >= 2));
}

/** Where the read-only RAM adapter is looked for: beside the bundle (dist/guest/), then the source layout's dist/. */
export function findReadonlyRamAdapter(): string | null {
  const candidates = [path.join(__dirname, 'guest', READONLY_RAM_ADAPTER), path.join(__dirname, '..', '..', '..', 'dist', 'guest', READONLY_RAM_ADAPTER)];
  return candidates.find((c) => existsSync(c)) ?? null;
}

/** An absolute path to the program `binary` names (bare names are looked up as a shell would, then /usr/bin:/bin). */
export function resolveBinary(binary: string): string {
  if (binary.includes('/')) return realpathSync(path.resolve(binary));
  for (const dir of [...(process.env.PATH ?? '').split(':').filter(Boolean), '/usr/bin', '/bin']) {
    const p = path.join(dir, binary);
    try { accessSync(p, constants.X_OK); return realpathSync(p); } catch { /* next */ }
  }
  throw fatal('qemu_missing', `${binary} is not installed (apt-get install qemu-system-x86)`);
}

const toolChecks = new Map<string, string | null>();
/** Why `tool` cannot run here (missing, not a program), or null when `tool args` answers; asked once per process. */
function toolProblem(tool: string, args: string[]): string | null {
  if (!toolChecks.has(tool)) {
    let problem: string | null = null;
    if (!existsSync(tool)) problem = `${tool} is missing`;
    else {
      try { execFileSync(tool, args, { stdio: 'ignore', timeout: 10_000, env: {} }); } catch (err) { problem = `${tool} does not run (${(err as Error).message.split('\n')[0]})`; }
    }
    toolChecks.set(tool, problem);
  }
  return toolChecks.get(tool)!;
}

/**
 * How a clone opens the template's memory file read-only: QEMU's own `readonly=on,rom=off`, or (older QEMU) the
 * preload adapter and the environment that names the file to it. A template boot writes its file: neither.
 */
function readonlyRam(req: JailRequest, version: string): { options: string; preload: string | null; env: Record<string, string> } {
  if (req.role === 'template') return { options: '', preload: null, env: {} };
  if (hasRomOff(version)) return { options: ',readonly=on,rom=off', preload: null, env: {} };
  const preload = findReadonlyRamAdapter();
  if (!preload) throw fatal('confinement_unavailable', `${version} needs the read-only RAM adapter ${READONLY_RAM_ADAPTER}, which is missing (fix: npm run build with a C compiler, or QEMU >= 8.2)`);
  return { options: '', preload, env: { LD_PRELOAD: preload, PERIMETER_READONLY_RAM: req.memFile } };
}

const usedUids = new Set<number>();
let noneWarned = false;

/** The launcher: $1 pidfile, cgroup.procs files, --, nofile, address space (KiB), nproc or -, the jail's argv. */
const LAUNCHER = [
  'pidfile=$1; shift',
  'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift',
  'ulimit -c 0 && ulimit -n "$1" && ulimit -v "$2" || exit 125',
  'if [ "$3" != - ]; then ulimit -p "$3" || exit 125; fi',
  'shift 3',
  'jail=; stop=',
  'trap \'stop=1; [ -z "$jail" ] || kill -KILL "$jail" 2>/dev/null\' TERM INT HUP',
  '"$@" &',
  'jail=$!',
  'echo "$jail" > "$pidfile" || stop=1',
  '[ -z "$stop" ] || kill -KILL "$jail" 2>/dev/null',
  'while :; do wait "$jail"; status=$?; kill -0 "$jail" 2>/dev/null || exit "$status"; done',
].join('\n');

/** The name of the group `gid` in /etc/group's text, or null when it has none there. */
export function groupName(gid: number, etcGroup: string): string | null {
  for (const line of etcGroup.split('\n')) {
    const [name, , id] = line.split(':');
    if (name && Number(id) === gid) return name;
  }
  return null;
}

function readEtcGroup(): string {
  try { return readFileSync('/etc/group', 'utf8'); } catch { return ''; }
}

/**
 * Why VMs running as their own uid (a root companion's) cannot open /dev/kvm with this owner and mode, and the fix
 * that fits this host, or null when they can: they get the device's group as their one supplementary group, so it
 * must be a group other than root with read-write access, or the device open to all. The fix names the group that
 * owns the device, else the host's kvm group, else creates one; a udev rule keeps it across reboots.
 */
export function kvmProblemForVmUids(kvm: { mode: number; gid: number }, etcGroup: string): { problem: string; fix: string } | null {
  if ((kvm.mode & 0o006) === 0o006 || ((kvm.mode & 0o060) === 0o060 && kvm.gid !== 0)) return null;
  const owner = kvm.gid === 0 ? null : groupName(kvm.gid, etcGroup);
  const hasKvmGroup = etcGroup.split('\n').some((l) => l.split(':')[0] === 'kvm');
  const group = owner ?? 'kvm';
  const steps = [...(owner || hasKvmGroup ? [] : ['sudo groupadd -r kvm']), ...(owner ? [] : ['sudo chgrp kvm /dev/kvm']), 'sudo chmod 660 /dev/kvm'];
  const rule = `KERNEL=="kvm", GROUP="${group}", MODE="0660"`;
  return {
    problem: `/dev/kvm (mode ${(kvm.mode & 0o777).toString(8)}, group ${owner ?? (kvm.gid === 0 ? 'root' : `gid ${kvm.gid}`)}) is not usable by VMs running as their own uid`,
    fix: `${steps.join(' && ')}; to keep it across reboots, add the udev rule '${rule}' to /etc/udev/rules.d/65-kvm.rules`,
  };
}

/** The child of `reaper` (QEMU, started by the jail's PID 1), or `reaper` itself while it has none. */
function childOf(reaper: number): number {
  try {
    const first = Number(readFileSync(`/proc/${reaper}/task/${reaper}/children`, 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(first) && first > 0 ? first : reaper;
  } catch { return reaper; }
}

export class Confinement {
  private cgroupSupport: HostCgroupSupport | null = null;
  private readonly versions = new Map<string, string>();

  constructor(readonly settings: ConfinementSettings, private readonly log: { warn(m: string): void } = { warn: () => {} }) {}

  static fromConfig(sandbox: Config['sandbox'], log?: { warn(m: string): void }): Confinement {
    return new Confinement({ confinement: sandbox.confinement, vmUidBase: sandbox.vmUidBase, vmUidCount: sandbox.vmUidCount, hostCgroup: sandbox.hostCgroup }, log);
  }

  get enabled(): boolean { return this.settings.confinement === 'jail'; }
  private get root(): boolean { return process.getuid?.() === 0; }

  /** `binary --version`, asked once per binary (it decides how clones open the template's memory file). */
  qemuVersion(binary: string): string {
    let v = this.versions.get(binary);
    if (v === undefined) { v = qemuVersion(binary); this.versions.set(binary, v); }
    return v;
  }

  private cgroup(): HostCgroupSupport {
    this.cgroupSupport ??= detectHostCgroup();
    return this.cgroupSupport;
  }

  /** What each VM gets here (reads only: safe for doctor). */
  report(qemuVersion: string | null): ConfinementReport {
    const cg = this.enabled ? this.cgroup() : { kind: 'none' as const, reason: 'confinement is off', fix: 'sandbox.confinement: "jail"' };
    const problems: string[] = [];
    const fixes: string[] = [];
    if (!this.enabled) {
      problems.push('sandbox.confinement is "none": QEMU runs as the companion\'s user and sees the companion\'s whole filesystem');
      fixes.push('remove sandbox.confinement from the configuration (default "jail")');
    } else {
      const bwrap = toolProblem(BWRAP, ['--version']);
      if (bwrap) { problems.push(bwrap); fixes.push('sudo apt-get install bubblewrap'); }
      const setpriv = toolProblem(SETPRIV, ['--version']);
      if (setpriv) { problems.push(setpriv); fixes.push('sudo apt-get install util-linux'); }
      if (qemuVersion && !hasRomOff(qemuVersion) && !findReadonlyRamAdapter()) {
        problems.push(`${qemuVersion} cannot open the template's memory file read-only by itself and the read-only RAM adapter (${READONLY_RAM_ADAPTER}) is missing`);
        fixes.push('npm run build with a C compiler (sudo apt-get install build-essential), or install QEMU >= 8.2 (Debian bookworm-backports)');
      }
      if (cg.kind === 'none' && this.settings.hostCgroup === 'required') { problems.push(`no host cgroup for VMs: ${cg.reason}`); fixes.push(cg.fix); }
    }
    const uidFirst = this.settings.vmUidBase;
    return {
      mode: this.settings.confinement,
      ok: problems.length === 0 || !this.enabled,
      namespaces: this.enabled ? ['mount', 'pid', 'ipc', 'net', 'uts', 'cgroup', ...(this.root ? [] : ['user'])] : [],
      uid: !this.enabled ? 'the companion\'s own'
        : this.root ? `one per VM from ${uidFirst}..${uidFirst + this.settings.vmUidCount - 1} (gid the same), never the companion's`
          : 'the companion\'s own uid inside a user namespace (no further user namespaces)',
      capabilities: this.enabled ? 'none (empty bounding set)' : 'the companion\'s',
      noNewPrivs: true,
      seccomp: `QEMU -sandbox ${QEMU_SECCOMP}`,
      filesystem: this.enabled
        ? '/usr read-only, minimal /dev, the template\'s kernel, initramfs, root image and memory file read-only, its own run directory; nothing else of the state directory'
        : 'the companion\'s whole filesystem',
      memoryFile: !qemuVersion ? 'unknown (QEMU not found)'
        : `opened read-only ${hasRomOff(qemuVersion) ? '(readonly=on,rom=off)' : `through ${READONLY_RAM_ADAPTER} (QEMU < 8.2)`}, mapped private; owned by the companion, mode 0444${this.enabled ? ', on a read-only mount' : ''}`,
      rlimits: { core: 0, nofile: NOFILE, addressSpace: `guest RAM + TCG cache + ${ADDRESS_SPACE_EXTRA_MIB} MiB`, nproc: this.enabled && this.root ? VM_TASKS : null },
      cgroup: cg.kind === 'none'
        ? { limited: false, detail: `VMs are not in a host cgroup here (${cg.reason}): the VM's size, the guest cgroup and host deadlines limit them`, fix: this.enabled ? cg.fix : null }
        : { limited: true, detail: `one cgroup per VM (cpu.max vCPUs + 0.5, memory.max guest RAM + ${CGROUP_MEMORY_EXTRA_MIB} MiB, pids.max ${VM_TASKS}): ${cg.detail}`, fix: null },
      problems, fixes,
    };
  }

  /** Throws a fatal error (reason and fix) when VMs cannot be confined as configured. */
  check(qemuVersion: string): void {
    if (!this.enabled) {
      if (!noneWarned) this.log.warn('sandbox.confinement is "none": QEMU runs UNCONFINED, as the companion\'s user with its whole filesystem in view; remove the setting to confine VMs');
      noneWarned = true;
      return;
    }
    const r = this.report(qemuVersion);
    if (r.problems.length) throw fatal('confinement_unavailable', `VMs cannot be confined: ${r.problems.join('; ')} (fix: ${r.fixes.join('; ')}; or, knowingly, sandbox.confinement: "none")`);
  }

  /** Sets up one VM's confinement: uid, host cgroup, file ownership. The caller must `release()` it. */
  enter(req: JailRequest): VmJail {
    const version = this.qemuVersion(req.binary);
    this.check(version);
    if (!this.enabled) {
      const ram = readonlyRam(req, version);
      return {
        owner: null, ramOptions: ram.options, infoFd: null, pidFile: null, stopSignal: 'SIGKILL', vmmPid: (pid) => pid,
        command: (args) => ({ cmd: SETPRIV, argv: ['--pdeathsig', 'KILL', '--', req.binary, ...args], env: ram.env }),
        release: async () => {},
      };
    }
    const binary = resolveBinary(req.binary);
    for (const p of [req.runDir, req.memFile, ...req.readOnly]) {
      if (p.startsWith('/usr/')) throw fatal('confinement_unavailable', `${p} is below /usr, which every VM sees read-only: a state directory there cannot be hidden from VMs (fix: set PERIMETER_HOME elsewhere, e.g. /var/lib/perimeter)`);
    }
    let uid: number | null = null;
    if (this.root) {
      for (let i = 0; i < this.settings.vmUidCount && uid === null; i++) if (!usedUids.has(this.settings.vmUidBase + i)) uid = this.settings.vmUidBase + i;
      if (uid === null) throw fatal('confinement_exhausted', `all ${this.settings.vmUidCount} VM uids from ${this.settings.vmUidBase} are in use: raise sandbox.vmUidCount`);
      usedUids.add(uid);
    }
    const owner = uid === null ? null : { uid, gid: uid };
    let cgroup: VmCgroup | null = null;
    let releasing: Promise<void> | null = null;
    const release = () => {
      releasing ??= (async () => {
        await cgroup?.remove();
        if (uid !== null) usedUids.delete(uid); // only once nothing of this VM is left under its uid
      })();
      return releasing;
    };
    try {
      const cg = this.cgroup();
      if (cg.kind !== 'none') {
        cgroup = VmCgroup.create(cg, req.id, {
          cpuCores: req.vcpus + 0.5,
          memoryBytes: (req.memoryMiB + CGROUP_MEMORY_EXTRA_MIB) * 1024 * 1024,
          pids: VM_TASKS,
        });
      } else if (this.settings.hostCgroup === 'required') {
        throw fatal('confinement_unavailable', `no host cgroup for VMs: ${cg.reason} (fix: ${cg.fix})`);
      }
      const ram = readonlyRam(req, version);
      const ro = [...req.readOnly, ...(ram.preload ? [ram.preload] : [])];
      if (req.role === 'template') {
        // a template boot writes its own new memory file: it must exist (as a bind target) and belong to the VM
        if (!existsSync(req.memFile)) closeSync(openSync(req.memFile, 'wx', 0o600));
        if (owner) chownSync(req.memFile, owner.uid, owner.gid);
      }
      for (const f of [...ro, ...(req.role === 'clone' ? [req.memFile] : [])]) {
        const st = statSync(f);
        if (owner && !(st.mode & 0o004) && st.uid !== owner.uid) throw fatal('confinement_unavailable', `${f} is not readable by the VM's uid (mode ${(st.mode & 0o777).toString(8)})`);
      }
      if (!binary.startsWith('/usr/')) ro.push(binary);
      let kvmGid: number | null = null;
      if (req.kvm && owner) {
        const kvm = statSync('/dev/kvm');
        const problem = kvmProblemForVmUids(kvm, readEtcGroup());
        if (problem) throw fatal('confinement_unavailable', `${problem.problem} (fix: ${problem.fix})`);
        kvmGid = kvm.gid;
      }
      const bwrapArgs = this.bwrapArgs(req, ro, ram.env);
      const inner = owner
        ? [SETPRIV, `--reuid=${owner.uid}`, `--regid=${owner.gid}`, kvmGid !== null ? `--groups=${kvmGid}` : '--clear-groups',
          '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', '--pdeathsig=KILL', '--', binary]
        : [SETPRIV, '--no-new-privs', '--pdeathsig=KILL', '--', binary];
      const addressSpaceKiB = (req.memoryMiB + req.tcgCacheMiB + ADDRESS_SPACE_EXTRA_MIB) * 1024;
      const pidFile = path.join(req.runDir, 'jail.pid');
      return {
        owner, ramOptions: ram.options, infoFd: 3, pidFile, stopSignal: 'SIGTERM', vmmPid: childOf,
        command: (args) => ({
          cmd: SETPRIV,
          argv: ['--pdeathsig=TERM', '--', SH, '-c', LAUNCHER, 'perimeter-jail', pidFile, ...(cgroup?.procsFiles ?? []), '--',
            String(NOFILE), String(addressSpaceKiB), owner ? String(VM_TASKS) : '-', BWRAP, ...bwrapArgs, '--', ...inner, ...args],
          env: {},
        }),
        release,
      };
    } catch (err) {
      void release();
      throw err;
    }
  }

  private bwrapArgs(req: JailRequest, readOnly: string[], env: Record<string, string>): string[] {
    const a = ['--unshare-pid', '--unshare-ipc', '--unshare-net', '--unshare-uts', '--unshare-cgroup'];
    if (!this.root) a.push('--unshare-user', '--disable-userns');
    a.push('--die-with-parent', '--new-session', '--clearenv', '--info-fd', '3');
    for (const [k, v] of Object.entries(env)) a.push('--setenv', k, v);
    a.push('--ro-bind', '/usr', '/usr');
    for (const d of ['/bin', '/sbin', '/lib', '/lib64', '/lib32', '/libx32']) {
      let target: string | null = null;
      try { target = realpathSync(d); } catch { continue; }
      if (target.startsWith('/usr/')) a.push('--symlink', path.relative('/', target), d);
      else a.push('--ro-bind', d, d);
    }
    if (existsSync('/etc/ld.so.cache')) a.push('--perms', '0755', '--dir', '/etc', '--ro-bind', '/etc/ld.so.cache', '/etc/ld.so.cache');
    a.push('--dev', '/dev');
    if (req.kvm && existsSync('/dev/kvm')) a.push('--dev-bind', '/dev/kvm', '/dev/kvm');
    const made = new Set<string>(['/', '/usr', '/dev', '/etc']);
    const dirs = (p: string) => {
      const chain: string[] = [];
      for (let d = path.dirname(p); !made.has(d); d = path.dirname(d)) chain.push(d);
      for (const c of chain.reverse()) { a.push('--perms', '0755', '--dir', c); made.add(c); }
    };
    for (const f of readOnly) { if (f.startsWith('/usr/')) continue; dirs(f); a.push('--ro-bind', f, f); }
    dirs(req.memFile);
    a.push(req.role === 'template' ? '--bind' : '--ro-bind', req.memFile, req.memFile);
    dirs(req.runDir);
    a.push('--bind', req.runDir, req.runDir, '--chdir', req.runDir);
    return a;
  }
}
