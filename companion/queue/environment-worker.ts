// The worker: claims a self_hosted environment's work items and serves each session's tool calls, entirely through
// the unmodified @anthropic-ai/sdk. Our own loop runs `WorkPoller({autoStop:false})` and hands each claimed item to
// `EnvironmentWorker.handleItem()` with a tools factory returning our six tools (companion/tools/runnable.ts), so the
// SDK does the lease heartbeats (412 = lease lost: no stop), the force-stop (409 = already stopped), skills download,
// the event stream with reconcile-after-reconnect, confirmations, unknown tool names and never-empty text.
// Invariants:
// - At most `concurrency` sessions at once; the poller is not asked for (and so does not ack) more work until a
//   slot is free. Newest work item per session wins: the older handler is aborted (its teardown force-stops it)
//   before the newer one starts. Healthcheck items are force-stopped without running anything.
// - No new work is claimed while the claim gate blocks (host/health.ts: disk below minFreeMiB, journal unwritable):
//   polls are held and answered "no work" without reaching the service, the state is `paused` (the detail says why),
//   and polling resumes by itself when the gate clears. Sessions already claimed keep running.
// - The environment key lives only in this process (the SDK client). Sandboxes receive tool inputs only.
// - Results are posted by the SDK; the wire observer on the client's fetch (wire-observer.ts) reports each 2xx post.
// - drain(): stop claiming; in-flight calls finish (bounded by drainTimeoutMs) or are killed and answered with an
//   explicit error; results are given a moment to post; then every held item is released (force-stopped).
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import Anthropic from '@anthropic-ai/sdk';
import { WorkPoller, EnvironmentWorker } from '@anthropic-ai/sdk/helpers/beta/environments';
import type { BetaSelfHostedWork } from '@anthropic-ai/sdk/resources/beta/environments/work';
import type { Config } from '../config';
import type { EventHub } from '../events';
import type { WorkerControl } from '../control/types';
import type { HostFacts, PollHealth, WorkerState } from '../protocol/control';
import type { Journal } from '../journal/journal';
import type { ClaimGate } from '../host/health';
import type { SessionCallOptions, SessionCalls } from '../tools/call-runner';
import { sessionTools } from '../tools/runnable';
import { TOOL_NAMES } from '../tools/schemas';
import { memoryMountsFromRoots, type MemoryMountRegistry } from '../persist/memory';
import { logger, registerSecret } from '../log';
import { errorMessage } from '../errors';
import { VERSION } from '../version';
import { WireObserver, requestUrl } from './wire-observer';
import { SessionActivity } from './session-activity';
import { sessionTemplate } from '../protocol/template';

const log = logger('worker');
const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;
const POST_GRACE_MS = 5_000;
const SUPERSEDE_WAIT_MS = 35_000;
const FACTS_INTERVAL_MS = 10_000;
/** How long a poll is held while claims are blocked before it is answered "no work" (the service's own block_ms cap). */
const POLL_HOLD_MS = 1_000;
const DEFAULT_STALL_CHECK_MS = 15_000;
/** A finished call whose result is still unposted after this long was given up by the SDK's send loop. */
const UNPOSTED_GRACE_MS = 120_000;

/** Runs the tool calls of the sessions the worker serves (the call runner, wired to a sandbox in runtime.ts). */
export interface CallExecutor {
  openSession(sessionId: string, workId: string, opts?: SessionCallOptions): SessionCalls;
  /** The service accepted a call's result. */
  resultPosted(toolUseId: string): void;
}

/** The sandbox's part of the host facts, as it is right now. */
export type SandboxFacts = Pick<HostFacts, 'driver' | 'accel' | 'vmsRunning' | 'vmsPooled' | 'sandboxNote'>;

export interface WorkerOptions {
  config: Config;
  environmentId: string;
  environmentKey: string;
  baseUrl?: string;
  hub: EventHub;
  journal: Journal;
  calls: CallExecutor;
  sandboxFacts: () => SandboxFacts;
  /** Idle time after an `end_turn` before a session's item is released (SDK default 60 s). */
  maxIdleMs?: number;
  drainTimeoutMs?: number;
  /** SDK client retries per request (429/5xx/connection errors, honouring retry-after). */
  maxRetries?: number;
  /**
   * How often to check each session for calls of ours that the SDK has not dispatched (e.g. its history reconcile
   * failed and the stream stayed quiet); such a session's event stream is cut so the SDK reconnects and reconciles.
   */
  stallCheckMs?: number;
  /** Receives each session's memory-store mounts (host dir the SDK syncs -> guest path) for persistence. */
  memoryMounts?: MemoryMountRegistry;
  /** Called once a session's last work item on this worker ended (not when a newer item of it took over), after its
   *  sandboxes were closed: release what was kept per session (its egress gateway). */
  onSessionEnd?: (sessionId: string) => void;
  /** Called by shutdown() after draining. */
  onExit?: (code: number) => void;
  /** What may stop the worker from claiming new work (disk low, journal unwritable: host/health.ts); without it,
   *  only the journal's health. While it blocks, the worker is `paused` and polls nothing. */
  claimGate?: ClaimGate;
  /** The queue is the embedded dev queue (Try Locally): said in the host facts. */
  localQueue?: boolean;
}

interface SessionHandle {
  sessionId: string;
  workId: string;
  ctrl: AbortController;
  calls: SessionCalls | null;
  done: Promise<void>;
  leaseLost: boolean;
  /** Set when this item was offered again (its lease lapsed): this handler must not stop it any more. */
  suppressStop: boolean;
}

export class Worker implements WorkerControl {
  private current: WorkerState = 'starting';
  private detail: string | undefined;
  private readonly startedAt = Date.now();
  private readonly pollCtrl = new AbortController();
  private readonly sessions = new Map<string, SessionHandle>();
  private readonly handles = new Set<SessionHandle>();
  private slotWaiters: Array<() => void> = [];
  private readonly client: Anthropic;
  private readonly activity: SessionActivity;
  private readonly wire = new WireObserver({
    resultPosted: (toolUseId) => this.opts.calls.resultPosted(toolUseId),
    leaseLost: (workId) => this.leaseLost(workId),
    exchanged: (operation, status) => this.opts.hub.observe({ type: 'queue.request', operation, status }),
    pollAnswered: (status, error) => this.pollAnswered(status, error),
    sessionEvent: (sessionId, event) => { if (this.sessions.has(sessionId)) this.activity.observe(sessionId, event); },
    agentName: (sessionId, name) => { if (this.sessions.has(sessionId)) this.activity.agentName(sessionId, name); },
  });
  private readonly unsubscribeEgress: () => void;
  private readonly poll: PollHealth = { failures: 0, lastError: null, lastStatus: null, lastFailureAt: null, lastSuccessAt: null };
  private polled = false;
  private drainPromise: Promise<void> | null = null;
  private factsTimer: NodeJS.Timeout | null = null;
  readonly workerId: string;

  constructor(private readonly opts: WorkerOptions) {
    this.activity = new SessionActivity(opts.journal, opts.hub, OWN_TOOLS);
    this.unsubscribeEgress = opts.hub.subscribe((e) => {
      if (e.type === 'egress.decision' && e.decision.sessionId && this.sessions.has(e.decision.sessionId)) {
        this.activity.egress(e.decision.sessionId, { kind: 'egress', ts: e.decision.ts, decision: e.decision });
      }
    });
    this.workerId = opts.config.workerId ?? `${os.hostname()}-perimeter-${randomUUID()}`;
    const sdkLog = logger('sdk');
    this.client = new Anthropic({
      apiKey: null,
      authToken: opts.environmentKey,
      baseURL: opts.baseUrl ?? opts.config.baseUrl ?? 'https://api.anthropic.com',
      maxRetries: opts.maxRetries ?? 4,
      fetch: this.claimingFetch,
      logger: { debug: (...a) => sdkLog.debug(...a), info: (...a) => sdkLog.info(...a), warn: (...a) => sdkLog.warn(...a), error: (...a) => sdkLog.error(...a) },
      logLevel: opts.config.logLevel === 'debug' ? 'debug' : 'warn',
    });
  }

  // ---- WorkerControl -----------------------------------------------------------------------------------------------

  state(): WorkerState { return this.current; }

  stateDetail(): string | undefined { return this.detail; }

  hostFacts(): HostFacts {
    const sandbox = this.opts.sandboxFacts();
    return {
      hostname: os.hostname(), driver: sandbox.driver, accel: sandbox.accel,
      vmsRunning: sandbox.vmsRunning, vmsPooled: sandbox.vmsPooled, memoryAvailableMb: Math.round(os.freemem() / (1024 * 1024)),
      concurrency: this.opts.config.concurrency, version: VERSION, pid: process.pid, startedAt: this.startedAt,
      ...(sandbox.sandboxNote ? { sandboxNote: sandbox.sandboxNote } : {}),
      queue: this.opts.localQueue ? { kind: 'local' } : { kind: 'environment', environmentId: this.opts.environmentId },
      ...(this.polled ? { poll: { ...this.poll } } : {}),
    };
  }

  /** When the session ended for good, as its record at the service says: archived (`archived_at`) or terminated
   *  (its last update); null while it lives. Fails when the service cannot be asked (retention tries again later). */
  async sessionEnd(sessionId: string): Promise<number | null> {
    const s = await this.client.beta.sessions.retrieve(sessionId, {}, { maxRetries: 1 });
    const at = (iso: string | null | undefined) => Date.parse(iso ?? '') || Date.now();
    if (s.archived_at) return at(s.archived_at);
    return s.status === 'terminated' ? at(s.updated_at) : null;
  }

  drain(): Promise<void> {
    this.drainPromise ??= this.doDrain();
    return this.drainPromise;
  }

  async shutdown(): Promise<void> {
    await this.drain();
    this.opts.onExit?.(0);
  }

  /** Active sessions (for tests and the CLI). */
  activeSessions(): Array<{ sessionId: string; workId: string }> { return [...this.handles].map((h) => ({ sessionId: h.sessionId, workId: h.workId })); }

  // ---- the loop ------------------------------------------------------------------------------------------------------

  /** Keeps the poll health in the host facts; clients hear of each failure and of the recovery at once. */
  private pollAnswered(status: number | null, error: string | null): void {
    const p = this.poll;
    const firstAnswer = !this.polled;
    this.polled = true;
    if (error === null) {
      const recovered = p.failures > 0;
      Object.assign(p, { failures: 0, lastError: null, lastStatus: null, lastSuccessAt: Date.now() });
      if (recovered) log.info('polling works again');
      if (!recovered && !firstAnswer) return;
    } else {
      Object.assign(p, { failures: p.failures + 1, lastError: error, lastStatus: status, lastFailureAt: Date.now() });
    }
    this.opts.hub.publish({ type: 'host.facts', facts: this.hostFacts() });
  }

  private setState(state: WorkerState, detail?: string): void {
    if (this.current === state && this.detail === detail) return;
    this.current = state;
    this.detail = detail;
    this.opts.hub.publish({ type: 'worker.state', state, ...(detail ? { detail } : {}) });
    log.info(`state: ${state}${detail ? ` (${detail})` : ''}`);
  }

  /** Runs the poll loop until drained or a fatal error. Resolves with the process exit code. */
  async run(): Promise<number> {
    this.opts.hub.publish({ type: 'host.facts', facts: this.hostFacts() });
    this.factsTimer = setInterval(() => this.opts.hub.publish({ type: 'host.facts', facts: this.hostFacts() }), FACTS_INTERVAL_MS);
    this.factsTimer.unref();
    this.setState('polling');
    const poller = new WorkPoller({
      client: this.client, environmentId: this.opts.environmentId, environmentKey: this.opts.environmentKey,
      workerId: this.workerId, signal: this.pollCtrl.signal, autoStop: false,
    });
    let code = 0;
    const ungate = this.opts.claimGate?.onChange(() => this.claimGateChanged());
    try {
      await this.waitForSlot();
      for await (const work of poller) {
        this.dispatch(work);
        await this.waitForSlot();
      }
    } catch (err) {
      if (!this.pollCtrl.signal.aborted) {
        code = 1;
        log.error(`polling stopped: ${errorMessage(err)}`);
        this.setState('error', `polling stopped: ${errorMessage(err)}`);
      }
    }
    ungate?.();
    if (code !== 0) await this.releaseAll('the worker stopped polling after a fatal error');
    else await this.drain();
    if (this.factsTimer) clearInterval(this.factsTimer);
    this.unsubscribeEgress();
    if (code === 0) this.setState('stopped');
    return code;
  }

  /** Why no new work may be claimed right now, or null. */
  private claimBlocked(): string | null {
    if (this.opts.claimGate) return this.opts.claimGate.blocked();
    return this.opts.journal.healthy ? null : 'the journal cannot be written; not claiming new work';
  }

  private slotsFree(): boolean {
    return this.handles.size < this.opts.config.concurrency && this.claimBlocked() === null;
  }

  private claimGateChanged(): void {
    const blocked = this.claimBlocked();
    if (blocked && this.current === 'polling') this.setState('paused', blocked);
    else if (!blocked && this.current === 'paused') this.setState('polling');
    this.wakeSlotWaiters();
  }

  /** The SDK client's fetch. A poll claims work: while claims are blocked it is held (up to POLL_HOLD_MS, until they
   *  are not) and then answered "no work" (204) without reaching the service, so the poller waits and asks again. */
  private readonly claimingFetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    if (this.claimBlocked() !== null && new URL(requestUrl(input)).pathname.endsWith('/work/poll')) {
      await this.claimUnblocked(POLL_HOLD_MS, init?.signal ?? undefined);
      if (this.claimBlocked() !== null) {
        this.claimGateChanged();
        return new Response(null, { status: 204 });
      }
    }
    return this.wire.fetch(input, init);
  };

  /** Resolves when claims are no longer blocked, after `ms`, or on abort, whichever comes first. */
  private claimUnblocked(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); off?.(); signal?.removeEventListener('abort', done); resolve(); };
      const timer = setTimeout(done, ms);
      const off = this.opts.claimGate?.onChange(() => { if (this.claimBlocked() === null) done(); });
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  private waitForSlot(): Promise<void> {
    if (this.pollCtrl.signal.aborted) return Promise.resolve();
    if (this.slotsFree()) {
      if (this.current === 'paused') this.setState('polling');
      return Promise.resolve();
    }
    const blocked = this.claimBlocked();
    if (blocked && (this.current === 'polling' || this.current === 'paused')) this.setState('paused', blocked);
    return new Promise((resolve) => {
      const wake = () => {
        if (this.current === 'paused' && !this.pollCtrl.signal.aborted) this.setState('polling');
        resolve();
      };
      this.slotWaiters.push(wake);
      this.pollCtrl.signal.addEventListener('abort', wake, { once: true });
    });
  }

  private wakeSlotWaiters(): void {
    if (!this.slotsFree()) return;
    const waiters = this.slotWaiters;
    this.slotWaiters = [];
    for (const w of waiters) w();
  }

  private dispatch(work: BetaSelfHostedWork): void {
    registerSecret(work.secret ?? null);
    if (work.data.type !== 'session') {
      log.info(`work item ${work.id} is a ${work.data.type} item: nothing to run; stopping it`);
      void this.client.beta.environments.work.stop(work.id, { environment_id: work.environment_id, force: true }).catch((err: unknown) => {
        if ((err as { status?: number }).status !== 409) log.warn(`stopping ${work.id} failed: ${errorMessage(err)}`);
      });
      return;
    }
    const sessionId = work.data.id;
    const previous = this.sessions.get(sessionId);
    const handle: SessionHandle = { sessionId, workId: work.id, ctrl: new AbortController(), calls: null, done: Promise.resolve(), leaseLost: false, suppressStop: false };
    if (previous && previous.workId === work.id) previous.suppressStop = true;
    this.sessions.set(sessionId, handle);
    this.handles.add(handle);
    handle.done = this.serve(handle, work, previous).finally(() => {
      this.handles.delete(handle);
      if (this.sessions.get(sessionId) === handle) this.sessions.delete(sessionId);
      this.wakeSlotWaiters();
    });
  }

  private async serve(h: SessionHandle, work: BetaSelfHostedWork, previous: SessionHandle | undefined): Promise<void> {
    const { journal, hub, config } = this.opts;
    if (previous) {
      log.info(previous.workId === h.workId
        ? `session ${h.sessionId}: work item ${h.workId} was offered again (its lease lapsed); restarting it`
        : `session ${h.sessionId}: newer work item ${h.workId} supersedes ${previous.workId}; releasing the older one`);
      previous.calls?.detachFromRunnerAbort();
      previous.ctrl.abort(new Error(`superseded by work item ${h.workId}`));
      await Promise.race([previous.done, new Promise((r) => setTimeout(r, SUPERSEDE_WAIT_MS).unref())]);
    }
    let s;
    try {
      s = journal.updateSession(h.sessionId, { workId: h.workId, holder: this.workerId, state: 'claimed', claimedAt: Date.now(), endedAt: null, lastError: null });
    } catch (err) {
      log.error(`cannot journal session ${h.sessionId}: ${errorMessage(err)}`);
      return;
    }
    hub.publish({ type: 'session.claimed', session: journal.sessionSummary(s) });
    const workdir = path.join(config.home, 'work', `${h.sessionId}-${randomUUID().slice(0, 8)}`);
    let lastError: string | null = null;
    let watchdog: NodeJS.Timeout | null = null;
    try {
      await fs.mkdir(workdir, { recursive: true, mode: 0o700 });
      h.calls = this.opts.calls.openSession(h.sessionId, h.workId, { skillsDir: path.join(workdir, 'skills') });
      if (this.drainPromise) h.calls.refuseNew('the companion is shutting down');
      const calls = h.calls;
      const mounts = this.opts.memoryMounts;
      // A per-handler client: its fetch can drop this handler's stop once the item belongs to a newer claim.
      const client = this.client.withOptions({ fetch: (input: string | URL | Request, init?: RequestInit) => this.handlerFetch(h, input, init) });
      const ew = new EnvironmentWorker({
        client, environmentKey: this.opts.environmentKey, workdir, workerId: this.workerId,
        // Called after the SDK downloaded the session's skills and memory stores: the stores' host folders (allowedRoots)
        // become guest mounts that persistence copies into every sandbox and back out after each call.
        tools: (ctx) => {
          mounts?.set(h.sessionId, memoryMountsFromRoots(ctx.allowedRoots ?? [], ctx.readOnlyRoots ?? [], workdir));
          calls.useTemplate(sessionTemplate(ctx.session?.metadata));
          return sessionTools(calls);
        },
        ...(this.opts.maxIdleMs !== undefined ? { maxIdleMs: this.opts.maxIdleMs } : {}),
      });
      journal.updateSession(h.sessionId, { state: 'running' });
      watchdog = this.startStallWatchdog(h);
      await ew.handleItem({ workId: h.workId, environmentId: work.environment_id, sessionId: h.sessionId, workSecret: work.secret ?? '', signal: h.ctrl.signal });
    } catch (err) {
      lastError = errorMessage(err);
      log.error(`session ${h.sessionId} (work ${h.workId}) failed: ${lastError}`);
    } finally {
      if (watchdog) clearInterval(watchdog);
      await h.calls?.close();
      if (this.sessions.get(h.sessionId) === h || !this.sessions.has(h.sessionId)) {
        this.opts.memoryMounts?.delete(h.sessionId);
        try { this.opts.onSessionEnd?.(h.sessionId); } catch (err) { log.warn(`releasing session ${h.sessionId}'s resources failed: ${errorMessage(err)}`); }
      }
      await fs.rm(workdir, { recursive: true, force: true }).catch(() => {});
      if (!this.sessions.has(h.sessionId) || this.sessions.get(h.sessionId) === h) {
        try { this.activity.ended(h.sessionId); } catch (err) { log.warn(`closing the waiting calls of ${h.sessionId} failed: ${errorMessage(err)}`); }
      }
      try {
        const ended = journal.updateSession(h.sessionId, { state: h.leaseLost ? 'lost' : 'ended', endedAt: Date.now(), lastError: h.leaseLost ? 'lease lost (another worker holds the item)' : lastError });
        hub.publish({ type: 'session.ended', session: journal.sessionSummary(ended) });
      } catch (err) { log.error(`cannot journal the end of session ${h.sessionId}: ${errorMessage(err)}`); }
    }
  }

  // ---- stall watchdog ------------------------------------------------------------------------------------------------

  private startStallWatchdog(h: SessionHandle): NodeJS.Timeout {
    const every = this.opts.stallCheckMs ?? DEFAULT_STALL_CHECK_MS;
    let checking = false;
    const t = setInterval(() => {
      if (checking || h.ctrl.signal.aborted) return;
      checking = true;
      void this.stalledCalls(h.sessionId, every).then((ids) => {
        if (ids.length === 0 || h.ctrl.signal.aborted) return;
        log.warn(`session ${h.sessionId}: ${ids.length} call(s) of ours not dispatched yet (${ids.join(', ')}); making the SDK reconnect and reconcile`);
        // Cut only streams that had a full period to reconcile; a fresh one is still reconciling (or backing off).
        this.wire.cutStreams(h.sessionId, every, new Error('stall watchdog: reconnecting to reconcile'));
      }).catch((err) => log.debug(`stall check for ${h.sessionId} failed: ${errorMessage(err)}`)).finally(() => { checking = false; });
    }, every);
    t.unref();
    return t;
  }

  /** Our tool calls that the server still waits for, that we have neither run nor are running, older than `minAgeMs`. */
  private async stalledCalls(sessionId: string, minAgeMs: number): Promise<string[]> {
    const uses = new Map<string, { at: number; permission?: string }>();
    const answered = new Set<string>();
    const verdicts = new Map<string, string>();
    for await (const ev of this.client.beta.sessions.events.list(sessionId, { limit: 1000 })) {
      if (ev.type === 'agent.tool_use' && OWN_TOOLS.has(ev.name)) uses.set(ev.id, { at: Date.parse(ev.processed_at ?? '') || Date.now(), permission: ev.evaluated_permission ?? undefined });
      else if (ev.type === 'user.tool_result') answered.add(ev.tool_use_id);
      else if (ev.type === 'user.tool_confirmation') verdicts.set(ev.tool_use_id, ev.result);
    }
    const now = Date.now();
    const out: string[] = [];
    for (const [id, u] of uses) {
      if (answered.has(id) || now - u.at < minAgeMs) continue;
      if (u.permission === 'deny' || (u.permission && u.permission !== 'allow' && verdicts.get(id) !== 'allow')) continue;
      const c = this.opts.journal.getCall(id);
      // The SDK runs calls and posts results inline in its stream loop: while one of ours is running, or a result is
      // still being posted (the SDK retries a post for up to the lease TTL), the loop is busy, not stalled.
      if (c && c.state === 'running') return [];
      if (c && c.state !== 'posted' && c.finishedAt !== null && now - c.finishedAt < Math.max(minAgeMs, UNPOSTED_GRACE_MS)) return [];
      if (c?.state === 'posted') continue;
      out.push(id);
    }
    return out;
  }

  // ---- drain -----------------------------------------------------------------------------------------------------

  private async doDrain(): Promise<void> {
    if (this.current !== 'error') this.setState('draining');
    this.pollCtrl.abort();
    this.wakeSlotWaiters();
    for (const h of this.handles) h.calls?.refuseNew('the companion is shutting down');
    const timeout = this.opts.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS;
    const inFlight = () => [...this.handles].reduce((n, h) => n + (h.calls?.inFlightCount ?? 0), 0);
    const deadline = Date.now() + timeout;
    while (inFlight() > 0 && Date.now() < deadline) await sleep(100);
    if (inFlight() > 0) {
      log.warn(`drain deadline (${timeout} ms) reached with ${inFlight()} call(s) running; killing them`);
      for (const h of this.handles) h.calls?.abortInFlight(`the companion is shutting down; the call was stopped at the ${Math.round(timeout / 1000)} s drain deadline`);
      const killDeadline = Date.now() + POST_GRACE_MS;
      while (inFlight() > 0 && Date.now() < killDeadline) await sleep(50);
    }
    await this.waitForPosts(POST_GRACE_MS);
    await this.releaseAll('the companion is shutting down');
    if (this.current !== 'error') this.setState('stopped');
  }

  /** Waits (bounded) until every finished call of the held sessions has been posted. */
  private async waitForPosts(maxMs: number): Promise<void> {
    const held = new Set([...this.handles].map((h) => h.sessionId));
    const pending = () => this.opts.journal.listSessions({ limit: 1000 }).items
      .filter((s) => held.has(s.sessionId))
      .some((s) => this.opts.journal.listCalls(s.sessionId, { limit: 1000 }).items.some((c) => c.state === 'done' || c.state === 'failed' || c.state === 'interrupted'));
    const deadline = Date.now() + maxMs;
    while (pending() && Date.now() < deadline) await sleep(100);
  }

  private async releaseAll(reason: string): Promise<void> {
    this.pollCtrl.abort();
    for (const h of this.handles) h.ctrl.abort(new Error(reason));
    await Promise.all([...this.handles].map((h) => h.done));
  }

  private handlerFetch(h: SessionHandle, input: string | URL | Request, init?: RequestInit): Promise<Response> {
    const url = requestUrl(input);
    if (h.suppressStop && init?.method === 'POST' && new URL(url).pathname.endsWith(`/work/${encodeURIComponent(h.workId)}/stop`)) {
      log.info(`not stopping ${h.workId} from its earlier claim: the item was claimed again`);
      return Promise.resolve(new Response(null, { status: 204 }));
    }
    return this.wire.fetch(input, init);
  }

  private leaseLost(workId: string): void {
    const h = [...this.handles].reverse().find((x) => x.workId === workId);
    if (!h || h.leaseLost) return;
    h.leaseLost = true;
    log.warn(`session ${h.sessionId}: lease of ${h.workId} lost (412); stopping its calls, not stopping the item`);
    h.calls?.refuseNew('the lease of this session was lost');
    h.calls?.abortInFlight('the lease of this session was lost to another worker');
  }
}

const OWN_TOOLS: ReadonlySet<string> = new Set(TOOL_NAMES);

function sleep(ms: number): Promise<void> { return new Promise((r) => setTimeout(r, ms)); }
