// Picks the sandbox driver from `config.sandbox.driver`. `auto` prefers a VM driver whose probe succeeds and falls
// back to the development-only `process` driver with a loud warning; an explicitly requested VM driver that cannot
// run is a fatal error (never a silent downgrade to no isolation). VM drivers register themselves in VM_DRIVERS
// below (helper B: qemu, firecracker); this module stays the only place that knows the list.
import type { Config } from '../config';
import type { EventHub } from '../events';
import { fatal } from '../errors';
import { logger } from '../log';
import type { DriverKind, DriverProbe, SandboxDriver } from './types';
import { ProcessDriver, PROCESS_DRIVER_WARNING } from './process/driver';
import { QemuDriver } from './qemu/driver';
import { FirecrackerDriver } from './firecracker/driver';

const log = logger('sandbox');

/** A VM driver factory: constructs the driver (cheap, no VM started). */
export type DriverFactory = (config: Config, hub: EventHub) => Promise<SandboxDriver> | SandboxDriver;

/**
 * VM drivers in order of preference for `auto`. ---- VM DRIVERS: add entries here ----
 * e.g. `{ kind: 'qemu', create: (config, hub) => new QemuDriver(config, hub) }`.
 */
const VM_DRIVERS: Array<{ kind: Exclude<DriverKind, 'process'>; create: DriverFactory }> = [
  { kind: 'qemu', create: (config) => new QemuDriver(config) },
  { kind: 'firecracker', create: (config) => new FirecrackerDriver(config) },
];

export interface DriverSelection {
  driver: SandboxDriver;
  probe: DriverProbe;
  /** Probes of the VM drivers that were tried and could not run (for `doctor` and the warning). */
  rejected: Array<{ kind: DriverKind; probe: DriverProbe }>;
}

/** Registers a VM driver at run time (used by tests and by optional driver modules). */
export function registerVmDriver(kind: Exclude<DriverKind, 'process'>, create: DriverFactory): void {
  const existing = VM_DRIVERS.findIndex((d) => d.kind === kind);
  if (existing >= 0) VM_DRIVERS.splice(existing, 1);
  VM_DRIVERS.push({ kind, create });
}

/** Probes every known driver without selecting one (for `perimeter doctor`). */
export async function probeDrivers(config: Config, hub: EventHub): Promise<Array<{ kind: DriverKind; probe: DriverProbe }>> {
  const out: Array<{ kind: DriverKind; probe: DriverProbe }> = [];
  for (const d of VM_DRIVERS) {
    const driver = await d.create(config, hub);
    try { out.push({ kind: d.kind, probe: await driver.probe() }); } finally { await driver.close().catch(() => {}); }
  }
  if (VM_DRIVERS.length === 0) {
    out.push({ kind: 'qemu', probe: { ok: false, accel: 'none', detail: 'the QEMU driver is not part of this build', fixes: ['build a companion that includes companion/sandbox/qemu'] } });
  }
  out.push({ kind: 'process', probe: await new ProcessDriver().probe() });
  return out;
}

export async function selectDriver(config: Config, hub: EventHub): Promise<DriverSelection> {
  const wanted = config.sandbox.driver;
  const rejected: DriverSelection['rejected'] = [];
  if (wanted === 'process') {
    const driver = new ProcessDriver();
    log.warn(PROCESS_DRIVER_WARNING);
    return { driver, probe: await driver.probe(), rejected };
  }
  const candidates = wanted === 'auto' ? VM_DRIVERS : VM_DRIVERS.filter((d) => d.kind === wanted);
  if (wanted !== 'auto' && candidates.length === 0) throw fatal('driver_unavailable', `sandbox driver "${wanted}" is not available in this build`);
  for (const c of candidates) {
    const driver = await c.create(config, hub);
    const probe = await driver.probe();
    if (probe.ok) return { driver, probe, rejected };
    rejected.push({ kind: c.kind, probe });
    await driver.close().catch(() => {});
    if (wanted !== 'auto') {
      throw fatal('driver_unavailable', `sandbox driver "${wanted}" cannot run: ${probe.detail}${probe.fixes.length ? ` (fix: ${probe.fixes.join('; ')})` : ''}`);
    }
  }
  const why = rejected.length ? rejected.map((r) => `${r.kind}: ${r.probe.detail}`).join('; ') : 'no VM driver in this build';
  log.warn(`no VM sandbox can run here (${why}); falling back to the process driver`);
  log.warn(PROCESS_DRIVER_WARNING);
  const driver = new ProcessDriver();
  return { driver, probe: await driver.probe(), rejected };
}
