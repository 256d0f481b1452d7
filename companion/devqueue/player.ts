// Sessions and the scripted agent that plays a Scenario in each: the session's event history, the session and
// events endpoints (retrieve, list, send, SSE stream), and the step machine that emits one tool call at a time and
// judges the worker's result against the step's expectations.
// Invariants:
// - One step at a time: the next tool call is emitted only after the current step passed or failed.
// - A tool call takes exactly one result of the matching kind (`user.tool_result` for `agent.tool_use`,
//   `user.custom_tool_result` for `agent.custom_tool_use`); a second one, also within the same post, is refused (400,
//   recorded in `duplicateResults`) and the whole post changes nothing.
// - Results for `ask`-gated calls wait for `user.tool_confirmation`; denied calls take none; text blocks are never empty.
// - The event list honours `types[]` and `created_at[gt|gte|lt|lte]` before paging.
// - A terminated session runs no more scheduled steps and takes no more events.
// - Archiving (POST /v1/sessions/{id}/archive, an organisation API key) sets the record's `archived_at` once; an
//   archived session takes no more events.
import type http from 'node:http';
import { logger } from '../log';
import type { Scenario, ScenarioStep } from './scenario';
import type { FaultInjector } from './faults';
import type { Recorder } from './recorder';
import type { MemoryStoreRef, SkillRef } from './resources';
import { HttpError, eventMatches, parseEventFilter } from './wire-rules';
import { STREAMING, iso, isObj, rid, type Reply } from './reply';

const log = logger('devqueue');
const PING_INTERVAL_MS = 5_000;

export type StepStatus = 'pending' | 'waiting_confirmation' | 'waiting_result' | 'passed' | 'failed';

export interface StepReport {
  index: number;
  label: string;
  tool: string;
  toolUseId: string | null;
  status: StepStatus;
  isError: boolean | null;
  text: string | null;
  /** From the tool_use event to its result (or to the step's end). */
  ms: number | null;
  reason: string | null;
  needsPersistence: boolean;
}

export interface SessionEvent { id: string; type: string; processed_at: string; [k: string]: unknown }

export interface DevSession {
  id: string;
  status: 'idle' | 'running' | 'terminated';
  scenario: Scenario;
  events: SessionEvent[];
  stepIndex: number;
  steps: StepReport[];
  stepStartedAt: number;
  finished: boolean;
  skills: SkillRef[];
  memoryStores: MemoryStoreRef[];
  /** Open SSE streams and how many events each has delivered. */
  subscribers: Map<http.ServerResponse, number>;
  timers: Set<NodeJS.Timeout>;
  createdAt: string;
  /** When the session was archived (ISO), or null. */
  archivedAt: string | null;
}

export interface PlayerOptions {
  environmentId: string;
  /** How long an `expectUnanswered` step waits before it passes and the scripted owner answers it (default 1500). */
  unansweredWaitMs?: number;
}

export class ScenarioPlayer {
  private readonly sessions = new Map<string, DevSession>();

  constructor(private readonly opts: PlayerOptions, private readonly recorder: Recorder, private readonly faults: FaultInjector) {}

  /** Starts a session playing `scenario` with its agent's skills and memory stores. Returns the session id. */
  start(scenario: Scenario, skills: SkillRef[], memoryStores: MemoryStoreRef[]): string {
    const id = rid('sesn_local');
    const s: DevSession = {
      id, status: 'running', scenario, events: [], stepIndex: 0, stepStartedAt: Date.now(), finished: false, skills, memoryStores,
      subscribers: new Map(), timers: new Set(), createdAt: iso(), archivedAt: null,
      steps: scenario.steps.map((st, index) => ({ index, label: st.label ?? `${st.tool} #${index + 1}`, tool: st.tool, toolUseId: null, status: 'pending', isError: null, text: null, ms: null, reason: null, needsPersistence: st.needsPersistence })),
    };
    this.sessions.set(id, s);
    this.emit(s, { type: 'user.message', content: [{ type: 'text', text: scenario.prompt }] });
    this.emit(s, { type: 'session.status_running' });
    this.beginStep(s);
    return id;
  }

  terminate(sessionId: string): void {
    const s = this.mustExist(sessionId);
    s.status = 'terminated';
    this.emit(s, { type: 'session.status_terminated' });
  }

  /** Archives the session (its record gets `archived_at`; the first archive counts). */
  archive(sessionId: string): Reply {
    const s = this.mustExist404(sessionId);
    s.archivedAt ??= iso();
    return this.retrieve(sessionId);
  }

  /** Appends a user event (e.g. a `user.tool_confirmation`) as if the user's client had sent it. */
  userEvent(sessionId: string, event: Record<string, unknown>): void { this.emit(this.mustExist(sessionId), event); }

  report(sessionId: string): { finished: boolean; steps: StepReport[] } {
    const s = this.mustExist(sessionId);
    return { finished: s.finished, steps: s.steps.map((x) => ({ ...x })) };
  }

  events(sessionId: string): SessionEvent[] { return [...this.mustExist(sessionId).events]; }

  find(sessionId: string): DevSession | undefined { return this.sessions.get(sessionId); }

  mustExist(id: string): DevSession { const s = this.sessions.get(id); if (!s) throw new Error(`no session ${id}`); return s; }

  /** Cancels every scheduled step and cuts every open stream. */
  close(): void {
    for (const s of this.sessions.values()) {
      for (const t of s.timers) clearTimeout(t);
      for (const r of s.subscribers.keys()) r.destroy();
    }
  }

  // ---- endpoints ---------------------------------------------------------------------------------------------------

  retrieve(id: string): Reply {
    const s = this.mustExist404(id);
    return {
      status: 200,
      body: {
        id: s.id, type: 'session', status: s.status, title: s.scenario.name, environment_id: this.opts.environmentId, created_at: s.createdAt, updated_at: iso(), archived_at: s.archivedAt,
        agent: { id: 'agent_local', type: 'agent', name: 'scripted agent', version: 1, skills: s.skills.map((k) => ({ skill_id: k.skill_id, type: 'custom', version: 'latest' })), tools: [] },
        resources: s.memoryStores.map((m) => ({ type: 'memory_store', memory_store_id: m.memory_store_id, name: m.name, access: m.access, description: '', instructions: null, mount_path: `/mnt/memory/${m.name}` })),
        metadata: { scenario: s.scenario.name, ...s.scenario.metadata },
      },
    };
  }

  listEvents(id: string, url: URL): Reply {
    const s = this.mustExist404(id);
    const limit = Math.max(1, Math.min(Number(url.searchParams.get('limit') ?? 100) || 100, 1000));
    const start = Math.max(0, Number(url.searchParams.get('page') ?? 0) || 0);
    const filter = parseEventFilter(url.searchParams);
    const matching = s.events.filter((e) => eventMatches(filter, e));
    const all = url.searchParams.get('order') === 'desc' ? matching.reverse() : matching;
    const data = all.slice(start, start + limit);
    return { status: 200, body: { data, next_page: start + limit < all.length ? String(start + limit) : null } };
  }

  sendEvents(id: string, body: unknown): Reply {
    const s = this.mustExist404(id);
    if (s.status === 'terminated') throw new HttpError(400, 'invalid_request_error', 'the session is terminated');
    if (s.archivedAt !== null) throw new HttpError(400, 'invalid_request_error', 'the session is archived');
    if (!isObj(body) || !Array.isArray(body.events) || body.events.length === 0) throw new HttpError(400, 'invalid_request_error', 'events: expected a non-empty array');
    const checked: Array<{ ev: Record<string, unknown>; answer?: { id: string; isError: boolean; text: string } }> = [];
    for (const ev of body.events as unknown[]) {
      if (!isObj(ev) || typeof ev.type !== 'string') throw new HttpError(400, 'invalid_request_error', 'each event needs a type');
      if (ev.type === 'user.tool_result' || ev.type === 'user.custom_tool_result') {
        const key = ev.type === 'user.tool_result' ? 'tool_use_id' : 'custom_tool_use_id';
        const useId = ev[key];
        if (typeof useId !== 'string') throw new HttpError(400, 'invalid_request_error', `${key} is required`);
        const use = s.events.find((e) => e.id === useId);
        const wantType = ev.type === 'user.tool_result' ? 'agent.tool_use' : 'agent.custom_tool_use';
        if (!use || use.type !== wantType) throw new HttpError(400, 'invalid_request_error', `${key} ${useId} does not name an ${wantType} event of this session`);
        if (hasResult(s.events, useId) || checked.some((c) => c.answer?.id === useId)) {
          this.recorder.duplicateResults.push(useId);
          log.warn(`tool call ${useId} was answered again; refused`);
          throw new HttpError(400, 'invalid_request_error', `${key} ${useId} already has a result: a tool call takes exactly one`);
        }
        if (use.evaluated_permission === 'ask' || (use.evaluated_permission !== undefined && !['allow', 'deny'].includes(String(use.evaluated_permission)))) {
          const conf = s.events.find((e) => e.type === 'user.tool_confirmation' && e.tool_use_id === useId);
          if (!conf) throw new HttpError(400, 'invalid_request_error', `tool call ${useId} requires confirmation: send user.tool_confirmation first`);
          if (conf.result !== 'allow') throw new HttpError(400, 'invalid_request_error', `tool call ${useId} was denied`);
        }
        if (use.evaluated_permission === 'deny') throw new HttpError(400, 'invalid_request_error', `tool call ${useId} was denied`);
        const content = ev.content;
        if (content !== undefined && !Array.isArray(content)) throw new HttpError(400, 'invalid_request_error', 'content must be an array of blocks');
        const texts: string[] = [];
        for (const block of (content ?? []) as unknown[]) {
          if (!isObj(block) || typeof block.type !== 'string') throw new HttpError(400, 'invalid_request_error', 'content blocks need a type');
          if (block.type === 'text') {
            if (typeof block.text !== 'string' || block.text.length < 1) throw new HttpError(400, 'invalid_request_error', 'content.text: minimum string length is 1');
            texts.push(block.text);
          }
        }
        checked.push({ ev, answer: { id: useId, isError: ev.is_error === true, text: texts.join('\n') } });
      } else if (ev.type === 'user.tool_confirmation' || ev.type === 'user.message' || ev.type === 'user.interrupt') {
        checked.push({ ev });
      } else {
        throw new HttpError(400, 'invalid_request_error', `event type ${ev.type} cannot be sent by a client`);
      }
    }
    const echoed: SessionEvent[] = [];
    for (const { ev, answer } of checked) {
      echoed.push(this.emit(s, ev));
      if (answer) {
        this.recorder.result(answer.id, answer.isError, answer.text);
        this.onResult(s, answer.id, answer.isError, answer.text);
      }
    }
    return { status: 200, body: { data: echoed } };
  }

  stream(id: string, req: http.IncomingMessage, res: http.ServerResponse): typeof STREAMING {
    const s = this.mustExist404(id);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.write(': connected\n\n');
    s.subscribers.set(res, 0);
    const ping = setInterval(() => res.write('event: ping\ndata: {"type":"ping"}\n\n'), PING_INTERVAL_MS);
    const done = () => { clearInterval(ping); s.subscribers.delete(res); };
    req.on('close', done);
    res.on('close', done);
    return STREAMING;
  }

  // ---- the scripted agent ------------------------------------------------------------------------------------------

  private emit(s: DevSession, body: Record<string, unknown>): SessionEvent {
    const ev = { id: rid('sevt_local'), processed_at: iso(), ...body } as SessionEvent;
    s.events.push(ev);
    const frame = `event: ${ev.type}\ndata: ${JSON.stringify(ev)}\n\n`;
    for (const [res, delivered] of s.subscribers) {
      res.write(frame);
      const sent = delivered + 1;
      s.subscribers.set(res, sent);
      if (this.faults.dropsStream(sent)) { s.subscribers.delete(res); res.end(); }
    }
    this.recorder.changed();
    return ev;
  }

  private later(s: DevSession, ms: number, fn: () => void): void {
    const t = setTimeout(() => { s.timers.delete(t); if (s.status !== 'terminated') fn(); }, ms);
    s.timers.add(t);
  }

  private beginStep(s: DevSession): void {
    const step = s.scenario.steps[s.stepIndex]!;
    const rep = s.steps[s.stepIndex]!;
    s.stepStartedAt = Date.now();
    const ev = this.emit(s, step.custom
      ? { type: 'agent.custom_tool_use', name: step.tool, input: step.input }
      : { type: 'agent.tool_use', name: step.tool, input: step.input, ...(step.evaluated_permission ? { evaluated_permission: step.evaluated_permission } : {}) });
    rep.toolUseId = ev.id;
    rep.status = step.evaluated_permission === 'ask' ? 'waiting_confirmation' : 'waiting_result';
    this.emit(s, { type: 'session.status_idle', stop_reason: { type: 'requires_action', event_ids: [ev.id] } });
    const unansweredWait = this.opts.unansweredWaitMs ?? 1500;
    if (step.evaluated_permission === 'ask') {
      this.later(s, step.confirmAfterMs ?? 300, () => {
        const verdict = step.confirmation ?? 'allow';
        this.emit(s, { type: 'user.tool_confirmation', tool_use_id: ev.id, result: verdict, ...(verdict === 'deny' ? { deny_message: 'denied by the scenario' } : {}) });
        if (rep.status !== 'waiting_confirmation') return;
        rep.status = 'waiting_result';
        if (verdict === 'deny') this.later(s, unansweredWait, () => this.finishUnanswered(s, rep, step, 'denied'));
      });
    } else if (step.evaluated_permission === 'deny' || step.expectUnanswered) {
      this.later(s, unansweredWait, () => this.finishUnanswered(s, rep, step, step.evaluated_permission === 'deny' ? 'denied' : 'unowned'));
    }
  }

  /** A call the worker must not answer: passes when still unanswered; the scripted owner then answers it. */
  private finishUnanswered(s: DevSession, rep: StepReport, step: ScenarioStep, why: 'denied' | 'unowned'): void {
    if (rep.status !== 'waiting_result') return;
    rep.ms = Date.now() - s.stepStartedAt;
    const expected = step.expectUnanswered || why === 'denied' || step.confirmation === 'deny';
    rep.status = expected ? 'passed' : 'failed';
    rep.reason = expected ? `left unanswered (${why})` : `no result (${why})`;
    if (why === 'unowned') {
      const text = 'answered by the scenario (the tool owner)';
      this.emit(s, step.custom
        ? { type: 'user.custom_tool_result', custom_tool_use_id: rep.toolUseId, content: [{ type: 'text', text }], is_error: false }
        : { type: 'user.tool_result', tool_use_id: rep.toolUseId, content: [{ type: 'text', text }], is_error: false });
    }
    this.advance(s);
  }

  private onResult(s: DevSession, toolUseId: string, isError: boolean, text: string): void {
    const rep = s.steps.find((r) => r.toolUseId === toolUseId);
    if (!rep || rep.status !== 'waiting_result') return;
    const step = s.scenario.steps[rep.index]!;
    rep.isError = isError;
    rep.text = text;
    rep.ms = Date.now() - s.stepStartedAt;
    const problems: string[] = [];
    if (step.expectUnanswered || step.confirmation === 'deny') problems.push('the call should have been left unanswered');
    if (step.expectError !== undefined && step.expectError !== isError) problems.push(step.expectError ? 'expected an error result' : `unexpected error: ${text.slice(0, 200)}`);
    for (const inc of step.expectIncludes) if (!text.includes(inc)) problems.push(`missing ${JSON.stringify(inc)}`);
    for (const exc of step.expectExcludes) if (text.includes(exc)) problems.push(`unexpected ${JSON.stringify(exc)}`);
    rep.status = problems.length ? 'failed' : 'passed';
    rep.reason = problems.length ? problems.join('; ') : null;
    this.advance(s);
  }

  private advance(s: DevSession): void {
    const current = s.steps[s.stepIndex];
    if (!current || (current.status !== 'passed' && current.status !== 'failed')) return;
    s.stepIndex++;
    this.emit(s, { type: 'session.status_running' });
    if (s.stepIndex < s.scenario.steps.length) {
      const think = s.scenario.steps[s.stepIndex]!.thinkMs;
      if (think > 0) this.later(s, think, () => this.beginStep(s)); else this.beginStep(s);
      return;
    }
    const passed = s.steps.filter((r) => r.status === 'passed').length;
    this.emit(s, { type: 'agent.message', content: [{ type: 'text', text: `Scenario "${s.scenario.name}" finished: ${passed}/${s.steps.length} steps passed.` }] });
    this.emit(s, { type: 'session.status_idle', stop_reason: { type: 'end_turn' } });
    s.status = 'idle';
    s.finished = true;
    this.recorder.changed();
  }

  private mustExist404(id: string): DevSession {
    const s = this.sessions.get(id);
    if (!s) throw new HttpError(404, 'not_found_error', `session ${id} not found`);
    return s;
  }
}

/** Whether the session's history already holds a result (of either kind) for the tool call `useId`. */
function hasResult(events: SessionEvent[], useId: string): boolean {
  return events.some((e) => (e.type === 'user.tool_result' && e.tool_use_id === useId) || (e.type === 'user.custom_tool_result' && e.custom_tool_use_id === useId));
}
