// Picks the sandbox driver from `config.sandbox.driver`. Invariants (fail closed: isolation never switches itself
// off):
// - `auto` chooses among the VM drivers only, in VM_DRIVERS order. When none can run it is a fatal `NoVmSandbox`
//   naming each driver's reason and fix (what `perimeter doctor` reports); only a caller that owns an embedded
//   control plane (`perimeter demo`) may ask for the `process` driver instead (`whenNoVm: 'process'`).
// - An explicitly requested VM driver that cannot run is fatal; it is never replaced by another driver.
// - The `process` driver (no isolation) runs only when named, or for the demo above, with a banner; it serves only a
//   control plane on this machine (the embedded dev queue or one on loopback) unless `sandbox.allowNoIsolation`.
// VM drivers register in VM_DRIVERS below; this module stays the only place that knows the list.
import type { Config } from '../config';
import type { EventHub } from '../events';
import { PerimeterError, fatal } from '../errors';
import { logger } from '../log';
import type { DriverKind, DriverProbe, SandboxDriver } from './types';
import { ProcessDriver } from './process/driver';
import { QemuTemplatePools } from './qemu/template-pools';
import { FirecrackerDriver } from './firecracker/driver';

const log = logger('sandbox');

/** A VM driver factory: constructs the driver (cheap, no VM started). */
export type DriverFactory = (config: Config, hub: EventHub) => Promise<SandboxDriver> | SandboxDriver;

type VmDriverKind = Exclude<DriverKind, 'process'>;

/** VM drivers in order of preference for `auto`. */
const VM_DRIVERS: Array<{ kind: VmDriverKind; create: DriverFactory }> = [
  { kind: 'qemu', create: (config, hub) => new QemuTemplatePools(config, hub) },
  { kind: 'firecracker', create: (config) => new FirecrackerDriver(config) },
];

export interface RejectedDriver { kind: DriverKind; probe: DriverProbe }

export interface DriverSelection {
  driver: SandboxDriver;
  probe: DriverProbe;
  /** Probes of the VM drivers that were tried and could not run. */
  rejected: RejectedDriver[];
  /** Set when no VM driver could run and the caller asked for the process driver instead: why, and how to get VMs. */
  noVm?: { reason: string; fix: string };
}

export interface SelectOptions {
  /** The control plane's base URL (absent: Anthropic's API). */
  baseUrl?: string;
  /** What `auto` does when no VM driver can run: refuse (the worker) or use the process driver (the demo only). */
  whenNoVm?: 'refuse' | 'process';
}

/** No VM driver can run and the configuration does not allow anything else. */
export class NoVmSandbox extends PerimeterError {
  constructor(readonly rejected: RejectedDriver[]) {
    super(
      `no microVM sandbox can run here, and the worker does not run tool calls without isolation. ${describeRejected(rejected)}. ` +
      'Run `perimeter doctor` for details. For development only, `--driver process` runs tool calls as host processes.',
      'fatal', 'no_vm_sandbox',
    );
    this.name = 'NoVmSandbox';
  }
}

/** The process driver was named for a control plane that is not on this machine. */
export class IsolationRequired extends PerimeterError {
  constructor(baseUrl: string) {
    super(
      `the process driver has no isolation and serves only a control plane on this machine (the embedded dev queue ` +
      `or one on loopback), not ${baseUrl}. Use a VM driver (see \`perimeter doctor\`), or pass --allow-no-isolation ` +
      '(sandbox.allowNoIsolation) to run this environment\'s tool calls as host processes anyway.',
      'fatal', 'isolation_required',
    );
    this.name = 'IsolationRequired';
  }
}

export const PROCESS_DRIVER_BANNER = [
  '==================================================================================================',
  ' NO ISOLATION: sandbox driver "process". Every tool call runs as a host process with this user\'s',
  ' rights (files, network, credentials). Development only. For microVMs: perimeter template build.',
  '==================================================================================================',
];

function describeRejected(rejected: RejectedDriver[]): string {
  if (!rejected.length) return 'No VM driver is part of this build';
  return rejected.map((r) => `${r.kind}: ${r.probe.detail}${r.probe.fixes.length ? ` (fix: ${r.probe.fixes.join('; ')})` : ''}`).join('; ');
}

/** True when the base URL names this machine (loopback); absent means Anthropic's API. */
export function isLoopbackUrl(baseUrl: string | undefined): boolean {
  if (!baseUrl) return false;
  let host: string;
  try { host = new URL(baseUrl).hostname.toLowerCase(); } catch { return false; }
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** Registers a VM driver at run time (used by tests and by optional driver modules). */
export function registerVmDriver(kind: VmDriverKind, create: DriverFactory): void {
  const existing = VM_DRIVERS.findIndex((d) => d.kind === kind);
  if (existing >= 0) VM_DRIVERS.splice(existing, 1);
  VM_DRIVERS.push({ kind, create });
}

/** Probes every known driver without selecting one (for `perimeter doctor`). */
export async function probeDrivers(config: Config, hub: EventHub): Promise<RejectedDriver[]> {
  const out: RejectedDriver[] = [];
  for (const d of VM_DRIVERS) {
    const driver = await d.create(config, hub);
    try { out.push({ kind: d.kind, probe: await driver.probe() }); } finally { await driver.close().catch(() => {}); }
  }
  out.push({ kind: 'process', probe: await new ProcessDriver().probe() });
  return out;
}

async function processDriver(config: Config, opts: SelectOptions): Promise<ProcessDriver> {
  if (!isLoopbackUrl(opts.baseUrl ?? config.baseUrl) && !config.sandbox.allowNoIsolation) {
    throw new IsolationRequired(opts.baseUrl ?? config.baseUrl ?? 'https://api.anthropic.com');
  }
  for (const line of PROCESS_DRIVER_BANNER) log.warn(line);
  return new ProcessDriver();
}

export async function selectDriver(config: Config, hub: EventHub, opts: SelectOptions = {}): Promise<DriverSelection> {
  const wanted = config.sandbox.driver;
  const rejected: RejectedDriver[] = [];
  if (wanted === 'process') {
    const driver = await processDriver(config, opts);
    return { driver, probe: await driver.probe(), rejected };
  }
  const candidates = wanted === 'auto' ? VM_DRIVERS : VM_DRIVERS.filter((d) => d.kind === wanted);
  if (candidates.length === 0 && wanted !== 'auto') throw fatal('driver_unavailable', `sandbox driver "${wanted}" is not available in this build`);
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
  if (opts.whenNoVm !== 'process') throw new NoVmSandbox(rejected);
  const driver = await processDriver(config, opts);
  const preferred = rejected[0];
  const noVm = {
    reason: preferred ? `${preferred.kind}: ${preferred.probe.detail}` : 'no VM driver is part of this build',
    fix: preferred?.probe.fixes.join('; ') || 'perimeter doctor',
  };
  log.warn(`no microVM sandbox can run here (${noVm.reason}); the process driver was asked for instead`);
  return { driver, probe: await driver.probe(), rejected, noVm };
}
