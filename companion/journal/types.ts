// The read side of the journal, as the control API and the CLI use it. Only companion/journal writes the journal.
import type { SessionSummary, ToolCallSummary } from '../protocol/control';

export interface Page<T> { items: T[]; nextCursor: string | null }

export interface JournalReader {
  listSessions(opts: { limit: number; cursor?: string | null }): Page<SessionSummary>;
  listCalls(sessionId: string, opts: { limit: number; cursor?: string | null }): Page<ToolCallSummary>;
  /** Whether the journal recorded this session. */
  hasSession(sessionId: string): boolean;
  /** The full (capped) output text of one call, or null when unknown. */
  callOutput(toolUseId: string): { call: ToolCallSummary; output: string } | null;
}
