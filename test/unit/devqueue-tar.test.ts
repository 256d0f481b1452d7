// The dev queue's skill archive (companion/devqueue/tar.ts, node-tar): what tar(1), which the SDK's skill extractor
// runs, lists and extracts from it: byte-exact contents, modes, parents before children, and names longer than a
// ustar header's 100-byte field.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tarGz } from '../../companion/devqueue/tar';

describe('dev queue skill archive', () => {
  let dir: string;
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'skill-tar-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('tar(1) extracts it byte-exactly, with modes, parents first, and long names', () => {
    const longName = `skill/${'d'.repeat(60)}/${'f'.repeat(80)}.md`;
    const binary = Buffer.from([0, 1, 2, 255, 10, 13]);
    writeFileSync(path.join(dir, 'a.tgz'), tarGz({ 'skill/SKILL.md': '# Skill\n', 'skill/bin/run.sh': 'echo hi\n', 'skill/data.bin': binary, [longName]: 'long\n' }));
    const listed = execFileSync('tar', ['-tzf', 'a.tgz'], { cwd: dir, encoding: 'utf8' }).trim().split('\n');
    assert.deepEqual(listed, ['skill/', 'skill/SKILL.md', 'skill/bin/', 'skill/bin/run.sh', 'skill/data.bin', `skill/${'d'.repeat(60)}/`, longName]);
    execFileSync('tar', ['-xzf', 'a.tgz'], { cwd: dir });
    assert.equal(readFileSync(path.join(dir, 'skill/SKILL.md'), 'utf8'), '# Skill\n');
    assert.deepEqual(readFileSync(path.join(dir, 'skill/data.bin')), binary);
    assert.equal(readFileSync(path.join(dir, longName), 'utf8'), 'long\n');
    assert.equal(statSync(path.join(dir, 'skill/bin/run.sh')).mode & 0o777, 0o755);
    assert.equal(statSync(path.join(dir, 'skill/SKILL.md')).mode & 0o777, 0o644);
  });

  it('refuses absolute names and .. segments', () => {
    assert.throws(() => tarGz({ '/etc/passwd': 'x' }), /unsafe/);
    assert.throws(() => tarGz({ 'a/../../x': 'x' }), /unsafe/);
  });
});
