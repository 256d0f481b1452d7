// Output truncation (companion/tools/truncate.ts) on numbered lines: only whole lines are shown, the marker stands on
// its own line exactly where lines are missing, and its byte and line counts are exactly what was left out.
import assert from 'node:assert/strict';
import { keepFirstLines, keepHeadAndTail, type OutputGap } from '../../companion/tools/truncate';
import { assertNumberedWithOneGap, numbered } from './numbered-output';

/** What the guest agent does with a cap: the first ceil(cap/2) bytes, the last floor(cap/2), the middle counted. */
function capLikeTheAgent(data: Buffer, cap: number): { kept: Buffer; gap: OutputGap | null } {
  if (data.length <= cap) return { kept: data, gap: null };
  const head = cap - Math.floor(cap / 2);
  const tail = Math.floor(cap / 2);
  const middle = data.subarray(head, data.length - tail);
  return {
    kept: Buffer.concat([data.subarray(0, head), data.subarray(data.length - tail)]),
    gap: { at: head, bytes: middle.length, newlines: middle.toString().split('\n').length - 1 },
  };
}

describe('output truncation (pure functions)', () => {
  it('leaves output within the cap unchanged', () => {
    assert.equal(keepHeadAndTail(Buffer.from(numbered(1, 100)), null, 1 << 20), numbered(1, 100));
    assert.equal(keepFirstLines(['a', 'b'], 100), 'a\nb');
  });

  it('cuts uncapped output over the limit on whole lines, the marker where lines are missing', () => {
    for (const limit of [300, 1001, 4096, 100 * 1024]) {
      const text = keepHeadAndTail(Buffer.from(numbered(1, 200_000)), null, limit);
      assertNumberedWithOneGap(text, 200_000);
      assert.ok(Buffer.byteLength(text) <= limit, `${Buffer.byteLength(text)} <= ${limit}`);
    }
  });

  it('cuts output the agent capped mid-line on whole lines, counting the agent\'s dropped bytes and newlines', () => {
    const all = Buffer.from(numbered(1, 200_000));
    for (const cap of [257, 1000, 4099, 100 * 1024, 100 * 1024 + 3]) {
      for (const limit of [cap, cap + 500, Math.floor(cap / 2) + 200]) {
        const { kept, gap } = capLikeTheAgent(all, cap);
        const text = keepHeadAndTail(kept, gap, limit);
        assertNumberedWithOneGap(text, 200_000);
        assert.ok(Buffer.byteLength(text) <= Math.max(limit, 0), `cap ${cap}, limit ${limit}`);
      }
    }
  });

  it('says only the bytes when the sandbox could not count the newlines it dropped', () => {
    const { kept, gap } = capLikeTheAgent(Buffer.from(numbered(1, 5000)), 1000);
    const text = keepHeadAndTail(kept, { ...gap!, newlines: null }, 1000);
    const lines = text.replace(/\n$/, '').split('\n');
    const at = lines.findIndex((l) => l.startsWith('['));
    assert.match(lines[at]!, /^\[output truncated: \d+ bytes omitted\]$/);
    const shown = lines.filter((_, i) => i !== at).map(Number);
    assert.ok(shown.every((n, i) => i === 0 || n > shown[i - 1]!), 'no spliced line');
    assert.deepEqual(shown.slice(0, 3), [1, 2, 3]);
    assert.equal(shown[shown.length - 1], 5000);
  });

  it('cuts a line longer than the limit at a character boundary and says so', () => {
    const line = 'é'.repeat(50_000); // two bytes each: an odd cut would split one
    const { kept, gap } = capLikeTheAgent(Buffer.from(`${line}\n`), 10_001);
    const text = keepHeadAndTail(kept, gap, 10_001);
    const [head, marker, tail] = text.split('\n');
    assert.match(marker!, /^\[output truncated: (\d+) bytes omitted, 0 newlines among them; a line longer than the output limit is cut here\]$/);
    assert.ok(!text.includes('\uFFFD'), 'no character split');
    assert.equal(Buffer.byteLength(head!) + Buffer.byteLength(tail!) + Number(/(\d+) bytes/.exec(marker!)![1]), Buffer.byteLength(line), 'every byte shown or counted');
  });

  it('keeps the first whole lines of a search and counts the rest, including what never arrived', () => {
    const lines = numbered(1, 50_000).trimEnd().split('\n');
    const text = keepFirstLines(lines, 10_000, { bytes: 600, newlines: 100 });
    const out = text.split('\n');
    const marker = out.pop()!;
    out.forEach((l, i) => assert.equal(Number(l), i + 1));
    const m = /^\[output truncated: (\d+) lines \((\d+) bytes\) omitted\]$/.exec(marker);
    assert.ok(m, marker);
    assert.equal(Number(m[1]), 50_000 - out.length + 100);
    assert.equal(Number(m[2]), Buffer.byteLength(numbered(out.length + 1, 50_000)) + 600);
    assert.ok(Buffer.byteLength(text) <= 10_000);
    const long = keepFirstLines(['x'.repeat(20_000), 'y'], 1000);
    assert.match(long, /^x+\n\[output truncated: \d+ bytes omitted, 2 newlines among them; a line longer than the output limit is cut here\]$/);
  });
});
