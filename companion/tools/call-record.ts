// A tool call's life in the journal, and the panel events that follow it, in one place: what the journal knows of a
// call before it runs, `running`, its result, the replay of a stored result, and `posted`. Invariants:
// - Every state change is journaled (fsync) before it is announced; `call.started` and `call.finished` (after the
//   result, and again once the result was posted) are published only here.
// - No result names a host path: every result text passes through one HostPathScrubber before it is journaled or
//   returned.
// - A stored result is handed back as it was journaled; the call is never run again.
import type { EventHub } from '../events';
import { hasResult, inputDigest, type CallEntry, type Journal } from '../journal/journal';
import type { CallPlacement, PersistChange, ToolCallState } from '../protocol/control';
import { logger } from '../log';
import { errorMessage } from '../errors';
import { NO_OUTPUT } from './text';
import { HostPathScrubber } from './host-paths';

const log = logger('calls');

export interface CallResult { text: string; isError: boolean }

export interface ToolUse { id: string; name: string; input: unknown }

/** What the journal knows of a call before it runs. */
export type PriorCall =
  | { kind: 'new' }
  /** The same id was journaled with a different input: answered with this refusal. */
  | { kind: 'refused'; result: CallResult }
  /** Journaled already: its stored result (null while it has none, i.e. it is running). */
  | { kind: 'known'; stored: CallResult | null };

export interface CallOutcome {
  text: string; isError: boolean; exitCode: number | null; state?: ToolCallState;
  /** What the call changed in the session's persisted files. */
  persist?: PersistChange;
}

export class CallRecorder {
  private readonly hostPaths: HostPathScrubber;

  private readonly placement: (() => CallPlacement) | undefined;

  /** `placement`: where calls run (host, driver, template), journaled with each call. */
  constructor(private readonly journal: Journal, private readonly hub: EventHub, opts: { stateDir?: string; placement?: () => CallPlacement } = {}) {
    this.hostPaths = new HostPathScrubber({ stateDir: opts.stateDir });
    this.placement = opts.placement;
  }

  prior(toolUse: ToolUse): PriorCall {
    const existing = this.journal.getCall(toolUse.id);
    if (!existing) return { kind: 'new' };
    if (existing.inputSha256 && existing.inputSha256 !== inputDigest(toolUse.input)) {
      log.error(`tool_use_id ${toolUse.id} was delivered again with a different input; refusing it`);
      return { kind: 'refused', result: { text: `refused: tool_use_id ${toolUse.id} was already executed with a different input`, isError: true } };
    }
    return { kind: 'known', stored: hasResult(existing) ? { text: existing.result || NO_OUTPUT, isError: existing.isError ?? false } : null };
  }

  /** Answers a re-dispatched call with its stored result, and counts the replay. */
  replay(toolUseId: string, stored: CallResult): CallResult {
    const c = this.journal.getCall(toolUseId)!;
    this.journal.callReplayed(toolUseId);
    log.info(`call ${toolUseId} (${c.name}) re-dispatched: answering from the journal, not running it again`);
    return stored;
  }

  /** Journals a call as running and announces it; a journal that cannot be written answers the call with an error.
   *  `template`: the template the session asked for (its placement then names it instead of the default). */
  start(sessionId: string, workId: string, toolUse: ToolUse, template?: string): { ok: true; call: CallRecord } | { ok: false; result: CallResult } {
    let entry: CallEntry;
    try {
      const placement = this.placement?.();
      const ranOn = placement && template ? { ...placement, template } : placement;
      entry = this.journal.callStarted({ toolUseId: toolUse.id, sessionId, workId, name: toolUse.name, input: toolUse.input, ranOn });
    } catch (err) {
      return { ok: false, result: { text: this.hostPaths.scrub(`not run: ${errorMessage(err)}`), isError: true } };
    }
    this.announce('call.started', entry);
    return { ok: true, call: new CallRecord(this, entry) };
  }

  /** The service accepted the call's result. */
  posted(toolUseId: string): void {
    const c = this.journal.callPosted(toolUseId);
    if (c) this.announce('call.finished', c);
  }

  /** @internal */
  finish(entry: CallEntry, outcome: CallOutcome): CallResult {
    const text = this.hostPaths.scrub(outcome.text || NO_OUTPUT);
    try {
      entry = this.journal.callFinished(entry.toolUseId, { text, isError: outcome.isError, exitCode: outcome.exitCode, state: outcome.state, persist: outcome.persist });
    } catch (err) {
      // The result is posted all the same (it is kept in memory); see journal.ts for why that is safe.
      log.error(`could not journal the result of ${entry.toolUseId} (${errorMessage(err)}): posting it from memory; the journal is rewritten once it can be`);
    }
    log.with({ session: entry.sessionId, call: entry.toolUseId, tool: entry.name })
      .info(`call ${entry.toolUseId} (${entry.name}) ${entry.state}${outcome.isError ? ' with an error result' : ''}${entry.durationMs !== null ? ` in ${entry.durationMs} ms` : ''}`);
    this.announce('call.finished', entry);
    // Fault injection for the crash-recovery tests: die right after the result became durable, before it is posted.
    if (process.env.PERIMETER_FAULT_KILL_AFTER_RESULT && process.env.PERIMETER_FAULT_KILL_AFTER_RESULT === entry.name) process.kill(process.pid, 'SIGKILL');
    const s = this.journal.getSession(entry.sessionId);
    if (s) this.hub.publish({ type: 'session.updated', session: this.journal.sessionSummary(s) });
    return { text, isError: outcome.isError };
  }

  private announce(type: 'call.started' | 'call.finished', c: CallEntry): void {
    this.hub.publish({ type, call: this.journal.callSummary(c) });
  }
}

/** One running call's journal entry: finished exactly once. */
export class CallRecord {
  private finished = false;
  constructor(private readonly recorder: CallRecorder, private readonly entry: CallEntry) {}

  /** Journals the outcome, announces it and returns the result to post (host paths scrubbed). */
  finish(outcome: CallOutcome): CallResult {
    if (this.finished) throw new Error(`call ${this.entry.toolUseId} finished twice`);
    this.finished = true;
    return this.recorder.finish(this.entry, outcome);
  }
}
