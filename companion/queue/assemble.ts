// Wires one companion runtime from a Config: journal, sandbox driver (selectDriver), persistence, egress gateways,
// the Worker and (optionally) the control API server. Used by `perimeter worker`, `perimeter demo` and the tests,
// so they all run the same composition.
import type { Config } from '../config';
import { statePaths } from '../config';
import { EventHub } from '../events';
import { Journal } from '../journal/journal';
import { selectDriver, type DriverSelection } from '../sandbox/select';
import { Persistence } from '../persist/persistence';
import { MemoryMountRegistry } from '../persist/memory';
import { createEgressGateway, validateEgressPolicy, type EgressGateway } from '../egress/proxy';
import { startControlServer, type ControlServer } from '../control/server';
import { Worker } from './worker';
import { logger } from '../log';

const log = logger('runtime');

export interface RuntimeOptions {
  config: Config;
  environmentId: string;
  environmentKey: string;
  baseUrl?: string;
  hub?: EventHub;
  /** Start the control API server (default: config.control.enabled). */
  control?: boolean;
  maxIdleMs?: number;
  drainTimeoutMs?: number;
  stallCheckMs?: number;
  /** Run without persisted files (shell state still carries over within the process). */
  persistence?: boolean;
}

export interface Runtime {
  hub: EventHub;
  journal: Journal;
  selection: DriverSelection;
  worker: Worker;
  control: ControlServer | null;
  /** Runs the worker until drained; then closes everything. Resolves with the exit code. */
  run(): Promise<number>;
  close(): Promise<void>;
}

export async function assembleRuntime(o: RuntimeOptions): Promise<Runtime> {
  const { config } = o;
  if (config.egress.mode === 'allow') validateEgressPolicy(config.egress);   // a bad allow-list stops start-up
  const hub = o.hub ?? new EventHub();
  const journal = Journal.open(statePaths(config.home).journal);
  const selection = await selectDriver(config, hub);
  const memoryMounts = new MemoryMountRegistry();
  const persistence = o.persistence === false ? undefined : new Persistence({ home: config.home, persist: config.persist, hub, memoryMounts: memoryMounts.resolve });
  const gateways = new Map<string, EgressGateway>();
  const egressFor = config.egress.mode === 'allow'
    ? (sessionId: string) => {
      let g = gateways.get(sessionId);
      if (!g) { g = createEgressGateway({ policy: config.egress, hub, sessionId }); gateways.set(sessionId, g); }
      return g;
    }
    : undefined;
  const worker = new Worker({
    config, environmentId: o.environmentId, environmentKey: o.environmentKey, baseUrl: o.baseUrl, hub,
    driver: selection.driver, driverProbe: selection.probe, journal, persistence, egressFor,
    memoryMounts, maxIdleMs: o.maxIdleMs, drainTimeoutMs: o.drainTimeoutMs, stallCheckMs: o.stallCheckMs,
  });
  let control: ControlServer | null = null;
  if (o.control ?? config.control.enabled) {
    control = await startControlServer({ home: config.home, hub, journal, persistence, worker });
    log.info(`control API on 127.0.0.1:${control.endpoint.port} (details in ${statePaths(config.home).controlFile})`);
  }
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await control?.close().catch(() => {});
    for (const g of gateways.values()) g.close();
    await selection.driver.close().catch(() => {});
    journal.close();
  };
  return {
    hub, journal, selection, worker, control, close,
    run: async () => { try { return await worker.run(); } finally { await close(); } },
  };
}
