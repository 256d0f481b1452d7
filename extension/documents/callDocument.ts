// The text and address of a tool call's read-only virtual document (scheme `perimeter-call`). Pure: the
// TextDocumentContentProvider in extension/documents/provider.ts renders with `renderCallDocument` and re-renders
// when the call's live output grows. The URI names the host and the call; its last segment is the call's label (what
// the Sessions view shows, e.g. `bash: make test`), so the editor tab says which call it is. Parsing rejects anything
// that is not exactly what `callUri` builds.
import type { ToolCallSummary } from '../../companion/protocol/control';
import { formatDuration } from '../views/items';

export const CALL_SCHEME = 'perimeter-call';

export interface CallRef { hostId: string; toolUseId: string }

/** A label as one file-name segment: no slash, no control characters, at most 80 characters. */
export function safeFileName(label: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = label.replace(/[\u0000-\u001f\u007f]/g, ' ').replace(/\//g, '\u2215').replace(/\s+/g, ' ').trim();
  const short = clean.length > 80 ? `${clean.slice(0, 79)}…` : clean;
  return short === '' || short === '.' || short === '..' ? 'call' : short;
}

/** The path part of a call document URI: /<host>/<toolUseId>/<label> (host and id URI-encoded; the label as it
 *  reads, made a safe file name, since the editor tab shows it). */
export function callUriPath(ref: CallRef, label: string): string {
  return `/${encodeURIComponent(ref.hostId)}/${encodeURIComponent(ref.toolUseId)}/${safeFileName(label)}`;
}

export function parseCallUriPath(path: string): CallRef | null {
  const m = /^\/([^/]+)\/([^/]+)\/[^/]+$/.exec(path);
  if (!m) return null;
  try { return { hostId: decodeURIComponent(m[1]!), toolUseId: decodeURIComponent(m[2]!) }; } catch { return null; }
}

export function renderCallDocument(call: ToolCallSummary, output: string, opts: { live: boolean }): string {
  const lines = [
    `# ${call.name} · ${call.toolUseId}`,
    `session:  ${call.sessionId}`,
    `state:    ${call.state}${call.isError ? ' (is_error)' : ''}`,
    `started:  ${new Date(call.startedAt).toISOString()}`,
  ];
  if (call.finishedAt !== null) lines.push(`finished: ${new Date(call.finishedAt).toISOString()} (${formatDuration(call.durationMs)})`);
  if (call.exitCode !== null) lines.push(`exit code: ${call.exitCode}`);
  lines.push('', '## input', JSON.stringify(call.input, null, 2) ?? 'null', '', '## output');
  lines.push(output.length > 0 ? output : opts.live ? '(no output yet)' : '(empty output)');
  if (opts.live) lines.push('', '… (running: this document follows the live output)');
  return lines.join('\n') + '\n';
}
