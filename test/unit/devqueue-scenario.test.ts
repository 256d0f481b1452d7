// Scenario validation (clear errors naming the field), the bundled demo scenario, the skill archive writer and the
// glob matcher used by the glob tool.
import assert from 'node:assert/strict';
import { gunzipSync } from 'node:zlib';
import { parseScenario } from '../../companion/devqueue/scenario';
import { tarGz } from '../../companion/devqueue/tar';
import { globToRegExp } from '../../companion/tools/glob';
import { TOOL_NAMES } from '../../companion/tools/schemas';
import demo from '../../companion/devqueue/scenarios/demo.json';

describe('dev queue scenarios', () => {
  it('the bundled demo is valid and uses all six tools, a confirmation and a tool of another client', () => {
    const s = parseScenario(demo);
    for (const t of TOOL_NAMES) assert.ok(s.steps.some((st) => st.tool === t), t);
    assert.ok(s.steps.some((st) => st.evaluated_permission === 'ask' && st.confirmation === 'allow'));
    assert.ok(s.steps.some((st) => st.custom && st.expectUnanswered));
    assert.ok(s.steps.some((st) => st.needsPersistence));
  });

  it('rejects a bad scenario with the failing field named', () => {
    assert.throws(() => parseScenario({ name: 'x', steps: [] }), /steps/);
    assert.throws(() => parseScenario({ name: 'x', steps: [{ tool: 'bash', evaluated_permission: 'maybe' }] }), /steps\.0\.evaluated_permission/);
    assert.throws(() => parseScenario({ name: 'x', steps: [{ input: {} }] }), /steps\.0\.tool/);
    assert.throws(() => parseScenario({ name: 'x', skills: [{ name: '../evil', files: {} }], steps: [{ tool: 'bash' }] }), /skills\.0\.name/);
  });

  it('writes a valid ustar archive with a single top-level directory', () => {
    const tar = gunzipSync(tarGz({ 'pdf/SKILL.md': '# PDF\n', 'pdf/bin/run.sh': 'echo hi\n' }));
    const names: string[] = [];
    for (let off = 0; off + 512 <= tar.length;) {
      const h = tar.subarray(off, off + 512);
      if (h.every((b) => b === 0)) break;
      const name = h.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
      const size = parseInt(h.subarray(124, 136).toString('utf8').replace(/\0.*$/s, ''), 8);
      let sum = 0;
      for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
      assert.equal(parseInt(h.subarray(148, 156).toString('utf8'), 8), sum, `checksum of ${name}`);
      names.push(name);
      off += 512 + Math.ceil(size / 512) * 512;
    }
    assert.deepEqual(names, ['pdf/', 'pdf/SKILL.md', 'pdf/bin/', 'pdf/bin/run.sh']);
    assert.throws(() => tarGz({ '../x': 'y' }), /unsafe/);
  });

  it('glob patterns: * and ? stay in a segment, ** spans segments, braces and classes', () => {
    const m = (p: string, s: string) => globToRegExp(p).test(s);
    assert.ok(m('*.ts', 'a.ts'));
    assert.ok(!m('*.ts', 'd/a.ts'));
    assert.ok(m('**/*.ts', 'a.ts'));
    assert.ok(m('**/*.ts', 'd/e/a.ts'));
    assert.ok(m('src/**', 'src/a/b'));
    assert.ok(m('a?.{js,ts}', 'ab.ts'));
    assert.ok(!m('a?.{js,ts}', 'ab.py'));
    assert.ok(m('[abc].txt', 'b.txt'));
    assert.ok(!m('[!abc].txt', 'b.txt'));
    assert.ok(m('file.(1).txt', 'file.(1).txt'));
  });
});
