// The Templates view on an SSH host in a real extension host (suite/templates-ssh.suite.ts): a throw-away sshd on
// loopback (harness/sshd.sh) is the SSH host, its login environment's PERIMETER_HOME a fresh state directory whose
// cache/kernel and cache/rootfs-image link to this machine's cache, so the build from a workspace template file (the
// default template's packages) bootstraps nothing and compiles nothing; the rest runs for real over SSH: the
// companion installed there, the upload, the initramfs, a boot under QEMU, the warm-up and the snapshot. The view
// shows this machine's templates first (PERIMETER_HOME: the machine's own state directory, only listed), then the
// SSH host's. Needs QEMU and a template built once on this machine, like the VM suites.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requireHarness, runHostSuites } from './harness/host';
import { vmConfig, vmUnavailable } from '../vm/helpers';
import { EVERYDAY_PACKAGES } from '../../companion/sandbox/template/spec';

const sshd = path.resolve(__dirname, 'harness/sshd.sh');

describe('Templates view and Build Template from File on an SSH host (throw-away sshd on loopback)', () => {
  let dir: string;
  let sshdDir: string | undefined;
  before(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-templates-ssh-')); });
  after(() => {
    if (sshdDir) execFileSync('bash', [sshd, 'stop', sshdDir]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('lists the SSH host\'s templates and builds a workspace template file there', async function () {
    this.timeout(30 * 60_000);
    requireHarness();
    const why = vmUnavailable();
    if (why) { console.log(`      SKIPPED (real VMs unavailable): ${why}`); this.skip(); }
    const localHome = vmConfig().home;
    const cache = path.join(localHome, 'cache');
    for (const part of ['kernel', 'rootfs-image']) assert.ok(existsSync(path.join(cache, part)), `${cache}/${part} is kept by \`perimeter template build\``);
    const remoteHome = path.join(dir, 'remote-home');
    mkdirSync(path.join(remoteHome, 'cache'), { recursive: true });
    for (const part of ['kernel', 'rootfs-image']) symlinkSync(path.join(cache, part), path.join(remoteHome, 'cache', part));

    sshdDir = path.join(dir, 'sshd');
    execFileSync('bash', [sshd, 'start', sshdDir], { stdio: 'pipe' });
    const sshEnv = Object.fromEntries(readFileSync(path.join(sshdDir, 'env'), 'utf8').trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
    const r = await runHostSuites('templates-ssh', {
      ...sshEnv,
      PERIMETER_HOME: localHome,
      PERIMETER_TEST_REMOTE_HOME: remoteHome,
      PERIMETER_TEST_DEFAULT_PACKAGES: JSON.stringify(EVERYDAY_PACKAGES),
      EXT_TEST_TIMEOUT: String(25 * 60),
    });
    assert.deepEqual(r, { passed: 2, failed: 0, skipped: 0 });
  });
});
