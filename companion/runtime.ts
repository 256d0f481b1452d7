// Wires one companion runtime from a Config: sandbox driver (selectDriver, first: a host that cannot isolate tool
// calls stops here), journal, persistence, egress gateways, the call runner over the sandbox, the Worker (which sees
// the call runner and the sandbox's facts, never the sandbox) and (optionally) the control API server. Used
// by `perimeter worker`, `perimeter demo` and the tests, so they all run the same composition. The driver's
// preparation (e.g. remaking a stale template snapshot) starts once the control API is up, so the panel sees it.
// With `metrics.enabled` it also serves /metrics and /healthz (service/), fed from the hub and the runtime's status.
// Invariants: one companion per state directory (host/state-lock.ts: taken before anything touches the directory,
// released on close), whose log file (worker.log, when a launcher appends our stderr to one) is rotated by size
// (host/log-rotation.ts); the worker claims no new work while the host health (host/health.ts: free space below
// minFreeMiB, an unwritable journal) blocks it. Each session served gets its own egress gateway (egress/gateways.ts),
// released when the session's last work item ends and on close().
import os from 'node:os';
import path from 'node:path';
import { promises as fs } from 'node:fs';
import type { Config } from './config';
import { statePaths } from './config';
import { EventHub } from './events';
import { Journal } from './journal/journal';
import { selectDriver, type DriverSelection } from './sandbox/select';
import { choosePersistence } from './persist/choose';
import { MemoryMountRegistry } from './persist/memory';
import { createEgressGateway, validateEgressPolicy, type EgressGateway, type EgressGatewayOptions } from './egress/proxy';
import { SessionEgressGateways } from './egress/gateways';
import { startControlServer, type ControlServer } from './control/server';
import { Worker, type SandboxFacts } from './queue/environment-worker';
import { CallRunner } from './tools/call-runner';
import { findTemplate } from './sandbox/template/manifest';
import { CompanionMetrics, type RuntimeStatus } from './service/metrics';
import { startMetricsServer, type MetricsServer } from './service/metrics-server';
import { errorMessage } from './errors';
import { acquireStateLock, type StateLock } from './host/state-lock';
import { HostHealth } from './host/health';
import { rotateStderrLog } from './host/log-rotation';
import { logger } from './log';

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
  /** How often free space and the journal's health are checked (default 5 s). */
  healthCheckMs?: number;
  /** Run without persisted files (shell state still carries over within the process). */
  persistence?: boolean;
  /** Makes a session's gateway (default: createEgressGateway; tests wrap it to observe the gateways' lifetime). */
  createEgressGateway?: (opts: EgressGatewayOptions) => EgressGateway;
  /** When no VM driver can run under `auto`: refuse (default), or use the process driver (the demo's own queue). */
  whenNoVm?: 'refuse' | 'process';
  /** The queue is the embedded dev queue (Try Locally), not a real environment; told to clients in the host facts. */
  localQueue?: boolean;
}

export interface Runtime {
  hub: EventHub;
  journal: Journal;
  selection: DriverSelection;
  worker: Worker;
  control: ControlServer | null;
  /** The sessions' egress gateways (null when egress is off). */
  egress: SessionEgressGateways | null;
  /** The metrics and health verdict (null unless `metrics.enabled`), served at `metricsServer.address`. */
  metrics: CompanionMetrics | null;
  metricsServer: MetricsServer | null;
  /** Free space and journal health: what blocks claiming work (the worker's gate). */
  health: HostHealth;
  /** Runs the worker until drained; then closes everything. Resolves with the exit code. */
  run(): Promise<number>;
  close(): Promise<void>;
}

export async function assembleRuntime(o: RuntimeOptions): Promise<Runtime> {
  const lock = await acquireStateLock(o.config.home);
  rotateStderrLog();
  try { return await assembleLocked(o, lock); } catch (err) { lock.release(); throw err; }
}

async function assembleLocked(o: RuntimeOptions, lock: StateLock): Promise<Runtime> {
  const { config } = o;
  // Sessions' work directories (skills, memory stores) left by a companion that died: none of ours exists yet.
  await fs.rm(path.join(config.home, 'work'), { recursive: true, force: true });
  if (config.egress.mode === 'allow') validateEgressPolicy(config.egress);   // a bad allow-list stops start-up
  const hub = o.hub ?? new EventHub();
  const selection = await selectDriver(config, hub, { baseUrl: o.baseUrl, whenNoVm: o.whenNoVm });
  const journal = Journal.open(statePaths(config.home).journal);
  const health = new HostHealth({ dir: config.home, minFreeBytes: config.minFreeMiB * 2 ** 20, journal, intervalMs: o.healthCheckMs });
  await health.start();
  const memoryMounts = new MemoryMountRegistry();
  // Retention asks the service (through the worker's client) whether sessions with a disk were archived.
  let workerReady: (w: Worker) => void = () => {};
  const workerMade = new Promise<Worker>((resolve) => { workerReady = resolve; });
  const persistence = o.persistence === false ? undefined : choosePersistence({
    config, driver: selection.driver, hub, memoryMounts: memoryMounts.resolve, sessionEnd: async (id) => (await workerMade).sessionEnd(id),
  });
  const egress = config.egress.mode === 'allow'
    ? new SessionEgressGateways((sessionId) => (o.createEgressGateway ?? createEgressGateway)({ policy: config.egress, hub, sessionId }))
    : null;
  const { driver, probe } = selection;
  const hostname = os.hostname();
  const template = driver.kind === 'process' ? 'none' : templateId(config);
  const calls = new CallRunner({
    driver, journal, hub, mode: config.sandbox.mode, callTimeoutMs: config.sandbox.callTimeoutMs, persistence,
    egressFor: egress ? (id) => egress.for(id) : undefined, stateDir: config.home,
    placement: () => {
      const info = driver.info();
      return { hostname, driver: info.kind, accel: info.accel === 'none' ? probe.accel : info.accel, template: template === 'none' ? null : template };
    },
  });
  const sandboxFacts = (): SandboxFacts => {
    const info = driver.info();
    return {
      driver: info.kind, accel: info.accel === 'none' ? probe.accel : info.accel, vmsRunning: info.running, vmsPooled: info.pooled,
      ...(info.note ? { sandboxNote: info.note } : {}),
    };
  };
  const worker = new Worker({
    config, environmentId: o.environmentId, environmentKey: o.environmentKey, baseUrl: o.baseUrl, hub, journal, calls, sandboxFacts,
    memoryMounts, maxIdleMs: o.maxIdleMs, drainTimeoutMs: o.drainTimeoutMs, stallCheckMs: o.stallCheckMs, localQueue: o.localQueue,
    onSessionEnd: (id) => egress?.release(id), claimGate: health,
  });
  workerReady(worker);
  let control: ControlServer | null = null;
  if (o.control ?? config.control.enabled) {
    control = await startControlServer({ home: config.home, hub, journal, persistence, persistHistory: persistence, transcripts: journal.transcripts, worker });
    log.info(`control API on 127.0.0.1:${control.endpoint.port} (details in ${statePaths(config.home).controlFile})`);
  }
  let sandboxProblem: string | null = null;
  selection.driver.prepare?.().catch((err: Error) => { sandboxProblem = errorMessage(err); log.error(`the sandbox is not ready: ${err.message}`); });
  let metrics: CompanionMetrics | null = null;
  let metricsServer: MetricsServer | null = null;
  if (config.metrics.enabled) {
    const status = (): RuntimeStatus => {
      const info = driver.info();
      return {
        workerState: worker.state(), sessionsActive: worker.activeSessions().length, journalHealthy: journal.healthy, stateDir: config.home,
        sandbox: { driver: info.kind, template, running: info.running, pooled: info.pooled, problem: sandboxProblem },
      };
    };
    metrics = new CompanionMetrics({ hub, status, minFreeDiskBytes: config.minFreeMiB * 2 ** 20 });
    metricsServer = await startMetricsServer(metrics, config.metrics.listen);
  }
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await metricsServer?.close().catch(() => {});
    metrics?.close();
    await control?.close().catch(() => {});
    egress?.closeAll();
    await selection.driver.close().catch(() => {});
    health.close();
    journal.close();
    lock.release();
  };
  return {
    hub, journal, selection, worker, control, egress, metrics, metricsServer, health, close,
    run: async () => { try { return await worker.run(); } finally { await close(); } },
  };
}

/** The VM template's id as a metrics label (its content hash, shortened), or `none`. */
function templateId(config: Config): string {
  try { return findTemplate(config.home, config.sandbox.template)?.manifest.hash.slice(0, 16) ?? 'none'; } catch { return 'none'; }
}
