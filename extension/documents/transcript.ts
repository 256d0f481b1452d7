// A session's transcript as one readable, searchable Markdown document (scheme `perimeter-transcript`): the user's
// prompts, the agent's messages and every tool call in the order they happened, each call with its input, the start
// of its output, timing, where it ran (host, driver, template), what it changed in the persisted files, and the
// session's egress decisions and confirmation verdicts. Pure: the TextDocumentContentProvider
// (transcriptProvider.ts) renders with `renderTranscript` whenever the session changes. The URI names the host and the
// session; parsing rejects anything `transcriptUriPath` does not build.
import type { SessionSummary, ToolCallSummary, TranscriptEntry } from '../../companion/protocol/control';
import { formatDuration, sessionStateLabel, summarizeInput } from '../views/items';
import { safeFileName } from './callDocument';

export const TRANSCRIPT_SCHEME = 'perimeter-transcript';

export interface SessionRef { hostId: string; sessionId: string }

/** /<host>/<session>/<title> · transcript.md (host and session URI-encoded; the title as it reads, since the editor
 *  tab shows it). */
export function transcriptUriPath(ref: SessionRef, title: string | null | undefined): string {
  return `/${encodeURIComponent(ref.hostId)}/${encodeURIComponent(ref.sessionId)}/${safeFileName(`${title || ref.sessionId} · transcript`)}.md`;
}

export function parseTranscriptUriPath(p: string): SessionRef | null {
  const m = /^\/([^/]+)\/([^/]+)\/[^/]+\.md$/.exec(p);
  if (!m) return null;
  try { return { hostId: decodeURIComponent(m[1]!), sessionId: decodeURIComponent(m[2]!) }; } catch { return null; }
}

export interface TranscriptInput {
  hostLabel: string;
  session: SessionSummary;
  calls: ToolCallSummary[];
  entries: TranscriptEntry[];
  /** The worker is connected: the document follows the session live. */
  live: boolean;
}

const time = (ts: number) => new Date(ts).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
const fence = (text: string, lang = '') => {
  const ticks = text.includes('```') ? '~~~~' : '```';
  return `${ticks}${lang}\n${text.replace(/\n$/, '')}\n${ticks}`;
};
const quote = (text: string) => text.split('\n').map((l) => `> ${l}`).join('\n');

function callBlock(c: ToolCallSummary): string[] {
  const state = c.state === 'waiting_confirmation' ? 'waiting for confirmation' : c.isError && c.state !== 'failed' ? `${c.state} (error)` : c.state;
  const timing = c.durationMs !== null ? ` · ${formatDuration(c.durationMs)}` : '';
  const summary = summarizeInput(c.name, c.input);
  const out = [`### ${time(c.startedAt)} · ${c.name}${summary ? `: ${summary}` : ''}`, '', `**${state}**${timing}${c.exitCode !== null ? ` · exit ${c.exitCode}` : ''} · call \`${c.toolUseId}\``];
  if (c.ranOn) out.push(`ran on ${c.ranOn.hostname} · ${c.ranOn.driver}${c.ranOn.accel !== 'none' ? ` (${c.ranOn.accel.toUpperCase()})` : ''}${c.ranOn.template ? ` · template ${c.ranOn.template}` : ''}`);
  out.push('', 'Input:', fence(JSON.stringify(c.input, null, 2) ?? 'null', 'json'));
  if (c.outputPreview) out.push('', 'Output (start; open the call for all of it):', fence(c.outputPreview));
  if (c.persist) {
    const p = c.persist;
    const lines = [...p.added.map((x) => `+ ${x}`), ...p.changed.map((x) => `~ ${x}`), ...p.removed.map((x) => `- ${x}`)];
    if (p.more) lines.push(`… ${p.more} more`);
    out.push('', `Persisted files (generation ${p.generation}):`, fence(lines.join('\n') || '(no file changes)'));
  }
  return out;
}

function entryBlock(e: TranscriptEntry): string[] | null {
  switch (e.kind) {
    case 'prompt': return [`### ${time(e.ts)} · user`, '', quote(e.text || '(empty message)')];
    case 'agent': return [`### ${time(e.ts)} · agent`, '', e.text || '(empty message)'];
    case 'confirmation': return [`${time(e.ts)} · call \`${e.toolUseId}\` ${e.result === 'allow' ? 'approved' : 'denied'}`];
    case 'turn': return e.status === 'idle' ? [`${time(e.ts)} · the agent ended its turn`] : e.status === 'terminated' ? [`${time(e.ts)} · the session was terminated`] : [`${time(e.ts)} · the agent resumed`];
    case 'egress': {
      const d = e.decision;
      return [`${time(e.ts)} · network ${d.allowed ? 'allowed' : 'denied'}: ${d.host}:${d.port} (${d.kind})${d.address ? ` → ${d.address}` : ''} · ${d.reason}`];
    }
  }
}

export function renderTranscript(t: TranscriptInput): string {
  const s = t.session;
  const head = [
    `# ${s.title || s.sessionId}`,
    '',
    `Session \`${s.sessionId}\` on ${t.hostLabel} · claimed ${time(s.claimedAt)} · ${sessionStateLabel(s.state)}${s.endedAt ? ` (ended ${time(s.endedAt)})` : ''} · ${t.calls.length} call${t.calls.length === 1 ? '' : 's'}`,
  ];
  if (s.lastError) head.push('', `Last error: ${s.lastError}`);
  if (!t.live) head.push('', '_From the journal (the worker is not connected): read-only history._');
  const items: Array<{ ts: number; order: number; lines: string[] }> = [];
  t.entries.forEach((e, i) => { const lines = entryBlock(e); if (lines) items.push({ ts: e.ts, order: i, lines }); });
  t.calls.forEach((c, i) => items.push({ ts: c.startedAt, order: t.entries.length + i, lines: callBlock(c) }));
  items.sort((a, b) => a.ts - b.ts || a.order - b.order);
  const body = items.flatMap((i) => ['', ...i.lines]);
  if (items.length === 0) body.push('', '(nothing recorded yet)');
  if (t.live && s.state !== 'ended' && s.state !== 'lost') body.push('', '_… live: this document follows the session._');
  return `${[...head, ...body].join('\n')}\n`;
}
