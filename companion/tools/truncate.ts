// Output over a tool's cap, made readable for the model: text is cut only between whole lines (unless one line alone
// is longer than what is kept of it), and one marker line stands exactly where text was left out, saying how many
// bytes and lines are missing. So no line that never existed appears, and the model knows what it did not see.
// Pure functions. Invariants:
// - Every byte of the original output is either shown or counted in the marker; the counts are exact whenever the
//   sandbox counted the newlines it dropped (ExecResult.droppedNewlines).
// - The kept pieces are cleaned (cleanOutput) separately, so nothing is joined across the gap and the marker itself
//   is never altered.
// - A result is at most `maxBytes` bytes of the raw output, marker included (cleaning may still widen a control
//   character or an invalid byte into U+FFFD).
import { cleanOutput, truncateUtf8 } from './text';

/** Room kept for the marker line (the longest marker, with its newlines, is well under this). */
const MARKER_ROOM = 160;

/** Bytes a sandbox left out of its output at byte offset `at` (what precedes `at` came before them). */
export interface OutputGap { at: number; bytes: number; newlines: number | null }

/** What a marker stands for: bytes and newlines left out, and whether a line was cut (not left out whole). */
export interface Omission { bytes: number; newlines: number | null; cutsLine: boolean }

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

export function omissionMarker(o: Omission): string {
  if (o.newlines === null) return `[output truncated: ${plural(o.bytes, 'byte')} omitted${o.cutsLine ? '; a line longer than the output limit is cut here' : ''}]`;
  if (!o.cutsLine) return `[output truncated: ${plural(o.newlines, 'line')} (${plural(o.bytes, 'byte')}) omitted]`;
  return `[output truncated: ${plural(o.bytes, 'byte')} omitted, ${plural(o.newlines, 'newline')} among them; a line longer than the output limit is cut here]`;
}

/** The gap an ExecResult describes, or null when nothing was dropped. */
export function execGap(r: { output: Buffer; droppedBytes: number; droppedAt: number; droppedNewlines: number | null }): OutputGap | null {
  return r.droppedBytes > 0 ? { at: Math.min(Math.max(0, r.droppedAt), r.output.length), bytes: r.droppedBytes, newlines: r.droppedNewlines } : null;
}

function countNewlines(data: Buffer, from: number, to: number): number {
  let n = 0;
  for (let i = data.indexOf(0x0a, from); i >= 0 && i < to; i = data.indexOf(0x0a, i + 1)) n++;
  return n;
}

/** Backs up to the first byte of a UTF-8 character. */
function charStartBackward(data: Buffer, i: number): number {
  while (i > 0 && i < data.length && (data[i]! & 0xc0) === 0x80) i--;
  return i;
}
/** Moves on to the first byte of a UTF-8 character. */
function charStartForward(data: Buffer, i: number): number {
  while (i < data.length && (data[i]! & 0xc0) === 0x80) i++;
  return i;
}

/**
 * Head and tail of `data` (with the sandbox's own `gap`, if any), at most `maxBytes` of it, cut on whole lines, with
 * one marker line where text is missing. When nothing is missing the cleaned text is returned unchanged.
 */
export function keepHeadAndTail(data: Buffer, gap: OutputGap | null, maxBytes: number): string {
  const n = data.length;
  const g = gap && gap.bytes > 0 ? { ...gap, at: Math.min(Math.max(0, gap.at), n) } : null;
  if (!g && n <= maxBytes) return cleanOutput(data);
  const budget = Math.max(0, maxBytes - MARKER_ROOM);
  const half = Math.floor(budget / 2);
  let headEnd: number;
  let tailStart: number;
  if (g) {
    headEnd = n <= budget ? g.at : Math.min(g.at, half);
    tailStart = n - (n <= budget ? n - g.at : Math.min(n - g.at, budget - headEnd));
  } else {
    headEnd = half;
    tailStart = n - (budget - half);
  }
  let cutsLine = false;
  // The head ends just after a newline; a first line longer than the head is cut at a character boundary.
  let headCut = headEnd > 0 ? data.lastIndexOf(0x0a, headEnd - 1) + 1 : 0;
  if (headCut === 0 && headEnd > 0) { headCut = charStartBackward(data, headEnd); cutsLine = true; }
  // The tail starts just after a newline. Right after the sandbox's gap it is unknown whether a line starts there, so
  // the first (maybe partial) line goes too. A last line longer than the tail is cut.
  let tailCut: number;
  if (tailStart > (g ? g.at : 0) && data[tailStart - 1] === 0x0a) tailCut = tailStart;
  else {
    const nl = data.indexOf(0x0a, tailStart);
    if (nl >= 0 && nl + 1 < n) tailCut = nl + 1;
    else { tailCut = charStartForward(data, tailStart); cutsLine = true; }
  }
  const newlines = g && g.newlines === null ? null : countNewlines(data, headCut, tailCut) + (g?.newlines ?? 0);
  const marker = omissionMarker({ bytes: tailCut - headCut + (g?.bytes ?? 0), newlines, cutsLine });
  const head = cleanOutput(data.subarray(0, headCut));
  const tail = cleanOutput(data.subarray(tailCut));
  return `${head}${head && !head.endsWith('\n') ? '\n' : ''}${marker}\n${tail}`;
}

/**
 * The first whole lines that fit in `maxBytes` (each counted with its newline), then one marker line for the rest of
 * `lines` and for what was never received (`unseen`). A first line longer than `maxBytes` is cut rather than dropped.
 */
export function keepFirstLines(lines: readonly string[], maxBytes: number, unseen: { bytes: number; newlines: number | null } = { bytes: 0, newlines: 0 }): string {
  const fitting = (budget: number) => {
    let used = 0;
    let k = 0;
    for (; k < lines.length; k++) {
      used += Buffer.byteLength(lines[k]!) + 1;
      if (used > budget + 1) break; // the last line shown needs no newline of its own
    }
    return k;
  };
  if (unseen.bytes === 0 && fitting(maxBytes) === lines.length) return lines.join('\n');
  const budget = Math.max(0, maxBytes - MARKER_ROOM);
  const kept = fitting(budget);
  const shown = lines.slice(0, kept);
  let bytes = unseen.bytes;
  for (let i = kept; i < lines.length; i++) bytes += Buffer.byteLength(lines[i]!) + 1;
  const newlines = unseen.newlines === null ? null : unseen.newlines + lines.length - kept;
  let cutsLine = false;
  if (kept === 0 && lines.length > 0) {
    const part = truncateUtf8(lines[0]!, budget).text;
    shown.push(part);
    bytes -= Buffer.byteLength(part);
    cutsLine = true;
  }
  return [...shown, omissionMarker({ bytes, newlines, cutsLine })].join('\n');
}
