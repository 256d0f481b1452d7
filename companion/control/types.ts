// What the control API server needs from the rest of the companion. The worker command wires real implementations
// in; the server (companion/control/server.ts) depends only on these interfaces.
import type { EventHub } from '../events';
import type { HostFacts, TranscriptEntry, WorkerState } from '../protocol/control';
import type { JournalReader, Page } from '../journal/types';
import type { CallPersistence, PersistHistory } from '../persist/types';

export interface WorkerControl {
  state(): WorkerState;
  /** Why the worker is in its state (e.g. what paused it), when it says. */
  stateDetail?(): string | undefined;
  hostFacts(): HostFacts;
  /** Stop claiming work; in-flight calls finish (bounded), then items are stopped. Resolves when drained. */
  drain(): Promise<void>;
  /** Drain, then exit the companion process. */
  shutdown(): Promise<void>;
}

export interface ControlServerOptions {
  home: string;
  hub: EventHub;
  journal: JournalReader;
  persistence?: CallPersistence;
  /** The persisted-file store's kept generations (browsing, reading, rollback). */
  persistHistory?: PersistHistory;
  /** The sessions' transcripts (prompts, agent messages, verdicts, egress decisions). */
  transcripts?: { read(sessionId: string, page: { limit: number; cursor: string | null }): Page<TranscriptEntry> };
  worker: WorkerControl;
  /** How often connections are pinged; one that misses a ping is dropped at the next (default 30 s). */
  livenessIntervalMs?: number;
  /** How long a client's send backlog above the limit may go without shrinking before it is dropped (default 10 s). */
  stallMs?: number;
}

/** Written to `<home>/control.json` with mode 0600; the extension reads it to connect. */
export interface ControlEndpoint { port: number; token: string; pid: number; version: string }
