// The embedded control plane ("dev queue"): a node:http server on 127.0.0.1 that speaks the same HTTP + SSE wire
// protocol as Anthropic for everything a self-hosted worker calls, and plays a scripted agent from a Scenario. This
// module is the HTTP surface only: the route table, authentication, and the order every request goes through. The
// concerns live beside it: leases.ts (work items), player.ts (sessions and the scripted agent), resources.ts (skills
// and memory stores), faults.ts (fault injection), recorder.ts (the test oracle), wire-rules.ts (request rules).
// Invariants:
// - Every request goes: route -> count -> injected fault (before any side effect, so faults never change state) ->
//   credential -> `anthropic-version` -> beta header -> endpoint; every request is recorded, whatever its outcome.
// - Auth (wire-rules.ts ROUTE_CREDENTIALS): each route accepts only the credentials the docs name for it: the
//   environment key (Bearer), the per-item sessions token (from the work secret) for its own item, session, skills
//   and memory stores only, an organisation API key (`apiKey`, Bearer or `x-api-key`) for work retrieve, stats, stop.
//   Environments and sessions endpoints need the managed-agents beta header.
// - Every refusal is answered like the API: `{type:'error', error:{type, message}}`; an unexpected exception is a
//   500 `api_error` and is logged.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { logger } from '../log';
import type { Scenario } from './scenario';
import { FaultInjector, type DevQueueFaults } from './faults';
import { Leases, type WorkItem } from './leases';
import { ScenarioPlayer, type SessionEvent, type StepReport } from './player';
import { Recorder, type RecordedRequest } from './recorder';
import { Resources } from './resources';
import { HttpError, checkAnthropicVersion, requireCredentialFor, type Credential } from './wire-rules';
import { STREAMING, rid, type EndpointResult } from './reply';

const log = logger('devqueue');
const MANAGED_AGENTS_BETA = 'managed-agents-2026-04-01';
const MAX_BODY_BYTES = 8 * 1024 * 1024;

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

interface Route {
  name: string;
  beta: string | null;
  params: Record<string, string>;
  run: (url: URL, body: unknown, req: http.IncomingMessage, res: http.ServerResponse) => EndpointResult | Promise<EndpointResult>;
}

export class DevQueue {
  readonly environmentId: string;
  readonly environmentKey: string;
  readonly apiKey: string;
  private server: http.Server | null = null;
  private port = 0;
  private readonly recorder = new Recorder();
  /** The work items, by id (changed only by `leases`; read here to resolve sessions tokens). */
  private readonly work = new Map<string, WorkItem>();
  private readonly injector: FaultInjector;
  private readonly leases: Leases;
  private readonly player: ScenarioPlayer;
  private readonly resources = new Resources();
  readonly requests: RecordedRequest[] = this.recorder.requests;
  /** The result accepted per tool_use_id (one at most: a further one lands in `duplicateResults`). */
  readonly results = this.recorder.results;
  /** tool_use_ids for which a further result was posted (and refused) after the first. */
  readonly duplicateResults = this.recorder.duplicateResults;
  /** Every stop posted: work id and whether it was forced. */
  readonly stops = this.recorder.stops;

  constructor(private readonly opts: DevQueueOptions = {}) {
    this.environmentId = opts.environmentId ?? rid('env_local');
    this.environmentKey = opts.environmentKey ?? `sk-ant-env01-dev-${randomBytes(18).toString('base64url')}`;
    this.apiKey = opts.apiKey ?? `sk-ant-api03-dev-${randomBytes(18).toString('base64url')}`;
    this.injector = new FaultInjector(opts.faults);
    this.leases = new Leases(this.work, { environmentId: this.environmentId, leaseTtlSeconds: opts.leaseTtlSeconds, requeueLapsedLeases: opts.requeueLapsedLeases, issueSessionsToken: opts.issueSessionsToken }, this.recorder);
    this.player = new ScenarioPlayer({ environmentId: this.environmentId, unansweredWaitMs: opts.unansweredWaitMs }, this.recorder, this.injector);
  }

  /** The faults injected from now on (replaceable while running). */
  get faults(): DevQueueFaults { return this.injector.faults; }
  set faults(f: DevQueueFaults) { this.injector.faults = f; }

  /** Faults injected so far, by kind. */
  get injected(): FaultInjector['injected'] { return this.injector.injected; }

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
    this.player.close();
    if (!this.server) return;
    const srv = this.server;
    this.server = null;
    srv.closeAllConnections();
    await new Promise<void>((resolve) => srv.close(() => resolve()));
  }

  // ---- scenario control (used by the CLI and the tests) ------------------------------------------------------------

  /** Creates a session playing `scenario` and enqueues its work item. Returns the session id. */
  createSession(scenario: Scenario): string {
    const skills = scenario.skills.map((sk) => this.resources.addSkill(sk.name, sk.files));
    const stores = scenario.memoryStores.map((ms) => this.resources.addMemoryStore(ms.name, ms.access, ms.memories));
    const id = this.player.start(scenario, skills, stores);
    this.enqueueWork(id);
    return id;
  }

  /** Enqueues a (new) work item for a session, as the service does when a dormant session gets a message. */
  enqueueWork(sessionId: string, type: WorkItem['type'] = 'session'): string { return this.leases.enqueue(sessionId, type); }

  /** Simulates another worker taking over the lease: this item's holder gets a 412 on its next heartbeat. */
  stealLease(workId: string): void { this.leases.steal(workId); }

  /** Requests a graceful stop from the control plane (the holder sees `stopping` on its next heartbeat). */
  requestStop(workId: string): void { this.leases.requestStop(workId); }

  terminateSession(sessionId: string): void { this.player.terminate(sessionId); }

  /** Archives a session as its owner would (POST /v1/sessions/{id}/archive). */
  archiveSession(sessionId: string): void { this.player.archive(sessionId); }

  /** Appends a user event (e.g. a `user.tool_confirmation`) as if the user's client had sent it. */
  userEvent(sessionId: string, event: Record<string, unknown>): void { this.player.userEvent(sessionId, event); }

  report(sessionId: string): { finished: boolean; steps: StepReport[] } { return this.player.report(sessionId); }

  workItems(): Array<Pick<WorkItem, 'id' | 'type' | 'dataId' | 'state'>> { return this.leases.list(); }

  sessionEvents(sessionId: string): SessionEvent[] { return this.player.events(sessionId); }

  /** The memories of a session's store, by name (path -> content). */
  memoryContents(sessionId: string, storeName: string): Record<string, string> {
    const ms = this.player.mustExist(sessionId).memoryStores.find((m) => m.name === storeName);
    if (!ms) throw new Error(`no memory store ${storeName} in ${sessionId}`);
    return this.resources.memoryContents(ms.memory_store_id);
  }

  /** Resolves when `predicate` holds (checked after every state change), or rejects after `timeoutMs`. */
  waitFor(predicate: () => boolean, timeoutMs = 60_000, what = 'condition'): Promise<void> {
    return this.recorder.waitFor(predicate, timeoutMs, what);
  }

  // ---- HTTP --------------------------------------------------------------------------------------------------------

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const method = req.method ?? 'GET';
    const record: RecordedRequest = { ts: Date.now(), method, route: '?', path: url.pathname, status: 0, auth: 'none' };
    try {
      const body = await readBody(req);
      const route = this.route(method, url.pathname);
      if (!route) throw new HttpError(404, 'not_found_error', `no route for ${method} ${url.pathname}`);
      record.route = route.name;
      record.workId = route.params.work;
      record.sessionId = route.params.session;
      this.injector.count(method);
      if (this.injector.hangs(route.name)) {
        record.status = -1;
        await new Promise<void>((resolve) => { req.once('close', resolve); res.once('close', resolve); });
        return;
      }
      const fault = this.injector.pick(route.name, method);
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
      if (!(err instanceof HttpError)) log.error(`internal error on ${method} ${url.pathname}: ${(err as Error).stack}`);
      record.status = e.status;
      if (!res.headersSent) {
        res.writeHead(e.status, { 'content-type': 'application/json', 'request-id': rid('req_local') });
        res.end(JSON.stringify({ type: 'error', error: { type: e.type, message: e.message, ...e.extra } }));
      } else res.destroy();
    } finally {
      this.recorder.requests.push(record);
      this.recorder.changed();
    }
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
    const session = this.player.find(item.dataId);
    if (params.skill !== undefined) return session?.skills.some((k) => k.skill_id === params.skill) ?? false;
    if (params.store !== undefined) return session?.memoryStores.some((m) => m.memory_store_id === params.store) ?? false;
    return false;
  }

  private route(method: string, p: string): Route | null {
    const seg = p.split('/').filter(Boolean).map(decodeURIComponent);
    const R = (name: string, beta: string | null, params: Record<string, string>, run: Route['run']): Route => ({ name, beta, params, run });
    if (seg[0] !== 'v1') return null;
    if (seg[1] === 'environments' && seg[2] && seg[3] === 'work') {
      if (seg[2] !== this.environmentId) return R('environment.unknown', null, {}, () => { throw new HttpError(404, 'not_found_error', `environment ${seg[2]} not found`); });
      const leases = this.leases;
      if (method === 'GET' && seg[4] === 'poll' && seg.length === 5) return R('work.poll', MANAGED_AGENTS_BETA, {}, (url, _b, req) => leases.poll(url, req));
      if (method === 'GET' && seg[4] === 'stats' && seg.length === 5) return R('work.stats', MANAGED_AGENTS_BETA, {}, () => leases.stats());
      const work = seg[4];
      if (work && method === 'POST' && seg[5] === 'ack' && seg.length === 6) return R('work.ack', MANAGED_AGENTS_BETA, { work }, () => leases.ack(work));
      if (work && method === 'POST' && seg[5] === 'heartbeat' && seg.length === 6) return R('work.heartbeat', MANAGED_AGENTS_BETA, { work }, (url) => leases.heartbeat(work, url));
      if (work && method === 'POST' && seg[5] === 'stop' && seg.length === 6) return R('work.stop', MANAGED_AGENTS_BETA, { work }, (_u, body) => leases.stop(work, body));
      if (work && method === 'GET' && seg.length === 5) return R('work.retrieve', MANAGED_AGENTS_BETA, { work }, () => leases.retrieve(work));
      return null;
    }
    if (seg[1] === 'sessions' && seg[2]) {
      const session = seg[2];
      const player = this.player;
      if (method === 'GET' && seg.length === 3) return R('sessions.retrieve', MANAGED_AGENTS_BETA, { session }, () => player.retrieve(session));
      if (method === 'POST' && seg[3] === 'archive' && seg.length === 4) return R('sessions.archive', MANAGED_AGENTS_BETA, { session }, () => player.archive(session));
      if (method === 'GET' && seg[3] === 'events' && seg.length === 4) return R('events.list', MANAGED_AGENTS_BETA, { session }, (url) => player.listEvents(session, url));
      if (method === 'POST' && seg[3] === 'events' && seg.length === 4) return R('events.send', MANAGED_AGENTS_BETA, { session }, (_u, body) => player.sendEvents(session, body));
      if (method === 'GET' && seg[3] === 'events' && seg[4] === 'stream' && seg.length === 5) return R('events.stream', MANAGED_AGENTS_BETA, { session }, (_u, _b, req, res) => player.stream(session, req, res));
      return null;
    }
    const resources = this.resources;
    if (seg[1] === 'skills' && seg[2] && seg[3] === 'versions' && seg[4]) {
      const skill = seg[2]; const version = seg[4];
      if (method === 'GET' && seg.length === 5) return R('skills.version', null, { skill }, () => resources.skillVersion(skill, version));
      if (method === 'GET' && seg[5] === 'content' && seg.length === 6) return R('skills.content', null, { skill }, () => resources.skillContent(skill, version));
      return null;
    }
    if (seg[1] === 'memory_stores' && seg[2] && seg[3] === 'memories') {
      const store = seg[2]; const mem = seg[4];
      if (method === 'GET' && seg.length === 4) return R('memory.list', null, { store }, (url) => resources.memList(store, url));
      if (method === 'POST' && seg.length === 4) return R('memory.create', null, { store }, (_u, body) => resources.memCreate(store, body));
      if (mem && method === 'GET' && seg.length === 5) return R('memory.retrieve', null, { store }, () => resources.memGet(store, mem));
      if (mem && method === 'POST' && seg.length === 5) return R('memory.update', null, { store }, (_u, body) => resources.memUpdate(store, mem, body));
      if (mem && method === 'DELETE' && seg.length === 5) return R('memory.delete', null, { store }, () => resources.memDelete(store, mem));
    }
    return null;
  }
}

async function readBody(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, 'request_too_large', 'request body too large');
    chunks.push(c as Buffer);
  }
  if (size === 0) return undefined;
  const text = Buffer.concat(chunks).toString('utf8');
  try { return JSON.parse(text); } catch { throw new HttpError(400, 'invalid_request_error', 'request body is not valid JSON'); }
}
