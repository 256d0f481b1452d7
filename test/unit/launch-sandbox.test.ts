// The sandbox settings the extension exposes (VM mode, warm pool size, call timeout, VM size) reach what they apply
// to: the worker through the launch contract (launchFor -> launch file -> config.ts), and the template build through
// `--vm-size` (this machine's argv; an SSH host's fixed script reads the size from stdin and refuses anything else).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { LAUNCH_FILE, VM_SIZES } from '../../companion/protocol/launch';
import { loadConfig, readLaunch } from '../../companion/config';
import { parseTemplateArgs } from '../../companion/commands/template';
import { launchFor, type WorkerSettings } from '../../extension/launcher/workerHost';
import { scriptArgs } from '../../extension/launcher/ssh';

const SETTINGS: WorkerSettings = {
  mode: 'localQueue', concurrency: 2, driver: 'qemu', persistDefaults: ['/workspace'], egressAllow: [], logLevel: 'info',
  sandbox: { mode: 'per-session', poolSize: 5, callTimeoutMs: 300_000, vmSize: 'medium' },
};

describe('sandbox settings: worker launch and template build', () => {
  let home: string;
  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-sbx-settings-')); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('the worker runs with the mode, pool size, call timeout and VM size it was launched with', () => {
    const file = path.join(home, LAUNCH_FILE);
    writeFileSync(file, JSON.stringify(launchFor(SETTINGS, true)));
    const config = loadConfig({ home }, {}, readLaunch(file));
    assert.deepEqual(
      [config.sandbox.mode, config.sandbox.poolSize, config.sandbox.callTimeoutMs, config.sandbox.vcpus, config.sandbox.memoryMiB],
      ['per-session', 5, 300_000, VM_SIZES.medium.vcpus, VM_SIZES.medium.memoryMiB]);
    const plain = loadConfig({ home }, {}, readLaunch((writeFileSync(file, JSON.stringify(launchFor({ ...SETTINGS, sandbox: undefined }, true))), file)));
    assert.deepEqual([plain.sandbox.mode, plain.sandbox.poolSize], ['per-call', 2], 'left out: the companion\'s defaults');
    assert.throws(() => launchFor({ ...SETTINGS, sandbox: { poolSize: 500 } }, true), /invalid Perimeter settings/);
  });

  it('the template is built at the chosen VM size', () => {
    assert.equal(parseTemplateArgs(['build', '--vm-size', 'large']).vmSize, 'large');
    assert.throws(() => parseTemplateArgs(['build', '--vm-size', 'huge']), /small, medium or large/);
    assert.equal(parseTemplateArgs(['build']).vmSize, undefined);
  });

  it('an SSH host\'s build script passes a known size and refuses any other', () => {
    const bin = path.join(home, '.perimeter', 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(path.join(bin, 'perimeter.js'), 'console.log(JSON.stringify(process.argv.slice(2)))\n');
    const argv = scriptArgs({ host: 'box', remoteDir: '.perimeter' }, 'templateBuild');
    const run = (stdin: string) => spawnSync('sh', ['-c', argv.slice(argv.indexOf('box') + 1).join(' ')], { env: { PATH: process.env.PATH, HOME: home }, input: stdin, cwd: home });
    const ok = run('medium\n');
    assert.equal(ok.status, 0, ok.stderr.toString());
    assert.deepEqual(JSON.parse(ok.stdout.toString()).slice(-2), ['--vm-size', 'medium']);
    assert.ok(!JSON.parse(run('\n').stdout.toString()).includes('--vm-size'), 'no size: the host\'s configuration');
    for (const bad of ['huge\n', '--force\n', 'small; touch x\n']) {
      const r = run(bad);
      assert.equal(r.status, 2, bad);
      assert.match(r.stderr.toString(), /refusing VM size/);
    }
  });
});
