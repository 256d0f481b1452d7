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
// - Every QEMU is confined (qemu/confine.ts); the driver refuses to start when it cannot be (probe: not ok, with the
//   reason and the fix), unless `sandbox.confinement: "none"` is configured, which it logs as a warning. The
//   template's memory file is sealed (owned by the companion, mode 0444) before the first clone maps it.
// - A snapshot restores only under the QEMU that wrote it: when `qemu-system-x86_64 --version` differs from the
//   template's, the snapshot is remade from the template's kernel and root filesystem before the first restore
//   (prepare(); progress in the log, as `log` events on the hub and in DriverInfo.note), never used as is.
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import type { Config } from '../../config';
import type { EventHub } from '../../events';
import { statePaths } from '../../config';
import { fatal, transient } from '../../errors';
import { logger } from '../../log';
import type { AcquireOptions, DriverInfo, DriverProbe, Sandbox, SandboxDriver, SandboxProfile } from '../types';
import type { ExecRequest, ExecResult, GotFile, GuestEntry, GuestOps, GuestStat, PutFile } from '../../guest/types';
import { SHELL_BASE_ENV, shellArgv } from '../../guest/ready-shell';
import { WarmPool } from '../pool';
import { findTemplate, type Template } from '../template/manifest';
import { remakeSnapshot } from '../template/build';
import { QemuVm } from './vm';
import { QemuSessionDisk } from './session-disk';
import type { SessionDiskPort } from '../session-disk';
import { qemuVersion } from './accel';
import { sweepOrphans } from './sweep';
import { Confinement } from './confine';
import { sweepCgroups, detectHostCgroup } from './cgroup';
import type { GuestLimits } from '../../guest/client';
import { guestLimits } from '../limits';
import { attachEgress } from '../attach-egress';

const log = logger('sandbox:qemu');
/** A pooled VM is replaced this long after one was taken (if another is still ready), so the restore does not
 *  compete with the call for the CPU. */
const POOL_REFILL_DELAY_MS = Number(process.env.PERIMETER_POOL_REFILL_DELAY_MS ?? 400);

/** How to get a template on a fresh Debian 12 machine (the packages the build needs, then the build itself). */
export const TEMPLATE_BUILD_FIX = 'sudo apt-get install qemu-system-x86 qemu-utils mmdebstrap uidmap bubblewrap e2fsprogs build-essential bc bison flex libelf-dev libssl-dev xz-utils linux-source-6.1, then (as yourself, no root needed): perimeter template build (once, ~10 min)';

export const TCG_WARNING = 'QEMU is running guests under TCG (software CPU emulation): this is for testing; use a host where KVM works for real workloads';

export class QemuSandbox implements Sandbox {
  readonly driver = 'qemu' as const;
  private destroyed: Promise<void> | null = null;

  readonly sessionDisk?: SessionDiskPort;
  readonly profile?: SandboxProfile;

  constructor(readonly vm: QemuVm, private readonly callTimeoutMs: number, private readonly onGone: (s: QemuSandbox) => void,
    readonly writableBytes: number, sessionDiskBytes?: number, profile?: SandboxProfile) {
    if (sessionDiskBytes !== undefined) this.sessionDisk = new QemuSessionDisk(vm, sessionDiskBytes);
    if (profile) this.profile = profile;
  }

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
  readonly confinement: Confinement;
  private emulatorAhead: Promise<QemuVm> | null = null;
  private templateReady: Promise<Template> | null = null;
  private poolSize: number;
  /** What keeps the driver from restoring right now (a snapshot being remade), for the panel. */
  private note: string | undefined;
  private warmup: (sandbox: GuestOps) => Promise<void> = async (s) => {
    await s.exec({ argv: shellArgv(':'), env: { ...SHELL_BASE_ENV }, timeoutMs: 30_000, maxOutputBytes: 4096 });
  };

  constructor(private readonly config: Config, private readonly hub?: EventHub) {
    this.vmsDir = statePaths(config.home).vms;
    this.confinement = Confinement.fromConfig(config.sandbox, log);
    this.poolSize = config.sandbox.poolSize;
  }

  /** How many restored VMs to keep ready from now on (the per-template pools size each other: template-pools.ts). */
  setPoolSize(n: number): void {
    this.poolSize = n;
    this.pool?.resize(n);
  }

  async probe(): Promise<DriverProbe> {
    const fixes: string[] = [];
    let version: string;
    try { version = qemuVersion(this.config.sandbox.qemuBinary); } catch (err) {
      return { ok: false, accel: 'none', detail: (err as Error).message, fixes: [TEMPLATE_BUILD_FIX] };
    }
    let t: Template | null;
    try { t = findTemplate(this.config.home, this.config.sandbox.template); } catch (err) {
      return { ok: false, accel: 'none', detail: (err as Error).message, fixes: ['perimeter template build --force'] };
    }
    if (!t) return { ok: false, accel: 'none', detail: `no template built yet (${version})`, fixes: [TEMPLATE_BUILD_FIX] };
    if (t.manifest.memoryMiB !== this.config.sandbox.memoryMiB || t.manifest.vcpus !== this.config.sandbox.vcpus) {
      fixes.push(`the template has ${t.manifest.memoryMiB} MiB / ${t.manifest.vcpus} vCPU but the configuration asks for ${this.config.sandbox.memoryMiB} MiB / ${this.config.sandbox.vcpus} vCPU: perimeter template build`);
    }
    const confinement = this.confinement.report(version);
    if (!confinement.ok) return { ok: false, accel: 'none', detail: `VMs cannot be confined here: ${confinement.problems.join('; ')}`, fixes: [...confinement.fixes, 'or, knowingly: sandbox.confinement "none"'] };
    const detail = [
      `${version}, template ${t.manifest.hash} (${t.manifest.kernel} kernel, ${t.manifest.memoryMiB} MiB, accel ${t.manifest.accel})`,
      t.manifest.qemuVersion !== version ? `the template's snapshot was made with ${t.manifest.qemuVersion}: it is remade from the template's kernel and root filesystem when the driver starts` : '',
      t.manifest.accel === 'tcg' ? TCG_WARNING : '',
      this.confinement.enabled
        ? `VMs confined: ${confinement.namespaces.join('/')} namespaces, uid ${confinement.uid}, ${confinement.cgroup.limited ? 'host cgroup per VM' : 'no host cgroup here'}`
        : 'VMs are NOT confined (sandbox.confinement: "none")',
    ].filter(Boolean).join('; ');
    return { ok: true, accel: t.manifest.accel, detail, fixes };
  }

  /**
   * The template to restore from, its snapshot remade first when the installed QEMU is not the one that wrote it.
   * Runs once; acquire() waits for it, and the worker starts it early so the first call does not pay for it.
   */
  prepare(): Promise<void> { return this.readyTemplate().then(() => undefined); }

  private readyTemplate(): Promise<Template> {
    this.templateReady ??= (async () => {
      const t = findTemplate(this.config.home, this.config.sandbox.template);
      if (!t) throw fatal('template_missing', 'no sandbox template: run `perimeter template build`');
      const version = qemuVersion(this.config.sandbox.qemuBinary);
      if (t.manifest.qemuVersion === version) return t;
      return this.remake(t, version);
    })();
    return this.templateReady;
  }

  private async remake(t: Template, version: string): Promise<Template> {
    const started = Date.now();
    const progress = (line: string) => {
      this.note = `remaking the template snapshot for ${version}: ${line}`;
      log.info(this.note);
      this.hub?.publish({ type: 'log', level: 'info', component: 'sandbox:template', message: this.note, ts: Date.now() });
    };
    log.warn(`QEMU changed since template ${t.manifest.hash} was made (${t.manifest.qemuVersion} → ${version}): remaking its snapshot`);
    try {
      const remade = await remakeSnapshot(t, {
        home: this.config.home, qemuBinary: this.config.sandbox.qemuBinary, accel: this.config.sandbox.accel, progress,
        warmup: this.warmup, limits: this.limits(t), setCurrent: !this.config.sandbox.template, confinement: this.confinement,
      });
      log.info(`template snapshot remade for ${version} in ${Math.round((Date.now() - started) / 1000)} s: ${remade.dir}`);
      this.note = undefined;
      return remade;
    } catch (err) {
      this.note = `remaking the template snapshot failed: ${(err as Error).message.split('\n')[0]}; run \`perimeter template build\` and restart`;
      log.error(this.note);
      this.hub?.publish({ type: 'log', level: 'error', component: 'sandbox:template', message: this.note, ts: Date.now() });
      throw fatal('template_remake_failed', this.note, err);
    }
  }

  /** Loads the template, sweeps orphans and starts the warm pool (idempotent; acquire() calls it). */
  async start(): Promise<void> {
    if (this.template) return;
    this.confinement.check(this.confinement.qemuVersion(this.config.sandbox.qemuBinary)); // fail closed, before any VM
    const t = await this.readyTemplate();
    if (this.template || this.closed) return;
    mkdirSync(this.vmsDir, { recursive: true, mode: 0o711 });
    const killed = sweepOrphans(this.vmsDir);
    if (killed) log.warn(`killed ${killed} orphaned QEMU process(es) left by an earlier companion`);
    if (this.confinement.enabled) sweepCgroups(detectHostCgroup(), companionAlive);
    if (t.manifest.accel === 'tcg') log.warn(TCG_WARNING);
    sealMemoryFile(t.memFile);
    const report = this.confinement.report(this.confinement.qemuVersion(this.config.sandbox.qemuBinary));
    if (this.confinement.enabled) log.info(`VMs confined: ${report.namespaces.join('/')} namespaces; uid ${report.uid}; memory file ${report.memoryFile}; ${report.cgroup.detail}`);
    this.template = t;
    this.pool = new WarmPool<QemuSandbox>(this.poolSize, {
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
    if (this.closed) {
      await sandbox.destroy();
      throw transient('driver_closed', 'the QEMU driver is shutting down');
    }
    this.active.add(sandbox);
    return attachEgress(sandbox, opts.egress);
  }

  /** Restores one clone and makes it ready (exposed for the benchmark). */
  async restore(): Promise<QemuSandbox> {
    const t = this.template;
    if (!t) throw fatal('template_missing', 'driver not started');
    if (!existsSync(t.memFile)) throw fatal('template_invalid', `template ${t.dir} lost its memory file`);
    const vm = await this.takeEmulator(t);
    const profile = t.manifest.env || t.manifest.workdir ? { env: t.manifest.env ?? {}, ...(t.manifest.workdir ? { workdir: t.manifest.workdir } : {}) } : undefined;
    const sandbox = new QemuSandbox(vm, this.config.sandbox.callTimeoutMs, (s) => this.active.delete(s), this.limits(t).writableBytes, t.image.sessionDisk?.bytes, profile);
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
    return QemuVm.spawn(t.image, { binary: this.config.sandbox.qemuBinary, accel: t.manifest.accel, vmsDir: this.vmsDir, memFile: t.memFile, role: 'clone', confinement: this.confinement }, () => {});
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

  sessionDiskBytes(): number | null {
    try { return findTemplate(this.config.home, this.config.sandbox.template)?.manifest.sessionDisk?.bytes ?? null; } catch { return null; }
  }

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
    return { kind: 'qemu', accel: this.template?.manifest.accel ?? 'none', running: this.active.size, pooled: this.pool?.readyCount ?? 0, ...(this.note ? { note: this.note } : {}) };
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

/** Whether `pid` is a live companion (a VM cgroup named after it is then its business, not a leftover). */
function companionAlive(pid: number): boolean {
  try { return /node|perimeter/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8')); } catch { return false; }
}

/** The template's memory file belongs to the companion, read-only for everyone (templates built before VMs had their
 *  own uids gave it to `nobody`): no VM uid may write what every clone starts from. */
function sealMemoryFile(memFile: string): void {
  const st = statSync(memFile);
  const uid = process.getuid?.() ?? -1, gid = process.getgid?.() ?? -1;
  if (uid === 0 && (st.uid !== 0 || st.gid !== gid)) chownSync(memFile, 0, gid);
  if ((uid === 0 || st.uid === uid) && (st.mode & 0o777) !== 0o444) chmodSync(memFile, 0o444);
  else if (st.uid !== uid && (st.mode & 0o022)) throw fatal('template_writable', `${memFile} is writable by others than its owner (mode ${(st.mode & 0o777).toString(8)}): chmod 0444 it (as its owner) or rebuild the template`);
}
