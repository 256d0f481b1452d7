// Build Template from the packaged extension: `vsce package` makes the .vsix, code-server installs it, and the
// extension-host `template` suite (suite/template.suite.ts) runs with the extension loaded from that installed copy,
// not the repository, so the companion has only what the .vsix carries. It builds on this machine and on an SSH host
// (harness/sshd.sh: a throw-away sshd on loopback; the extension installs its bundle there). Each build gets a fresh
// state directory whose cache/kernel and cache/rootfs-image link to this machine's cache (compiling the kernel and
// bootstrapping Debian take minutes); the rest of the build runs for real: the kernel configuration check, the initramfs with
// the guest agent, the root image, a boot under QEMU, the warm-up and the snapshot. Needs QEMU and a template built
// once on this machine (`perimeter template build`), like the VM suites.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requireHarness, runHostSuites } from './harness/host';
import { vmConfig, vmUnavailable } from '../vm/helpers';

const root = path.resolve(__dirname, '../..');
const sshd = path.resolve(__dirname, 'harness/sshd.sh');

/** A fresh state directory seeded with links to this machine's kernel and root filesystem cache. */
function seededHome(parent: string, name: string, cache: string): string {
  const home = path.join(parent, name);
  mkdirSync(path.join(home, 'cache'), { recursive: true });
  for (const part of ['kernel', 'rootfs-image']) symlinkSync(path.join(cache, part), path.join(home, 'cache', part));
  return home;
}

describe('Build Template from the installed .vsix (this machine and an SSH host)', () => {
  let dir: string;
  let profileRoot: string | undefined;
  let sshdDir: string | undefined;
  before(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-vsix-build-')); });
  after(() => {
    if (sshdDir) execFileSync('bash', [sshd, 'stop', sshdDir]);
    if (profileRoot) rmSync(profileRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  it('builds the VM template with Build Template on both hosts', async function () {
    this.timeout(45 * 60_000);
    requireHarness();
    const why = vmUnavailable();
    if (why) { console.log(`      SKIPPED (real VMs unavailable): ${why}`); this.skip(); }
    const cache = path.join(vmConfig().home, 'cache');
    for (const part of ['kernel', 'rootfs-image']) assert.ok(existsSync(path.join(cache, part)), `${cache}/${part} is kept by \`perimeter template build\``);

    const vsix = path.join(dir, 'perimeter.vsix');
    execFileSync(path.join(root, 'node_modules/.bin/vsce'), ['package', '--no-dependencies', '--no-rewrite-relative-links', '-o', vsix], { cwd: root, stdio: 'pipe' });
    const cs = await import('./harness/code-server.mjs' as string);
    const profile = cs.makeProfile();
    profileRoot = profile.root;
    cs.installVsix(profile, vsix);
    const installed = readdirSync(profile.extensions).find((d: string) => d.startsWith('perimeter.perimeter-'));
    assert.ok(installed, 'code-server installed the .vsix');

    sshdDir = path.join(dir, 'sshd');
    execFileSync('bash', [sshd, 'start', sshdDir], { stdio: 'pipe' });
    const sshEnv = Object.fromEntries(readFileSync(path.join(sshdDir, 'env'), 'utf8').trim().split('\n').map((l) => l.split('=', 2) as [string, string]));

    const r = await runHostSuites('template', {
      ...sshEnv,
      PERIMETER_HOME: seededHome(dir, 'local-home', cache),
      PERIMETER_TEST_REMOTE_HOME: seededHome(dir, 'remote-home', cache),
      PERIMETER_TEST_INSTALLED_EXTENSION: path.join(profile.extensions, installed),
      EXT_TEST_TIMEOUT: String(40 * 60),
    }, path.join(profile.extensions, installed));
    assert.deepEqual(r, { passed: 2, failed: 0, skipped: 0 });
  });
});
