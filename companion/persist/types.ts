// The contract between the call orchestrator (companion/tools) and the persisted-file store (companion/persist).
// The orchestrator calls `prepare` on every fresh sandbox before a tool runs and `commit` after it, and posts the
// tool result only after `commit` resolved: a generation is durable before the model hears about it.
import type { GuestOps } from '../guest/types';
import type { Sandbox } from '../sandbox/types';
import type { PersistEntry, PersistGeneration, PersistState } from '../protocol/control';

/** Shell continuity for `bash` in per-call mode: the previous call's working directory and exported variables. */
export interface ShellState { cwd: string; env: Record<string, string> }

export interface CommitReport {
  generation: number;
  /** Messages for the model when something was refused or limited (quota, hostile entry); empty when all went well. */
  notes: string[];
  /** Guest paths this commit added, changed and removed (absent when it committed nothing). */
  changes?: { added: string[]; changed: string[]; removed: string[] };
}

export interface CallPersistence {
  /** Places the session's latest generation into a fresh sandbox and returns the shell state to start bash with. */
  prepare(sessionId: string, sandbox: GuestOps): Promise<ShellState>;
  /** Copies out what changed under the session's patterns and commits a new generation (atomically).
   *  Rejects (a PerimeterError) when the sandbox fails during copy-out; the previous generation then stays CURRENT.
   *  `outcome.timedOut`: the tool was killed at its time limit (session disks then commit nothing). */
  commit(sessionId: string, sandbox: GuestOps, shell: ShellState | null, outcome?: { timedOut?: boolean }): Promise<CommitReport>;
  /** A sandbox for the session's next call, already prepared when the implementation keeps one ready between calls
   *  (session disks in per-call mode); `open` restores a fresh one. Without it the orchestrator opens its own. */
  acquire?(sessionId: string, open: () => Promise<Sandbox>): Promise<Sandbox>;
  /** The session's work item ended: what is kept ready for its next call is released. */
  endSession?(sessionId: string): Promise<void>;
  patterns(sessionId: string): Promise<string[]>;
  /** Replaces the session's persist list and publishes `persist.changed` on the hub. */
  setPatterns(sessionId: string, patterns: string[]): Promise<PersistState>;
  state(sessionId: string): Promise<PersistState>;
}

/** A memory store the SDK syncs with Anthropic in a host directory, and where the guest sees it. Its files are
 *  copied into each call's VM by `prepare` and the guest's changes back into `hostDir` by `commit`. */
export interface MemoryMount {
  /** Absolute guest path, e.g. `/mnt/memory/user-preferences`. */
  guestPath: string;
  /** The host directory the SDK's SessionMemoryStores keeps in sync (must exist and be a real directory). */
  hostDir: string;
  /** Read-only stores are copied in only; guest changes are never written back. */
  readOnly: boolean;
}

/** Resolves a session's memory mounts (empty when the session has none). Provided by companion/queue. */
export type MemoryMountResolver = (sessionId: string) => MemoryMount[] | Promise<MemoryMount[]>;

/** Error code of a request for a generation (or a file in it) that is not kept. */
export const PERSIST_NOT_FOUND = 'persist_not_found';

/** A session's kept generations, read-only, and rolling back to one: what the control API offers to browse persisted
 *  files. Unknown generations and paths are PerimeterErrors with code PERSIST_NOT_FOUND. */
export interface PersistHistory {
  generations(sessionId: string): Promise<{ current: number; generations: PersistGeneration[] }>;
  /** A page of a generation's entries, sorted by path; `truncated` when the listing does not hold them all. */
  entries(sessionId: string, generation: number, page: { limit: number; cursor: string | null }): Promise<{ items: PersistEntry[]; nextCursor: string | null; truncated?: boolean }>;
  /** Up to `length` bytes of one regular file of a generation from `offset` (the whole file is verified by hash). */
  readFile(sessionId: string, generation: number, path: string, offset: number, length: number): Promise<{ size: number; data: Buffer }>;
  /** Commits a new generation with the content of `generation` (kept, not current); publishes `persist.changed`. */
  rollback(sessionId: string, generation: number): Promise<PersistState>;
  /** Deletes now the session disks of sessions that ended `retainDays` (default: persist.retainDays) ago, after
   *  asking the service about sessions with no recorded end; absent where sessions have no disks. */
  collect?(o?: { retainDays?: number }): Promise<{ removed: string[]; retained: string[] }>;
}
