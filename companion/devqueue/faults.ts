// Fault injection for the tests: rate limits (429 with retry-after), server errors (500/502/503/529), malformed JSON
// bodies, SSE streams dropped after N events, and heartbeats that are never answered.
// Invariants: an injected fault is answered before authentication and before any side effect, so it never changes
// state and "no result lost, none duplicated" stays checkable; malformed bodies go only to GETs of routes whose
// failures the SDK retries; the cadences count requests that reached a route; `injected` counts every fault sent.
import type http from 'node:http';

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

/** A fault chosen for one request: the status it records and how it is written. */
export interface InjectedFault { status: number; send: (res: http.ServerResponse) => void }

export class FaultInjector {
  /** Faults injected so far, by kind. */
  readonly injected = { rateLimited: 0, serverErrors: 0, malformed: 0, streamDrops: 0, hungHeartbeats: 0 };
  private requestCount = 0;
  private getCount = 0;

  constructor(public faults: DevQueueFaults = {}) {}

  /** Counts a request that reached a route: the cadences below are over these. */
  count(method: string): void {
    this.requestCount++;
    if (method === 'GET') this.getCount++;
  }

  /** Whether this request is a heartbeat to leave unanswered (counted when it is). */
  hangs(route: string): boolean {
    if (route !== 'work.heartbeat' || !this.faults.hangHeartbeats) return false;
    this.injected.hungHeartbeats++;
    return true;
  }

  /** The fault this request gets, if any (counted when one is chosen). */
  pick(route: string, method: string): InjectedFault | null {
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

  /** Whether a stream that has now delivered `sent` events is to be dropped (counted when it is). */
  dropsStream(sent: number): boolean {
    if (!this.faults.dropStreamAfterEvents || sent < this.faults.dropStreamAfterEvents) return false;
    this.injected.streamDrops++;
    return true;
  }
}
