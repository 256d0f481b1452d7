// One QEMU `-M microvm` process: argv, spawn, agent channel, QMP, snapshot (template) and restore (clone), kill.
// Invariants:
// - Every VM has its own 0700 run directory under <home>/vms/<id>/ holding the agent and QMP sockets, the migration
//   socket, QEMU's pidfile and an `owner` file (companion pid); nothing else of a VM lives on the host.
// - QEMU is hardened: empty environment, -nodefaults, seccomp `-sandbox on,...,spawn=deny`, no NIC, the root image
//   opened `format=raw,readonly=on`, guest RAM from the template's mem.bin mapped MAP_PRIVATE (`share=off`).
//   Snapshots move only device state, over a Unix socket the host serves (no `exec:` helper, which spawn=deny forbids).
// - Every spawned QEMU is registered and SIGKILLed when this process exits (not when a signal arrives that a command
//   handles: the worker's SIGTERM drain lets in-flight calls finish in their VMs), gets a parent-death signal (setpriv
//   --pdeathsig) so even a SIGKILLed companion takes its VMs down, and `sweepOrphans` removes whatever is left.
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, createReadStream, createWriteStream, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { GuestClient } from '../../guest/client';
import { Qmp } from './qmp';
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
}

export interface VmOptions {
  binary: string;
  accel: 'kvm' | 'tcg';
  vmsDir: string;
  /** Guest RAM file; `share=on` for a template boot, MAP_PRIVATE for clones (QEMU 7.2 clones hang with readonly=on, so the file is opened read-write but never written). */
  memFile: string;
  role: 'template' | 'clone';
  /** Run QEMU as this uid/gid (when the companion runs as root and the files are reachable). */
  user?: { uid: number; gid: number };
}

const SETPRIV = '/usr/bin/setpriv';
const live = new Set<ChildProcess>();
const SIGNAL_NUMBERS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;
let exitHooked = false;
function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  const killAll = () => { for (const p of live) { try { p.kill('SIGKILL'); } catch { /* already gone */ } } };
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

export function qemuArgs(image: VmImage, o: VmOptions, dir: string, incoming: boolean): string[] {
  const machine = ['microvm', image.machineOpts, 'isa-serial=off', 'x-option-roms=off', 'mem-merge=off', 'dump-guest-core=off', 'memory-backend=mem0']
    .filter(Boolean).join(',');
  const mem = o.role === 'template'
    ? `memory-backend-file,id=mem0,size=${image.memoryMiB}M,mem-path=${o.memFile},share=on`
    : `memory-backend-file,id=mem0,size=${image.memoryMiB}M,mem-path=${o.memFile},share=off`;
  const args = [
    '-M', machine, '-accel', o.accel === 'tcg' ? `tcg,tb-size=${TCG_TB_MIB}` : o.accel, '-cpu', o.accel === 'kvm' ? 'host' : 'max',
    '-m', String(image.memoryMiB), '-smp', String(image.vcpus),
    '-object', mem,
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot', '-display', 'none',
    '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    // A clone's RAM and CPU come from the snapshot: loading the 17 MB kernel again would only cost start-up time and
    // a heap copy of it in every QEMU process.
    ...(o.role === 'clone' ? [] : ['-kernel', image.kernel, '-initrd', image.initrd, '-append', image.append]),
    '-drive', `id=root,file=${image.rootfs},format=raw,if=none,readonly=on,cache=writeback`, '-device', 'virtio-blk-device,drive=root',
    '-chardev', `socket,id=agent,path=${path.join(dir, 'agent.sock')}`,
    '-device', 'virtio-serial-device,max_ports=2', '-device', 'virtserialport,chardev=agent,name=agent0',
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

  private constructor(readonly id: string, readonly dir: string, readonly proc: ChildProcess, readonly agent: GuestClient, readonly startedAt: number) {
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    proc.stderr?.on('data', (d: Buffer) => { if (this.stderr.length < 8192) this.stderr += d.toString('utf8'); });
  }

  /** Called once if the agent channel breaks; replaceable (a QEMU started ahead gets its owner's handler later). */
  onAgentFatal: (err: Error) => void = () => {};

  get pid(): number { return this.proc.pid ?? -1; }
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
    const server = net.createServer();
    const connected = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(path.join(dir, 'agent.sock'), resolve); });
    if (o.user) { chownSync(dir, o.user.uid, o.user.gid); chownSync(path.join(dir, 'agent.sock'), o.user.uid, o.user.gid); }
    const t0 = performance.now();
    // setpriv --pdeathsig: QEMU dies with this process even when it is SIGKILLed (the startup sweep is the backstop)
    const args = qemuArgs(image, o, dir, o.role === 'clone');
    const [cmd, argv] = existsSync(SETPRIV) ? [SETPRIV, ['--pdeathsig', 'KILL', '--', o.binary, ...args]] : [o.binary, args];
    const proc = spawn(cmd, argv, {
      env: {}, stdio: ['ignore', 'ignore', 'pipe'], cwd: dir, ...(o.user ? { uid: o.user.uid, gid: o.user.gid } : {}),
    });
    live.add(proc);
    proc.once('exit', () => live.delete(proc));
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
    try {
      sock = await Promise.race([connected, early]);
    } catch (err) {
      void qmp?.then((q) => q.close(), () => {});
      rmSync(dir, { recursive: true, force: true });
      throw transient('qemu_start', `${(err as Error).message}: ${stderr.trim().slice(0, 2000)}`);
    } finally {
      server.close();
    }
    const vm: QemuVm = new QemuVm(id, dir, proc, new GuestClient(sock, (err) => vm.onAgentFatal(err)), t0);
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
      try { this.proc.kill('SIGKILL'); } catch { /* gone */ }
    }
    if (this.proc.exitCode === null && this.proc.signalCode === null) await this.exited;
    rmSync(this.dir, { recursive: true, force: true });
  }
}
