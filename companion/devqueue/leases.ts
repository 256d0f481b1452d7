// Work items and their leases: the queue a worker polls, acks, heartbeats and stops (protocol doc §4, §5).
// Invariants:
// - 204 on an empty poll (after blocking up to `block_ms`, 1–999); an item polled but not acked is re-offered after
//   `reclaim_older_than_ms`; ack moves queued -> starting and starts the lease.
// - A heartbeat is a compare-and-set on `expected_last_heartbeat`: a mismatch or a lapsed lease answers 412
//   `heartbeat_precondition_failed` with `details.current_state`; heartbeat times strictly increase.
// - A lease that lapsed is re-queued at the next poll (unless `requeueLapsedLeases` is false, modelling the item going
//   to another worker).
// - Stop answers 204 and moves the item to stopping (stopped when forced or still queued); a stop of a stopped item
//   answers 409. Every stop is recorded.
import type http from 'node:http';
import { randomBytes } from 'node:crypto';
import { logger } from '../log';
import type { Recorder } from './recorder';
import { HttpError } from './wire-rules';
import { iso, isObj, rid, type Reply } from './reply';

const log = logger('devqueue');

export interface WorkItem {
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

export interface LeaseOptions {
  environmentId: string;
  /** Lease TTL reported by heartbeats (seconds, default 60). */
  leaseTtlSeconds?: number;
  /** Re-offer an item whose lease lapsed (default true). */
  requeueLapsedLeases?: boolean;
  /** Put a sessions token into each work item's secret (default true, as the real service does). */
  issueSessionsToken?: boolean;
}

export class Leases {
  private lastBeatMs = 0;

  /** `items` is the dev queue's table of work items: this module alone changes it; the server reads it for auth. */
  constructor(private readonly items: Map<string, WorkItem>, private readonly opts: LeaseOptions, private readonly recorder: Recorder) {}

  /** Enqueues a new work item for `dataId` (a session, or a healthcheck). Returns its id. */
  enqueue(dataId: string, type: WorkItem['type']): string {
    const id = rid('work_local');
    const sessionsToken = this.opts.issueSessionsToken === false ? null : `sk-ant-req-dev-${randomBytes(18).toString('base64url')}`;
    const secret = sessionsToken ? Buffer.from(JSON.stringify({ sessions_token: sessionsToken })).toString('base64url') : null;
    this.items.set(id, {
      id, type, dataId, state: 'queued', secret, sessionsToken, created_at: iso(), acknowledged_at: null, started_at: null,
      latest_heartbeat_at: null, stop_requested_at: null, stopped_at: null, lastHeartbeat: null, polledAt: null, leaseExpiresAt: null,
    });
    this.recorder.changed();
    return id;
  }

  /** Another worker takes over the lease: the holder gets a 412 on its next heartbeat. */
  steal(workId: string): void {
    this.mustExist(workId).lastHeartbeat = `${iso()}#other-worker`;
  }

  /** A graceful stop from the control plane: the holder sees `stopping` on its next heartbeat. */
  requestStop(workId: string): void {
    const w = this.mustExist(workId);
    if (w.state !== 'stopped') { w.state = 'stopping'; w.stop_requested_at = iso(); }
  }

  list(): Array<Pick<WorkItem, 'id' | 'type' | 'dataId' | 'state'>> {
    return [...this.items.values()].map((w) => ({ id: w.id, type: w.type, dataId: w.dataId, state: w.state }));
  }

  // ---- endpoints ---------------------------------------------------------------------------------------------------

  async poll(url: URL, req: http.IncomingMessage): Promise<Reply> {
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
      if (w) { w.polledAt = Date.now(); return { status: 200, body: this.json(w, true) }; }
      const left = deadline - Date.now();
      if (left <= 0 || req.destroyed) return { status: 204 };
      await this.recorder.nextChange(Math.min(left, 100));
    }
  }

  ack(id: string): Reply {
    const w = this.mustExist404(id);
    if (w.state !== 'queued') throw new HttpError(409, 'invalid_request_error', `work item ${id} is ${w.state}, not queued`);
    const now = Date.now();
    Object.assign(w, { state: 'starting', acknowledged_at: iso(now), leaseExpiresAt: now + this.ttlSeconds() * 1000 });
    return { status: 200, body: this.json(w, false) };
  }

  heartbeat(id: string, url: URL): Reply {
    const w = this.mustExist404(id);
    const expected = url.searchParams.get('expected_last_heartbeat');
    const ttl = this.ttlSeconds();
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

  stop(id: string, body: unknown): Reply {
    const w = this.mustExist404(id);
    const force = isObj(body) && body.force === true;
    if (w.state === 'stopped') {
      this.recorder.stops.push({ workId: id, force, ts: Date.now(), status: 409 });
      throw new HttpError(409, 'invalid_request_error', `work item ${id} is already stopped`);
    }
    this.recorder.stops.push({ workId: id, force, ts: Date.now(), status: 204 });
    if (force || w.state === 'queued') { w.state = 'stopped'; w.stopped_at = iso(); w.leaseExpiresAt = null; }
    else { w.state = 'stopping'; w.stop_requested_at = iso(); }
    return { status: 204 };
  }

  retrieve(id: string): Reply { return { status: 200, body: this.json(this.mustExist404(id), false) }; }

  stats(): Reply {
    const queued = [...this.items.values()].filter((w) => w.state === 'queued');
    return { status: 200, body: { type: 'work_queue_stats', depth: queued.length, pending: queued.filter((w) => w.polledAt !== null).length, oldest_queued_at: queued[0]?.created_at ?? null, workers_polling: 0 } };
  }

  // ---- internals ---------------------------------------------------------------------------------------------------

  private ttlSeconds(): number { return this.opts.leaseTtlSeconds ?? 60; }

  private claimable(reclaimMs: number): WorkItem | null {
    const now = Date.now();
    for (const w of this.items.values()) {
      if (this.opts.requeueLapsedLeases !== false && (w.state === 'starting' || w.state === 'active') && w.leaseExpiresAt !== null && w.leaseExpiresAt < now) {
        log.info(`lease of ${w.id} lapsed; re-queueing it`);
        Object.assign(w, { state: 'queued', lastHeartbeat: null, polledAt: null, leaseExpiresAt: null });
      }
    }
    for (const w of this.items.values()) {
      if (w.state === 'queued' && (w.polledAt === null || now - w.polledAt >= reclaimMs)) return w;
    }
    return null;
  }

  private json(w: WorkItem, withSecret: boolean) {
    return {
      id: w.id, type: 'work', environment_id: this.opts.environmentId, data: { type: w.type, id: w.dataId }, state: w.state,
      secret: withSecret ? w.secret : null, metadata: {}, created_at: w.created_at, acknowledged_at: w.acknowledged_at,
      started_at: w.started_at, latest_heartbeat_at: w.latest_heartbeat_at, stop_requested_at: w.stop_requested_at, stopped_at: w.stopped_at,
    };
  }

  private mustExist(id: string): WorkItem { const w = this.items.get(id); if (!w) throw new Error(`no work item ${id}`); return w; }

  private mustExist404(id: string): WorkItem {
    const w = this.items.get(id);
    if (!w) throw new HttpError(404, 'not_found_error', `work item ${id} not found`);
    return w;
  }
}
