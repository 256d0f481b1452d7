// The Templates view's plain side (extension/templates/templateCli.ts) against a stand-in for the companion's CLI:
// `template ls --json` rows checked against the shared schema, a build's JSON progress lines passed on in order
// (anything else as a plain message, never trusted), the built template reported, cancel stopping the whole process
// group (the CLI and what it started), and sessions counted per template from the calls' placement.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TemplateCli, sessionsPerTemplate } from '../../extension/templates/templateCli';
import type { TemplateRow } from '../../companion/protocol/template';

const ROW: TemplateRow = { hash: 'aaaaaaaaaaaaaaaaaaaaaaaa', dir: '/h/templates/aaaa', names: ['default'], current: true, diskBytes: 4096, kernel: 'tiny', memoryMiB: 256, vcpus: 1, createdAt: '2026-01-01T00:00:00.000Z', accel: 'tcg' };

/** A stand-in CLI: answers `template ls`, `template rm`, and `template build` (which, for a file named slow.json,
 *  starts a grandchild that writes its pid and then a marker after 3 s, and waits). */
const FAKE = `
const fs = require('fs'); const cp = require('child_process');
const [, , , action, ...rest] = process.argv;
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
if (action === 'ls') { process.stdout.write(process.env.FAKE_LS); process.exit(0); }
if (action === 'rm') { if (rest[0] === 'default' && !rest.includes('--force')) { process.stderr.write('perimeter template: template default is the default template\\n'); process.exit(1); } process.exit(0); }
const file = rest[rest.indexOf('-f') + 1];
out({ type: 'progress', stage: 'kernel', percent: 2, message: 'kernel: cached tiny kernel' });
process.stdout.write('a plain warning line\\n');
out({ type: 'progress', stage: 'boot', percent: 80, message: 'boot: agent ready' });
if (file.endsWith('slow.json')) {
  const g = cp.spawn(process.execPath, ['-e', "require('fs').writeFileSync(process.argv[1] + '.pid', String(process.pid)); setTimeout(() => require('fs').writeFileSync(process.argv[1], 'x'), 3000)", process.env.FAKE_MARKER], { stdio: 'ignore' });
  setInterval(() => {}, 1000);
} else {
  out({ type: 'built', hash: 'bbbbbbbbbbbbbbbbbbbbbbbb', name: 'node-tools', dir: '/h/templates/bbbb', default: false });
}
`;

describe('Templates view: the CLI side', () => {
  let dir: string;
  let cli: TemplateCli;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-ext-templates-'));
    writeFileSync(path.join(dir, 'fake.js'), FAKE);
    cli = new TemplateCli({ bundle: path.join(dir, 'fake.js'), home: path.join(dir, 'home') });
    process.env.FAKE_MARKER = path.join(dir, 'marker');
  });
  afterEach(() => { delete process.env.FAKE_LS; rmSync(dir, { recursive: true, force: true }); });

  it('lists templates from `template ls --json`, refusing output that is not what the companion writes', async () => {
    process.env.FAKE_LS = JSON.stringify([ROW]);
    assert.deepEqual(await cli.list(), [ROW]);
    process.env.FAKE_LS = JSON.stringify([{ ...ROW, names: 'default' }]);
    await assert.rejects(cli.list());
  });

  it('passes a build\'s progress on in order and reports the built template', async () => {
    const seen: string[] = [];
    const r = await cli.build(path.join(dir, 'perimeter.template.json'), (p) => seen.push(`${p.stage} ${p.percent} ${p.message}`));
    assert.deepEqual(seen, ['kernel 2 kernel: cached tiny kernel', 'build 0 a plain warning line', 'boot 80 boot: agent ready']);
    assert.equal(r.ok, true);
    assert.equal(r.built?.name, 'node-tools');
  });

  it('cancel stops the build and everything it started', async () => {
    const abort = new AbortController();
    const pidFile = `${process.env.FAKE_MARKER}.pid`;
    const cancelOnceStarted = setInterval(() => { if (existsSync(pidFile)) abort.abort(); }, 20);
    const outcome = await cli.build(path.join(dir, 'slow.json'), () => {}, abort.signal).finally(() => clearInterval(cancelOnceStarted));
    assert.deepEqual([outcome.ok, outcome.cancelled], [false, true]);
    const pid = Number(readFileSync(pidFile, 'utf8'));
    await new Promise((res) => setTimeout(res, 3500));
    assert.equal(existsSync(process.env.FAKE_MARKER!), false, 'the build\'s own child was stopped with it');
    assert.throws(() => process.kill(pid, 0), 'the grandchild is gone');
  });

  it('reports why a removal was refused', async () => {
    await cli.remove('node-tools');
    await assert.rejects(cli.remove('default'), /^Error: template default is the default template$/);
  });

  it('counts the sessions running in each template by name or hash prefix', () => {
    const node = { ...ROW, hash: 'bbbbbbbbbbbbbbbbbbbbbbbb', names: ['node-tools'], current: false };
    const counts = sessionsPerTemplate([ROW, node], ['node-tools', 'aaaaaaaaaaaaaaaa', null, 'node-tools', 'unknown']);
    assert.deepEqual([...counts], [[ROW.hash, 1], [node.hash, 2]]);
  });
});
