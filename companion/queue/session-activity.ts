// What a session's event history says beyond the tool calls the SDK hands us, as the wire observer sees it on the
// event stream and the history pages the SDK reads: the user's prompts and the agent's messages (the transcript and
// the session's title), calls of ours waiting for their `ask` confirmation (journaled and announced at once as
// `waiting_confirmation`, so the panel shows them before anyone approves), verdicts, and the end of the agent's turn
// (the session is `idle` at once, not when the SDK releases the item a minute later). Invariants:
// - Observation only: nothing here changes what the SDK does; events are parsed with zod and a malformed one is
//   ignored.
// - Each event is taken once per session, by its id, also across a restart (ids already in the transcript count):
//   a reconnect re-reads the whole history.
// - A waiting call is never given a result: an `allow` leaves it to the SDK, which runs it (the call record then
//   journals it `running`); a `deny` journals it `denied` (the denial as its text: not a result, never posted or
//   replayed).
import { z } from 'zod';
import type { EventHub } from '../events';
import type { Journal } from '../journal/journal';
import type { TranscriptEntry } from '../protocol/control';
import { logger } from '../log';

const log = logger('worker');
const TITLE_CHARS = 120;

const TextBlocks = z.array(z.object({ type: z.string(), text: z.string().optional() })).optional();
const Event = z.discriminatedUnion('type', [
  z.object({ type: z.literal('user.message'), id: z.string().optional(), processed_at: z.string().nullish(), content: TextBlocks }),
  z.object({ type: z.literal('agent.message'), id: z.string().optional(), processed_at: z.string().nullish(), content: TextBlocks }),
  z.object({ type: z.literal('agent.tool_use'), id: z.string(), processed_at: z.string().nullish(), name: z.string(), input: z.unknown(), evaluated_permission: z.string().nullish() }),
  z.object({ type: z.literal('user.tool_confirmation'), id: z.string().optional(), processed_at: z.string().nullish(), tool_use_id: z.string(), result: z.enum(['allow', 'deny']), deny_message: z.string().nullish() }),
  z.object({ type: z.literal('session.status_idle'), id: z.string().optional(), processed_at: z.string().nullish(), stop_reason: z.object({ type: z.string() }).nullish() }),
  z.object({ type: z.literal('session.status_running'), id: z.string().optional(), processed_at: z.string().nullish() }),
  z.object({ type: z.literal('session.status_terminated'), id: z.string().optional(), processed_at: z.string().nullish() }),
]);
type Event = z.infer<typeof Event>;
const KNOWN_TYPES: ReadonlySet<string> = new Set<string>(Event.options.map((o) => o.shape.type.value));

export class SessionActivity {
  /** Event ids taken, per session (seeded from the session's transcript on first sight). */
  private readonly seen = new Map<string, Set<string>>();
  /** Sessions whose title is their first prompt's (an agent's name no longer replaces it). */
  private readonly prompted = new Set<string>();

  constructor(private readonly journal: Journal, private readonly hub: EventHub, private readonly ownTools: ReadonlySet<string>) {}

  /** One event of a session's history (from the stream or a history page). */
  observe(sessionId: string, raw: unknown): void {
    const type = typeof raw === 'object' && raw !== null ? (raw as { type?: unknown }).type : undefined;
    if (typeof type !== 'string' || !KNOWN_TYPES.has(type)) return;
    const parsed = Event.safeParse(raw);
    if (!parsed.success) { log.debug(`session ${sessionId}: ignored a malformed ${type} event`); return; }
    const ev = parsed.data;
    const seen = this.seenOf(sessionId);
    if (ev.id) {
      if (seen.has(ev.id)) return;
      seen.add(ev.id);
    }
    const ts = Date.parse(ev.processed_at ?? '') || Date.now();
    switch (ev.type) {
      case 'user.message': {
        const text = textOf(ev.content);
        this.record(sessionId, { kind: 'prompt', ts, text, eventId: ev.id });
        const first = text.split('\n').map((l) => l.trim()).find((l) => l.length > 0);
        if (first && !this.prompted.has(sessionId)) {
          this.prompted.add(sessionId);
          this.updateSession(sessionId, { title: first.slice(0, TITLE_CHARS) });
        }
        return;
      }
      case 'agent.message':
        this.record(sessionId, { kind: 'agent', ts, text: textOf(ev.content), eventId: ev.id });
        return;
      case 'agent.tool_use':
        if (ev.evaluated_permission === 'ask' && this.ownTools.has(ev.name)) this.waiting(sessionId, ev);
        return;
      case 'user.tool_confirmation': {
        this.record(sessionId, { kind: 'confirmation', ts, toolUseId: ev.tool_use_id, result: ev.result, eventId: ev.id });
        const c = this.journal.getCall(ev.tool_use_id);
        if (ev.result === 'deny' && c?.state === 'waiting_confirmation') {
          const denied = this.journal.callFinished(c.toolUseId, { text: ev.deny_message || 'denied by the user', isError: true, exitCode: null, state: 'denied' });
          this.hub.publish({ type: 'call.finished', call: this.journal.callSummary(denied) });
        }
        return;
      }
      case 'session.status_idle':
        if (ev.stop_reason?.type !== 'end_turn') return;
        this.record(sessionId, { kind: 'turn', ts, status: 'idle', stopReason: 'end_turn', eventId: ev.id });
        if (this.journal.getSession(sessionId)?.state === 'running') this.updateSession(sessionId, { state: 'idle' });
        return;
      case 'session.status_running':
        if (this.journal.getSession(sessionId)?.state !== 'idle') return;
        this.record(sessionId, { kind: 'turn', ts, status: 'running', stopReason: null, eventId: ev.id });
        this.updateSession(sessionId, { state: 'running' });
        return;
      case 'session.status_terminated':
        this.record(sessionId, { kind: 'turn', ts, status: 'terminated', stopReason: null, eventId: ev.id });
        return;
    }
  }

  /** The agent's name, from the session record: the session's title until a prompt names it better. */
  agentName(sessionId: string, name: string): void {
    this.seenOf(sessionId);
    if (name.trim() && !this.prompted.has(sessionId) && !this.journal.getSession(sessionId)?.title) this.updateSession(sessionId, { title: name.trim().slice(0, TITLE_CHARS) });
  }

  /** Egress decisions of the session's sandboxes join its transcript. */
  egress(sessionId: string, entry: Extract<TranscriptEntry, { kind: 'egress' }>): void { this.record(sessionId, entry); }

  /** The session's item ended here: calls still waiting for a verdict are no longer ours to run. */
  ended(sessionId: string): void {
    this.seen.delete(sessionId);
    this.prompted.delete(sessionId);
    for (const c of this.journal.listCalls(sessionId, { limit: 1000 }).items) {
      if (c.state !== 'waiting_confirmation') continue;
      const entry = this.journal.callUnconfirmed(c.toolUseId);
      this.hub.publish({ type: 'call.finished', call: this.journal.callSummary(entry) });
    }
  }

  private waiting(sessionId: string, ev: Extract<Event, { type: 'agent.tool_use' }>): void {
    const session = this.journal.getSession(sessionId);
    if (!session || this.journal.getCall(ev.id)) return;
    const entry = this.journal.callStarted({ toolUseId: ev.id, sessionId, workId: session.workId, name: ev.name, input: ev.input, state: 'waiting_confirmation' });
    log.info(`session ${sessionId}: ${ev.name} call ${ev.id} waits for its confirmation`);
    this.hub.publish({ type: 'call.started', call: this.journal.callSummary(entry) });
  }

  private record(sessionId: string, entry: TranscriptEntry): void {
    this.journal.transcripts.append(sessionId, entry);
    this.hub.publish({ type: 'session.transcript', sessionId, entry });
  }

  private updateSession(sessionId: string, patch: { title?: string; state?: 'idle' | 'running' }): void {
    if (!this.journal.getSession(sessionId)) return;
    const s = this.journal.updateSession(sessionId, patch);
    this.hub.publish({ type: 'session.updated', session: this.journal.sessionSummary(s) });
  }

  private seenOf(sessionId: string): Set<string> {
    let seen = this.seen.get(sessionId);
    if (!seen) {
      seen = new Set();
      let cursor: string | null = null;
      do {
        const page = this.journal.transcripts.read(sessionId, { limit: 1000, cursor });
        for (const e of page.items) {
          if (e.kind !== 'egress' && e.eventId) seen.add(e.eventId);
          if (e.kind === 'prompt') this.prompted.add(sessionId);
        }
        cursor = page.nextCursor;
      } while (cursor);
      this.seen.set(sessionId, seen);
    }
    return seen;
  }
}

function textOf(blocks: z.infer<typeof TextBlocks>): string {
  return (blocks ?? []).filter((b) => b.type === 'text' && typeof b.text === 'string').map((b) => b.text).join('\n');
}
