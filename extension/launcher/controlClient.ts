// The extension's client for the companion's control API (companion/control/server.ts). Plain Node (`ws`), no
// `vscode`, so unit tests drive it against a real server. Invariants:
// - Every message from the server is parsed with the shared zod schemas; one that does not parse is reported and
//   dropped, never trusted. Every response is parsed again with its method's result schema.
// - A heartbeat (`ping`) runs while connected; when it is not answered within `heartbeatTimeoutMs` the socket is
//   terminated and `onClose` fires with reason `heartbeat`. Liveness of the socket is all this proves: progress of
//   sessions is watched by the view model.
// - Pending requests are rejected when the connection closes; nothing waits forever.
import WebSocket from 'ws';
import {
  ControlResults, ServerMessage, type ControlEvent, type ControlMethod, type ControlResult, type ControlErrorCode,
  type HelloMessage, ControlRequest,
} from '../../companion/protocol/control';
import type { z } from 'zod';
import { Emitter } from '../common/emitter';

export class ControlRequestError extends Error {
  constructor(readonly code: ControlErrorCode | 'closed' | 'timeout', message: string) {
    super(message);
    this.name = 'ControlRequestError';
  }
}

export type CloseReason = 'closed' | 'heartbeat' | 'error';
type ParamsOf<M extends ControlMethod> = Extract<z.input<typeof ControlRequest>, { method: M }>['params'];
/** Methods whose params all have defaults may be called without params. */
type ParamsArg<M extends ControlMethod> = undefined extends ParamsOf<M> ? [params?: ParamsOf<M>] : [params: ParamsOf<M>];

export interface ControlClientOptions {
  port: number;
  token: string;
  host?: string;
  heartbeatMs?: number;
  heartbeatTimeoutMs?: number;
  requestTimeoutMs?: number;
}

interface Pending { method: ControlMethod; resolve(v: unknown): void; reject(e: Error): void; timer: NodeJS.Timeout }

export class ControlClient {
  private ws: WebSocket | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private heartbeat: NodeJS.Timeout | null = null;
  private readonly events = new Emitter<ControlEvent>();
  private readonly closes = new Emitter<{ reason: CloseReason; detail: string }>();
  private readonly protocolErrors = new Emitter<string>();
  private closedReported = false;
  private heartbeatLost = false;
  private hello: HelloMessage | null = null;
  private lastPongAt = 0;

  readonly onEvent = this.events.event;
  readonly onClose = this.closes.event;
  readonly onProtocolError = this.protocolErrors.event;

  constructor(private readonly opts: ControlClientOptions) {}

  /** Opens the socket, authenticates with the Bearer header and resolves with the server's `hello` snapshot. */
  connect(timeoutMs = 10_000): Promise<HelloMessage> {
    const host = this.opts.host ?? '127.0.0.1';
    const ws = new WebSocket(`ws://${host}:${this.opts.port}/`, {
      headers: { authorization: `Bearer ${this.opts.token}` }, handshakeTimeout: timeoutMs, maxPayload: 64 * 1024 * 1024,
    });
    this.ws = ws;
    return new Promise<HelloMessage>((resolve, reject) => {
      let settled = false;
      const fail = (err: Error) => { if (!settled) { settled = true; clearTimeout(timer); reject(err); } };
      const timer = setTimeout(() => { fail(new Error('timed out waiting for the companion hello')); ws.terminate(); }, timeoutMs);
      ws.on('message', (data) => {
        const msg = this.parse(data.toString());
        if (!msg) return;
        if (msg.type === 'hello' && !settled) {
          settled = true; clearTimeout(timer);
          this.hello = msg;
          this.startHeartbeat();
          resolve(msg);
          return;
        }
        this.dispatch(msg);
      });
      ws.on('error', (err) => fail(err));
      ws.on('close', (code, reason) => {
        fail(new Error(`control socket closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`));
        this.finish(code === 1000 || code === 1001 ? 'closed' : 'error', `code ${code}${reason.length ? `: ${reason.toString()}` : ''}`);
      });
    });
  }

  get connected(): boolean { return this.ws?.readyState === WebSocket.OPEN && this.hello !== null; }

  request<M extends ControlMethod>(method: M, ...[params]: ParamsArg<M>): Promise<ControlResult<M>> {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new ControlRequestError('closed', 'not connected to the companion'));
    const id = this.nextId++;
    return new Promise<ControlResult<M>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ControlRequestError('timeout', `${method} timed out`));
      }, this.opts.requestTimeoutMs ?? 30_000);
      this.pending.set(id, { method, resolve: resolve as (v: unknown) => void, reject, timer });
      ws.send(JSON.stringify({ id, method, params: params ?? {} }));
    });
  }

  close(): void {
    this.stopHeartbeat();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'client closing');
  }

  /** Drops the socket at once (no close handshake). */
  terminate(): void { this.ws?.terminate(); }

  private parse(text: string): ServerMessage | null {
    let raw: unknown;
    try { raw = JSON.parse(text); } catch { this.protocolErrors.fire('companion sent a message that is not JSON'); return null; }
    const parsed = ServerMessage.safeParse(raw);
    if (!parsed.success) {
      this.protocolErrors.fire(`companion sent an invalid message: ${parsed.error.issues[0]?.message ?? 'unknown'}`);
      return null;
    }
    return parsed.data;
  }

  private dispatch(msg: ServerMessage): void {
    switch (msg.type) {
      case 'event': this.events.fire(msg.event); return;
      case 'hello': this.hello = msg; return;
      case 'response': {
        const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
        if (!p) return;
        this.pending.delete(msg.id as number); clearTimeout(p.timer);
        const result = ControlResults[p.method].safeParse(msg.result);
        if (result.success) p.resolve(result.data);
        else p.reject(new ControlRequestError('bad_request', `invalid ${p.method} result: ${result.error.issues[0]?.message}`));
        return;
      }
      case 'error': {
        const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
        if (!p) { this.protocolErrors.fire(`companion error: ${msg.code}: ${msg.message}`); return; }
        this.pending.delete(msg.id as number); clearTimeout(p.timer);
        p.reject(new ControlRequestError(msg.code, msg.message));
      }
    }
  }

  private startHeartbeat(): void {
    const every = this.opts.heartbeatMs ?? 5_000;
    const deadline = this.opts.heartbeatTimeoutMs ?? 15_000;
    this.lastPongAt = Date.now();
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastPongAt > deadline) {
        this.heartbeatLost = true;
        this.ws?.terminate();
        return;
      }
      this.request('ping').then(() => { this.lastPongAt = Date.now(); }, () => { /* counted by the deadline */ });
    }, every);
    this.heartbeat.unref?.();
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  private finish(reason: CloseReason, detail: string): void {
    this.stopHeartbeat();
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ControlRequestError('closed', `connection closed before ${p.method} was answered`));
      this.pending.delete(id);
    }
    if (this.closedReported) return;
    this.closedReported = true;
    this.closes.fire({ reason: this.heartbeatLost ? 'heartbeat' : reason, detail });
    this.events.dispose();
  }
}
