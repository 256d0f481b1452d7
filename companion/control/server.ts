// The control API server: a WebSocket on 127.0.0.1 (random port) that the VS Code extension (or any client holding
// the token) uses to watch and steer this companion. Invariants:
// - It listens on 127.0.0.1 only. The port and a fresh random token are written to `<home>/control.json` with mode
//   0600 (atomically: a temp file renamed into place); `close()` removes the file if it is still ours.
// - A connection must authenticate (Bearer header on the upgrade, or an `auth` first message) within AUTH_TIMEOUT_MS;
//   tokens are compared in constant time. Upgrades carrying an `Origin` header (i.e. from a web page) are refused.
// - Every inbound message is parsed with the zod schemas in companion/protocol/control.ts. A bad message gets a typed
//   `error` reply; nothing a client sends can throw out of the server or stop the worker.
// - After authentication the client gets one `hello` snapshot, then every EventHub event as it is published. A client
//   that stops reading (its send buffer above MAX_BUFFERED_BYTES and not shrinking for STALL_MS) is disconnected
//   rather than buffering without bound; it reconnects and re-reads history from the journal. A client that reads is
//   never cut off for what it asked for: history pages stop at PAGE_MAX_BYTES, call summaries (in pages and events)
//   carry at most INPUT_STRING_MAX characters of each input string, and a response waits while the client's buffer
//   holds more than RESPONSE_LOW_WATER_BYTES.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdirSync, writeFileSync, renameSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import type { IncomingMessage } from 'node:http';
import { WebSocketServer, WebSocket, type RawData } from 'ws';
import {
  CONTROL_PROTOCOL_VERSION, ControlRequest, type ControlErrorCode, type ControlEvent, type ControlResult,
  type ControlMethod, type ServerMessage, RequestId, type ToolCallSummary,
} from '../protocol/control';
import type { Page } from '../journal/types';
import { statePaths } from '../config';
import { hasSessionStore, unknownSessionMessage } from '../persist/known-session';
import { logger } from '../log';
import { errorMessage, PerimeterError } from '../errors';
import { PERSIST_NOT_FOUND } from '../persist/types';
import type { ControlEndpoint, ControlServerOptions } from './types';

const log = logger('control');
const AUTH_TIMEOUT_MS = 10_000;
const MAX_MESSAGE_BYTES = 256 * 1024;
const MAX_BUFFERED_BYTES = 16 * 1024 * 1024;
const STALL_MS = 10_000;
const RESPONSE_LOW_WATER_BYTES = 1024 * 1024;
const PAGE_MAX_BYTES = 512 * 1024;
const INPUT_STRING_MAX = 2048;
const LIVENESS_INTERVAL_MS = 30_000;

/** A request failure that becomes a typed `error` reply. */
class RequestError extends Error {
  constructor(readonly code: ControlErrorCode, message: string) { super(message); }
}

export interface ControlServer { endpoint: ControlEndpoint; close(): Promise<void> }

export async function startControlServer(opts: ControlServerOptions): Promise<ControlServer> {
  const token = randomBytes(32).toString('base64url');
  const tokenBytes = Buffer.from(token);
  const wss = new WebSocketServer({
    host: '127.0.0.1', port: 0, maxPayload: MAX_MESSAGE_BYTES, clientTracking: true,
    // Browsers always send Origin; our clients (Node `ws`) do not. Refusing it closes the drive-by-web-page hole.
    verifyClient: (info: { req: IncomingMessage }) => info.req.headers.origin === undefined,
  });
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  wss.on('error', (err) => log.error('server error:', err));
  const port = (wss.address() as { port: number }).port;
  const version = opts.worker.hostFacts().version;
  const endpoint: ControlEndpoint = { port, token, pid: process.pid, version };
  const controlFile = statePaths(opts.home).controlFile;
  writeEndpointFile(controlFile, endpoint);
  log.info(`listening on 127.0.0.1:${port}`);

  const authed = new Set<WebSocket>();
  const unsubscribe = opts.hub.subscribe((event) => broadcast(event));

  /** Per connection over MAX_BUFFERED_BYTES: its lowest send-buffer level so far, and since when it has not shrunk. */
  const backlog = new WeakMap<WebSocket, { since: number; lowest: number }>();

  function notReading(ws: WebSocket): boolean {
    const level = ws.bufferedAmount;
    if (level <= MAX_BUFFERED_BYTES) { backlog.delete(ws); return false; }
    const b = backlog.get(ws);
    if (!b || level < b.lowest) { backlog.set(ws, { since: Date.now(), lowest: level }); return false; }
    return Date.now() - b.since > (opts.stallMs ?? STALL_MS);
  }

  function send(ws: WebSocket, msg: ServerMessage): void {
    if (ws.readyState !== WebSocket.OPEN) return;
    if (notReading(ws)) {
      log.warn('a control client is not reading; disconnecting it');
      ws.terminate();
      return;
    }
    ws.send(JSON.stringify(msg));
  }

  /** Sends a response once the client has read what it was sent before (or gave up). */
  async function respond(ws: WebSocket, msg: ServerMessage): Promise<void> {
    while (ws.readyState === WebSocket.OPEN && ws.bufferedAmount > RESPONSE_LOW_WATER_BYTES && !notReading(ws)) {
      await new Promise((r) => setTimeout(r, 10));
    }
    send(ws, msg);
  }

  function broadcast(event: ControlEvent): void {
    const bounded = boundEvent(event);
    for (const ws of authed) send(ws, { type: 'event', event: bounded });
  }

  function tokenMatches(candidate: string | undefined): boolean {
    if (!candidate) return false;
    const b = Buffer.from(candidate);
    return b.length === tokenBytes.length && timingSafeEqual(b, tokenBytes);
  }

  function admit(ws: WebSocket): void {
    authed.add(ws);
    send(ws, {
      type: 'hello', protocol: CONTROL_PROTOCOL_VERSION, version,
      state: opts.worker.state(), facts: opts.worker.hostFacts(), serverTime: Date.now(),
      ...(opts.worker.stateDetail?.() ? { stateDetail: opts.worker.stateDetail() } : {}),
    });
  }

  async function serve(req: ControlRequest): Promise<ControlResult<ControlMethod>> {
    switch (req.method) {
      case 'auth': return { ok: true };
      case 'ping': return { ts: Date.now(), state: opts.worker.state() };
      case 'listSessions': return boundedPage((limit) => opts.journal.listSessions({ limit, cursor: req.params.cursor ?? null }), req.params.limit);
      case 'listCalls': {
        const { sessionId, cursor } = req.params;
        return boundedPage((limit) => opts.journal.listCalls(sessionId, { limit, cursor: cursor ?? null }), req.params.limit, boundCall);
      }
      case 'getCallOutput': {
        const found = opts.journal.callOutput(req.params.toolUseId);
        if (!found) throw new RequestError('not_found', `no tool call ${req.params.toolUseId}`);
        return found;
      }
      case 'getPersist': return requirePersistence().state(req.params.sessionId);
      // The persistence layer publishes `persist.changed` itself, for every client and the CLI alike.
      case 'setPersist': return requirePersistence().setPatterns(req.params.sessionId, req.params.patterns);
      case 'getTranscript': {
        const { sessionId, limit, cursor } = req.params;
        return opts.transcripts?.read(sessionId, { limit, cursor: cursor ?? null }) ?? { items: [], nextCursor: null };
      }
      case 'listGenerations': return { sessionId: req.params.sessionId, ...await requireHistory().generations(req.params.sessionId) };
      case 'listPersistFiles': {
        const { sessionId, generation, limit, cursor } = req.params;
        return { sessionId, generation, ...await requireHistory().entries(sessionId, generation, { limit, cursor: cursor ?? null }) };
      }
      case 'readPersistFile': {
        const { sessionId, generation, path: guestPath, offset, length } = req.params;
        const { size, data } = await requireHistory().readFile(sessionId, generation, guestPath, offset, length);
        return { size, offset, data: data.toString('base64'), eof: offset + data.length >= size };
      }
      case 'rollbackPersist': return requireHistory().rollback(req.params.sessionId, req.params.generation);
      case 'collectDisks': {
        const history = requireHistory();
        if (!history.collect) throw new RequestError('unavailable', 'this companion keeps no session disks');
        return history.collect(req.params);
      }
      case 'drain':
        await opts.worker.drain();
        return { state: opts.worker.state() };
      case 'shutdown':
        // Reply first: the process is about to exit.
        setImmediate(() => { opts.worker.shutdown().catch((err) => log.error('shutdown failed:', err)); });
        return { accepted: true };
    }
  }

  function requireHistory() {
    if (!opts.persistHistory) throw new RequestError('unavailable', 'this companion keeps no persisted-file generations');
    return opts.persistHistory;
  }

  /** A question about a session this companion never served and holds nothing for is an error, not an empty answer
   *  (persist/known-session.ts); setting the persist list of a session not seen yet prepares it. */
  async function requireKnownSession(req: ControlRequest): Promise<void> {
    if (!('sessionId' in req.params) || req.method === 'setPersist') return;
    const { sessionId } = req.params;
    if (opts.journal.hasSession(sessionId) || await hasSessionStore(opts.home, sessionId)) return;
    throw new RequestError('not_found', unknownSessionMessage(sessionId));
  }

  function requirePersistence() {
    if (!opts.persistence) throw new RequestError('unavailable', 'this companion has no persisted-file store');
    return opts.persistence;
  }

  async function onMessage(ws: WebSocket, data: RawData, isBinary: boolean): Promise<void> {
    let raw: unknown;
    try {
      if (isBinary) throw new Error('binary frames are not accepted');
      raw = JSON.parse(data.toString());
    } catch (err) {
      return send(ws, { type: 'error', id: null, code: 'bad_request', message: `not a JSON text message: ${errorMessage(err)}` });
    }
    const parsed = ControlRequest.safeParse(raw);
    const id = requestIdOf(raw);
    if (!parsed.success) {
      const issues = parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(message)'}: ${i.message}`).join('; ');
      return send(ws, { type: 'error', id, code: 'bad_request', message: issues });
    }
    const req = parsed.data;
    if (!authed.has(ws)) {
      if (req.method === 'auth' && tokenMatches(req.params.token)) {
        send(ws, { type: 'response', id: req.id, result: { ok: true } });
        return admit(ws);
      }
      send(ws, { type: 'error', id: req.id, code: 'unauthorized', message: 'authenticate first with the token from control.json' });
      ws.close(4401, 'unauthorized');
      return;
    }
    try {
      await requireKnownSession(req);
      const result = await serve(req);
      await respond(ws, { type: 'response', id: req.id, result });
    } catch (err) {
      const code = err instanceof RequestError ? err.code : err instanceof PerimeterError ? persistErrorCode(err) : 'internal';
      if (code === 'internal') log.warn(`${req.method} failed: ${errorMessage(err)}`);
      send(ws, { type: 'error', id: req.id, code, message: errorMessage(err) });
    }
  }

  /** Whether each connection answered the last liveness ping. */
  const answered = new WeakMap<WebSocket, boolean>();
  wss.on('connection', (ws, req) => {
    answered.set(ws, true);
    ws.on('pong', () => answered.set(ws, true));
    ws.on('error', (err) => log.debug('client socket error:', errorMessage(err)));
    ws.on('close', () => authed.delete(ws));
    ws.on('message', (data, isBinary) => { void onMessage(ws, data, isBinary); });
    const header = req.headers.authorization;
    if (header !== undefined) {
      if (header.startsWith('Bearer ') && tokenMatches(header.slice('Bearer '.length))) return admit(ws);
      ws.close(4401, 'unauthorized');
      return;
    }
    const timer = setTimeout(() => { if (!authed.has(ws)) ws.close(4401, 'authentication timeout'); }, AUTH_TIMEOUT_MS);
    ws.once('close', () => clearTimeout(timer));
  });

  // Drops connections whose peer vanished without a close (a cut SSH tunnel can leave half-open sockets).
  const liveness = setInterval(() => {
    for (const ws of wss.clients) {
      if (answered.get(ws) === false) { ws.terminate(); continue; }
      answered.set(ws, false);
      ws.ping();
    }
  }, opts.livenessIntervalMs ?? LIVENESS_INTERVAL_MS);
  liveness.unref();

  let closed: Promise<void> | null = null;
  return {
    endpoint,
    close() {
      closed ??= (async () => {
        clearInterval(liveness);
        unsubscribe();
        for (const ws of wss.clients) ws.close(1001, 'companion stopping');
        await new Promise<void>((resolve) => {
          const force = setTimeout(() => { for (const ws of wss.clients) ws.terminate(); }, 1000);
          force.unref();
          wss.close(() => { clearTimeout(force); resolve(); });
        });
        removeEndpointFileIfOurs(controlFile, token);
      })();
      return closed;
    },
  };
}

/**
 * A journal page of at most `limit` items and about PAGE_MAX_BYTES of JSON (always at least one item): when the
 * items overflow, the page is read again with the smaller limit, so its cursor stays the journal's own.
 */
function boundedPage<T>(read: (limit: number) => Page<T>, limit: number, bound: (item: T) => T = (item) => item): Page<T> {
  const page = read(limit);
  const items = page.items.map(bound);
  let bytes = 0;
  let fits = 0;
  for (const item of items) {
    bytes += JSON.stringify(item).length;
    if (fits > 0 && bytes > PAGE_MAX_BYTES) break;
    fits++;
  }
  if (fits === items.length) return { items, nextCursor: page.nextCursor };
  const shorter = read(fits);
  return { items: shorter.items.map(bound), nextCursor: shorter.nextCursor };
}

/** A call summary whose input strings are cut to INPUT_STRING_MAX characters (`inputTruncated` says so). */
function boundCall(call: ToolCallSummary): ToolCallSummary {
  let cut = false;
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') {
      if (v.length <= INPUT_STRING_MAX) return v;
      cut = true;
      return `${v.slice(0, INPUT_STRING_MAX)}… [${v.length - INPUT_STRING_MAX} more characters]`;
    }
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    return v;
  };
  const input = walk(call.input);
  return cut ? { ...call, input, inputTruncated: true } : call;
}

function boundEvent(event: ControlEvent): ControlEvent {
  return event.type === 'call.started' || event.type === 'call.finished' ? { ...event, call: boundCall(event.call) } : event;
}

/** A persisted-file store's refusal as the client should read it: unknown generation or file, a bad session id. */
function persistErrorCode(err: PerimeterError): ControlErrorCode {
  if (err.code === PERSIST_NOT_FOUND) return 'not_found';
  if (err.code === 'persist_session_invalid' || err.code === 'persist_pattern_invalid') return 'bad_request';
  return 'internal';
}

function requestIdOf(raw: unknown): RequestId | null {
  if (typeof raw !== 'object' || raw === null) return null;
  // Only an id the protocol allows is echoed: a reply must parse on the client's side too.
  const id = RequestId.safeParse((raw as { id?: unknown }).id);
  return id.success ? id.data : null;
}

/** Writes control.json with mode 0600 via a temp file and rename, so a reader never sees half a file. */
function writeEndpointFile(file: string, endpoint: ControlEndpoint): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(endpoint) + '\n', { mode: 0o600 });
  renameSync(tmp, file);
}

function removeEndpointFileIfOurs(file: string, token: string): void {
  try {
    const current = JSON.parse(readFileSync(file, 'utf8')) as { token?: string };
    if (current.token === token) rmSync(file, { force: true });
  } catch { /* already gone or replaced */ }
}
