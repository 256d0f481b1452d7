// How much of a tool call the journal keeps. Pure functions. Invariants:
// - An input whose JSON is longer than INPUT_KEEP_BYTES is stored as its size and sha256 (plus a short preview), never
//   whole: a `write` of many megabytes costs the journal a few hundred bytes. The call's inputSha256 is always of the
//   whole input, so a re-delivered call is still recognised (and a different input with the same id still refused).
// - A result longer than RESULT_KEEP_BYTES is stored as its head plus one line giving its size and sha256 (together
//   within the limit, so cutting again changes nothing). Every
//   tool caps its own output far below that (bash and grep 100 KiB, read 256 KiB), so a result waiting to be posted is
//   in practice kept whole; a result already posted is cut further at compaction (the panel needs only a copy).
import { createHash } from 'node:crypto';

export const INPUT_KEEP_BYTES = 64 * 1024;
export const RESULT_KEEP_BYTES = 1024 * 1024;
const INPUT_PREVIEW_CHARS = 1024;
/** Room left for the size line of a cut result, so a cut result is itself within the limit (cutting is idempotent). */
const MARKER_ROOM = 256;

/** What the journal stores instead of an input over INPUT_KEEP_BYTES. */
export interface CappedInput { journalCapped: { bytes: number; sha256: string; preview: string } }

export function isCappedInput(v: unknown): v is CappedInput {
  return typeof v === 'object' && v !== null && 'journalCapped' in v;
}

export function capInput(input: unknown): unknown {
  const json = JSON.stringify(input ?? null);
  const bytes = Buffer.byteLength(json, 'utf8');
  if (bytes <= INPUT_KEEP_BYTES) return input;
  return { journalCapped: { bytes, sha256: createHash('sha256').update(json).digest('hex'), preview: json.slice(0, INPUT_PREVIEW_CHARS) } } satisfies CappedInput;
}

export function capResult(text: string, keepBytes: number = RESULT_KEEP_BYTES): string {
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes <= keepBytes) return text;
  const whole = Buffer.from(text, 'utf8');
  const sha = createHash('sha256').update(whole).digest('hex');
  // Cut on a character boundary: drop a partial UTF-8 sequence at the end of the head.
  const head = whole.subarray(0, keepBytes - MARKER_ROOM).toString('utf8').replace(/\uFFFD$/, '');
  return `${head}\n[journal copy cut: the result is ${bytes} bytes (sha256 ${sha}); only its first ${Buffer.byteLength(head, 'utf8')} are kept]`;
}
