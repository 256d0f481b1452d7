// The `qemu` driver the worker uses: one QemuDriver (its own warm pool) per template a session asks for. A session
// gets the environment's default template (`sandbox.template`, else the built default) unless its metadata names
// another (`perimeter.template`, AcquireOptions.template). Invariants:
// - An unknown template is a fatal `template_unknown` error naming the templates this host has: the call gets it as
//   its result, nothing else is restored.
// - Pool sizes follow recent use (planPools): the default template keeps `sandbox.poolSize` ready, another template
//   as many as it was asked for in the last USE_WINDOW_MS (at most poolSize), and the ready VMs of all templates
//   together fit `sandbox.poolMemoryMiB` (each counted at its template's memory size, the most it can take). A
//   template nobody used for USE_WINDOW_MS keeps none ready.
import os from 'node:os';
import type { Config } from '../../config';
import type { EventHub } from '../../events';
import { fatal } from '../../errors';
import type { GuestOps } from '../../guest/types';
import type { AcquireOptions, DriverInfo, DriverProbe, Sandbox, SandboxDriver } from '../types';
import { findTemplate, type Template } from '../template/manifest';
import { templateNames } from '../template/registry';
import { TEMPLATE_NAME } from '../template/spec';
import { QemuDriver } from './driver';
import { logger } from '../../log';

const log = logger('sandbox:pools');

export const USE_WINDOW_MS = 10 * 60_000;
const REBALANCE_MS = 30_000;

export interface PoolDemand {
  key: string;
  memoryMiB: number;
  /** Acquisitions in the last USE_WINDOW_MS. */
  recentUses: number;
  isDefault: boolean;
}

/**
 * Ready VMs per template: the default wants `maxPerTemplate`, another template one per recent use up to that; the
 * most used templates are served first (the default first among equals) until the memory budget is spent.
 */
export function planPools(demands: PoolDemand[], maxPerTemplate: number, budgetMiB: number): Map<string, number> {
  const out = new Map<string, number>();
  let left = budgetMiB;
  const order = [...demands].sort((a, b) => (b.recentUses - a.recentUses) || (Number(b.isDefault) - Number(a.isDefault)));
  for (const d of order) {
    const want = d.isDefault ? maxPerTemplate : Math.min(maxPerTemplate, d.recentUses);
    const fits = Math.max(0, Math.min(want, Math.floor(left / Math.max(1, d.memoryMiB))));
    out.set(d.key, fits);
    left -= fits * d.memoryMiB;
  }
  return out;
}

/** The pool memory budget: `sandbox.poolMemoryMiB`, else a quarter of the host's memory. */
export function poolBudgetMiB(config: Config): number {
  return config.sandbox.poolMemoryMiB ?? Math.floor(os.totalmem() / 4 / 2 ** 20);
}

interface TemplateDriver { driver: QemuDriver; memoryMiB: number; uses: number[]; isDefault: boolean }

export class QemuTemplatePools implements SandboxDriver {
  readonly kind = 'qemu' as const;
  private readonly base: QemuDriver;
  /** By template hash; the default template's entry is `base`. */
  private readonly drivers = new Map<string, TemplateDriver>();
  private defaultHash: string | null = null;
  private warmup: ((s: GuestOps) => Promise<void>) | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(private readonly config: Config, private readonly hub?: EventHub) {
    this.base = new QemuDriver(config, hub);
  }

  probe(): Promise<DriverProbe> { return this.base.probe(); }
  prepare(): Promise<void> { return this.base.prepare(); }
  /** The default template's session-disk device: what persistence sizes every session's disk by (a template with a
   *  smaller device is refused by the session-disk attach, naming the fix). */
  sessionDiskBytes(): number | null { return this.base.sessionDiskBytes(); }

  setWarmup(warmup: (sandbox: GuestOps) => Promise<void>): void {
    this.warmup = warmup;
    this.base.setWarmup(warmup);
    for (const d of this.drivers.values()) d.driver.setWarmup(warmup);
  }

  /** The default template's entry (created on first use, from the template the configuration names). */
  private defaultEntry(): TemplateDriver {
    const t = findTemplate(this.config.home, this.config.sandbox.template);
    if (!t) throw fatal('template_missing', 'no sandbox template: run `perimeter template build`');
    this.defaultHash ??= t.manifest.hash;
    let e = this.drivers.get(this.defaultHash);
    if (!e) { e = { driver: this.base, memoryMiB: t.manifest.memoryMiB, uses: [], isDefault: true }; this.drivers.set(this.defaultHash, e); }
    return e;
  }

  private entryFor(ref: string): TemplateDriver {
    let t: Template | null = null;
    if (TEMPLATE_NAME.test(ref)) { try { t = findTemplate(this.config.home, ref); } catch { t = null; } }
    if (!t) {
      const known = [...templateNames(this.config.home).keys()];
      throw fatal('template_unknown', `this host has no template "${ref}" (the session's perimeter.template metadata); it has: ${known.join(', ') || 'none by name'}`);
    }
    const def = this.defaultEntry();
    if (t.manifest.hash === this.defaultHash) return def;
    let e = this.drivers.get(t.manifest.hash);
    if (!e) {
      const driver = new QemuDriver({ ...this.config, sandbox: { ...this.config.sandbox, template: t.dir, poolSize: 0, startEmulatorAhead: false } }, this.hub);
      if (this.warmup) driver.setWarmup(this.warmup);
      e = { driver, memoryMiB: t.manifest.memoryMiB, uses: [], isDefault: false };
      this.drivers.set(t.manifest.hash, e);
    }
    return e;
  }

  async acquire(opts: AcquireOptions): Promise<Sandbox> {
    const e = opts.template ? this.entryFor(opts.template) : this.defaultEntry();
    e.uses.push(Date.now());
    this.rebalance();
    if (!this.timer && !this.closed) {
      this.timer = setInterval(() => this.rebalance(), REBALANCE_MS);
      this.timer.unref();
    }
    return e.driver.acquire({ sessionId: opts.sessionId, ...(opts.egress ? { egress: opts.egress } : {}) });
  }

  /** Resizes every template's pool to the plan for the uses of the last USE_WINDOW_MS. */
  rebalance(): void {
    const since = Date.now() - USE_WINDOW_MS;
    const demands: PoolDemand[] = [];
    for (const [key, e] of this.drivers) {
      e.uses = e.uses.filter((t) => t >= since);
      demands.push({ key, memoryMiB: e.memoryMiB, recentUses: e.uses.length, isDefault: e.isDefault });
    }
    const plan = planPools(demands, this.config.sandbox.poolSize, poolBudgetMiB(this.config));
    for (const [key, n] of plan) {
      const d = this.drivers.get(key)!.driver;
      d.setPoolSize(n);
      // a pool that should hold VMs fills now, not at its template's next call
      if (n > 0 && !this.closed) d.start().catch((err: Error) => log.warn(`starting the warm pool of template ${key} failed: ${err.message}`));
    }
  }

  /** Ready VMs per template hash (for tests and the benchmark). */
  poolSizes(): Map<string, number> {
    const out = new Map<string, number>();
    for (const [key, e] of this.drivers) out.set(key, e.driver.info().pooled);
    return out;
  }

  info(): DriverInfo {
    const base = this.base.info();
    let running = 0, pooled = 0;
    for (const e of this.drivers.values()) { const i = e.driver.info(); running += i.running; pooled += i.pooled; }
    if (!this.drivers.size) { running = base.running; pooled = base.pooled; }
    return { ...base, running, pooled };
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    const all = new Set<QemuDriver>([this.base, ...[...this.drivers.values()].map((e) => e.driver)]);
    await Promise.all([...all].map((d) => d.close()));
  }
}
