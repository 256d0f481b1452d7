// Template pieces that need no VM: the newc cpio writer (checked with the system cpio), the command's argument
// parser (build sources, ls/inspect/rm), and the manifest loader's refusal of broken templates.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeCpio } from '../../companion/sandbox/template/cpio';
import { parseTemplateArgs } from '../../companion/commands/template';
import { findTemplate, loadTemplate } from '../../companion/sandbox/template/manifest';

describe('template building blocks', () => {
  it('writes a newc cpio that cpio(1) lists and extracts byte-exactly', function () {
    try { execFileSync('cpio', ['--version'], { stdio: 'ignore' }); } catch { console.log('      SKIPPED: cpio not installed'); this.skip(); }
    const dir = mkdtempSync(path.join(os.tmpdir(), 'cpio-'));
    try {
      const data = Buffer.from(Array.from({ length: 1001 }, (_, i) => i & 0xff));
      writeFileSync(path.join(dir, 'a.cpio'), writeCpio([{ name: 'dev', mode: 0o755 }, { name: 'init', mode: 0o755, data }, { name: 'dev/x', mode: 0o644, data: Buffer.from('x') }]));
      const list = execFileSync('cpio', ['-t', '--quiet', '-F', 'a.cpio'], { cwd: dir, encoding: 'utf8' });
      assert.deepEqual(list.trim().split('\n'), ['dev', 'init', 'dev/x']);
      mkdirSync(path.join(dir, 'out'));
      execFileSync('cpio', ['-id', '--quiet', '-F', '../a.cpio'], { cwd: path.join(dir, 'out') });
      assert.ok(execFileSync('cmp', ['-s', '-', path.join(dir, 'out', 'init')], { input: data }).length === 0);
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });

  it('parses template arguments and rejects bad ones clearly', () => {
    const base = { force: false, check: false, makeDefault: false, json: false, ref: undefined };
    assert.deepEqual(parseTemplateArgs(['build', '--kernel', 'debian', '--rootfs', '/r', '--force']), { ...base, action: 'build', kernel: 'debian', rootfs: '/r', force: true });
    assert.deepEqual(parseTemplateArgs(['build', '--check']), { ...base, action: 'build', check: true });
    assert.deepEqual(parseTemplateArgs(['build', '-f', 'perimeter.template.json', '--default', '--json']), { ...base, action: 'build', file: 'perimeter.template.json', makeDefault: true, json: true });
    assert.deepEqual(parseTemplateArgs(['build', '--from-image=img.tar', '--name', 'img']), { ...base, action: 'build', image: 'img.tar', name: 'img' });
    assert.deepEqual(parseTemplateArgs(['build', 'minimal']), { ...base, action: 'build', ref: 'minimal' });
    assert.equal(parseTemplateArgs(['check']).check, true);
    assert.equal(parseTemplateArgs(['rm', 'node', '--force']).ref, 'node');
    assert.throws(() => parseTemplateArgs(['build', '--kernel', 'huge']), /tiny or debian/);
    assert.throws(() => parseTemplateArgs(['build', '--rootfs']), /needs a value/);
    assert.throws(() => parseTemplateArgs(['build', '-f', 'a.json', '--from-image', 'b.tar']), /one of/);
    assert.throws(() => parseTemplateArgs(['build', '--from-image', 'b.tar']), /needs --name/);
    assert.throws(() => parseTemplateArgs(['build', 'huge']), /not a built-in template/);
    assert.throws(() => parseTemplateArgs(['inspect']), /needs a template name/);
    assert.throws(() => parseTemplateArgs(['frobnicate']), /unknown template action/);
  });

  it('reports a missing or invalid template instead of guessing', () => {
    const home = mkdtempSync(path.join(os.tmpdir(), 'tpl-'));
    try {
      assert.equal(findTemplate(home), null);
      mkdirSync(path.join(home, 'bad'));
      assert.throws(() => loadTemplate(path.join(home, 'bad')), /no template/);
      writeFileSync(path.join(home, 'bad', 'template.json'), '{"version":2}');
      assert.throws(() => loadTemplate(path.join(home, 'bad')), /not a valid template manifest/);
    } finally { rmSync(home, { recursive: true, force: true }); }
  });
});
