// Checks for truncated output made from numbered lines (`seq 1 N`): the suites that run commands (process driver,
// real VMs) and the truncation unit tests share them.
import assert from 'node:assert/strict';

/** `from\n…to\n` */
export const numbered = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => `${from + i}\n`).join('');

const MARKER = /^\[output truncated: (\d+) lines? \((\d+) bytes?\) omitted\]$/;

/**
 * Checks a result made from `1\n2\n…last\n`: only whole, consecutive numbers from 1 to `last`, and exactly one marker
 * line, standing where numbers are missing, whose line and byte counts are exactly the numbers it stands for.
 */
export function assertNumberedWithOneGap(text: string, last: number): void {
  const lines = text.replace(/\n$/, '').split('\n');
  const markers = lines.map((l, i) => [l, i] as const).filter(([l]) => l.startsWith('['));
  assert.equal(markers.length, 1, 'exactly one marker');
  const [marker, at] = markers[0]!;
  const m = MARKER.exec(marker);
  assert.ok(m, `marker shape: ${marker}`);
  const [omittedLines, omittedBytes] = [Number(m[1]), Number(m[2])];
  const before = lines.slice(0, at).map(Number);
  const after = lines.slice(at + 1).map(Number);
  assert.ok(before.length > 0 && after.length > 0, 'lines on both sides of the marker');
  for (const [i, n] of before.entries()) assert.equal(n, i + 1, `line ${i + 1} before the marker`);
  const firstAfter = before.length + omittedLines + 1;
  for (const [i, n] of after.entries()) assert.equal(n, firstAfter + i, `line ${i + 1} after the marker`);
  assert.equal(after[after.length - 1], last, 'the last line is there');
  assert.equal(omittedBytes, Buffer.byteLength(numbered(before.length + 1, firstAfter - 1)), 'omitted bytes are exact');
}
