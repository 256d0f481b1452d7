// One QEMU `-M microvm` process: argv, spawn, agent channel, QMP, snapshot (template) and restore (clone), kill.
// Invariants:
// - Every QEMU starts through its Confinement (qemu/confine.ts): own namespaces, uid, cgroup and rlimits, seeing
//   only its template files and its run directory; the jail is released (uid freed, cgroup removed) when it exits.
// - Every VM has its own 0700 run directory under <home>/vms/<id>/ holding the agent and QMP sockets, the migration
//   socket, QEMU's pidfile and an `owner` file (companion pid); nothing else of a VM lives on the host.
// - QEMU is hardened: empty environment, -nodefaults, seccomp `-sandbox on,...,spawn=deny`, no NIC, the root image
//   opened `format=raw,readonly=on`, guest RAM from the template's mem.bin mapped MAP_PRIVATE (`share=off`).
//   Snapshots move only device state, over a Unix socket the host serves (no `exec:` helper, which spawn=deny forbids).
// - Every spawned QEMU is registered and stopped (its jail's stop signal) when this process exits (not when a signal
//   arrives that a command handles: the worker's SIGTERM drain lets in-flight calls finish in their VMs), its launcher
//   gets a parent-death signal (setpriv --pdeathsig) so even a SIGKILLed companion takes its VMs down, and
//   `sweepOrphans` removes whatever is left.
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, createReadStream, createWriteStream, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { GuestClient } from '../../guest/client';
import { Qmp } from './qmp';
import { sessionDiskArgs } from './session-disk';
import { parseJailInfo, QEMU_SECCOMP, type Confinement, type VmJail } from './confine';
import { transient } from '../../errors';

export interface VmImage {
  kernel: string;
  initrd: string;
  rootfs: string;
  /** Kernel command line (the template's; clones must use the identical one). */
  append: string;
  memoryMiB: number;
  vcpus: number;
  /** Extra machine options (e.g. `acpi=off` for the tiny kernel). */
  machineOpts: string;
  /** The session-disk device (qemu/session-disk.ts), in templates built with one. */
  sessionDisk?: { bytes: number };
}

export interface VmOptions {
  binary: string;
  accel: 'kvm' | 'tcg';
  vmsDir: string;
  /** Guest RAM file; `share=on` for a template boot, MAP_PRIVATE for clones, which open it read-only when confined. */
  memFile: string;
  role: 'template' | 'clone';
  /** How this QEMU is confined (sandbox.confinement); `none` only when the configuration names it. */
  confinement: Confinement;
}
/** Every QEMU launcher of this process, with the signal that takes its VM down. */
const live = new Map<ChildProcess, NodeJS.Signals>();
const SIGNAL_NUMBERS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;
let exitHooked = false;
function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  const killAll = () => { for (const [p, signal] of live) { try { p.kill(signal); } catch { /* already gone */ } } };
  process.on('exit', killAll);
  // A signal nobody else handles would end the process: kill the VMs and exit as the signal would. A signal another
  // listener owns (the worker drains on SIGTERM/SIGINT) leaves the VMs alone, so in-flight calls finish in live VMs;
  // what still runs when the process exits goes with the 'exit' hook above.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = () => {
      if (process.listeners(sig).some((l) => l !== onSignal)) return;
      killAll();
      process.exit(128 + SIGNAL_NUMBERS[sig]);
    };
    process.on(sig, onSignal);
  }
}
/** QEMU processes of this companion that are still running. */
export function liveVmCount(): number { return live.size; }

/** Host TSC rate in kHz for the guest's `tsc_early_khz=` (TCG guests mis-calibrate without it on a loaded host). */
export function hostTscKhz(): number | null {
  try {
    const m = readFileSync('/proc/cpuinfo', 'utf8').match(/^cpu MHz\s*:\s*([\d.]+)/m);
    return m ? Math.round(Number(m[1]) * 1000) : null;
  } catch { return null; }
}

/** TCG translation-block cache per VM in MiB (QEMU's default is far larger and dominates an idle VM's memory). */
export const TCG_TB_MIB = Number(process.env.PERIMETER_TCG_TB_MIB ?? 32);
/** Bumped whenever qemuArgs changes in a way that makes older snapshots unusable (part of the template hash). */
export const VM_RECIPE = 2;
// Note: `pic=off` is deliberately absent: without the legacy PIC the PIT's IRQ 0 cannot be registered, the LAPIC
// timer then fails verification, and the guest ends up with no working clock event (sleep never returns).

/** `ramOptions`: appended to a clone's memory backend (the confinement's read-only open of the template's RAM). */
export function qemuArgs(image: VmImage, o: Omit<VmOptions, 'confinement'>, dir: string, incoming: boolean, ramOptions = ''): string[] {
  const machine = ['microvm', image.machineOpts, 'isa-serial=off', 'x-option-roms=off', 'mem-merge=off', 'dump-guest-core=off', 'memory-backend=mem0']
    .filter(Boolean).join(',');
  const mem = o.role === 'template'
    ? `memory-backend-file,id=mem0,size=${image.memoryMiB}M,mem-path=${o.memFile},share=on`
    : `memory-backend-file,id=mem0,size=${image.memoryMiB}M,mem-path=${o.memFile},share=off${ramOptions}`;
  const args = [
    '-M', machine, '-accel', o.accel === 'tcg' ? `tcg,tb-size=${TCG_TB_MIB}` : o.accel, '-cpu', o.accel === 'kvm' ? 'host' : 'max',
    '-m', String(image.memoryMiB), '-smp', String(image.vcpus),
    '-object', mem,
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot', '-display', 'none',
    '-sandbox', QEMU_SECCOMP,
    // A clone's RAM and CPU come from the snapshot: loading the 17 MB kernel again would only cost start-up time and
    // a heap copy of it in every QEMU process.
    ...(o.role === 'clone' ? [] : ['-kernel', image.kernel, '-initrd', image.initrd, '-append', image.append]),
    '-drive', `id=root,file=${image.rootfs},format=raw,if=none,readonly=on,cache=writeback`, '-device', 'virtio-blk-device,drive=root',
    '-chardev', `socket,id=agent,path=${path.join(dir, 'agent.sock')}`,
    '-device', 'virtio-serial-device,max_ports=2', '-device', 'virtserialport,chardev=agent,name=agent0',
    ...sessionDiskArgs(image.sessionDisk?.bytes),
    '-qmp', `unix:${path.join(dir, 'qmp.sock')},server=on,wait=off`,
    '-pidfile', path.join(dir, 'qemu.pid'),
  ];
  if (incoming) args.push('-incoming', 'defer');
  return args;
}

export class QemuVm {
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  private stderr = '';
  private qmpClient: Qmp | null = null;
  private killed = false;

  private constructor(readonly id: string, readonly dir: string, readonly proc: ChildProcess, readonly agent: GuestClient, readonly startedAt: number,
    private readonly jail: VmJail, private readonly qemuPid: number) {
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    proc.stderr?.on('data', (d: Buffer) => { if (this.stderr.length < 8192) this.stderr += d.toString('utf8'); });
  }

  /** Called once if the agent channel breaks; replaceable (a QEMU started ahead gets its owner's handler later). */
  onAgentFatal: (err: Error) => void = () => {};

  /** QEMU's own host pid (inside a jail, not the launcher's). */
  get pid(): number { return this.qemuPid; }
  /** The uid/gid QEMU runs as, when the confinement gives it its own. */
  get owner(): { uid: number; gid: number } | null { return this.jail.owner; }
  get alive(): boolean { return !this.killed && this.proc.exitCode === null && this.proc.signalCode === null; }
  get diagnostics(): string { return this.stderr.trim(); }

  /** Spawns QEMU and waits until it connected to the agent socket. `onAgentFatal` fires if the channel breaks. */
  static async spawn(image: VmImage, o: VmOptions, onAgentFatal: (err: Error) => void): Promise<QemuVm> {
    hookExit();
    const id = `${o.role === 'template' ? 't' : 'vm'}-${process.pid}-${randomBytes(4).toString('hex')}`;
    const dir = path.join(o.vmsDir, id);
    mkdirSync(o.vmsDir, { recursive: true, mode: 0o711 }); // others may reach their own VM directory, not list them
    mkdirSync(dir, { mode: 0o700 });
    writeFileSync(path.join(dir, 'owner'), String(process.pid));
    let jail: VmJail;
    try {
      jail = o.confinement.enter({
        id, role: o.role, runDir: dir, binary: o.binary, kvm: o.accel === 'kvm', readOnly: [image.kernel, image.initrd, image.rootfs],
        memFile: o.memFile, memoryMiB: image.memoryMiB, vcpus: image.vcpus, tcgCacheMiB: TCG_TB_MIB,
      });
    } catch (err) { rmSync(dir, { recursive: true, force: true }); throw err; }
    const server = net.createServer();
    const connected = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(path.join(dir, 'agent.sock'), resolve); });
    if (jail.owner) { chownSync(dir, jail.owner.uid, jail.owner.gid); chownSync(path.join(dir, 'agent.sock'), jail.owner.uid, jail.owner.gid); }
    const t0 = performance.now();
    // every launcher sets a parent-death signal: QEMU dies with this process even when it is SIGKILLed (the startup
    // sweep is the backstop)
    const launch = jail.command(qemuArgs(image, o, dir, o.role === 'clone', jail.ramOptions));
    const proc = spawn(launch.cmd, launch.argv, { env: launch.env, stdio: ['ignore', 'ignore', 'pipe', ...(jail.infoFd !== null ? ['pipe' as const] : [])], cwd: dir });
    live.set(proc, jail.stopSignal);
    proc.once('exit', () => { live.delete(proc); void jail.release(); });
    const reaperPid = jail.infoFd === null ? Promise.resolve(proc.pid ?? -1) : readJailInfo(proc, jail.infoFd);
    const early = new Promise<never>((_, reject) => {
      proc.once('error', (e) => reject(transient('qemu_spawn', `cannot start ${o.binary}: ${e.message}`)));
      proc.once('exit', (code, sig) => reject(transient('qemu_exit', `QEMU exited during start (${code ?? sig})`)));
    });
    let stderr = '';
    proc.stderr?.on('data', (d: Buffer) => { if (stderr.length < 4096) stderr += d.toString(); });
    // A clone is driven over QMP right away: connect to it while QEMU is still starting.
    const qmp = o.role === 'clone' ? Qmp.connect(path.join(dir, 'qmp.sock')) : null;
    qmp?.catch(() => {});
    let sock: net.Socket;
    let pid: number;
    try {
      sock = await Promise.race([connected, early]);
      pid = jail.vmmPid(await Promise.race([reaperPid, early])); // QEMU is connected: it exists
    } catch (err) {
      void qmp?.then((q) => q.close(), () => {});
      try { proc.kill(jail.stopSignal); } catch { /* gone */ }
      rmSync(dir, { recursive: true, force: true });
      throw transient('qemu_start', `${(err as Error).message}: ${stderr.trim().slice(0, 2000)}`);
    } finally {
      server.close();
    }
    const vm: QemuVm = new QemuVm(id, dir, proc, new GuestClient(sock, (err) => vm.onAgentFatal(err)), t0, jail, pid);
    vm.onAgentFatal = onAgentFatal;
    if (qmp) vm.qmpConnecting = qmp;
    return vm;
  }

  private qmpConnecting: Promise<Qmp> | null = null;

  async qmp(): Promise<Qmp> {
    this.qmpClient ??= await (this.qmpConnecting ?? Qmp.connect(path.join(this.dir, 'qmp.sock')));
    return this.qmpClient;
  }

  /** Template side: pause and write device state to `stateFile` (RAM is already in the shared mem file). */
  async snapshot(stateFile: string): Promise<void> {
    const q = await this.qmp();
    const migSock = path.join(this.dir, 'mig.sock');
    const server = net.createServer();
    const done = new Promise<void>((resolve, reject) => {
      server.once('connection', (c) => {
        const out = createWriteStream(stateFile);
        c.pipe(out);
        out.once('finish', resolve);
        out.once('error', reject);
      });
    });
    await new Promise<void>((resolve) => server.listen(migSock, resolve));
    if (this.jail.owner) chownSync(migSock, this.jail.owner.uid, this.jail.owner.gid);
    try {
      await q.cmd('migrate-set-parameters', { 'max-bandwidth': 100 * 1024 * 1024 * 1024 });
      await q.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
      await q.cmd('stop');
      await q.cmd('migrate', { uri: `unix:${migSock}` });
      for (const until = Date.now() + 60_000; ;) {
        const s = (await q.cmd('query-migrate')) as { status?: string; 'error-desc'?: string };
        if (s.status === 'completed') break;
        if (s.status === 'failed' || s.status === 'cancelled') throw new Error(`snapshot migration ${s.status}: ${s['error-desc'] ?? ''}`);
        if (Date.now() > until) throw new Error('snapshot migration timed out');
        await new Promise((r) => setTimeout(r, 5));
      }
      await done;
    } finally {
      server.close();
    }
  }

  /** Clone side: feed `stateFile` to `-incoming defer` and resume. */
  async restore(stateFile: string): Promise<void> {
    const q = await this.qmp();
    const migSock = path.join(this.dir, 'mig.sock');
    await q.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await q.cmd('migrate-incoming', { uri: `unix:${migSock}` });
    await new Promise<void>((resolve, reject) => {
      const c = net.connect(migSock);
      c.once('error', reject);
      c.once('close', () => resolve());
      createReadStream(stateFile).once('error', reject).pipe(c);
    });
    for (const until = Date.now() + 30_000; ;) {
      const st = await q.status();
      if (st === 'paused' || st === 'postmigrate') { await q.cmd('cont'); break; }
      if (st === 'running') break;
      if (st !== 'inmigrate') throw transient('restore_failed', `unexpected VM state after restore: ${st}`);
      if (Date.now() > until) throw transient('restore_failed', 'restore did not finish within 30 s');
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Proportional set size of the QEMU process in MiB (what this VM really costs the host). */
  pssMiB(): number | null {
    try {
      const m = readFileSync(`/proc/${this.pid}/smaps_rollup`, 'utf8').match(/^Pss:\s+(\d+) kB/m);
      return m ? Number(m[1]) / 1024 : null;
    } catch { return null; }
  }

  /** SIGKILL QEMU and remove the run directory. Idempotent. */
  async kill(): Promise<void> {
    if (!this.killed) {
      this.killed = true;
      this.agent.close();
      this.qmpClient?.close();
      try { this.proc.kill(this.jail.stopSignal); } catch { /* gone */ }
    }
    if (this.proc.exitCode === null && this.proc.signalCode === null) await this.exited;
    await this.jail.release();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The host pid of the jail's reaper, as bwrap reports it on its info pipe. */
function readJailInfo(proc: ChildProcess, fd: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const stream = proc.stdio[fd] as NodeJS.ReadableStream | null;
    if (!stream) { reject(new Error('the jail has no info pipe')); return; }
    let text = '';
    stream.on('data', (d: Buffer) => {
      text += d.toString('utf8');
      const pid = parseJailInfo(text);
      if (pid) { resolve(pid); stream.removeAllListeners('data'); stream.resume(); }
    });
    stream.once('end', () => reject(new Error(`the jail did not report QEMU's pid (${JSON.stringify(text.slice(0, 200))})`)));
  });
}
