// The `qemu` SandboxDriver: every sandbox is a QEMU `-M microvm` clone restored from the template snapshot, handed
// out from a warm pool. Invariants:
// - A sandbox is ready only after restore + init (clock, fresh host entropy, this VM's limits; its answer proves the
//   agent alive), so two clones never share randomness and every limit is set by the host before user code runs.
// - Restores go into a QEMU process started ahead (no guest state until the restore); pooled VMs are warmed up
//   (SandboxDriver.setWarmup) and wait for the guest's next ready shell before they are handed out.
// - Host-enforced limits: vCPUs and memory (fixed by the template), writable layer (tmpfs size), processes and memory
//   of user commands (guest cgroup set by the host's init frame), wall clock (the agent kills at the call's timeout;
//   the host kills the VM if the agent misses its deadline), output cap (agent and host).
// - Orphans never outlive the companion: startup sweep of <home>/vms, pidfile per VM, children killed on exit.
// - No NIC ever. Egress only through the agent tunnel, when the caller attaches one.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import type { Config } from '../../config';
import { statePaths } from '../../config';
import { fatal, transient } from '../../errors';
import { logger } from '../../log';
import type {
  AcquireOptions, DriverInfo, DriverProbe, ExecRequest, ExecResult, GotFile, GuestEntry, GuestOps, GuestStat, PutFile, Sandbox, SandboxDriver,
} from '../types';
import { SHELL_BASE_ENV, shellArgv } from '../../guest/ready-shell';
import { WarmPool } from '../pool';
import { findTemplate, type Template } from '../template/manifest';
import { QemuVm } from './vm';
import { qemuVersion } from './accel';
import { sweepOrphans } from './sweep';
import { chooseQemuUser, type QemuUser } from './user';
import type { GuestLimits } from '../../guest/client';
import { guestLimits } from '../limits';
import { attachEgress } from '../attach-egress';

const log = logger('sandbox:qemu');
/** A pooled VM is replaced this long after one was taken (if another is still ready), so the restore does not
 *  compete with the call for the CPU. */
const POOL_REFILL_DELAY_MS = Number(process.env.PERIMETER_POOL_REFILL_DELAY_MS ?? 400);

export const TCG_WARNING = 'QEMU is running guests under TCG (software CPU emulation): this is for testing; use a host where KVM works for real workloads';

export class QemuSandbox implements Sandbox {
  readonly driver = 'qemu' as const;
  private destroyed: Promise<void> | null = null;

  constructor(readonly vm: QemuVm, private readonly callTimeoutMs: number, private readonly onGone: (s: QemuSandbox) => void) {}

  get id(): string { return this.vm.id; }

  exec(req: ExecRequest, onOutput?: (chunk: Buffer) => void): Promise<ExecResult> {
    return this.vm.agent.exec({ ...req, timeoutMs: Math.min(req.timeoutMs, this.callTimeoutMs) }, onOutput);
  }
  readFile(p: string, opts?: { offset?: number; length?: number }) { return this.vm.agent.readFile(p, opts); }
  writeFile(p: string, data: Buffer, opts?: { mode?: number }): Promise<void> { return this.vm.agent.writeFile(p, data, opts); }
  stat(p: string): Promise<GuestStat | null> { return this.vm.agent.stat(p); }
  walk(root: string, opts: { hash: boolean; maxEntries: number; skipNames?: string[] }): Promise<{ entries: GuestEntry[]; truncated: boolean }> {
    return this.vm.agent.walk(root, opts);
  }
  putFiles(files: PutFile[], deletes: string[]): Promise<void> { return this.vm.agent.putFiles(files, deletes); }
  getFiles(paths: string[], opts: { maxTotalBytes: number }): Promise<GotFile[]> { return this.vm.agent.getFiles(paths, opts); }

  destroy(): Promise<void> {
    this.destroyed ??= this.vm.kill().finally(() => this.onGone(this));
    return this.destroyed;
  }
}

export class QemuDriver implements SandboxDriver {
  readonly kind = 'qemu' as const;
  private template: Template | null = null;
  private pool: WarmPool<QemuSandbox> | null = null;
  private readonly active = new Set<QemuSandbox>();
  private readonly vmsDir: string;
  private closed = false;
  private qemuUser: QemuUser | null = null;
  private emulatorAhead: Promise<QemuVm> | null = null;
  private warmup: (sandbox: GuestOps) => Promise<void> = async (s) => {
    await s.exec({ argv: shellArgv(':'), env: { ...SHELL_BASE_ENV }, timeoutMs: 30_000, maxOutputBytes: 4096 });
  };

  constructor(private readonly config: Config) {
    this.vmsDir = statePaths(config.home).vms;
  }

  async probe(): Promise<DriverProbe> {
    const fixes: string[] = [];
    let version: string;
    try { version = qemuVersion(this.config.sandbox.qemuBinary); } catch (err) {
      return { ok: false, accel: 'none', detail: (err as Error).message, fixes: ['apt-get install qemu-system-x86 (QEMU 7.2 or newer)'] };
    }
    let t: Template | null;
    try { t = findTemplate(this.config.home, this.config.sandbox.template); } catch (err) {
      return { ok: false, accel: 'none', detail: (err as Error).message, fixes: ['perimeter template build --force'] };
    }
    if (!t) return { ok: false, accel: 'none', detail: `${version}; no template built yet`, fixes: ['perimeter template build'] };
    if (t.manifest.qemuVersion !== version) fixes.push('QEMU was upgraded since the template was built: perimeter template build');
    if (t.manifest.memoryMiB !== this.config.sandbox.memoryMiB || t.manifest.vcpus !== this.config.sandbox.vcpus) {
      fixes.push(`the template has ${t.manifest.memoryMiB} MiB / ${t.manifest.vcpus} vCPU but the configuration asks for ${this.config.sandbox.memoryMiB} MiB / ${this.config.sandbox.vcpus} vCPU: perimeter template build`);
    }
    const user = chooseQemuUser({ readOnlyFiles: [t.image.kernel, t.image.initrd, t.image.rootfs, t.stateFile], memFile: t.memFile, vmsDir: this.vmsDir });
    const detail = [
      `${version}, template ${t.manifest.hash} (${t.manifest.kernel} kernel, ${t.manifest.memoryMiB} MiB, accel ${t.manifest.accel})`,
      t.manifest.accel === 'tcg' ? TCG_WARNING : '',
      user.reason,
    ].filter(Boolean).join('; ');
    return { ok: t.manifest.qemuVersion === version, accel: t.manifest.accel, detail, fixes };
  }

  /** Loads the template, sweeps orphans and starts the warm pool (idempotent; acquire() calls it). */
  async start(): Promise<void> {
    if (this.template) return;
    const t = findTemplate(this.config.home, this.config.sandbox.template);
    if (!t) throw fatal('template_missing', 'no sandbox template: run `perimeter template build`');
    mkdirSync(this.vmsDir, { recursive: true, mode: 0o711 });
    const killed = sweepOrphans(this.vmsDir);
    if (killed) log.warn(`killed ${killed} orphaned QEMU process(es) left by an earlier companion`);
    if (t.manifest.accel === 'tcg') log.warn(TCG_WARNING);
    const choice = chooseQemuUser({ readOnlyFiles: [t.image.kernel, t.image.initrd, t.image.rootfs, t.stateFile], memFile: t.memFile, vmsDir: this.vmsDir });
    this.qemuUser = choice.user;
    (choice.user || process.getuid?.() !== 0 ? log.info : log.warn)(choice.reason);
    this.template = t;
    this.pool = new WarmPool<QemuSandbox>(this.config.sandbox.poolSize, {
      create: () => this.restoreWarm(),
      destroy: (s) => s.destroy(),
      healthy: async (s) => { if (s.vm.agent.broken) return false; await s.vm.agent.ping(2_000); return true; },
    }, POOL_REFILL_DELAY_MS);
    this.pool.start();
  }

  async acquire(opts: AcquireOptions): Promise<Sandbox> {
    if (this.closed) throw transient('driver_closed', 'the QEMU driver is shutting down');
    await this.start();
    const sandbox = await this.pool!.take();
    this.active.add(sandbox);
    return attachEgress(sandbox, opts.egress);
  }

  /** Restores one clone and makes it ready (exposed for the benchmark). */
  async restore(): Promise<QemuSandbox> {
    const t = this.template;
    if (!t) throw fatal('template_missing', 'driver not started');
    if (!existsSync(t.memFile)) throw fatal('template_invalid', `template ${t.dir} lost its memory file`);
    const vm = await this.takeEmulator(t);
    const sandbox = new QemuSandbox(vm, this.config.sandbox.callTimeoutMs, (s) => this.active.delete(s));
    vm.onAgentFatal = (err) => {
      log.warn(`sandbox ${vm.id}: ${err.message}; killing the VM`);
      void sandbox.destroy();
    };
    try {
      await vm.restore(t.stateFile);
      await vm.agent.init(randomBytes(64), this.limits(t)); // its answer also proves the agent is alive
    } catch (err) {
      await sandbox.destroy();
      throw transient('restore_failed', `restoring a sandbox failed: ${(err as Error).message}${vm.diagnostics ? `: ${vm.diagnostics}` : ''}`);
    } finally {
      this.startEmulator(t); // the next restore's QEMU starts now, not during this one
    }
    return sandbox;
  }

  /** A QEMU process for the next restore: the one started ahead if it is ready and alive, else a new one. */
  private async takeEmulator(t: Template): Promise<QemuVm> {
    const ahead = this.emulatorAhead;
    this.emulatorAhead = null;
    if (ahead) {
      const vm = await ahead.catch(() => null);
      if (vm?.alive && !vm.agent.broken) return vm;
      if (vm) await vm.kill();
    }
    return this.spawnEmulator(t);
  }

  private spawnEmulator(t: Template): Promise<QemuVm> {
    return QemuVm.spawn(t.image, { binary: this.config.sandbox.qemuBinary, accel: t.manifest.accel, vmsDir: this.vmsDir, memFile: t.memFile, role: 'clone', user: this.qemuUser ?? undefined }, () => {});
  }

  /**
   * Starts one QEMU ahead of the next restore (`-incoming defer`: no guest state yet, agent and QMP sockets
   * connected), so a restore skips QEMU's own start-up (≈ 25 ms here). It holds no guest memory of its own and is
   * killed with the driver like any VM (pidfile, sweep).
   */
  private startEmulator(t: Template): void {
    if (!this.config.sandbox.startEmulatorAhead || this.closed || this.emulatorAhead) return;
    const ahead = this.spawnEmulator(t).then(async (vm) => {
      vm.onAgentFatal = () => { void vm.kill(); };
      await vm.qmp();
      return vm;
    });
    ahead.catch((err: Error) => log.warn(`starting a QEMU ahead of need failed: ${err.message}`));
    this.emulatorAhead = ahead;
  }

  setWarmup(warmup: (sandbox: GuestOps) => Promise<void>): void { this.warmup = warmup; }

  /**
   * A restored clone whose code paths are warm: under TCG the first run of any guest code after a restore pays for
   * translating it again (the first `bash` ≈ 100 ms); pooled VMs pay it in the background instead of in the user's
   * call. The warm-up uses the clone's ready shell, so it then waits for the agent to have started the next one.
   */
  private async restoreWarm(): Promise<QemuSandbox> {
    const s = await this.restore();
    if (this.template?.manifest.accel === 'tcg') {
      try {
        await this.warmup(s);
        await s.vm.agent.waitReadyShellIfAny(30_000);
      } catch (err) {
        await s.destroy();
        throw err;
      }
    }
    return s;
  }

  limits(t: Template): GuestLimits { return guestLimits(this.config.sandbox, t.manifest.memoryMiB); }

  /** Waits until the warm pool is full (benchmarks, tests). */
  async warm(timeoutMs = 60_000): Promise<void> { await this.start(); await this.pool!.waitFull(timeoutMs); }

  info(): DriverInfo {
    return { kind: 'qemu', accel: this.template?.manifest.accel ?? 'none', running: this.active.size, pooled: this.pool?.readyCount ?? 0 };
  }

  async close(): Promise<void> {
    this.closed = true;
    const ahead = this.emulatorAhead;
    this.emulatorAhead = null;
    await this.pool?.close();
    await ahead?.then((vm) => vm.kill(), () => {});
    await Promise.all([...this.active].map((s) => s.destroy()));
  }
}
