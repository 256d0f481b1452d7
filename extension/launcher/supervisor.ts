// Keeps one host's companion running and connected while the user wants it, and feeds the view model. Plain Node,
// no `vscode`. Invariants:
// - `desired` is what the user asked for (Start / Stop). Only while it is `running` does the supervisor reconnect or
//   restart; Stop always ends in `stopped`, even when the worker is unreachable.
// - On a lost connection it first looks for the worker again (a cut SSH tunnel or a restarted window finds the same
//   worker); only when the host answers and no worker runs there does it restart one. A host it cannot reach (SSH
//   down) is a `link` problem: the worker there may be healthy, so it is never restarted for it; Reconnect re-opens the
//   tunnel and attaches. Retries follow a bounded backoff (BACKOFF_MS); after the last one the host is `failed` and
//   the problem stays visible. A successful connect resets the count.
// - A worker that stopped because the API refused its environment ID or key (its last poll answered 401/403/404) is
//   not restarted: the same key would be refused again; the host is `failed` with a `credentials` problem.
// - History comes from the journal (listSessions / listCalls / getPersist) after every (re)connect, page by page, so
//   what the views show survives restarts; live events are applied on top.
import { ControlClient, ControlRequestError } from './controlClient';
import { HostUnreachableError, type WorkerHost, type WorkerSettings, type ConnectTarget } from './workerHost';
import type { PerimeterModel } from '../views/model';
import type { SessionSummary, ToolCallSummary } from '../../companion/protocol/control';
import { Emitter } from '../common/emitter';
import { Disposable } from '../common/lifecycle';

export const BACKOFF_MS = [1_000, 2_000, 4_000, 8_000, 15_000, 30_000];
const HISTORY_SESSIONS = 200;
const HISTORY_CALLS_PER_SESSION = 1_000;

/** A start asked for another mode than the running worker serves. `running` null: a worker started elsewhere. */
export class WorkerModeConflict extends Error {
  constructor(readonly running: WorkerSettings['mode'] | null, hostLabel: string) {
    super(`the worker on ${hostLabel} already runs ${running === 'localQueue' ? 'the local dev queue (Try Locally)' : running === 'environment' ? 'for the environment' : '(started elsewhere)'}; stop it first`);
    this.name = 'WorkerModeConflict';
  }
}

const REFUSED_STATUSES = new Set([401, 403, 404]);

export interface SupervisorOptions {
  backoffMs?: number[];
  heartbeatMs?: number;
  heartbeatTimeoutMs?: number;
  /** The environment key, read from SecretStorage when a start needs it. */
  getKey: () => Promise<string | undefined>;
}

export class HostSupervisor extends Disposable {
  private client: ControlClient | null = null;
  private desired: 'running' | 'stopped' = 'stopped';
  private settings: WorkerSettings | null = null;
  private attempts = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private recovering = false;
  /** What the last failed recovery attempt ran into: the link to the host, or the worker. */
  private lastFailure: 'link' | 'worker' = 'worker';
  /** Why the last reconnect() failed (e.g. a HostKeyError the caller can resolve), null after a success. */
  lastError: Error | null = null;
  /** Bumped by every start, stop and reconnect the user asks for: a recovery attempt begun before it is dropped. */
  private epoch = 0;
  private readonly logs = this._register(new Emitter<string>());
  readonly onLog = this.logs.event;

  constructor(readonly host: WorkerHost, private readonly model: PerimeterModel, private readonly opts: SupervisorOptions) {
    super();
    model.ensureHost(host.hostId, host.label);
    this._register(host.onLog((l) => this.logs.fire(l)));
    this._register(host.onLinkDown((detail) => this.lost(detail, true)));
    this._register(host);
  }

  get hostId(): string { return this.host.hostId; }
  get isRunning(): boolean { return this.desired === 'running'; }
  get connection(): ControlClient | null { return this.client?.connected ? this.client : null; }

  /** Connects to a worker that already runs on the host (e.g. started by an earlier window); false when none does. */
  async attach(): Promise<boolean> {
    let target: ConnectTarget | null;
    try { target = await this.host.findWorker(); } catch { return false; }
    if (!target) return false;
    this.desired = 'running';
    await this.connect(target);
    return true;
  }

  /** The mode of the worker this supervisor is connected to: as started from here, else as the worker says. */
  get runningMode(): WorkerSettings['mode'] | null {
    if (!this.client?.connected) return null;
    const queue = this.model.host(this.hostId)?.facts?.queue;
    return this.settings?.mode ?? (queue ? (queue.kind === 'local' ? 'localQueue' : 'environment') : null);
  }

  /**
   * Starts a worker (or connects to the one that runs). Resolves `alreadyRunning` when a worker of the same mode runs;
   * rejects with WorkerModeConflict when the running one serves another mode (or its mode is not known).
   */
  async start(settings: WorkerSettings): Promise<'started' | 'alreadyRunning'> {
    if (this.client?.connected) {
      const running = this.runningMode;
      if (running !== settings.mode) throw new WorkerModeConflict(running, this.host.label);
      return 'alreadyRunning';
    }
    this.settings = settings;
    this.desired = 'running';
    this.epoch++;
    this.attempts = 0;
    this.clearRetry();
    this.model.setConnection(this.hostId, 'starting', null);
    try {
      await this.bringUp();
    } catch (err) {
      this.desired = 'stopped';
      this.model.setConnection(this.hostId, 'stopped', (err as Error).message, err instanceof HostUnreachableError ? 'link' : 'start');
      throw err;
    }
    return 'started';
  }

  /**
   * Re-opens the way to the host and attaches to the worker that runs there, without starting or stopping anything.
   * Resolves false (and says why in the model) when the host cannot be reached or no worker runs there.
   */
  async reconnect(): Promise<boolean> {
    this.lastError = null;
    this.epoch++;
    this.clearRetry();
    this.attempts = 0;
    this.model.setConnection(this.hostId, 'starting', null);
    let target: ConnectTarget | null;
    try {
      target = await this.host.findWorker();
      if (target) {
        this.desired = 'running';
        await this.connect(target);
        return true;
      }
    } catch (err) {
      this.desired = 'stopped';
      this.lastError = err as Error;
      this.model.setConnection(this.hostId, 'failed', (err as Error).message, err instanceof HostUnreachableError ? 'link' : 'worker');
      return false;
    }
    this.desired = 'stopped';
    this.model.setConnection(this.hostId, 'stopped', `no worker runs on ${this.host.label} any more; Start Worker starts one`, 'worker');
    return false;
  }

  /** Asks the worker to drain and exit, waits for it, and falls back to force only when it does not stop. */
  async stop(): Promise<void> {
    this.desired = 'stopped';
    this.epoch++;
    this.clearRetry();
    let client = this.client?.connected ? this.client : null;
    if (!client) {
      const target = await this.host.findWorker().catch(() => null);
      if (target) { await this.connect(target).catch(() => undefined); client = this.client?.connected ? this.client : null; }
    }
    let problem: string | null = null;
    if (client) {
      this.logs.fire(`asking the worker on ${this.host.label} to shut down`);
      await client.request('shutdown').catch((err: Error) => this.logs.fire(`shutdown request: ${err.message}`));
      try { await this.host.waitStopped(45_000); } catch {
        this.logs.fire(`the worker on ${this.host.label} did not stop in time; stopping it by force`);
        await this.host.forceStop().catch((err: Error) => { problem = err.message; });
      }
    } else {
      await this.host.forceStop().catch(() => undefined);
    }
    this.client?.close();
    this.client = null;
    this.model.setConnection(this.hostId, 'stopped', problem);
    if (problem) throw new Error(problem);
  }

  /** How the worker was last started from here (Restart Worker keeps it); null for an attached worker. */
  get lastMode(): WorkerSettings['mode'] | null { return this.settings?.mode ?? null; }

  async restart(settings: WorkerSettings): Promise<void> {
    await this.stop();
    await this.start(settings);
  }

  private async bringUp(): Promise<void> {
    let target = await this.host.findWorker();
    if (!target) {
      if (!this.settings) throw new Error('no worker is running and there are no settings to start one');
      const key = this.settings.mode === 'environment' ? await this.opts.getKey() : undefined;
      await this.host.startWorker(this.settings, key);
      target = await this.host.findWorker();
      if (!target) throw new Error('the worker started but its control API cannot be found');
    }
    await this.connect(target);
  }

  private async connect(target: ConnectTarget): Promise<void> {
    this.client?.close();
    const client = new ControlClient({ port: target.port, token: target.token, heartbeatMs: this.opts.heartbeatMs, heartbeatTimeoutMs: this.opts.heartbeatTimeoutMs });
    this.client = client;
    client.onEvent((e) => {
      this.model.applyEvent(this.hostId, e);
      if (e.type === 'log') this.logs.fire(`${e.level.toUpperCase()} [${e.component}] ${e.message}`);
    });
    client.onProtocolError((m) => this.logs.fire(m));
    client.onClose(({ reason, detail }) => {
      if (this.client !== client) return;
      this.lost(reason === 'heartbeat' ? 'the worker stopped answering heartbeats' : `control connection closed (${detail})`);
    });
    const hello = await client.connect();
    this.attempts = 0;
    this.model.applyHello(this.hostId, hello);
    this.model.setConnection(this.hostId, 'connected', null);
    this.logs.fire(`connected to the worker on ${this.host.label} (pid ${target.pid}, ${target.version})`);
    await this.loadHistory(client).catch((err: Error) => this.logs.fire(`could not read history: ${err.message}`));
  }

  /**
   * Streams the journal's history into the model one page at a time (the server bounds each page's size), so the
   * views fill as it arrives; a page is requested only after the previous one was applied. Stops when the client is
   * replaced (a reconnect reads it again).
   */
  private async loadHistory(client: ControlClient): Promise<void> {
    const current = () => this.client === client;
    const sessions: SessionSummary[] = [];
    let cursor: string | null = null;
    do {
      const page: { items: SessionSummary[]; nextCursor: string | null } = await client.request('listSessions', { limit: 100, cursor });
      if (!current()) return;
      this.model.loadSessions(this.hostId, page.items);
      sessions.push(...page.items);
      cursor = page.nextCursor;
    } while (cursor && sessions.length < HISTORY_SESSIONS);
    for (const s of sessions) {
      let loaded = 0;
      let callCursor: string | null = null;
      do {
        const page: { items: ToolCallSummary[]; nextCursor: string | null } = await client.request('listCalls', { sessionId: s.sessionId, limit: 100, cursor: callCursor });
        if (!current()) return;
        this.model.loadCalls(this.hostId, s.sessionId, page.items);
        loaded += page.items.length;
        callCursor = page.nextCursor;
      } while (callCursor && loaded < HISTORY_CALLS_PER_SESSION);
      if (s.state !== 'ended' && s.state !== 'lost') await this.refreshPersist(s.sessionId, client);
    }
  }

  async refreshPersist(sessionId: string, client = this.connection): Promise<void> {
    if (!client) return;
    try {
      this.model.loadPersist(this.hostId, await client.request('getPersist', { sessionId }));
    } catch (err) {
      if (!(err instanceof ControlRequestError && (err.code === 'unavailable' || err.code === 'not_found'))) throw err;
    }
  }

  /** The link to the worker is gone (socket closed, heartbeat lost, process or tunnel exited). */
  private lost(detail: string, fromHost = false): void {
    this.client = null;
    if (this.desired !== 'running') return;
    if (this.recovering || this.retryTimer) return;
    const h = this.model.host(this.hostId);
    const poll = h?.facts?.poll;
    if (h?.workerState === 'error' && poll && poll.lastStatus !== null && REFUSED_STATUSES.has(poll.lastStatus)) {
      this.desired = 'stopped';
      const problem = `the API refused the environment's ${poll.lastStatus === 404 ? 'ID' : 'key'} (${poll.lastError ?? poll.lastStatus})`;
      this.logs.fire(`the worker on ${this.host.label} stopped: ${problem}; not restarting it with the same credentials`);
      this.model.setConnection(this.hostId, 'failed', problem, 'credentials');
      return;
    }
    // On an SSH host the usual cause is the way there (the tunnel, the network): the worker is looked for before
    // anything is restarted, and the recovery attempts tell which it was.
    this.lastFailure = this.host.remote ? 'link' : 'worker';
    this.logs.fire(`lost the worker on ${this.host.label}: ${detail}`);
    this.model.setConnection(this.hostId, 'reconnecting', this.host.remote && !fromHost ? `the connection to ${this.host.label} was cut` : detail, this.lastFailure);
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    const backoff = this.opts.backoffMs ?? BACKOFF_MS;
    if (this.attempts >= backoff.length) {
      this.desired = 'stopped';
      const link = this.lastFailure === 'link';
      const problem = link
        ? `${this.model.host(this.hostId)?.problem ?? `cannot reach ${this.host.label}`}; gave up after ${backoff.length} attempts`
        : `gave up after ${backoff.length} attempts to restart or reconnect; use Restart Worker`;
      this.logs.fire(problem);
      this.model.setConnection(this.hostId, 'failed', problem, link ? 'link' : 'worker');
      return;
    }
    const wait = backoff[this.attempts++]!;
    this.retryTimer = setTimeout(() => { this.retryTimer = null; void this.recover(); }, wait);
  }

  private async recover(): Promise<void> {
    if (this.desired !== 'running') return;
    this.recovering = true;
    const epoch = this.epoch;
    try {
      const existing = await this.host.findWorker();
      if (epoch !== this.epoch) { this.recovering = false; return; }
      if (!existing && !this.settings) {
        // A worker started elsewhere (another window, a terminal) is gone: we do not know how to start it again.
        this.recovering = false;
        this.desired = 'stopped';
        this.model.setConnection(this.hostId, 'stopped', 'the worker exited (it was not started from this window)');
        return;
      }
      if (!existing) {
        this.model.noteRestart(this.hostId);
        this.logs.fire(`restarting the worker on ${this.host.label} (attempt ${this.attempts})`);
        this.lastFailure = 'worker';
        this.model.setConnection(this.hostId, 'reconnecting', `the worker on ${this.host.label} is gone; restarting it`, 'worker');
      }
      await (existing ? this.connect(existing) : this.bringUp());
    } catch (err) {
      this.recovering = false;
      if (epoch !== this.epoch) return;
      this.logs.fire(`attempt ${this.attempts} failed: ${(err as Error).message}`);
      this.lastFailure = err instanceof HostUnreachableError ? 'link' : 'worker';
      this.model.setConnection(this.hostId, 'reconnecting', (err as Error).message, this.lastFailure);
      this.scheduleRetry();
      return;
    }
    this.recovering = false;
    // A connection lost again while this attempt was still reading history was noted but not acted on (lost() leaves
    // an attempt in progress alone): act on it now.
    if (this.desired === 'running' && !this.client?.connected) this.lost('the connection closed again while reconnecting');
  }

  private clearRetry(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  /** Stops retrying and closes the control connection; the worker itself keeps running (the host decides). */
  override dispose(): void {
    this.clearRetry();
    this.desired = 'stopped';
    this.client?.close();
    this.client = null;
    super.dispose();
  }
}
