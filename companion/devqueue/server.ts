// The embedded control plane ("dev queue"): a node:http server on 127.0.0.1 that speaks the same HTTP + SSE wire
// protocol as Anthropic for everything a self-hosted worker calls (work poll/ack/heartbeat/stop, session retrieve,
// session events list/stream/send, skill versions and content, memory-store memories), and plays a scripted agent
// from a Scenario. It is also the test oracle: it records every request, every result posted per tool_use_id, and
// every stop. Invariants:
// - Same semantics as the documented service: 204 on an empty poll, ack moves queued -> starting, heartbeats are a
//   compare-and-set on `expected_last_heartbeat` (412 `heartbeat_precondition_failed` with current_state), a lapsed
//   lease re-offers the item, stop answers 204 and 409 when already stopped, un-acked items are re-offered after
//   `reclaim_older_than_ms`, results for `ask`-gated calls before their confirmation get a 400, empty text a 400.
// - Auth (wire-rules.ts ROUTE_CREDENTIALS): each route accepts only the credentials the docs name for it: the
//   environment key (Bearer), the per-item sessions token (from the work secret) for its own item, session, skills
//   and memory stores only, an organisation API key (`apiKey`, Bearer or `x-api-key`) for work retrieve, stats, stop.
//   Every request needs a known `anthropic-version`; environments and sessions endpoints the managed-agents beta header.
// - A tool call takes exactly one result: a second one is refused (400) and recorded in `duplicateResults`.
// - The event list honours `types[]` and `created_at[gt|gte|lt|lte]`.
// - Injected faults (429/5xx before any side effect, malformed JSON only on GETs, SSE drops) never change state, so
//   "no result lost, none duplicated" stays checkable.
import http from 'node:http';
import { randomBytes, createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { EventEmitter } from 'node:events';
import { logger } from '../log';
import type { Scenario, ScenarioStep } from './scenario';
import { tarGz } from './tar';
import { HttpError, checkAnthropicVersion, eventMatches, parseEventFilter, requireCredentialFor, type Credential } from './wire-rules';

const log = logger('devqueue');
export const MANAGED_AGENTS_BETA = 'managed-agents-2026-04-01';
const PING_INTERVAL_MS = 5_000;

export interface DevQueueFaults {
  /** Every Nth API request gets a 429 (with retry-after). */
  status429Every?: number;
  /** Every Nth API request gets a 5xx (cycling 500, 502, 503, 529). */
  status5xxEvery?: number;
  /** Every Nth GET of `malformedRoutes` gets a 200 with a truncated JSON body. */
  malformedEvery?: number;
  /** Routes whose GETs may be malformed (default: work.poll and events.list, whose failures the SDK retries). */
  malformedRoutes?: string[];
  /** retry-after-ms sent with 429s (default 200; `retry-after` in whole seconds is sent too). */
  retryAfterMs?: number;
  /** Close each SSE stream (server side, after flushing) once it delivered this many events. */
  dropStreamAfterEvents?: number;
  /** Heartbeat requests are never answered (a hung control plane); the holder must give up after the lease TTL. */
  hangHeartbeats?: boolean;
  /** Routes faults apply to (default: all). */
  routes?: string[];
}

export interface DevQueueOptions {
  port?: number;
  environmentId?: string;
  environmentKey?: string;
  /** The organisation API key, accepted where the docs name one: work retrieve, stats and stop. */
  apiKey?: string;
  /** Lease TTL reported by heartbeats (seconds). */
  leaseTtlSeconds?: number;
  /** How long an `expectUnanswered` step waits before it passes and the scripted owner answers it. */
  unansweredWaitMs?: number;
  /** Re-offer an item whose lease lapsed (default true); false models the lapsed item going to another worker. */
  requeueLapsedLeases?: boolean;
  /** Put a sessions token into each work item's secret (as the real service does). */
  issueSessionsToken?: boolean;
  faults?: DevQueueFaults;
}

export type StepStatus = 'pending' | 'waiting_confirmation' | 'waiting_result' | 'passed' | 'failed';

export interface StepReport {
  index: number;
  label: string;
  tool: string;
  toolUseId: string | null;
  status: StepStatus;
  isError: boolean | null;
  text: string | null;
  /** From the tool_use event to its result (or to the step's end). */
  ms: number | null;
  reason: string | null;
  needsPersistence: boolean;
}

interface SessionEvent { id: string; type: string; processed_at: string; [k: string]: unknown }

interface DevSession {
  id: string;
  status: 'idle' | 'running' | 'terminated';
  scenario: Scenario;
  events: SessionEvent[];
  stepIndex: number;
  steps: StepReport[];
  stepStartedAt: number;
  finished: boolean;
  skillIds: Array<{ skill_id: string; name: string }>;
  memoryStores: Array<{ memory_store_id: string; name: string; access: 'read_write' | 'read_only' }>;
  subscribers: Set<http.ServerResponse>;
  timers: Set<NodeJS.Timeout>;
  createdAt: string;
}

interface WorkItem {
  id: string;
  type: 'session' | 'healthcheck';
  dataId: string;
  state: 'queued' | 'starting' | 'active' | 'stopping' | 'stopped';
  secret: string | null;
  sessionsToken: string | null;
  created_at: string;
  acknowledged_at: string | null;
  started_at: string | null;
  latest_heartbeat_at: string | null;
  stop_requested_at: string | null;
  stopped_at: string | null;
  lastHeartbeat: string | null;
  polledAt: number | null;
  leaseExpiresAt: number | null;
}

export interface RecordedRequest { ts: number; method: string; route: string; path: string; status: number; workId?: string; sessionId?: string; auth: Credential | 'none' | 'bad' }

const iso = (ms = Date.now()) => new Date(ms).toISOString();
const rid = (prefix: string) => `${prefix}_${randomBytes(12).toString('hex')}`;

export class DevQueue {
  readonly environmentId: string;
  readonly environmentKey: string;
  readonly apiKey: string;
  private server: http.Server | null = null;
  private port = 0;
  private readonly sessions = new Map<string, DevSession>();
  private readonly work = new Map<string, WorkItem>();
  private readonly skills = new Map<string, { name: string; versionId: string; archive: Buffer }>();
  private readonly memories = new Map<string, Map<string, { id: string; path: string; content: string }>>();
  private readonly changed = new EventEmitter();
  private requestCount = 0;
  private getCount = 0;
  private lastBeatMs = 0;
  faults: DevQueueFaults;
  readonly requests: RecordedRequest[] = [];
  /** The result accepted per tool_use_id (one at most: a further one lands in `duplicateResults`). */
  readonly results = new Map<string, Array<{ isError: boolean; text: string; ts: number }>>();
  /** tool_use_ids for which a further result was posted (and refused) after the first. */
  readonly duplicateResults: string[] = [];
  /** Faults injected so far, by kind. */
  readonly injected = { rateLimited: 0, serverErrors: 0, malformed: 0, streamDrops: 0, hungHeartbeats: 0 };
  /** Every stop posted: work id and whether it was forced. */
  readonly stops: Array<{ workId: string; force: boolean; ts: number; status: number }> = [];

  constructor(private readonly opts: DevQueueOptions = {}) {
    this.environmentId = opts.environmentId ?? rid('env_local');
    this.environmentKey = opts.environmentKey ?? `sk-ant-env01-dev-${randomBytes(18).toString('base64url')}`;
    this.apiKey = opts.apiKey ?? `sk-ant-api03-dev-${randomBytes(18).toString('base64url')}`;
    this.faults = opts.faults ?? {};
    this.changed.setMaxListeners(1000);
  }

  get baseUrl(): string { return `http://127.0.0.1:${this.port}`; }

  async start(): Promise<string> {
    this.server = http.createServer((req, res) => { void this.handle(req, res); });
    this.server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.opts.port ?? 0, '127.0.0.1', () => resolve());
    });
    this.port = (this.server.address() as AddressInfo).port;
    return this.baseUrl;
  }

  async close(): Promise<void> {
    for (const s of this.sessions.values()) {
      for (const t of s.timers) clearTimeout(t);
      for (const r of s.subscribers) r.destroy();
    }
    if (!this.server) return;
    const srv = this.server;
    this.server = null;
    srv.closeAllConnections();
    await new Promise<void>((resolve) => srv.close(() => resolve()));
  }

  // ---- scenario control (used by the CLI and the tests) --------------------------------------------------------

  /** Creates a session playing `scenario` and enqueues its work item. Returns the session id. */
  createSession(scenario: Scenario): string {
    const id = rid('sesn_local');
    const skillIds = scenario.skills.map((sk) => {
      const skill_id = rid('skill_local');
      const versionId = rid('skillver_local');
      this.skills.set(skill_id, { name: sk.name, versionId, archive: tarGz(Object.fromEntries(Object.entries(sk.files).map(([p, c]) => [`${sk.name}/${p}`, c]))) });
      return { skill_id, name: sk.name };
    });
    const memoryStores = scenario.memoryStores.map((ms) => {
      const memory_store_id = rid('memstore_local');
      const store = this.store(memory_store_id);
      for (const [p, content] of Object.entries(ms.memories)) { const m = { id: rid('mem_local'), path: p, content }; store.set(m.id, m); }
      return { memory_store_id, name: ms.name, access: ms.access };
    });
    const s: DevSession = {
      id, status: 'running', scenario, events: [], stepIndex: 0, stepStartedAt: Date.now(), finished: false, skillIds, memoryStores,
      subscribers: new Set(), timers: new Set(), createdAt: iso(),
      steps: scenario.steps.map((st, index) => ({ index, label: st.label ?? `${st.tool} #${index + 1}`, tool: st.tool, toolUseId: null, status: 'pending', isError: null, text: null, ms: null, reason: null, needsPersistence: st.needsPersistence })),
    };
    this.sessions.set(id, s);
    this.emit(s, { type: 'user.message', content: [{ type: 'text', text: scenario.prompt }] });
    this.emit(s, { type: 'session.status_running' });
    this.beginStep(s);
    this.enqueueWork(id);
    return id;
  }

  /** Enqueues a (new) work item for a session, as the service does when a dormant session gets a message. */
  enqueueWork(sessionId: string, type: 'session' | 'healthcheck' = 'session'): string {
    const id = rid('work_local');
    const sessionsToken = this.opts.issueSessionsToken === false ? null : `sk-ant-req-dev-${randomBytes(18).toString('base64url')}`;
    const secret = sessionsToken ? Buffer.from(JSON.stringify({ sessions_token: sessionsToken })).toString('base64url') : null;
    this.work.set(id, {
      id, type, dataId: sessionId, state: 'queued', secret, sessionsToken, created_at: iso(), acknowledged_at: null, started_at: null,
      latest_heartbeat_at: null, stop_requested_at: null, stopped_at: null, lastHeartbeat: null, polledAt: null, leaseExpiresAt: null,
    });
    this.changed.emit('change');
    return id;
  }

  /** Simulates another worker taking over the lease: this item's holder gets a 412 on its next heartbeat. */
  stealLease(workId: string): void {
    const w = this.mustWork(workId);
    w.lastHeartbeat = `${iso()}#other-worker`;
  }

  /** Requests a graceful stop from the control plane (the holder sees `stopping` on its next heartbeat). */
  requestStop(workId: string): void {
    const w = this.mustWork(workId);
    if (w.state !== 'stopped') { w.state = 'stopping'; w.stop_requested_at = iso(); }
  }

  terminateSession(sessionId: string): void {
    const s = this.mustSession(sessionId);
    s.status = 'terminated';
    this.emit(s, { type: 'session.status_terminated' });
  }

  /** Appends a user event (e.g. a `user.tool_confirmation`) as if the user's client had sent it. */
  userEvent(sessionId: string, event: Record<string, unknown>): void { this.emit(this.mustSession(sessionId), event); }

  report(sessionId: string): { finished: boolean; steps: StepReport[] } {
    const s = this.mustSession(sessionId);
    return { finished: s.finished, steps: s.steps.map((x) => ({ ...x })) };
  }

  workItems(): Array<Pick<WorkItem, 'id' | 'type' | 'dataId' | 'state'>> {
    return [...this.work.values()].map((w) => ({ id: w.id, type: w.type, dataId: w.dataId, state: w.state }));
  }

  sessionEvents(sessionId: string): SessionEvent[] { return [...this.mustSession(sessionId).events]; }

  /** The memories of a session's store, by name (path -> content). */
  memoryContents(sessionId: string, storeName: string): Record<string, string> {
    const ms = this.mustSession(sessionId).memoryStores.find((m) => m.name === storeName);
    if (!ms) throw new Error(`no memory store ${storeName} in ${sessionId}`);
    return Object.fromEntries([...this.store(ms.memory_store_id).values()].map((m) => [m.path, m.content]));
  }

  /** Resolves when `predicate` holds (checked after every state change), or rejects after `timeoutMs`. */
  waitFor(predicate: () => boolean, timeoutMs = 60_000, what = 'condition'): Promise<void> {
    return new Promise((resolve, reject) => {
      if (predicate()) return resolve();
      const check = () => { if (predicate()) { cleanup(); resolve(); } };
      const timer = setTimeout(() => { cleanup(); reject(new Error(`dev queue: timed out waiting for ${what}`)); }, timeoutMs);
      const iv = setInterval(check, 100);
      const cleanup = () => { clearTimeout(timer); clearInterval(iv); this.changed.off('change', check); };
      this.changed.on('change', check);
    });
  }

  private mustWork(id: string): WorkItem { const w = this.work.get(id); if (!w) throw new Error(`no work item ${id}`); return w; }
  private mustSession(id: string): DevSession { const s = this.sessions.get(id); if (!s) throw new Error(`no session ${id}`); return s; }

  // ---- the scripted agent --------------------------------------------------------------------------------------

  private emit(s: DevSession, body: Record<string, unknown>): SessionEvent {
    const ev = { id: rid('sevt_local'), processed_at: iso(), ...body } as SessionEvent;
    s.events.push(ev);
    const frame = `event: ${ev.type}\ndata: ${JSON.stringify(ev)}\n\n`;
    for (const res of s.subscribers) {
      res.write(frame);
      const sent = ((res as unknown as { sentEvents?: number }).sentEvents ?? 0) + 1;
      (res as unknown as { sentEvents?: number }).sentEvents = sent;
      if (this.faults.dropStreamAfterEvents && sent >= this.faults.dropStreamAfterEvents) { s.subscribers.delete(res); res.end(); this.injected.streamDrops++; }
    }
    this.changed.emit('change');
    return ev;
  }

  private later(s: DevSession, ms: number, fn: () => void): void {
    const t = setTimeout(() => { s.timers.delete(t); if (s.status !== 'terminated') fn(); }, ms);
    s.timers.add(t);
  }

  private beginStep(s: DevSession): void {
    const step = s.scenario.steps[s.stepIndex]!;
    const rep = s.steps[s.stepIndex]!;
    s.stepStartedAt = Date.now();
    const ev = this.emit(s, step.custom
      ? { type: 'agent.custom_tool_use', name: step.tool, input: step.input }
      : { type: 'agent.tool_use', name: step.tool, input: step.input, ...(step.evaluated_permission ? { evaluated_permission: step.evaluated_permission } : {}) });
    rep.toolUseId = ev.id;
    rep.status = step.evaluated_permission === 'ask' ? 'waiting_confirmation' : 'waiting_result';
    this.emit(s, { type: 'session.status_idle', stop_reason: { type: 'requires_action', event_ids: [ev.id] } });
    const unansweredWait = this.opts.unansweredWaitMs ?? 1500;
    if (step.evaluated_permission === 'ask') {
      this.later(s, step.confirmAfterMs ?? 300, () => {
        const verdict = step.confirmation ?? 'allow';
        this.emit(s, { type: 'user.tool_confirmation', tool_use_id: ev.id, result: verdict, ...(verdict === 'deny' ? { deny_message: 'denied by the scenario' } : {}) });
        if (rep.status !== 'waiting_confirmation') return;
        rep.status = 'waiting_result';
        if (verdict === 'deny') this.later(s, unansweredWait, () => this.finishUnanswered(s, rep, step, 'denied'));
      });
    } else if (step.evaluated_permission === 'deny' || step.expectUnanswered) {
      this.later(s, unansweredWait, () => this.finishUnanswered(s, rep, step, step.evaluated_permission === 'deny' ? 'denied' : 'unowned'));
    }
  }

  /** A call the worker must not answer: passes when still unanswered; the scripted owner then answers it. */
  private finishUnanswered(s: DevSession, rep: StepReport, step: ScenarioStep, why: 'denied' | 'unowned'): void {
    if (rep.status !== 'waiting_result') return;
    rep.ms = Date.now() - s.stepStartedAt;
    const expected = step.expectUnanswered || why === 'denied' || step.confirmation === 'deny';
    rep.status = expected ? 'passed' : 'failed';
    rep.reason = expected ? `left unanswered (${why})` : `no result (${why})`;
    if (why === 'unowned') {
      const text = 'answered by the scenario (the tool owner)';
      this.emit(s, step.custom
        ? { type: 'user.custom_tool_result', custom_tool_use_id: rep.toolUseId, content: [{ type: 'text', text }], is_error: false }
        : { type: 'user.tool_result', tool_use_id: rep.toolUseId, content: [{ type: 'text', text }], is_error: false });
    }
    this.advance(s);
  }

  private onResult(s: DevSession, toolUseId: string, isError: boolean, text: string): void {
    const rep = s.steps.find((r) => r.toolUseId === toolUseId);
    if (!rep || rep.status !== 'waiting_result') return;
    const step = s.scenario.steps[rep.index]!;
    rep.isError = isError;
    rep.text = text;
    rep.ms = Date.now() - s.stepStartedAt;
    const problems: string[] = [];
    if (step.expectUnanswered || step.confirmation === 'deny') problems.push('the call should have been left unanswered');
    if (step.expectError !== undefined && step.expectError !== isError) problems.push(step.expectError ? 'expected an error result' : `unexpected error: ${text.slice(0, 200)}`);
    for (const inc of step.expectIncludes) if (!text.includes(inc)) problems.push(`missing ${JSON.stringify(inc)}`);
    for (const exc of step.expectExcludes) if (text.includes(exc)) problems.push(`unexpected ${JSON.stringify(exc)}`);
    rep.status = problems.length ? 'failed' : 'passed';
    rep.reason = problems.length ? problems.join('; ') : null;
    this.advance(s);
  }

  private advance(s: DevSession): void {
    const current = s.steps[s.stepIndex];
    if (!current || (current.status !== 'passed' && current.status !== 'failed')) return;
    s.stepIndex++;
    this.emit(s, { type: 'session.status_running' });
    if (s.stepIndex < s.scenario.steps.length) { this.beginStep(s); return; }
    const passed = s.steps.filter((r) => r.status === 'passed').length;
    this.emit(s, { type: 'agent.message', content: [{ type: 'text', text: `Scenario "${s.scenario.name}" finished: ${passed}/${s.steps.length} steps passed.` }] });
    this.emit(s, { type: 'session.status_idle', stop_reason: { type: 'end_turn' } });
    s.status = 'idle';
    s.finished = true;
    this.changed.emit('change');
  }

  // ---- HTTP ------------------------------------------------------------------------------------------------------

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const record: RecordedRequest = { ts: Date.now(), method: req.method ?? 'GET', route: '?', path: url.pathname, status: 0, auth: 'none' };
    try {
      const body = await readBody(req);
      const route = this.route(req.method ?? 'GET', url.pathname);
      if (!route) throw new HttpError(404, 'not_found_error', `no route for ${req.method} ${url.pathname}`);
      record.route = route.name;
      record.workId = route.params.work;
      record.sessionId = route.params.session;
      this.requestCount++;
      if (req.method === 'GET') this.getCount++;
      if (route.name === 'work.heartbeat' && this.faults.hangHeartbeats) {
        record.status = -1;
        this.injected.hungHeartbeats++;
        await new Promise<void>((resolve) => { req.once('close', resolve); res.once('close', resolve); });
        return;
      }
      const fault = this.fault(route.name, req.method ?? 'GET');
      if (fault) { record.status = fault.status; fault.send(res); return; }
      record.auth = this.authenticate(req, route.name, route.params);
      checkAnthropicVersion(req.headers['anthropic-version']);
      if (route.beta && !String(req.headers['anthropic-beta'] ?? '').split(',').map((x) => x.trim()).includes(route.beta)) {
        throw new HttpError(400, 'invalid_request_error', `this endpoint requires the anthropic-beta header ${route.beta}`);
      }
      const out = await route.run(url, body, req, res);
      if (out === STREAMING) { record.status = 200; return; }
      record.status = out.status;
      if (out.status === 204 || out.body === undefined) { res.writeHead(out.status); res.end(); return; }
      if (Buffer.isBuffer(out.body)) { res.writeHead(out.status, { 'content-type': 'application/octet-stream', 'content-length': out.body.length }); res.end(out.body); return; }
      const json = JSON.stringify(out.body);
      res.writeHead(out.status, { 'content-type': 'application/json', 'request-id': rid('req_local') });
      res.end(json);
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(500, 'api_error', (err as Error).message);
      if (!(err instanceof HttpError)) log.error(`internal error on ${req.method} ${url.pathname}: ${(err as Error).stack}`);
      record.status = e.status;
      if (!res.headersSent) {
        res.writeHead(e.status, { 'content-type': 'application/json', 'request-id': rid('req_local') });
        res.end(JSON.stringify({ type: 'error', error: { type: e.type, message: e.message, ...e.extra } }));
      } else res.destroy();
    } finally {
      this.requests.push(record);
      this.changed.emit('change');
    }
  }

  private fault(route: string, method: string): { status: number; send: (res: http.ServerResponse) => void } | null {
    const f = this.faults;
    if (f.routes && !f.routes.includes(route)) return null;
    const n = this.requestCount;
    if (f.status429Every && n % f.status429Every === 0) {
      const ms = f.retryAfterMs ?? 200;
      this.injected.rateLimited++;
      return { status: 429, send: (res) => { res.writeHead(429, { 'content-type': 'application/json', 'retry-after-ms': String(ms), 'retry-after': String(Math.ceil(ms / 1000)) }); res.end(JSON.stringify({ type: 'error', error: { type: 'rate_limit_error', message: 'injected rate limit' } })); } };
    }
    if (f.status5xxEvery && n % f.status5xxEvery === 0) {
      const status = [500, 502, 503, 529][Math.floor(n / f.status5xxEvery) % 4]!;
      this.injected.serverErrors++;
      return { status, send: (res) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify({ type: 'error', error: { type: status === 529 ? 'overloaded_error' : 'api_error', message: 'injected server error' } })); } };
    }
    if (f.malformedEvery && method === 'GET' && (f.malformedRoutes ?? ['work.poll', 'events.list']).includes(route) && this.getCount % f.malformedEvery === 0) {
      this.injected.malformed++;
      return { status: 200, send: (res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"type": "work", "id": '); } };
    }
    return null;
  }

  /** Identifies the request's credential, checks that the route accepts its kind, and a sessions token's scope. */
  private authenticate(req: http.IncomingMessage, route: string, params: Record<string, string>): Credential {
    const { kind, item } = this.credential(req);
    requireCredentialFor(route, kind);
    if (item && !this.sessionsTokenReaches(item, params)) throw new HttpError(403, 'permission_error', 'this sessions token is not valid for that resource');
    return kind;
  }

  /** The credential: `x-api-key` (an API key), or a Bearer token (SDK 1.x sends an API key that way too). */
  private credential(req: http.IncomingMessage): { kind: Credential; item?: WorkItem } {
    const apiKey = req.headers['x-api-key'];
    if (apiKey !== undefined) {
      if (apiKey !== this.apiKey) throw new HttpError(401, 'authentication_error', 'invalid x-api-key');
      return { kind: 'api' };
    }
    const token = /^Bearer (.+)$/.exec(String(req.headers.authorization ?? ''))?.[1];
    if (token === undefined) throw new HttpError(401, 'authentication_error', 'missing credential: Authorization: Bearer <key or token>, or x-api-key');
    if (token === this.environmentKey) return { kind: 'env' };
    if (token === this.apiKey) return { kind: 'api' };
    const item = [...this.work.values()].find((w) => w.sessionsToken === token);
    if (!item) throw new HttpError(401, 'authentication_error', 'invalid credential');
    return { kind: 'session', item };
  }

  /** A sessions token reaches its own item, its session, and that session's skills and memory stores, nothing else. */
  private sessionsTokenReaches(item: WorkItem, params: Record<string, string>): boolean {
    if (params.work !== undefined) return params.work === item.id;
    if (params.session !== undefined) return params.session === item.dataId;
    const session = this.sessions.get(item.dataId);
    if (params.skill !== undefined) return session?.skillIds.some((k) => k.skill_id === params.skill) ?? false;
    if (params.store !== undefined) return session?.memoryStores.some((m) => m.memory_store_id === params.store) ?? false;
    return false;
  }

  private route(method: string, p: string): Route | null {
    const seg = p.split('/').filter(Boolean).map(decodeURIComponent);
    const env = this.environmentId;
    const R = (name: string, beta: string | null, params: Record<string, string>, run: Route['run']): Route => ({ name, beta, params, run });
    if (seg[0] !== 'v1') return null;
    if (seg[1] === 'environments' && seg[2] && seg[3] === 'work') {
      if (seg[2] !== env) return R('environment.unknown', null, {}, () => { throw new HttpError(404, 'not_found_error', `environment ${seg[2]} not found`); });
      if (method === 'GET' && seg[4] === 'poll' && seg.length === 5) return R('work.poll', MANAGED_AGENTS_BETA, {}, (url, _b, req) => this.poll(url, req));
      if (method === 'GET' && seg[4] === 'stats' && seg.length === 5) return R('work.stats', MANAGED_AGENTS_BETA, {}, () => this.stats());
      const work = seg[4];
      if (work && method === 'POST' && seg[5] === 'ack' && seg.length === 6) return R('work.ack', MANAGED_AGENTS_BETA, { work }, () => this.ack(work));
      if (work && method === 'POST' && seg[5] === 'heartbeat' && seg.length === 6) return R('work.heartbeat', MANAGED_AGENTS_BETA, { work }, (url) => this.heartbeat(work, url));
      if (work && method === 'POST' && seg[5] === 'stop' && seg.length === 6) return R('work.stop', MANAGED_AGENTS_BETA, { work }, (_u, body) => this.stop(work, body));
      if (work && method === 'GET' && seg.length === 5) return R('work.retrieve', MANAGED_AGENTS_BETA, { work }, () => ({ status: 200, body: this.workJson(this.mustWork404(work), false) }));
      return null;
    }
    if (seg[1] === 'sessions' && seg[2]) {
      const session = seg[2];
      if (method === 'GET' && seg.length === 3) return R('sessions.retrieve', MANAGED_AGENTS_BETA, { session }, () => this.sessionJson(session));
      if (method === 'GET' && seg[3] === 'events' && seg.length === 4) return R('events.list', MANAGED_AGENTS_BETA, { session }, (url) => this.listEvents(session, url));
      if (method === 'POST' && seg[3] === 'events' && seg.length === 4) return R('events.send', MANAGED_AGENTS_BETA, { session }, (_u, body) => this.sendEvents(session, body));
      if (method === 'GET' && seg[3] === 'events' && seg[4] === 'stream' && seg.length === 5) return R('events.stream', MANAGED_AGENTS_BETA, { session }, (_u, _b, req, res) => this.stream(session, req, res));
      return null;
    }
    if (seg[1] === 'skills' && seg[2] && seg[3] === 'versions' && seg[4]) {
      const skill = seg[2]; const version = seg[4];
      if (method === 'GET' && seg.length === 5) return R('skills.version', null, { skill }, () => this.skillVersion(skill, version));
      if (method === 'GET' && seg[5] === 'content' && seg.length === 6) return R('skills.content', null, { skill }, () => this.skillContent(skill, version));
      return null;
    }
    if (seg[1] === 'memory_stores' && seg[2] && seg[3] === 'memories') {
      const store = seg[2]; const mem = seg[4];
      if (method === 'GET' && seg.length === 4) return R('memory.list', null, { store }, (url) => this.memList(store, url));
      if (method === 'POST' && seg.length === 4) return R('memory.create', null, { store }, (_u, body) => this.memCreate(store, body));
      if (mem && method === 'GET' && seg.length === 5) return R('memory.retrieve', null, { store }, () => this.memGet(store, mem));
      if (mem && method === 'POST' && seg.length === 5) return R('memory.update', null, { store }, (_u, body) => this.memUpdate(store, mem, body));
      if (mem && method === 'DELETE' && seg.length === 5) return R('memory.delete', null, { store }, () => this.memDelete(store, mem));
    }
    return null;
  }

  private mustWork404(id: string): WorkItem {
    const w = this.work.get(id);
    if (!w) throw new HttpError(404, 'not_found_error', `work item ${id} not found`);
    return w;
  }
  private mustSession404(id: string): DevSession {
    const s = this.sessions.get(id);
    if (!s) throw new HttpError(404, 'not_found_error', `session ${id} not found`);
    return s;
  }

  private workJson(w: WorkItem, withSecret: boolean) {
    return {
      id: w.id, type: 'work', environment_id: this.environmentId, data: { type: w.type, id: w.dataId }, state: w.state,
      secret: withSecret ? w.secret : null, metadata: {}, created_at: w.created_at, acknowledged_at: w.acknowledged_at,
      started_at: w.started_at, latest_heartbeat_at: w.latest_heartbeat_at, stop_requested_at: w.stop_requested_at, stopped_at: w.stopped_at,
    };
  }

  // ---- work --------------------------------------------------------------------------------------------------------

  private claimable(reclaimMs: number): WorkItem | null {
    const now = Date.now();
    for (const w of this.work.values()) {
      if (this.opts.requeueLapsedLeases !== false && (w.state === 'starting' || w.state === 'active') && w.leaseExpiresAt !== null && w.leaseExpiresAt < now) {
        log.info(`lease of ${w.id} lapsed; re-queueing it`);
        Object.assign(w, { state: 'queued', lastHeartbeat: null, polledAt: null, leaseExpiresAt: null });
      }
    }
    for (const w of this.work.values()) {
      if (w.state === 'queued' && (w.polledAt === null || now - w.polledAt >= reclaimMs)) return w;
    }
    return null;
  }

  private async poll(url: URL, req: http.IncomingMessage): Promise<Reply> {
    const blockRaw = url.searchParams.get('block_ms');
    let blockMs = 0;
    if (blockRaw !== null) {
      blockMs = Number(blockRaw);
      if (!Number.isInteger(blockMs) || blockMs < 1 || blockMs > 999) throw new HttpError(400, 'invalid_request_error', 'block_ms must be an integer between 1 and 999 (omit it for a non-blocking poll)');
    }
    const reclaimRaw = url.searchParams.get('reclaim_older_than_ms');
    const reclaimMs = reclaimRaw === null ? 5000 : Number(reclaimRaw);
    if (!Number.isFinite(reclaimMs) || reclaimMs < 0) throw new HttpError(400, 'invalid_request_error', 'reclaim_older_than_ms must be a non-negative number');
    const deadline = Date.now() + blockMs;
    for (;;) {
      const w = this.claimable(reclaimMs);
      if (w) { w.polledAt = Date.now(); return { status: 200, body: this.workJson(w, true) }; }
      const left = deadline - Date.now();
      if (left <= 0 || req.destroyed) return { status: 204 };
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(left, 100));
        function done() { clearTimeout(t); resolve(); }
        this.changed.once('change', done);
      });
    }
  }

  private ack(id: string): Reply {
    const w = this.mustWork404(id);
    if (w.state !== 'queued') throw new HttpError(409, 'invalid_request_error', `work item ${id} is ${w.state}, not queued`);
    const now = Date.now();
    Object.assign(w, { state: 'starting', acknowledged_at: iso(now), leaseExpiresAt: now + this.ttlMs() });
    return { status: 200, body: this.workJson(w, false) };
  }

  private ttlMs(): number { return (this.opts.leaseTtlSeconds ?? 60) * 1000; }

  private heartbeat(id: string, url: URL): Reply {
    const w = this.mustWork404(id);
    const expected = url.searchParams.get('expected_last_heartbeat');
    const ttl = this.opts.leaseTtlSeconds ?? 60;
    const current = { last_heartbeat: w.lastHeartbeat, lease_extended: false, state: w.state, ttl_seconds: ttl };
    if (w.state === 'stopping' || w.state === 'stopped') {
      return { status: 200, body: { type: 'work_heartbeat', last_heartbeat: w.lastHeartbeat ?? iso(), lease_extended: false, state: w.state, ttl_seconds: ttl } };
    }
    if (w.state === 'queued') throw new HttpError(412, 'heartbeat_precondition_failed', 'the work item is not held by anyone (lease lapsed or never acked)', { details: { current_state: current } });
    if (expected === null) throw new HttpError(400, 'invalid_request_error', 'expected_last_heartbeat is required');
    if (expected !== (w.lastHeartbeat ?? 'NO_HEARTBEAT')) {
      throw new HttpError(412, 'heartbeat_precondition_failed', 'expected_last_heartbeat does not match: another worker holds this lease', { details: { current_state: current } });
    }
    const now = Math.max(Date.now(), this.lastBeatMs + 1);
    this.lastBeatMs = now;
    w.lastHeartbeat = iso(now);
    w.latest_heartbeat_at = w.lastHeartbeat;
    if (w.state === 'starting') { w.state = 'active'; w.started_at = iso(now); }
    w.leaseExpiresAt = now + ttl * 1000;
    return { status: 200, body: { type: 'work_heartbeat', last_heartbeat: w.lastHeartbeat, lease_extended: true, state: w.state, ttl_seconds: ttl } };
  }

  private stop(id: string, body: unknown): Reply {
    const w = this.mustWork404(id);
    const force = isObj(body) && body.force === true;
    if (w.state === 'stopped') {
      this.stops.push({ workId: id, force, ts: Date.now(), status: 409 });
      throw new HttpError(409, 'invalid_request_error', `work item ${id} is already stopped`);
    }
    this.stops.push({ workId: id, force, ts: Date.now(), status: 204 });
    if (force || w.state === 'queued') { w.state = 'stopped'; w.stopped_at = iso(); w.leaseExpiresAt = null; }
    else { w.state = 'stopping'; w.stop_requested_at = iso(); }
    return { status: 204 };
  }

  private stats(): Reply {
    const items = [...this.work.values()];
    const queued = items.filter((w) => w.state === 'queued');
    return { status: 200, body: { type: 'work_queue_stats', depth: queued.length, pending: queued.filter((w) => w.polledAt !== null).length, oldest_queued_at: queued[0]?.created_at ?? null, workers_polling: 0 } };
  }

  // ---- sessions ------------------------------------------------------------------------------------------------

  private sessionJson(id: string): Reply {
    const s = this.mustSession404(id);
    return {
      status: 200,
      body: {
        id: s.id, type: 'session', status: s.status, title: s.scenario.name, environment_id: this.environmentId, created_at: s.createdAt, updated_at: iso(),
        agent: { id: 'agent_local', type: 'agent', name: 'scripted agent', version: 1, skills: s.skillIds.map((k) => ({ skill_id: k.skill_id, type: 'custom', version: 'latest' })), tools: [] },
        resources: s.memoryStores.map((m) => ({ type: 'memory_store', memory_store_id: m.memory_store_id, name: m.name, access: m.access, description: '', instructions: null, mount_path: `/mnt/memory/${m.name}` })),
        metadata: { scenario: s.scenario.name },
      },
    };
  }

  private listEvents(id: string, url: URL): Reply {
    const s = this.mustSession404(id);
    const limit = Math.max(1, Math.min(Number(url.searchParams.get('limit') ?? 100) || 100, 1000));
    const start = Math.max(0, Number(url.searchParams.get('page') ?? 0) || 0);
    const filter = parseEventFilter(url.searchParams);
    const matching = s.events.filter((e) => eventMatches(filter, e));
    const all = url.searchParams.get('order') === 'desc' ? matching.reverse() : matching;
    const data = all.slice(start, start + limit);
    return { status: 200, body: { data, next_page: start + limit < all.length ? String(start + limit) : null } };
  }

  private sendEvents(id: string, body: unknown): Reply {
    const s = this.mustSession404(id);
    if (s.status === 'terminated') throw new HttpError(400, 'invalid_request_error', 'the session is terminated');
    if (!isObj(body) || !Array.isArray(body.events) || body.events.length === 0) throw new HttpError(400, 'invalid_request_error', 'events: expected a non-empty array');
    const checked: Array<{ ev: Record<string, unknown>; answer?: { id: string; isError: boolean; text: string } }> = [];
    for (const ev of body.events as unknown[]) {
      if (!isObj(ev) || typeof ev.type !== 'string') throw new HttpError(400, 'invalid_request_error', 'each event needs a type');
      if (ev.type === 'user.tool_result' || ev.type === 'user.custom_tool_result') {
        const key = ev.type === 'user.tool_result' ? 'tool_use_id' : 'custom_tool_use_id';
        const useId = ev[key];
        if (typeof useId !== 'string') throw new HttpError(400, 'invalid_request_error', `${key} is required`);
        const use = s.events.find((e) => e.id === useId);
        const wantType = ev.type === 'user.tool_result' ? 'agent.tool_use' : 'agent.custom_tool_use';
        if (!use || use.type !== wantType) throw new HttpError(400, 'invalid_request_error', `${key} ${useId} does not name an ${wantType} event of this session`);
        if (hasResult(s.events, useId) || checked.some((c) => c.answer?.id === useId)) {
          this.duplicateResults.push(useId);
          log.warn(`tool call ${useId} was answered again; refused`);
          throw new HttpError(400, 'invalid_request_error', `${key} ${useId} already has a result: a tool call takes exactly one`);
        }
        if (use.evaluated_permission === 'ask' || (use.evaluated_permission !== undefined && !['allow', 'deny'].includes(String(use.evaluated_permission)))) {
          const conf = s.events.find((e) => e.type === 'user.tool_confirmation' && e.tool_use_id === useId);
          if (!conf) throw new HttpError(400, 'invalid_request_error', `tool call ${useId} requires confirmation: send user.tool_confirmation first`);
          if (conf.result !== 'allow') throw new HttpError(400, 'invalid_request_error', `tool call ${useId} was denied`);
        }
        if (use.evaluated_permission === 'deny') throw new HttpError(400, 'invalid_request_error', `tool call ${useId} was denied`);
        const content = ev.content;
        if (content !== undefined && !Array.isArray(content)) throw new HttpError(400, 'invalid_request_error', 'content must be an array of blocks');
        const texts: string[] = [];
        for (const block of (content ?? []) as unknown[]) {
          if (!isObj(block) || typeof block.type !== 'string') throw new HttpError(400, 'invalid_request_error', 'content blocks need a type');
          if (block.type === 'text') {
            if (typeof block.text !== 'string' || block.text.length < 1) throw new HttpError(400, 'invalid_request_error', 'content.text: minimum string length is 1');
            texts.push(block.text);
          }
        }
        checked.push({ ev, answer: { id: useId, isError: ev.is_error === true, text: texts.join('\n') } });
      } else if (ev.type === 'user.tool_confirmation' || ev.type === 'user.message' || ev.type === 'user.interrupt') {
        checked.push({ ev });
      } else {
        throw new HttpError(400, 'invalid_request_error', `event type ${ev.type} cannot be sent by a client`);
      }
    }
    const echoed: SessionEvent[] = [];
    for (const { ev, answer } of checked) {
      echoed.push(this.emit(s, ev));
      if (answer) {
        this.results.set(answer.id, [...this.results.get(answer.id) ?? [], { isError: answer.isError, text: answer.text, ts: Date.now() }]);
        this.onResult(s, answer.id, answer.isError, answer.text);
      }
    }
    return { status: 200, body: { data: echoed } };
  }

  private stream(id: string, req: http.IncomingMessage, res: http.ServerResponse): typeof STREAMING {
    const s = this.mustSession404(id);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.write(': connected\n\n');
    s.subscribers.add(res);
    const ping = setInterval(() => res.write('event: ping\ndata: {"type":"ping"}\n\n'), PING_INTERVAL_MS);
    const done = () => { clearInterval(ping); s.subscribers.delete(res); };
    req.on('close', done);
    res.on('close', done);
    return STREAMING;
  }

  // ---- skills ------------------------------------------------------------------------------------------------------

  private skillVersion(skillId: string, version: string): Reply {
    const sk = this.skills.get(skillId);
    if (!sk || (version !== 'latest' && version !== sk.versionId)) throw new HttpError(404, 'not_found_error', `skill version ${skillId}/${version} not found`);
    return { status: 200, body: { id: sk.versionId, type: 'skill_version', skill_id: skillId, name: sk.name, version: '1', description: `generated skill ${sk.name}`, directory: sk.name, created_at: iso() } };
  }

  private skillContent(skillId: string, version: string): Reply {
    const sk = this.skills.get(skillId);
    if (!sk || version !== sk.versionId) throw new HttpError(404, 'not_found_error', `skill version ${skillId}/${version} not found`);
    return { status: 200, body: sk.archive };
  }

  // ---- memory stores (enough for the SDK's memory sync) ------------------------------------------------------------

  private store(id: string) {
    let m = this.memories.get(id);
    if (!m) { m = new Map(); this.memories.set(id, m); }
    return m;
  }
  private memJson(storeId: string, m: { id: string; path: string; content: string }, full: boolean) {
    const sha = createHash('sha256').update(m.content).digest('hex');
    return { id: m.id, type: 'memory', memory_store_id: storeId, path: m.path, content_sha256: sha, content_size_bytes: Buffer.byteLength(m.content), created_at: iso(), updated_at: iso(), ...(full ? { content: m.content } : {}) };
  }
  private memList(storeId: string, url: URL): Reply {
    const full = url.searchParams.get('view') === 'full';
    const prefix = url.searchParams.get('path_prefix') ?? '';
    const data = [...this.store(storeId).values()].filter((m) => m.path.startsWith(prefix)).map((m) => this.memJson(storeId, m, full));
    return { status: 200, body: { data, next_page: null } };
  }
  private memGet(storeId: string, memId: string): Reply {
    const m = this.store(storeId).get(memId);
    if (!m) throw new HttpError(404, 'not_found_error', `memory ${memId} not found`);
    return { status: 200, body: this.memJson(storeId, m, true) };
  }
  private memCreate(storeId: string, body: unknown): Reply {
    if (!isObj(body) || typeof body.path !== 'string' || !body.path.startsWith('/') || typeof body.content !== 'string') throw new HttpError(400, 'invalid_request_error', 'path (absolute) and content are required');
    const store = this.store(storeId);
    if ([...store.values()].some((m) => m.path === body.path)) throw new HttpError(409, 'invalid_request_error', `a memory already exists at ${body.path}`);
    const m = { id: rid('mem_local'), path: body.path, content: body.content };
    store.set(m.id, m);
    return { status: 200, body: this.memJson(storeId, m, true) };
  }
  private memUpdate(storeId: string, memId: string, body: unknown): Reply {
    const m = this.store(storeId).get(memId);
    if (!m) throw new HttpError(404, 'not_found_error', `memory ${memId} not found`);
    if (!isObj(body)) throw new HttpError(400, 'invalid_request_error', 'body must be an object');
    const pre = isObj(body.precondition) ? body.precondition.content_sha256 : undefined;
    if (typeof pre === 'string' && pre !== createHash('sha256').update(m.content).digest('hex')) throw new HttpError(409, 'invalid_request_error', 'content_sha256 precondition failed');
    if (typeof body.content === 'string') m.content = body.content;
    if (typeof body.path === 'string') m.path = body.path;
    return { status: 200, body: this.memJson(storeId, m, true) };
  }
  private memDelete(storeId: string, memId: string): Reply {
    const store = this.store(storeId);
    if (!store.delete(memId)) throw new HttpError(404, 'not_found_error', `memory ${memId} not found`);
    return { status: 200, body: { id: memId, type: 'memory_deleted' } };
  }
}

const STREAMING = Symbol('streaming');
interface Reply { status: number; body?: unknown }
interface Route {
  name: string;
  beta: string | null;
  params: Record<string, string>;
  run: (url: URL, body: unknown, req: http.IncomingMessage, res: http.ServerResponse) => Reply | typeof STREAMING | Promise<Reply | typeof STREAMING>;
}

function isObj(v: unknown): v is Record<string, unknown> { return typeof v === 'object' && v !== null && !Array.isArray(v); }

/** Whether the session's history already holds a result (of either kind) for the tool call `useId`. */
function hasResult(events: SessionEvent[], useId: string): boolean {
  return events.some((e) => (e.type === 'user.tool_result' && e.tool_use_id === useId) || (e.type === 'user.custom_tool_result' && e.custom_tool_use_id === useId));
}

async function readBody(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > 8 * 1024 * 1024) throw new HttpError(413, 'request_too_large', 'request body too large');
    chunks.push(c as Buffer);
  }
  if (size === 0) return undefined;
  const text = Buffer.concat(chunks).toString('utf8');
  try { return JSON.parse(text); } catch { throw new HttpError(400, 'invalid_request_error', 'request body is not valid JSON'); }
}
