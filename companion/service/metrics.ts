// The companion's Prometheus metrics and its health verdict. Counters and histograms are fed only from the EventHub
// (control events and observations: service code never calls into this module); gauges are read at scrape time from
// the runtime's status (VMs, sessions, journal, worker state) and the state directory's filesystem.
// Invariants:
// - Every metric is named `perimeter_*` (process metrics: prom-client's defaults, `nodejs_*`/`process_*`); label
//   values come from fixed sets (tool names, outcomes, phases, operations, HTTP statuses, verdicts), never from
//   session ids, paths or hosts, so the series count stays bounded.
// - `health()` is false exactly when the worker cannot claim work: the journal cannot be written, the sandbox
//   cannot give VMs, the state directory's filesystem is below its free-space floor, or the worker is not polling.
import { statfsSync } from 'node:fs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EventHub, Observation, CallPhases } from '../events';
import { WorkerState, type ControlEvent, type ToolCallSummary } from '../protocol/control';
import { TOOL_NAMES } from '../tools/schemas';
import { VERSION } from '../version';

/** What the runtime knows right now, read at every scrape and health check. */
export interface RuntimeStatus {
  workerState: WorkerState;
  sessionsActive: number;
  journalHealthy: boolean;
  sandbox: {
    driver: string;
    /** The VM template's id (its content hash), or `none` for the process driver. */
    template: string;
    running: number;
    pooled: number;
    /** Why the sandbox cannot give VMs (e.g. remaking its template snapshot failed); null when it can. */
    problem: string | null;
  };
  stateDir: string;
}

export interface Health { ok: boolean; problems: string[] }

/** Seconds buckets for a tool call and its phases: 5 ms (a pooled VM, KVM) to 2 min (the default call timeout). */
const CALL_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const PHASE_LABELS: Record<keyof CallPhases, string> = { restore: 'restore', copyIn: 'copy_in', exec: 'exec', copyOut: 'copy_out' };

export interface MetricsOptions {
  hub: EventHub;
  status: () => RuntimeStatus;
  /** Below this many free bytes on the state directory's filesystem the companion reports itself unhealthy. */
  minFreeDiskBytes: number;
}

export class CompanionMetrics {
  readonly registry = new Registry();
  private readonly unsubscribe: Array<() => void>;

  private readonly calls = new Counter({ name: 'perimeter_tool_calls_total', help: 'Tool calls finished, by tool and outcome (ok, error, interrupted, denied).', labelNames: ['tool', 'outcome'], registers: [this.registry] });
  private readonly posted = new Counter({ name: 'perimeter_tool_call_results_posted_total', help: 'Tool call results the service accepted, by tool.', labelNames: ['tool'], registers: [this.registry] });
  private readonly duration = new Histogram({ name: 'perimeter_tool_call_duration_seconds', help: 'Tool call time from dispatch to a durable result, by tool.', labelNames: ['tool'], buckets: CALL_BUCKETS, registers: [this.registry] });
  private readonly phases = new Histogram({ name: 'perimeter_tool_call_phase_seconds', help: 'Time of each phase of a tool call run in a sandbox: restore (VM from the pool or the snapshot), copy_in (persisted files, shell state, skills), exec (the tool), copy_out (changes committed).', labelNames: ['tool', 'phase'], buckets: CALL_BUCKETS, registers: [this.registry] });
  private readonly claimed = new Counter({ name: 'perimeter_sessions_claimed_total', help: 'Work items of sessions this worker claimed.', registers: [this.registry] });
  private readonly polls = new Counter({ name: 'perimeter_queue_polls_total', help: 'Work queue polls, by HTTP status (200 work, 204 none; 0: no response).', labelNames: ['status'], registers: [this.registry] });
  private readonly queueErrors = new Counter({ name: 'perimeter_queue_errors_total', help: 'Requests to the work queue and sessions API that failed, by operation and HTTP status (0: no response).', labelNames: ['operation', 'status'], registers: [this.registry] });
  private readonly egress = new Counter({ name: 'perimeter_egress_decisions_total', help: 'Egress gateway decisions, by verdict (allowed, denied) and protocol.', labelNames: ['verdict', 'kind'], registers: [this.registry] });

  constructor(private readonly opts: MetricsOptions) {
    collectDefaultMetrics({ register: this.registry });
    const reg = [this.registry];
    const status = () => this.opts.status();
    new Gauge({ name: 'perimeter_build_info', help: 'The companion build: version and Node.js version (always 1).', labelNames: ['version', 'node_version'], registers: reg })
      .set({ version: VERSION, node_version: process.version }, 1);
    new Gauge({
      name: 'perimeter_vms', help: 'MicroVMs of this companion, by template and state (running: serving a call; pooled: restored ahead of need).', labelNames: ['template', 'state'], registers: reg,
      collect() { const s = status().sandbox; this.reset(); this.set({ template: s.template, state: 'running' }, s.running); this.set({ template: s.template, state: 'pooled' }, s.pooled); },
    });
    new Gauge({ name: 'perimeter_sessions_active', help: 'Sessions this worker serves right now.', registers: reg, collect() { this.set(status().sessionsActive); } });
    new Gauge({ name: 'perimeter_journal_healthy', help: '1 while the call journal can be written, 0 after a write failed (no work is claimed then).', registers: reg, collect() { this.set(status().journalHealthy ? 1 : 0); } });
    new Gauge({
      name: 'perimeter_worker_state', help: 'The worker state (1 for the current one).', labelNames: ['state'], registers: reg,
      collect() { const now = status().workerState; this.reset(); for (const st of WorkerState.options) this.set({ state: st }, st === now ? 1 : 0); },
    });
    const self = this;
    new Gauge({ name: 'perimeter_state_disk_free_bytes', help: 'Free bytes (for this user) on the filesystem of the state directory.', registers: reg, collect() { this.set(self.freeDiskBytes() ?? NaN); } });
    new Gauge({ name: 'perimeter_healthy', help: '1 when the worker can claim work (the /healthz verdict).', registers: reg, collect() { this.set(self.health().ok ? 1 : 0); } });
    this.unsubscribe = [
      opts.hub.subscribe((e) => this.onEvent(e)),
      opts.hub.subscribeObservations((o) => this.onObservation(o)),
    ];
  }

  health(): Health {
    const s = this.opts.status();
    const problems: string[] = [];
    if (!s.journalHealthy) problems.push('the journal cannot be written');
    if (s.sandbox.problem) problems.push(`the sandbox cannot give VMs: ${s.sandbox.problem}`);
    const free = this.freeDiskBytes();
    if (free === null) problems.push(`the state directory ${s.stateDir} cannot be read`);
    else if (free < this.opts.minFreeDiskBytes) problems.push(`low disk: ${Math.floor(free / 2 ** 20)} MiB free for ${s.stateDir}, below ${Math.floor(this.opts.minFreeDiskBytes / 2 ** 20)} MiB`);
    if (s.workerState !== 'polling') problems.push(`the worker is ${s.workerState}, not polling`);
    return { ok: problems.length === 0, problems };
  }

  close(): void { for (const u of this.unsubscribe) u(); }

  private freeDiskBytes(): number | null {
    try {
      const st = statfsSync(this.opts.status().stateDir);
      return st.bavail * st.bsize;
    } catch { return null; }
  }

  private onEvent(e: ControlEvent): void {
    switch (e.type) {
      case 'call.finished': this.callFinished(e.call); break;
      case 'session.claimed': this.claimed.inc(); break;
      case 'egress.decision': this.egress.inc({ verdict: e.decision.allowed ? 'allowed' : 'denied', kind: e.decision.kind }); break;
      default: break;
    }
  }

  /** `call.finished` comes once with the result and once more when it was posted. */
  private callFinished(c: ToolCallSummary): void {
    const tool = toolLabel(c.name);
    if (c.state === 'posted') { this.posted.inc({ tool }); return; }
    const outcome = c.state === 'interrupted' ? 'interrupted' : c.state === 'denied' ? 'denied' : c.isError ? 'error' : 'ok';
    this.calls.inc({ tool, outcome });
    if (c.durationMs !== null) this.duration.observe({ tool }, c.durationMs / 1000);
  }

  private onObservation(o: Observation): void {
    if (o.type === 'call.phases') {
      const tool = toolLabel(o.tool);
      for (const [phase, ms] of Object.entries(o.phases) as Array<[keyof CallPhases, number]>) this.phases.observe({ tool, phase: PHASE_LABELS[phase] }, ms / 1000);
    } else if (o.type === 'queue.request') {
      const status = String(o.status);
      if (o.operation === 'poll') this.polls.inc({ status });
      if (o.status === 0 || o.status >= 400) this.queueErrors.inc({ operation: o.operation, status });
    }
  }
}

const TOOLS: ReadonlySet<string> = new Set(TOOL_NAMES);
/** A tool name as a label: one of the six, else `other` (names come from the model: they must not grow the series). */
function toolLabel(name: string): string { return TOOLS.has(name) ? name : 'other'; }
