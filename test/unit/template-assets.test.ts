// The packaged companion carries every file `perimeter template build` reads from its own installation
// (TEMPLATE_ASSETS): the .vsix (what `vsce ls` packs) and the bundle the extension installs on SSH hosts. The packed
// files are copied to a directory outside the repository and the bundled CLI's doctor, run from there, must find
// them all (the build resolves them next to the bundle, never from the repository or the working directory).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TEMPLATE_ASSETS } from '../../companion/sandbox/template/build';
import { readCompanionBundle } from '../../extension/launcher/bundle';

const root = path.resolve(__dirname, '../..');

describe('packaged template build inputs', () => {
  let dir: string;
  before(() => {
    assert.ok(existsSync(path.join(root, 'dist/perimeter.js')), 'run npm run build first');
    dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-packed-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('ships every file the template build reads in the .vsix and in the SSH host bundle, where the bundled CLI finds them', function () {
    this.timeout(60_000);
    const packed = execFileSync(path.join(root, 'node_modules/.bin/vsce'), ['ls', '--no-dependencies'], { cwd: root, encoding: 'utf8' })
      .split('\n').map((l) => l.trim()).filter(Boolean);
    const remote = readCompanionBundle(root, '0.0.0').files.map((f) => f.name);
    for (const asset of TEMPLATE_ASSETS) {
      assert.ok(packed.includes(`dist/guest/${asset}`), `${asset} is in the .vsix (vsce ls: ${packed.join(', ')})`);
      assert.ok(remote.includes(`guest/${asset}`), `${asset} is in the bundle installed on SSH hosts (${remote.join(', ')})`);
    }

    const installed = path.join(dir, 'extension');
    for (const f of packed) {
      mkdirSync(path.dirname(path.join(installed, f)), { recursive: true });
      copyFileSync(path.join(root, f), path.join(installed, f));
    }
    const r = spawnSync(process.execPath, [path.join(installed, 'dist/perimeter.js'), 'doctor', '--json', '--home', path.join(dir, 'home')],
      { cwd: dir, encoding: 'utf8' });
    const report = JSON.parse(r.stdout) as { checks: Array<{ name: string; ok: boolean; detail: string }> };
    const inputs = report.checks.find((c) => c.name === 'template-inputs');
    assert.ok(inputs, `the doctor reports the template build's inputs: ${r.stdout}`);
    assert.ok(inputs.ok, inputs.detail);
  });
});
