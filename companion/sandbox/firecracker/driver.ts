// The `firecracker` SandboxDriver, for hosts where KVM really works. Same template inputs (tiny kernel, initramfs with
// the same agent, read-only root image) as QEMU; the agent channel is vsock port 1024 (agent.vsock=1024) reached
// through Firecracker's Unix socket with the CONNECT handshake; egress frames travel on that same channel, so no
// VM ever gets a NIC, a TAP device or a network namespace. Invariants:
// - One Firecracker process per VM, in its own run directory (or its own jailer chroot), spawned with an empty
//   environment; paths stored in the snapshot are relative to that directory, so every clone resolves them to its
//   own copies (the root image is hard-linked, read-only).
// - The Firecracker snapshot is built once per template and Firecracker version under <template>/firecracker-<v>/
//   (firecracker-<v>-sdisk/ for a template with a session disk: its snapshot has the placeholder drive).
// - Every sandbox is ready only after snapshot load + vsock connect + ping + init (clock, entropy, limits).
// - A template with a session disk is snapshotted with a second, writable drive on a sparse placeholder of the disk's
//   size; each VM gets its own placeholder (never shared: the drive is writable), and the session's layers are
//   attached later through a raw export (session-disk.ts).
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, closeSync, copyFileSync, existsSync, ftruncateSync, linkSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../../config';
import { statePaths } from '../../config';
import { fatal, transient } from '../../errors';
import { logger } from '../../log';
import { GuestClient } from '../../guest/client';
import { READY_SHELL_ARGV, READY_SHELL_ENV } from '../../guest/ready-shell';
import type { AcquireOptions, DriverInfo, DriverProbe, Sandbox, SandboxDriver } from '../types';
import type { ExecRequest, ExecResult, GotFile, GuestEntry, GuestStat, PutFile } from '../../guest/types';
import { WarmPool } from '../pool';
import { findTemplate, type Template } from '../template/manifest';
import { sweepOrphans, unmountUnder } from '../qemu/sweep';
import { exportMissing, shareForExports } from './disk-export';
import { FirecrackerApi, connectVsock } from './api';
import { FirecrackerSessionDisk, SESSION_DRIVE } from './session-disk';
import type { SessionDiskPort } from '../session-disk';
import { attachEgress } from '../attach-egress';
import { guestLimits } from '../limits';

const log = logger('sandbox:firecracker');
export const AGENT_VSOCK_PORT = 1024;
const GUEST_CID = 3;

export interface JailerOptions { binary: string; uid: number; gid: number; chrootBase: string }

/** Where a VM's files live: on the host, and as Firecracker sees them (inside a jailer chroot they differ). */
interface VmLayout { id: string; hostDir: string; apiSock: string; vsockHost: string; pidFile: string }

const live = new Set<ChildProcess>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => { for (const p of live) { try { p.kill('SIGKILL'); } catch { /* gone */ } } });
}

export function firecrackerBootArgs(t: Template): string {
  return ['quiet', '8250.nr_uarts=0', 'reboot=k', 'panic=1', 'pci=off', 'agent.root=/dev/vda', `agent.upper=${t.manifest.writableMiB}m`, `agent.vsock=${AGENT_VSOCK_PORT}`].join(' ');
}

class FirecrackerVm {
  agent!: GuestClient;
  readonly exited: Promise<void>;
  private killed = false;
  /** Ends what lives in the VM's directory beside Firecracker (a disk export) before the directory is removed. */
  beforeRemove: (() => Promise<void>) | null = null;

  private constructor(readonly layout: VmLayout, readonly proc: ChildProcess, readonly api: FirecrackerApi, readonly owner?: { uid: number; gid: number }) {
    this.exited = new Promise((r) => proc.once('exit', () => r()));
  }

  get id(): string { return this.layout.id; }
  get dir(): string { return this.layout.hostDir; }

  /** Starts Firecracker (through the jailer when configured) with the given files linked into its directory. */
  static async spawn(o: { binary: string; vmsDir: string; jailer?: JailerOptions; files: Record<string, string>; placeholderBytes?: number }): Promise<FirecrackerVm> {
    hookExit();
    const id = `fc-${process.pid}-${randomBytes(4).toString('hex')}`;
    let layout: VmLayout;
    let cmd: string;
    let args: string[];
    if (o.jailer) {
      const root = path.join(o.jailer.chrootBase, path.basename(o.binary), id, 'root');
      mkdirSync(root, { recursive: true });
      if (o.placeholderBytes !== undefined) shareForExports(root);
      layout = { id, hostDir: root, apiSock: path.join(root, 'fc.sock'), vsockHost: path.join(root, 'v.sock'), pidFile: path.join(root, 'firecracker.pid') };
      cmd = o.jailer.binary;
      args = jailerArgs(o.jailer, o.binary, id);
    } else {
      const dir = path.join(o.vmsDir, id);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      layout = { id, hostDir: dir, apiSock: path.join(dir, 'fc.sock'), vsockHost: path.join(dir, 'v.sock'), pidFile: path.join(dir, 'vmm.pid') };
      cmd = o.binary;
      args = ['--api-sock', layout.apiSock, '--id', id];
    }
    writeFileSync(path.join(layout.hostDir, 'owner'), String(process.pid));
    for (const [name, src] of Object.entries(o.files)) linkInto(src, path.join(layout.hostDir, name));
    if (o.placeholderBytes !== undefined) makePlaceholder(path.join(layout.hostDir, SESSION_DRIVE.placeholder), o.placeholderBytes, o.jailer);
    const proc = spawn(cmd, args, { cwd: layout.hostDir, env: {}, stdio: ['ignore', 'ignore', 'pipe'] });
    live.add(proc);
    proc.once('exit', () => live.delete(proc));
    if (proc.pid) writeFileSync(layout.pidFile, String(proc.pid));
    const vm = new FirecrackerVm(layout, proc, new FirecrackerApi(layout.apiSock), o.jailer ? { uid: o.jailer.uid, gid: o.jailer.gid } : undefined);
    const early = new Promise<never>((_, reject) => { proc.once('error', reject); proc.once('exit', (c) => reject(new Error(`firecracker exited (${c})`))); });
    try { await Promise.race([vm.api.waitReady(), early]); } catch (err) {
      await vm.kill();
      throw transient('firecracker_start', `cannot start ${cmd}: ${(err as Error).message}`);
    }
    return vm;
  }

  /** Connects the agent channel (retrying while the guest agent is not listening yet). */
  async connectAgent(onFatal: (e: Error) => void, timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await connectVsock(this.layout.vsockHost, AGENT_VSOCK_PORT, Math.max(100, until - Date.now()));
        this.agent = new GuestClient(sock, onFatal);
        sock.resume();
        return;
      } catch (err) {
        if (Date.now() > until) throw err;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  async kill(): Promise<void> {
    if (!this.killed) {
      this.killed = true;
      this.agent?.close();
      try { this.proc.kill('SIGKILL'); } catch { /* gone */ }
    }
    if (this.proc.exitCode === null && this.proc.signalCode === null && this.proc.pid) await this.exited;
    await this.beforeRemove?.();
    unmountUnder(this.layout.hostDir);
    rmSync(this.layout.hostDir, { recursive: true, force: true });
  }
}

export function jailerArgs(j: JailerOptions, firecracker: string, id: string): string[] {
  return ['--id', id, '--exec-file', firecracker, '--uid', String(j.uid), '--gid', String(j.gid), '--chroot-base-dir', j.chrootBase,
    '--', '--api-sock', '/fc.sock'];
}

function linkInto(src: string, dst: string): void {
  try { linkSync(src, dst); } catch { copyFileSync(src, dst); }
}

/** A VM's own session-disk placeholder: a sparse file of the disk's size (the VM's user may open it read-write). */
function makePlaceholder(file: string, bytes: number, jailer?: JailerOptions): void {
  const fd = openSync(file, 'wx', 0o600);
  try { ftruncateSync(fd, bytes); } finally { closeSync(fd); }
  if (jailer) chownSync(file, jailer.uid, jailer.gid);
}

class FirecrackerSandbox implements Sandbox {
  readonly driver = 'firecracker' as const;
  readonly sessionDisk?: SessionDiskPort;
  private destroyed: Promise<void> | null = null;
  constructor(readonly vm: FirecrackerVm, private readonly callTimeoutMs: number, private readonly onGone: (s: FirecrackerSandbox) => void,
    readonly writableBytes: number, sessionDiskBytes?: number) {
    if (sessionDiskBytes !== undefined) {
      const disk = new FirecrackerSessionDisk(vm, sessionDiskBytes);
      vm.beforeRemove = () => disk.end();
      this.sessionDisk = disk;
    }
  }
  get id(): string { return this.vm.id; }
  exec(req: ExecRequest, onOutput?: (c: Buffer) => void): Promise<ExecResult> { return this.vm.agent.exec({ ...req, timeoutMs: Math.min(req.timeoutMs, this.callTimeoutMs) }, onOutput); }
  readFile(p: string, o?: { offset?: number; length?: number }) { return this.vm.agent.readFile(p, o); }
  writeFile(p: string, d: Buffer, o?: { mode?: number }): Promise<void> { return this.vm.agent.writeFile(p, d, o); }
  stat(p: string): Promise<GuestStat | null> { return this.vm.agent.stat(p); }
  walk(r: string, o: { hash: boolean; maxEntries: number; skipNames?: string[] }): Promise<{ entries: GuestEntry[]; truncated: boolean }> { return this.vm.agent.walk(r, o); }
  putFiles(f: PutFile[], d: string[]): Promise<void> { return this.vm.agent.putFiles(f, d); }
  getFiles(p: string[], o: { maxTotalBytes: number }): Promise<GotFile[]> { return this.vm.agent.getFiles(p, o); }
  destroy(): Promise<void> { this.destroyed ??= this.vm.kill().finally(() => this.onGone(this)); return this.destroyed; }
}

interface FcSnapshot { dir: string; state: string; mem: string }

export class FirecrackerDriver implements SandboxDriver {
  readonly kind = 'firecracker' as const;
  private template: Template | null = null;
  private snapshot: FcSnapshot | null = null;
  private pool: WarmPool<FirecrackerSandbox> | null = null;
  private readonly active = new Set<FirecrackerSandbox>();
  private readonly vmsDir: string;
  private readonly jailer?: JailerOptions;

  constructor(private readonly config: Config, opts: { jailer?: JailerOptions } = {}) {
    this.vmsDir = statePaths(config.home).vms;
    this.jailer = opts.jailer ?? (config.sandbox.jailerBinary
      ? { binary: config.sandbox.jailerBinary, uid: 65534, gid: 65534, chrootBase: path.join(config.home, 'jail') } : undefined);
  }

  private version(): string {
    return execFileSync(this.config.sandbox.firecrackerBinary, ['--version'], { env: {}, encoding: 'utf8', timeout: 10_000 }).split('\n')[0]!.trim();
  }

  async probe(): Promise<DriverProbe> {
    let version: string;
    try { version = this.version(); } catch {
      return { ok: false, accel: 'none', detail: `${this.config.sandbox.firecrackerBinary} is not installed`, fixes: ['install Firecracker (and its jailer) from its GitHub releases on a KVM host'] };
    }
    if (!existsSync('/dev/kvm')) return { ok: false, accel: 'none', detail: `${version}; /dev/kvm is missing`, fixes: ['run on a host (or VM with nested virtualisation) where KVM works'] };
    const t = findTemplate(this.config.home, this.config.sandbox.template);
    if (!t) return { ok: false, accel: 'kvm', detail: `${version}; no template built yet`, fixes: ['perimeter template build'] };
    if (t.manifest.kernel !== 'tiny') return { ok: false, accel: 'kvm', detail: 'Firecracker needs the tiny kernel (virtio-mmio command-line devices)', fixes: ['perimeter template build --kernel tiny'] };
    if (t.manifest.sessionDisk) {
      const missing = exportMissing();
      if (missing) return { ok: false, accel: 'kvm', detail: `${version}; the template's session disk needs ${missing}`, fixes: ['apt-get install qemu-system-common (qemu-storage-daemon); modprobe fuse; run the companion as root'] };
    }
    return { ok: true, accel: 'kvm', detail: `${version}, template ${t.manifest.hash}${this.jailer ? ', under jailer' : ''}`, fixes: [] };
  }

  async start(): Promise<void> {
    if (this.template) return;
    const t = findTemplate(this.config.home, this.config.sandbox.template);
    if (!t) throw fatal('template_missing', 'no sandbox template: run `perimeter template build`');
    mkdirSync(this.vmsDir, { recursive: true, mode: 0o700 });
    sweepOrphans(this.vmsDir);
    if (this.jailer) sweepOrphans(path.join(this.jailer.chrootBase, path.basename(this.config.sandbox.firecrackerBinary)), 'root');
    this.template = t;
    this.snapshot = await this.ensureSnapshot(t);
    this.pool = new WarmPool<FirecrackerSandbox>(this.config.sandbox.poolSize, {
      create: () => this.restore(),
      destroy: (s) => s.destroy(),
      healthy: async (s) => { if (s.vm.agent.broken) return false; await s.vm.agent.ping(2_000); return true; },
    });
    this.pool.start();
  }

  /** Boots the template once under Firecracker and snapshots it (cached per template and Firecracker version). */
  private async ensureSnapshot(t: Template): Promise<FcSnapshot> {
    const version = this.version().replace(/[^A-Za-z0-9._-]/g, '_');
    const disk = t.manifest.sessionDisk;
    const dir = path.join(t.dir, `firecracker-${version}${disk ? '-sdisk' : ''}`);
    const snap = { dir, state: path.join(dir, 'vm.state'), mem: path.join(dir, 'mem.bin') };
    if (existsSync(path.join(dir, 'complete'))) return snap;
    const files = { 'vmlinux': t.image.kernel, 'initramfs.cpio': t.image.initrd, 'rootfs.ext4': t.image.rootfs };
    const vm = await FirecrackerVm.spawn({ binary: this.config.sandbox.firecrackerBinary, vmsDir: this.vmsDir, jailer: this.jailer, files, placeholderBytes: disk?.bytes });
    try {
      await vm.api.putMachineConfig({ vcpu_count: t.manifest.vcpus, mem_size_mib: t.manifest.memoryMiB, smt: false, track_dirty_pages: false });
      await vm.api.putBootSource({ kernel_image_path: 'vmlinux', initrd_path: 'initramfs.cpio', boot_args: firecrackerBootArgs(t) });
      await vm.api.putDrive({ drive_id: 'rootfs', path_on_host: 'rootfs.ext4', is_root_device: false, is_read_only: true });
      if (disk) await vm.api.putDrive({ drive_id: SESSION_DRIVE.id, path_on_host: SESSION_DRIVE.placeholder, is_root_device: false, is_read_only: false });
      await vm.api.putVsock({ guest_cid: GUEST_CID, uds_path: 'v.sock' });
      await vm.api.start();
      await vm.connectAgent(() => {}, 30_000);
      const hello = await vm.agent.waitHello(30_000);
      log.info(`firecracker template boot: ${hello}`);
      const warm = await vm.agent.exec({ argv: ['/bin/sh', '-c', 'true'], timeoutMs: 30_000, maxOutputBytes: 1024 });
      if (warm.exitCode !== 0) throw new Error(`warm-up failed: ${warm.output.toString()}`);
      await vm.agent.startReadyShell(READY_SHELL_ARGV, READY_SHELL_ENV);
      await vm.agent.waitReadyShellIfAny(30_000);
      await vm.api.pause();
      await vm.api.createSnapshot({ snapshot_type: 'Full', snapshot_path: 'vm.state', mem_file_path: 'mem.bin' });
      const tmp = `${dir}.tmp-${process.pid}`;
      mkdirSync(tmp, { recursive: true });
      renameSync(path.join(vm.layout.hostDir, 'vm.state'), path.join(tmp, 'vm.state'));
      renameSync(path.join(vm.layout.hostDir, 'mem.bin'), path.join(tmp, 'mem.bin'));
      writeFileSync(path.join(tmp, 'complete'), new Date().toISOString());
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
      return snap;
    } finally {
      await vm.kill();
    }
  }

  async restore(): Promise<FirecrackerSandbox> {
    const t = this.template!;
    const snap = this.snapshot!;
    const files = { 'rootfs.ext4': t.image.rootfs, 'vm.state': snap.state, 'mem.bin': snap.mem };
    const disk = t.manifest.sessionDisk;
    const vm = await FirecrackerVm.spawn({ binary: this.config.sandbox.firecrackerBinary, vmsDir: this.vmsDir, jailer: this.jailer, files, placeholderBytes: disk?.bytes });
    const sandbox = new FirecrackerSandbox(vm, this.config.sandbox.callTimeoutMs, (s) => this.active.delete(s), guestLimits(this.config.sandbox, t.manifest.memoryMiB).writableBytes, disk?.bytes);
    try {
      await vm.api.loadSnapshot({
        snapshot_path: 'vm.state', mem_backend: { backend_type: 'File', backend_path: 'mem.bin' }, resume_vm: true,
        vsock_override: { uds_path: 'v.sock' },
      });
      await vm.connectAgent((err) => { log.warn(`sandbox ${vm.id}: ${err.message}; killing the VM`); void sandbox.destroy(); }, 10_000);
      await vm.agent.ping(10_000);
      await vm.agent.init(randomBytes(64), guestLimits(this.config.sandbox, t.manifest.memoryMiB));
    } catch (err) {
      await sandbox.destroy();
      throw transient('restore_failed', `restoring a Firecracker sandbox failed: ${(err as Error).message}`);
    }
    return sandbox;
  }

  async acquire(opts: AcquireOptions): Promise<Sandbox> {
    await this.start();
    const s = await this.pool!.take();
    this.active.add(s);
    return attachEgress(s, opts.egress);
  }

  /** The template's session-disk size (its snapshot has the drive), or null: persistence then copies files. */
  sessionDiskBytes(): number | null {
    try { return findTemplate(this.config.home, this.config.sandbox.template)?.manifest.sessionDisk?.bytes ?? null; } catch { return null; }
  }

  info(): DriverInfo { return { kind: 'firecracker', accel: 'kvm', running: this.active.size, pooled: this.pool?.readyCount ?? 0 }; }

  async close(): Promise<void> {
    await this.pool?.close();
    await Promise.all([...this.active].map((s) => s.destroy()));
  }
}
