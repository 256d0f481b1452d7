// Pure descriptions of the tree items the three views show (label, description, icon, contextValue, stable id).
// The vscode TreeDataProviders (extension/views/trees.ts) only translate these into vscode.TreeItems, so everything a
// user reads in the trees is unit-tested here without VS Code. contextValues are space-separated words that the
// manifest's menus match with regexes (`viewItem =~ /\bhost\b/ && viewItem =~ /\brunning\b/`).
import type { PersistGeneration, PersistState, ToolCallSummary } from '../../companion/protocol/control';
import { formatBytes } from '../../companion/protocol/format';
import type { HostEntry, SessionEntry } from './model';

export interface ItemDescriptor {
  id: string;
  label: string;
  description?: string;
  tooltip?: string;
  /** A codicon id, optionally with a theme color id after a space (`pass testing.iconPassed`). */
  icon: string;
  contextValue: string;
  collapsible: 'none' | 'collapsed' | 'expanded';
  /** What clicking the row runs (a fix-it action). */
  command?: { command: string; title: string; arguments?: unknown[] };
}

/** A fix-it action: a command and what its button or link says. */
export interface FixAction { title: string; command: string; arguments?: unknown[] }

export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms) || ms < 0) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

// ---- Worker view --------------------------------------------------------------------------------------------------
/** Failed polls in a row before a connected worker counts as unable to poll (transient network or service errors). */
export const POLL_WARN_AFTER = 3;

/**
 * Why a connected worker cannot poll its queue, or null while polling works: `credentials` (401/403) and `environment`
 * (404) from the first failure (they never heal by themselves), `network` (no answer) and `service` (429/5xx) after
 * POLL_WARN_AFTER failures in a row.
 */
export interface PollTrouble { kind: 'credentials' | 'environment' | 'network' | 'service'; failures: number; lastError: string; since: number | null }

export function pollTrouble(h: HostEntry): PollTrouble | null {
  const p = h.connection === 'connected' ? h.facts?.poll : undefined;
  if (!p || p.failures === 0) return null;
  const kind: PollTrouble['kind'] = p.lastStatus === null ? 'network' : p.lastStatus === 401 || p.lastStatus === 403 ? 'credentials' : p.lastStatus === 404 ? 'environment' : 'service';
  if ((kind === 'network' || kind === 'service') && p.failures < POLL_WARN_AFTER) return null;
  return { kind, failures: p.failures, lastError: p.lastError ?? 'unknown error', since: p.lastSuccessAt };
}

/** What to tell the user about a poll trouble, and the action that fixes it. */
export function pollAdvice(h: HostEntry, t: PollTrouble): { summary: string; fix: FixAction } {
  switch (t.kind) {
    case 'credentials': return { summary: 'the API refuses the environment key', fix: { title: 'Connect Environment', command: 'perimeter.connectEnvironment' } };
    case 'environment': return { summary: 'the API does not know the environment ID', fix: { title: 'Connect Environment', command: 'perimeter.connectEnvironment' } };
    case 'network': return { summary: `no answer from the API (check ${h.hostId === 'local' ? 'this machine\'s' : `${h.label}'s`} network, DNS or proxy)`, fix: { title: 'Show Worker Log', command: 'perimeter.showWorkerLog', arguments: [h.hostId] } };
    case 'service': return { summary: 'the API answers with errors (it may be overloaded; the worker keeps retrying)', fix: { title: 'Show Worker Log', command: 'perimeter.showWorkerLog', arguments: [h.hostId] } };
  }
}

export function hostStateLabel(h: HostEntry): string {
  switch (h.connection) {
    case 'stopped': return h.problem ? 'stopped (failed)' : 'stopped';
    case 'starting': return 'starting';
    case 'reconnecting': return h.problemKind === 'link' ? 'SSH connection lost' : 'reconnecting';
    case 'failed': return h.problemKind === 'link' ? 'SSH connection lost' : h.problemKind === 'credentials' ? 'environment refused' : 'failed';
    case 'connected': return pollTrouble(h) ? 'cannot poll' : h.workerState ?? 'connected';
  }
}

/** A connected worker that runs tool calls as host processes (the `process` driver): no VM isolates them. */
export function withoutIsolation(h: HostEntry): boolean {
  return h.connection === 'connected' && h.facts?.driver === 'process';
}

function hostIcon(h: HostEntry): string {
  if (h.connection === 'failed') return h.problemKind === 'link' ? 'debug-disconnect errorForeground' : 'error errorForeground';
  if (h.connection === 'reconnecting') return 'sync~spin list.warningForeground';
  if (h.connection === 'connected' && pollTrouble(h)) return 'warning list.warningForeground';
  if (withoutIsolation(h)) return 'unlock list.warningForeground';
  if (h.connection === 'starting') return 'loading~spin';
  if (h.connection === 'stopped') return 'circle-outline';
  switch (h.workerState) {
    case 'polling': return 'vm-running testing.iconPassed';
    case 'paused': return 'warning list.warningForeground';
    case 'draining': return 'debug-pause list.warningForeground';
    case 'error': return 'error errorForeground';
    case 'stopped': return 'circle-outline';
    default: return 'loading~spin';
  }
}

/** A host row. `selected`: the host commands act on by default (shown first in the description). */
export function describeHost(h: HostEntry, selected = false): ItemDescriptor {
  const running = h.connection === 'connected' || h.connection === 'starting' || h.connection === 'reconnecting';
  const trouble = pollTrouble(h);
  const parts = [hostStateLabel(h)];
  if (selected) parts.unshift('selected');
  if (h.problem) parts.push(h.problem);
  else if (trouble) parts.push(trouble.lastError);
  const words = ['host', running ? 'running' : 'stopped', h.hostId === 'local' ? 'local' : 'remote'];
  if (selected) words.push('selected');
  if (h.problemKind === 'link' && (h.connection === 'failed' || h.connection === 'reconnecting')) words.push('linkDown');
  if (trouble) words.push('warning');
  return {
    id: `host:${h.hostId}`,
    label: h.label,
    description: parts.join(' · '),
    tooltip: [`${h.label}: ${hostStateLabel(h)}${selected ? ' (the selected host: commands act on it)' : ''}`, h.problem ?? (trouble ? `last poll error: ${trouble.lastError}` : null)].filter(Boolean).join('\n'),
    icon: hostIcon(h),
    contextValue: words.join(' '),
    collapsible: 'expanded',
  };
}

/** The fact rows under a host: state, uptime, driver, accel, concurrency, queue. */
export function describeHostDetails(h: HostEntry, counts: { activeSessions: number; runningCalls: number }, now: number): ItemDescriptor[] {
  const row = (key: string, label: string, value: string, icon: string): ItemDescriptor =>
    ({ id: `host:${h.hostId}:${key}`, label, description: value, icon, contextValue: `hostDetail ${key}`, collapsible: 'none' });
  const f = h.facts;
  const rows = [row('state', 'State', h.workerDetail ? `${hostStateLabel(h)} (${h.workerDetail})` : hostStateLabel(h), 'pulse')];
  if (h.connection !== 'connected' || !f) return h.problem ? [...rows, row('problem', 'Problem', h.problem, 'warning')] : rows;
  const trouble = pollTrouble(h);
  if (trouble) {
    const advice = pollAdvice(h, trouble);
    rows.push({
      ...row('poll', 'Polling', `${trouble.failures} failed in a row: ${trouble.lastError}`, 'warning list.warningForeground'),
      tooltip: `${advice.summary}.\nLast error: ${trouble.lastError}\nClick: ${advice.fix.title}`,
      command: { command: advice.fix.command, title: advice.fix.title, arguments: advice.fix.arguments },
    });
  }
  rows.push(
    row('uptime', 'Uptime', formatDuration(now - f.startedAt), 'clock'),
    row('driver', 'Sandbox driver', f.driver, 'package'),
    row('accel', 'Acceleration', f.accel === 'kvm' ? 'KVM' : f.accel === 'tcg' ? 'TCG (no KVM: slow)' : 'none (no VM isolation)', f.accel === 'kvm' ? 'zap' : 'warning'),
    row('concurrency', 'Concurrency', String(f.concurrency), 'layers'),
    row('queue', 'Queue', `${counts.activeSessions} active session${counts.activeSessions === 1 ? '' : 's'}, ${counts.runningCalls} running call${counts.runningCalls === 1 ? '' : 's'}, ${f.vmsRunning} VM${f.vmsRunning === 1 ? '' : 's'} running`, 'list-ordered'),
    row('host', 'Host', `${f.hostname} · pid ${f.pid} · v${f.version}`, 'server'),
  );
  if (f.sandboxNote) rows.splice(3, 0, row('sandbox', 'Sandbox', f.sandboxNote, 'sync~spin'));
  return rows;
}

// ---- Sessions view ------------------------------------------------------------------------------------------------
/** How long ago `ms` was, compactly: `12s ago`, `5m ago`, `3h ago`, `2d ago`. */
export function formatAge(ms: number): string {
  const sec = Math.max(0, Math.floor(ms / 1000));
  if (sec < 60) return `${sec}s ago`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m ago`;
  if (sec < 86_400) return `${Math.floor(sec / 3600)}h ago`;
  return `${Math.floor(sec / 86_400)}d ago`;
}

/** A local clock time (`14:03`), with the date when it is not today. */
export function formatClock(ts: number, now: number): string {
  const d = new Date(ts);
  const hm = `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  return d.toDateString() === new Date(now).toDateString() ? hm : `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')} ${hm}`;
}

const SESSION_STATE_LABEL: Record<SessionEntry['summary']['state'], string> = {
  claimed: 'claimed', running: 'running', idle: 'turn ended', ended: 'ended', lost: 'lost',
};
export const sessionStateLabel = (state: SessionEntry['summary']['state']): string => SESSION_STATE_LABEL[state];

/** A session row: its title (first prompt line or agent name; the id until one is known), state, calls, start time
 *  and age. The id is in the tooltip and the Copy Session ID action. */
export function describeSession(s: SessionEntry, stuck: boolean, multiHost: boolean, now: number = Date.now()): ItemDescriptor {
  const sum = s.summary;
  const finished = sum.state === 'ended' || sum.state === 'lost';
  const icon = stuck ? 'watch list.warningForeground'
    : sum.state === 'running' ? 'sync~spin'
      : sum.state === 'claimed' ? 'inbox'
        : sum.state === 'idle' ? 'check'
          : sum.state === 'lost' ? 'error errorForeground' : 'pass testing.iconPassed';
  const calls = s.calls.size || sum.callCount;
  const parts: string[] = [stuck ? 'stuck? no progress' : SESSION_STATE_LABEL[sum.state], `${calls} call${calls === 1 ? '' : 's'}`,
    `${formatClock(sum.claimedAt, now)} (${formatAge(now - sum.claimedAt)})`];
  // With several hosts, a session may have moved (its lease lapsed on one host, another claimed it): name the holder.
  if (multiHost) parts.push(sum.holder ? `${s.hostId}, held by ${sum.holder}` : s.hostId);
  return {
    id: `session:${s.hostId}:${sum.sessionId}`,
    label: sum.title || sum.sessionId,
    description: parts.join(' · '),
    tooltip: [sum.title ?? null, `session ${sum.sessionId}`, `state: ${SESSION_STATE_LABEL[sum.state]}`, `claimed ${new Date(sum.claimedAt).toISOString()}`,
      sum.endedAt ? `ended ${new Date(sum.endedAt).toISOString()}` : null, sum.lastError ? `last error: ${sum.lastError}` : null,
      stuck ? 'No event for a while although a call is in progress: the session may be stuck.' : null].filter(Boolean).join('\n'),
    icon,
    contextValue: `session ${finished ? 'ended' : 'active'}${stuck ? ' stuck' : ''}`,
    collapsible: finished ? 'collapsed' : 'expanded',
  };
}

/** Whether a session matches the Sessions view's filter (its title, id, host or a call's label; case-insensitive). */
export function sessionMatches(s: SessionEntry, filter: string, hostLabel: string): boolean {
  const f = filter.trim().toLowerCase();
  if (!f) return true;
  const hay = [s.summary.title ?? '', s.summary.sessionId, s.hostId, hostLabel, s.summary.state];
  for (const c of s.calls.values()) hay.push(callLabel(c.name, c.input));
  return hay.some((x) => x.toLowerCase().includes(f));
}

/** A one-line summary of a tool call's input: the command, path or pattern it acts on. */
export function summarizeInput(name: string, input: unknown): string {
  const o = (typeof input === 'object' && input !== null ? input : {}) as Record<string, unknown>;
  const pick = (k: string) => (typeof o[k] === 'string' ? (o[k] as string) : '');
  let text: string;
  switch (name) {
    case 'bash': text = pick('command'); break;
    case 'read': case 'write': case 'edit': text = pick('file_path') || pick('path'); break;
    case 'glob': case 'grep': text = pick('pattern'); break;
    default: text = JSON.stringify(input) ?? '';
  }
  const line = text.split('\n')[0]!.trim();
  return line.length > 60 ? `${line.slice(0, 59)}…` : line;
}

/** A call as the Sessions view and its document's tab name it: the tool and what it acts on (`bash: make test`). */
export function callLabel(name: string, input: unknown): string {
  const summary = summarizeInput(name, input);
  return summary ? `${name}: ${summary}` : name;
}

function callIcon(c: ToolCallSummary): string {
  switch (c.state) {
    case 'running': return 'loading~spin';
    case 'waiting_confirmation': return 'question list.warningForeground';
    case 'denied': return 'circle-slash';
    case 'interrupted': return 'debug-disconnect errorForeground';
    case 'failed': return 'error errorForeground';
    case 'done': case 'posted': return c.isError ? 'error errorForeground' : 'pass testing.iconPassed';
  }
}

export function describeCall(hostId: string, c: ToolCallSummary, now: number): ItemDescriptor {
  const running = c.state === 'running' || c.state === 'waiting_confirmation';
  const duration = c.durationMs ?? (running ? now - c.startedAt : null);
  const status = c.state === 'waiting_confirmation' ? 'waiting for confirmation' : c.isError && c.state !== 'failed' ? 'error' : c.state;
  const parts = [status, formatDuration(duration)];
  if (c.exitCode !== null && c.exitCode !== 0) parts.push(`exit ${c.exitCode}`);
  return {
    id: `call:${hostId}:${c.toolUseId}`,
    label: callLabel(c.name, c.input),
    description: parts.filter(Boolean).join(' · '),
    tooltip: `${c.name} (${c.toolUseId})\n${status}${c.outputPreview ? `\n\n${c.outputPreview.slice(0, 500)}` : ''}`,
    icon: callIcon(c),
    contextValue: `call ${running ? 'running' : 'finished'}`,
    collapsible: 'none',
  };
}

// ---- Persisted Files view -----------------------------------------------------------------------------------------
export function describePersistSession(hostId: string, sessionId: string, p: PersistState | undefined, multiHost: boolean, title?: string | null): ItemDescriptor {
  const parts = p ? [`${p.patterns.length} path${p.patterns.length === 1 ? '' : 's'}`, p.store === 'disk' ? 'session disk' : `${p.files.length} file${p.files.length === 1 ? '' : 's'}`, formatBytes(p.totalBytes), `gen ${p.generation}`] : ['not loaded'];
  if (multiHost) parts.push(hostId);
  return {
    id: `persist:${hostId}:${sessionId}`, label: title || sessionId, description: parts.join(' · '), tooltip: `session ${sessionId}`, icon: 'archive',
    contextValue: 'persistSession', collapsible: 'expanded',
  };
}

export function describePattern(hostId: string, sessionId: string, pattern: string): ItemDescriptor {
  return {
    id: `persist:${hostId}:${sessionId}:pattern:${pattern}`, label: pattern, description: 'persisted path', icon: 'pin',
    contextValue: 'persistPattern', collapsible: 'none',
  };
}

/** A persisted file; `generation` set: a file of an older generation (listed under it), else of the current one. */
export function describePersistedFile(hostId: string, sessionId: string, f: { path: string; size: number; generation?: number }): ItemDescriptor {
  const where = f.generation === undefined ? 'file' : `gen:${f.generation}:file`;
  return {
    id: `persist:${hostId}:${sessionId}:${where}:${f.path}`, label: f.path, description: formatBytes(f.size), icon: 'file',
    contextValue: f.generation === undefined ? 'persistFile' : 'persistFile generationFile', collapsible: 'none',
  };
}

export function describeGenerations(hostId: string, sessionId: string, count: number | null): ItemDescriptor {
  return {
    id: `persist:${hostId}:${sessionId}:generations`, label: 'Generations', description: count === null ? '' : `${count} kept`,
    tooltip: 'The kept generations of this session\'s persisted files (one per call that changed them). Open a file of one, compare it, or roll back to it.',
    icon: 'history', contextValue: 'persistGenerations', collapsible: 'collapsed',
  };
}

export function describeGeneration(hostId: string, sessionId: string, g: PersistGeneration, current: number, now: number): ItemDescriptor {
  const isCurrent = g.generation === current;
  const parts = [isCurrent ? 'current' : null, g.createdAt ? `${formatClock(g.createdAt, now)} (${formatAge(now - g.createdAt)})` : null,
    `${g.fileCount} file${g.fileCount === 1 ? '' : 's'}`, formatBytes(g.totalBytes),
    g.rolledBackFrom !== null ? `rollback to ${g.rolledBackFrom}` : null].filter(Boolean);
  return {
    id: `persist:${hostId}:${sessionId}:gen:${g.generation}`, label: `Generation ${g.generation}`, description: parts.join(' · '),
    icon: isCurrent ? 'circle-filled' : 'circle-outline', contextValue: `persistGeneration${isCurrent ? ' current' : ''}`, collapsible: 'collapsed',
  };
}
