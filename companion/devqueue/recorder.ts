// The dev queue as test oracle: every request (route, status, credential kind), the result accepted per tool call,
// every refused second result, every stop, and one change signal that wakes blocked polls and `waitFor` checks.
// Invariants: records are only appended, never rewritten, so a test reads a complete history; every state change
// anywhere in the dev queue ends with `changed()`, so a waiter never misses one.
import { EventEmitter } from 'node:events';
import type { Credential } from './wire-rules';

export interface RecordedRequest { ts: number; method: string; route: string; path: string; status: number; workId?: string; sessionId?: string; auth: Credential | 'none' | 'bad' }
export interface RecordedResult { isError: boolean; text: string; ts: number }
export interface RecordedStop { workId: string; force: boolean; ts: number; status: number }

export class Recorder {
  readonly requests: RecordedRequest[] = [];
  /** The result accepted per tool_use_id (one at most: a further one lands in `duplicateResults`). */
  readonly results = new Map<string, RecordedResult[]>();
  /** tool_use_ids for which a further result was posted (and refused) after the first. */
  readonly duplicateResults: string[] = [];
  /** Every stop posted: work id, whether it was forced, and the status it got. */
  readonly stops: RecordedStop[] = [];
  private readonly changes = new EventEmitter();

  constructor() { this.changes.setMaxListeners(1000); }

  changed(): void { this.changes.emit('change'); }

  result(toolUseId: string, isError: boolean, text: string): void {
    this.results.set(toolUseId, [...this.results.get(toolUseId) ?? [], { isError, text, ts: Date.now() }]);
  }

  /** Resolves at the next change, or after `maxMs`, whichever comes first. */
  nextChange(maxMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); this.changes.off('change', done); resolve(); };
      const timer = setTimeout(done, maxMs);
      this.changes.once('change', done);
    });
  }

  /** Resolves when `predicate` holds (checked after every change), or rejects after `timeoutMs`. */
  waitFor(predicate: () => boolean, timeoutMs = 60_000, what = 'condition'): Promise<void> {
    return new Promise((resolve, reject) => {
      if (predicate()) return resolve();
      const check = () => { if (predicate()) { cleanup(); resolve(); } };
      const timer = setTimeout(() => { cleanup(); reject(new Error(`dev queue: timed out waiting for ${what}`)); }, timeoutMs);
      const iv = setInterval(check, 100);
      const cleanup = () => { clearTimeout(timer); clearInterval(iv); this.changes.off('change', check); };
      this.changes.on('change', check);
    });
  }
}
