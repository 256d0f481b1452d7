// The companion's in-process event hub. Worker, sandbox, persistence and egress publish `ControlEvent`s here; the
// control API server forwards them to connected clients. Publishing never throws into the publisher: a failing
// subscriber is isolated.
import { EventEmitter } from 'node:events';
import type { ControlEvent } from './protocol/control';

export class EventHub {
  private readonly emitter = new EventEmitter();
  constructor() { this.emitter.setMaxListeners(100); }

  publish(event: ControlEvent): void {
    for (const listener of this.emitter.listeners('event')) {
      try { (listener as (e: ControlEvent) => void)(event); } catch { /* a subscriber's failure is its own */ }
    }
  }

  subscribe(listener: (event: ControlEvent) => void): () => void {
    this.emitter.on('event', listener);
    return () => this.emitter.off('event', listener);
  }
}
