// The companion's in-process event hub. Worker, sandbox, persistence and egress publish `ControlEvent`s here; the
// control API server forwards them to connected clients. Beside them travel `Observation`s: facts only the companion's
// own instruments read (the Prometheus metrics, service/metrics.ts), never sent to a control client. Publishing never
// throws into the publisher: a failing subscriber is isolated.
import { EventEmitter } from 'node:events';
import type { ControlEvent } from './protocol/control';

/** How long each phase of one tool call took (ms); a phase the call did not reach is absent. */
export interface CallPhases {
  /** A sandbox taken from the pool or restored from the template snapshot. */
  restore?: number;
  /** The session's persisted files, shell state and skills placed in the sandbox. */
  copyIn?: number;
  /** The tool itself, in the sandbox. */
  exec?: number;
  /** What changed under the persisted paths copied out and committed. */
  copyOut?: number;
}

export type Observation =
  /** A tool call ran in a sandbox (one per run; a call answered from the journal is not run). */
  | { type: 'call.phases'; tool: string; phases: CallPhases }
  /** One HTTP exchange of the worker with the work queue (`status` 0: no response, e.g. a connection error). */
  | { type: 'queue.request'; operation: QueueOperation; status: number };

export type QueueOperation = 'poll' | 'ack' | 'heartbeat' | 'stop' | 'events' | 'stream' | 'session' | 'other';

export class EventHub {
  private readonly emitter = new EventEmitter();
  constructor() { this.emitter.setMaxListeners(100); }

  publish(event: ControlEvent): void { this.emit('event', event); }

  subscribe(listener: (event: ControlEvent) => void): () => void { return this.on('event', listener); }

  observe(observation: Observation): void { this.emit('observation', observation); }

  subscribeObservations(listener: (observation: Observation) => void): () => void { return this.on('observation', listener); }

  private emit(channel: string, value: unknown): void {
    for (const listener of this.emitter.listeners(channel)) {
      try { (listener as (v: unknown) => void)(value); } catch { /* a subscriber's failure is its own */ }
    }
  }

  private on<T>(channel: string, listener: (value: T) => void): () => void {
    this.emitter.on(channel, listener);
    return () => this.emitter.off(channel, listener);
  }
}
