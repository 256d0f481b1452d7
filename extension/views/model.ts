// The extension's view model: everything the Worker, Sessions and Persisted Files views and the call documents show,
// built only from control API data (hello snapshots, pushed events, journal pages). Plain TypeScript, no `vscode`:
// unit tests drive it with a fake event stream. Invariants:
// - State is keyed by host, so several companions (local and SSH hosts) coexist; a host's history stays visible while
//   its connection is down and is merged, not replaced, when the journal is re-read after a reconnect.
// - Live output of a running call is accumulated from `call.output` chunks (capped at MAX_LIVE_OUTPUT characters and
//   kept for the last KEEP_FINISHED_OUTPUTS finished calls); the full output of a finished call comes from
//   `getCallOutput`.
// - Changes are announced with targeted events (which host / session / call changed), never by polling.
import type {
  ControlEvent, HelloMessage, HostFacts, PersistState, SessionSummary, ToolCallSummary, TranscriptEntry, WorkerState,
} from '../../companion/protocol/control';
import { Emitter } from '../common/emitter';
import { Disposable } from '../common/lifecycle';

export const MAX_LIVE_OUTPUT = 1_000_000;
/** Transcript entries kept per session (the oldest are dropped first). */
export const MAX_TRANSCRIPT_ENTRIES = 5000;
const KEEP_FINISHED_OUTPUTS = 20;

/** How the extension is connected to a host's companion (orthogonal to the worker's own state). */
export type ConnectionStatus = 'stopped' | 'starting' | 'connected' | 'reconnecting' | 'failed';

/**
 * What the last problem was about, which decides what fixes it: `link`, the way to the host (SSH) is down and the
 * worker there may well still run (Reconnect); `worker`, the worker process itself ended or would not answer (Restart
 * Worker); `credentials`, the API refused the environment's ID or key (Connect Environment); `start`, a start failed.
 */
export type ProblemKind = 'link' | 'worker' | 'credentials' | 'start';

export interface HostEntry {
  hostId: string;
  label: string;
  connection: ConnectionStatus;
  /** The last problem (crash, lost connection, failed start), shown until the next successful connect. */
  problem: string | null;
  problemKind: ProblemKind | null;
  workerState: WorkerState | null;
  workerDetail: string | null;
  facts: HostFacts | null;
  connectedAt: number | null;
  restarts: number;
}

export interface SessionEntry {
  hostId: string;
  summary: SessionSummary;
  calls: Map<string, ToolCallSummary>;
  /** Last time anything happened in this session (event or journal update), for the "stuck" check. */
  lastActivityAt: number;
}

export type ModelChange =
  | { kind: 'host'; hostId: string }
  | { kind: 'sessions'; hostId: string }
  | { kind: 'session'; hostId: string; sessionId: string }
  | { kind: 'persist'; hostId: string; sessionId: string }
  | { kind: 'transcript'; hostId: string; sessionId: string };

export const sessionKey = (hostId: string, sessionId: string) => `${hostId}\u0000${sessionId}`;

export class PerimeterModel extends Disposable {
  private readonly hosts = new Map<string, HostEntry>();
  private readonly sessions = new Map<string, SessionEntry>();
  private readonly persist = new Map<string, PersistState>();
  private readonly liveOutput = new Map<string, string>();
  private readonly transcripts = new Map<string, TranscriptEntry[]>();
  /** Sessions the user cleared from the history: not shown again when the journal is re-read. */
  private readonly forgotten = new Set<string>();
  private readonly changes = this._register(new Emitter<ModelChange>());
  private readonly outputs = this._register(new Emitter<{ hostId: string; toolUseId: string }>());
  readonly onDidChange = this.changes.event;
  /** Fires when a call's live output grew (the call document follows it). */
  readonly onDidAppendOutput = this.outputs.event;

  constructor(private readonly now: () => number = Date.now) { super(); }

  // ---- hosts ------------------------------------------------------------------------------------------------------
  ensureHost(hostId: string, label: string): HostEntry {
    let h = this.hosts.get(hostId);
    if (!h) {
      h = { hostId, label, connection: 'stopped', problem: null, problemKind: null, workerState: null, workerDetail: null, facts: null, connectedAt: null, restarts: 0 };
      this.hosts.set(hostId, h);
      this.changes.fire({ kind: 'host', hostId });
    }
    return h;
  }

  removeHost(hostId: string): void {
    if (!this.hosts.delete(hostId)) return;
    for (const [k, s] of this.sessions) if (s.hostId === hostId) this.sessions.delete(k);
    this.changes.fire({ kind: 'host', hostId });
    this.changes.fire({ kind: 'sessions', hostId });
  }

  hostList(): HostEntry[] { return [...this.hosts.values()]; }
  host(hostId: string): HostEntry | undefined { return this.hosts.get(hostId); }

  /** `problem` undefined keeps the last one; `kind` says what it is about (see ProblemKind). */
  setConnection(hostId: string, connection: ConnectionStatus, problem?: string | null, kind?: ProblemKind): void {
    const h = this.hosts.get(hostId);
    if (!h) return;
    h.connection = connection;
    if (problem !== undefined) { h.problem = problem; h.problemKind = problem === null ? null : kind ?? 'worker'; }
    if (connection === 'connected') { h.connectedAt = this.now(); h.problem = null; h.problemKind = null; }
    if (connection !== 'connected') h.connectedAt = null;
    if (connection === 'stopped') { h.workerState = 'stopped'; h.workerDetail = null; }
    this.changes.fire({ kind: 'host', hostId });
  }

  noteRestart(hostId: string): void {
    const h = this.hosts.get(hostId);
    if (h) { h.restarts++; this.changes.fire({ kind: 'host', hostId }); }
  }

  applyHello(hostId: string, hello: HelloMessage): void {
    const h = this.hosts.get(hostId);
    if (!h) return;
    h.workerState = hello.state;
    h.workerDetail = hello.stateDetail ?? null;
    h.facts = hello.facts;
    this.changes.fire({ kind: 'host', hostId });
  }

  // ---- sessions and calls -----------------------------------------------------------------------------------------
  /** Sessions of one host (or of all hosts), newest claim first. */
  sessionList(hostId?: string): SessionEntry[] {
    return [...this.sessions.values()]
      .filter((s) => hostId === undefined || s.hostId === hostId)
      .sort((a, b) => b.summary.claimedAt - a.summary.claimedAt);
  }

  session(hostId: string, sessionId: string): SessionEntry | undefined { return this.sessions.get(sessionKey(hostId, sessionId)); }

  /** Calls of a session, newest first. */
  callList(hostId: string, sessionId: string): ToolCallSummary[] {
    const s = this.sessions.get(sessionKey(hostId, sessionId));
    return s ? [...s.calls.values()].sort((a, b) => b.startedAt - a.startedAt || b.toolUseId.localeCompare(a.toolUseId)) : [];
  }

  findCall(hostId: string, toolUseId: string): ToolCallSummary | undefined {
    for (const s of this.sessions.values()) {
      if (s.hostId !== hostId) continue;
      const c = s.calls.get(toolUseId);
      if (c) return c;
    }
    return undefined;
  }

  liveOutputOf(hostId: string, toolUseId: string): string { return this.liveOutput.get(sessionKey(hostId, toolUseId)) ?? ''; }

  /** Merges a page of sessions read from the journal (after connecting or reconnecting). */
  loadSessions(hostId: string, sessions: SessionSummary[]): void {
    for (const s of sessions) this.upsertSession(hostId, s, false);
    this.changes.fire({ kind: 'sessions', hostId });
  }

  loadCalls(hostId: string, sessionId: string, calls: ToolCallSummary[]): void {
    const s = this.sessions.get(sessionKey(hostId, sessionId));
    if (!s) return;
    for (const c of calls) s.calls.set(c.toolUseId, c);
    this.changes.fire({ kind: 'session', hostId, sessionId });
  }

  loadPersist(hostId: string, state: PersistState): void {
    this.persist.set(sessionKey(hostId, state.sessionId), state);
    this.changes.fire({ kind: 'persist', hostId, sessionId: state.sessionId });
  }

  persistOf(hostId: string, sessionId: string): PersistState | undefined { return this.persist.get(sessionKey(hostId, sessionId)); }

  transcriptOf(hostId: string, sessionId: string): TranscriptEntry[] { return this.transcripts.get(sessionKey(hostId, sessionId)) ?? []; }

  /** Replaces a session's transcript with one read in full (entries that arrived live meanwhile are kept once). */
  loadTranscript(hostId: string, sessionId: string, entries: TranscriptEntry[]): void {
    const key = sessionKey(hostId, sessionId);
    const ids = new Set(entries.map((e) => ('eventId' in e ? e.eventId : undefined)).filter(Boolean));
    const live = (this.transcripts.get(key) ?? []).filter((e) => 'eventId' in e && e.eventId && !ids.has(e.eventId));
    this.transcripts.set(key, [...entries, ...live].slice(-MAX_TRANSCRIPT_ENTRIES));
    this.changes.fire({ kind: 'transcript', hostId, sessionId });
  }

  /** Drops what is shown of a host's sessions (history read from another state directory); nothing is forgotten. */
  clearSessions(hostId: string): void {
    for (const [k, s] of this.sessions) {
      if (s.hostId !== hostId) continue;
      this.sessions.delete(k);
      this.persist.delete(k);
      this.transcripts.delete(k);
    }
    this.changes.fire({ kind: 'sessions', hostId });
  }

  /** Removes sessions from the views for good (Clear Finished History): a later journal read does not bring them back. */
  forgetSessions(hostId: string, sessionIds: string[]): void {
    for (const id of sessionIds) {
      const key = sessionKey(hostId, id);
      this.forgotten.add(key);
      this.sessions.delete(key);
      this.persist.delete(key);
      this.transcripts.delete(key);
    }
    this.changes.fire({ kind: 'sessions', hostId });
  }

  applyEvent(hostId: string, event: ControlEvent): void {
    const h = this.hosts.get(hostId);
    switch (event.type) {
      case 'worker.state':
        if (h) { h.workerState = event.state; h.workerDetail = event.detail ?? null; this.changes.fire({ kind: 'host', hostId }); }
        return;
      case 'host.facts':
        if (h) { h.facts = event.facts; this.changes.fire({ kind: 'host', hostId }); }
        return;
      case 'session.claimed':
      case 'session.updated':
      case 'session.ended':
        this.upsertSession(hostId, event.session, true);
        return;
      case 'call.started':
      case 'call.finished': {
        const s = this.upsertSession(hostId, this.placeholderSession(hostId, event.call.sessionId), false, true);
        const known = s.calls.get(event.call.toolUseId);
        s.calls.set(event.call.toolUseId, event.call);
        s.lastActivityAt = this.now();
        if (!known && s.summary.callCount < s.calls.size) s.summary = { ...s.summary, callCount: s.calls.size };
        this.changes.fire({ kind: 'session', hostId, sessionId: event.call.sessionId });
        if (event.type === 'call.finished') {
          this.retireLiveOutput(sessionKey(hostId, event.call.toolUseId));
          this.outputs.fire({ hostId, toolUseId: event.call.toolUseId });
        }
        return;
      }
      case 'call.output': {
        const key = sessionKey(hostId, event.toolUseId);
        const before = this.liveOutput.get(key) ?? '';
        if (before.length < MAX_LIVE_OUTPUT) this.liveOutput.set(key, (before + event.chunk).slice(0, MAX_LIVE_OUTPUT));
        const s = this.sessions.get(sessionKey(hostId, event.sessionId));
        if (s) s.lastActivityAt = this.now();
        this.outputs.fire({ hostId, toolUseId: event.toolUseId });
        return;
      }
      case 'persist.changed':
        this.loadPersist(hostId, event.persist);
        return;
      case 'session.transcript': {
        const key = sessionKey(hostId, event.sessionId);
        if (this.forgotten.has(key)) return;
        const list = this.transcripts.get(key) ?? [];
        const id = 'eventId' in event.entry ? event.entry.eventId : undefined;
        if (id && list.some((e) => 'eventId' in e && e.eventId === id)) return;
        list.push(event.entry);
        if (list.length > MAX_TRANSCRIPT_ENTRIES) list.splice(0, list.length - MAX_TRANSCRIPT_ENTRIES);
        this.transcripts.set(key, list);
        this.changes.fire({ kind: 'transcript', hostId, sessionId: event.sessionId });
        return;
      }
      case 'egress.decision':
      case 'log':
        return;   // shown in the worker log channel (egress decisions also in transcripts), not in the trees
    }
  }

  /**
   * Sessions that look stuck: the session is active and its newest call has been running for longer than
   * `thresholdMs` without any event (one waiting for its confirmation waits for a person, not for the worker). A live heartbeat does not clear this: liveness of
   * the socket is not progress of the session.
   */
  stuckSessions(thresholdMs: number): SessionEntry[] {
    return this.sessionList().filter((s) => this.isStuck(s, thresholdMs));
  }

  isStuck(entry: SessionEntry, thresholdMs: number): boolean {
    if (entry.summary.state === 'ended' || entry.summary.state === 'lost') return false;
    const newest = this.callList(entry.hostId, entry.summary.sessionId)[0];
    // A call waiting for its confirmation waits for a person, not for the worker: that is not "stuck".
    if (!newest || newest.state !== 'running') return false;
    return this.now() - entry.lastActivityAt > thresholdMs;
  }

  counts(stuckThresholdMs: number): { hosts: number; connected: number; activeSessions: number; runningCalls: number; stuck: number } {
    let activeSessions = 0; let runningCalls = 0; let stuck = 0;
    for (const s of this.sessions.values()) {
      if (s.summary.state !== 'ended' && s.summary.state !== 'lost') activeSessions++;
      for (const c of s.calls.values()) if (c.state === 'running' || c.state === 'waiting_confirmation') runningCalls++;
      if (this.isStuck(s, stuckThresholdMs)) stuck++;
    }
    const hosts = this.hostList();
    return { hosts: hosts.length, connected: hosts.filter((h) => h.connection === 'connected').length, activeSessions, runningCalls, stuck };
  }

  /** Finished calls keep their live output only for the last KEEP_FINISHED_OUTPUTS (their full output is in the journal). */
  private readonly finishedOutputs: string[] = [];
  private retireLiveOutput(key: string): void {
    if (!this.liveOutput.has(key)) return;
    this.finishedOutputs.push(key);
    while (this.finishedOutputs.length > KEEP_FINISHED_OUTPUTS) this.liveOutput.delete(this.finishedOutputs.shift()!);
  }

  private placeholderSession(hostId: string, sessionId: string): SessionSummary {
    const existing = this.sessions.get(sessionKey(hostId, sessionId));
    if (existing) return existing.summary;
    const t = this.now();
    return { sessionId, workId: '', state: 'running', claimedAt: t, updatedAt: t, endedAt: null, callCount: 0, lastError: null };
  }

  private upsertSession(hostId: string, summary: SessionSummary, announce: boolean, keepSummary = false): SessionEntry {
    const key = sessionKey(hostId, summary.sessionId);
    if (this.forgotten.has(key)) return { hostId, summary, calls: new Map(), lastActivityAt: this.now() };
    let s = this.sessions.get(key);
    const isNew = !s;
    if (!s) {
      s = { hostId, summary, calls: new Map(), lastActivityAt: this.now() };
      this.sessions.set(key, s);
    } else if (!keepSummary && summary.updatedAt >= s.summary.updatedAt) {
      s.summary = summary;
      if (announce) s.lastActivityAt = this.now();
    }
    if (announce) this.changes.fire(isNew ? { kind: 'sessions', hostId } : { kind: 'session', hostId, sessionId: summary.sessionId });
    else if (isNew && keepSummary) this.changes.fire({ kind: 'sessions', hostId });
    return s;
  }
}
