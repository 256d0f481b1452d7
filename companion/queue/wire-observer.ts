// The worker's view of the SDK's HTTP traffic: the fetch the SDK client is given. It learns what the SDK did without
// changing how it does it, and adapts one response. Invariants:
// - A tool result counts as posted only after the service answered its POST with a 2xx (`resultPosted`).
// - A heartbeat answered 412 means another worker holds the lease (`leaseLost`); nothing else is read into a status,
//   except each poll's outcome (`pollAnswered`: its status and error text, or that no answer came).
// - Every exchange is reported with its operation and status (`exchanged`; status 0 when no response came).
// - Event streams are passed through unchanged, wrapped only so `cutStreams` can fail them: the SDK's reader then gets
//   an ordinary stream error, reconnects and reconciles from history. Each event of a stream, and of every history
//   page the SDK reads, is also handed to `sessionEvent` (parsed from a copy; the SDK's bytes are not touched).
// - A session's memory stores are moved from their host mount path into the session's own work directory
//   (relocateMemoryStores); no other response is altered. An observer failure never fails the request.
import { logger } from '../log';
import { causeChain, errorMessage } from '../errors';
import type { QueueOperation } from '../events';

const log = logger('worker');

export type Fetch = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

export interface WireObserverHooks {
  /** The service accepted the result of this tool call. */
  resultPosted(toolUseId: string): void;
  /** A heartbeat of this work item was refused with 412: the lease belongs to another worker now. */
  leaseLost(workId: string): void;
  /** One HTTP exchange with the service finished (status 0: it failed before a response). */
  exchanged?(operation: QueueOperation, status: number): void;
  /** A poll of the work queue was answered (`error` set for a non-2xx) or got no answer (`status` null). */
  pollAnswered?(status: number | null, error: string | null): void;
  /** One event of a session's history, as the SDK received it (unvalidated JSON). */
  sessionEvent?(sessionId: string, event: unknown): void;
  /** The name of the agent a session runs (from the session record the SDK fetched). */
  agentName?(sessionId: string, name: string): void;
}

/** The queue operation a request URL names (for the metrics). */
export function queueOperation(url: string): QueueOperation {
  const p = new URL(url).pathname;
  if (/\/work\/poll$/.test(p)) return 'poll';
  const work = /\/work\/[^/]+\/(ack|heartbeat|stop)$/.exec(p);
  if (work) return work[1] as QueueOperation;
  if (/^\/v1\/sessions\/[^/]+\/events\/stream$/.test(p)) return 'stream';
  if (/^\/v1\/sessions\/[^/]+\/events$/.test(p)) return 'events';
  if (/^\/v1\/sessions\/[^/]+$/.test(p)) return 'session';
  return 'other';
}

export function requestUrl(input: string | URL | Request): string {
  return typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
}

export class WireObserver {
  /** Live event-stream requests per session (the function that fails one, and when it was opened). */
  private readonly streams = new Map<string, Map<(reason: Error) => void, number>>();

  constructor(private readonly hooks: WireObserverHooks) {}

  /** The fetch given to the SDK client. */
  readonly fetch: Fetch = async (input, init) => {
    const url = requestUrl(input);
    let status = 0;
    try {
      const res = await this.forward(url, input, init);
      status = res.status;
      return res;
    } finally {
      // A request the worker itself cancelled (drain, a superseded session) is no exchange with the service.
      if (status !== 0 || !init?.signal?.aborted) {
        try { this.hooks.exchanged?.(queueOperation(url), status); } catch (err) { log.debug(`wire observer: ${errorMessage(err)}`); }
      }
    }
  };

  private async forward(url: string, input: string | URL | Request, init?: RequestInit): Promise<Response> {
    const method = init?.method ?? 'GET';
    const stream = /\/v1\/sessions\/([^/?]+)\/events\/stream/.exec(url);
    if (stream && method === 'GET') return this.watchedStream(decodeURIComponent(stream[1]!), input, init);
    if (method === 'GET' && queueOperation(url) === 'poll') return this.watchedPoll(input, init);
    const res = await fetch(input, init);
    const pathname = new URL(url).pathname;
    if (method === 'GET' && res.status === 200 && /^\/v1\/sessions\/[^/]+$/.test(pathname)) {
      return relocateMemoryStores(res, (name) => this.hooks.agentName?.(decodeURIComponent(pathname.split('/')[3]!), name));
    }
    const history = /^\/v1\/sessions\/([^/]+)\/events$/.exec(pathname);
    if (history && method === 'GET' && res.status === 200 && this.hooks.sessionEvent) this.readHistoryPage(decodeURIComponent(history[1]!), res.clone());
    try { this.observe(url, method, init?.body, res.status); } catch (err) {
      log.debug(`wire observer: ${errorMessage(err)}`);
    }
    return res;
  }

  /** Fetches a poll and reports how it went (a poll the worker itself aborted, e.g. to drain, is no failure). */
  private async watchedPoll(input: string | URL | Request, init?: RequestInit): Promise<Response> {
    const report = (status: number | null, error: string | null) => {
      try { this.hooks.pollAnswered?.(status, error); } catch (err) { log.debug(`wire observer: ${errorMessage(err)}`); }
    };
    let res: Response;
    try { res = await fetch(input, init); } catch (err) {
      if (!init?.signal?.aborted) report(null, causeChain(err));
      throw err;
    }
    if (res.ok) { report(res.status, null); return res; }
    const text = await res.clone().text().catch(() => '');
    let message = text.slice(0, 300);
    try { message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? message; } catch { /* not JSON */ }
    report(res.status, `${res.status} ${message}`.trim());
    return res;
  }

  private readHistoryPage(sessionId: string, copy: Response): void {
    copy.json().then((body: unknown) => {
      const data = typeof body === 'object' && body !== null ? (body as { data?: unknown }).data : undefined;
      if (Array.isArray(data)) for (const ev of data) this.emitEvent(sessionId, ev);
    }, (err: unknown) => log.debug(`wire observer: history page of ${sessionId}: ${errorMessage(err)}`));
  }

  private emitEvent(sessionId: string, ev: unknown): void {
    try { this.hooks.sessionEvent?.(sessionId, ev); } catch (err) { log.debug(`wire observer: ${errorMessage(err)}`); }
  }

  /** Fails the session's event streams that have been open at least `minAgeMs` (younger ones are still reconciling). */
  cutStreams(sessionId: string, minAgeMs: number, reason: Error): void {
    for (const [cut, openedAt] of this.streams.get(sessionId) ?? []) if (Date.now() - openedAt >= minAgeMs) cut(reason);
  }

  private observe(url: string, method: string, body: unknown, status: number): void {
    const p = new URL(url).pathname;
    let m = /^\/v1\/sessions\/([^/]+)\/events$/.exec(p);
    if (m && method === 'POST' && status >= 200 && status < 300 && typeof body === 'string') {
      const parsed = JSON.parse(body) as { events?: Array<{ type?: string; tool_use_id?: string; custom_tool_use_id?: string }> };
      for (const ev of parsed.events ?? []) {
        const id = ev.type === 'user.tool_result' ? ev.tool_use_id : ev.type === 'user.custom_tool_result' ? ev.custom_tool_use_id : undefined;
        if (id) this.hooks.resultPosted(id);
      }
      return;
    }
    m = /^\/v1\/environments\/[^/]+\/work\/([^/]+)\/heartbeat$/.exec(p);
    if (m && status === 412) this.hooks.leaseLost(decodeURIComponent(m[1]!));
  }

  /**
   * Fetches an SSE stream and wraps its body so cutStreams can fail it. Erroring the wrapper, rather than aborting
   * the request, works whatever the SDK is doing at that moment (an abort of a response whose buffered data was not
   * read yet can leave the reader waiting forever).
   */
  private async watchedStream(sessionId: string, input: string | URL | Request, init?: RequestInit): Promise<Response> {
    const res = await fetch(input, init);
    if (!res.ok || !res.body) return res;
    const reader = res.body.getReader();
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const set = this.streams.get(sessionId) ?? new Map<(reason: Error) => void, number>();
    this.streams.set(sessionId, set);
    const cut = (reason: Error) => {
      set.delete(cut);
      try { controller.error(reason); } catch { /* already closed */ }
      reader.cancel(reason).catch(() => {});
    };
    set.set(cut, Date.now());
    const events = sseEvents((data) => {
      let ev: unknown;
      try { ev = JSON.parse(data); } catch { return; }
      this.emitEvent(sessionId, ev);
    });
    const body = new ReadableStream<Uint8Array>({
      start: (c) => { controller = c; },
      pull: async (c) => {
        try {
          const { done, value } = await reader.read();
          if (done) { set.delete(cut); c.close(); } else { events(value); c.enqueue(value); }
        } catch (err) { set.delete(cut); c.error(err); }
      },
      cancel: (reason) => { set.delete(cut); return reader.cancel(reason); },
    });
    return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
  }
}

/**
 * The SDK downloads a memory store into its `mount_path` (e.g. /mnt/memory/notes) ON THIS HOST, which several
 * concurrent sessions would share and which needs root. Tools run in sandboxes, not here, so the worker moves each
 * store into the session's own host workdir instead: `mount_path` /mnt/memory/<name> is dropped and `name` set to
 * <name>, so the SDK uses <workdir>/memory/<name>; persistence mounts that at /mnt/memory/<name> in the guest,
 * which is exactly the path the agent's system prompt names. Other mount paths are left untouched.
 */
async function relocateMemoryStores(res: Response, agentName: (name: string) => void): Promise<Response> {
  const text = await res.text();
  let body: { resources?: Array<Record<string, unknown>>; agent?: { name?: unknown } };
  try { body = JSON.parse(text) as typeof body; } catch { return new Response(text, { status: res.status, statusText: res.statusText, headers: res.headers }); }
  if (typeof body.agent?.name === 'string') {
    try { agentName(body.agent.name); } catch (err) { log.debug(`wire observer: ${errorMessage(err)}`); }
  }
  let changed = false;
  for (const r of body.resources ?? []) {
    const m = r.type === 'memory_store' && typeof r.mount_path === 'string' ? /^\/mnt\/memory\/([A-Za-z0-9._-]+)\/?$/.exec(r.mount_path) : null;
    if (m && m[1] !== '.' && m[1] !== '..') { r.name = m[1]; delete r.mount_path; changed = true; }
  }
  const headers = new Headers(res.headers);
  headers.delete('content-length');
  headers.delete('content-encoding');
  return new Response(changed ? JSON.stringify(body) : text, { status: res.status, statusText: res.statusText, headers });
}

/** Splits a server-sent-event byte stream into the `data` of each event (multi-line data joined with newlines). */
export function sseEvents(onData: (data: string) => void): (chunk: Uint8Array) => void {
  const decoder = new TextDecoder();
  let buffer = '';
  let data: string[] = [];
  return (chunk) => {
    buffer += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (line === '') {
        if (data.length) onData(data.join('\n'));
        data = [];
      } else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    }
  };
}
