// Rootless: an unprivileged user builds a template and runs the demo through real VMs with nothing but the
// packages the README names (installed as root once) and their own subordinate uids. Run as root, the test works as
// the CI's unprivileged user (PERIMETER_TEST_USER, default `perimeter-ci`, which .ci/run creates); run as a normal
// user, it works as that user. The companion is a copy of the built bundle in a directory that user can read, as an
// installed one would be; its state is the user's own default state directory, whose cache keeps the root
// filesystem image between runs (the first run on a machine bootstraps Debian as that user). Only the compiled
// kernel is seeded from this machine's cache (compiling it takes minutes and needs no privilege either).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { skipWithoutVms, vmConfig } from './helpers';
import { ROOT, rmDir, tmpDir } from '../worker/helpers';

const DemoReport = z.object({ ok: z.boolean(), driver: z.string(), calls: z.array(z.object({ label: z.string(), ok: z.boolean(), reason: z.string().nullable() })) });

describe('rootless: an unprivileged user builds a template and runs the demo (real VMs)', function () {
  this.timeout(40 * 60_000);
  const asRoot = process.getuid?.() === 0;
  const user = asRoot ? process.env.PERIMETER_TEST_USER ?? 'perimeter-ci' : null;
  let dir: string;
  let userHome: string;
  let uid: number;
  before(function () {
    skipWithoutVms(this);
    if (user) {
      try { uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim()); } catch {
        console.log(`      SKIPPED: no unprivileged user "${user}" to run as (bash .ci/run creates it; or set PERIMETER_TEST_USER)`);
        this.skip();
      }
      userHome = execFileSync('sh', ['-c', `getent passwd ${user} | cut -d: -f6`], { encoding: 'utf8' }).trim();
    } else {
      uid = process.getuid!();
      userHome = process.env.HOME!;
    }
    dir = tmpDir('perimeter-rootless-');
  });
  after(() => { if (dir) rmDir(dir); });

  /** Runs the installed companion as the unprivileged user (its own environment: HOME, PATH, nothing of ours). */
  const run = (args: string[]) => {
    const env = ['env', '-i', `HOME=${userHome}`, 'PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin', 'LANG=C.UTF-8'];
    const argv = [...(user ? ['runuser', '-u', user, '--'] : []), ...env, process.execPath, path.join(dir, 'bin', 'perimeter.js'), ...args];
    return spawnSync(argv[0]!, argv.slice(1), { cwd: '/', encoding: 'utf8', maxBuffer: 64 << 20, timeout: 30 * 60_000 });
  };

  it('builds the minimal template and runs the demo in it without root', () => {
    const bin = path.join(dir, 'bin');
    mkdirSync(bin);
    cpSync(path.join(ROOT, 'dist', 'perimeter.js'), path.join(bin, 'perimeter.js'));
    cpSync(path.join(ROOT, 'dist', 'guest'), path.join(bin, 'guest'), { recursive: true });
    execFileSync('chmod', ['-R', 'a+rX', dir]);
    const state = path.join(userHome, '.local', 'state', 'perimeter');
    const kernels = path.join(vmConfig().home, 'cache', 'kernel');
    const theirKernels = path.join(state, 'cache', 'kernel');
    const asUser = (argv: string[]) => execFileSync(user ? 'runuser' : argv[0]!, user ? ['-u', user, '--', ...argv] : argv.slice(1));
    for (const k of existsSync(kernels) ? readdirSync(kernels).filter((k) => k.startsWith('tiny-')) : []) {
      if (existsSync(path.join(theirKernels, k))) continue;
      asUser(['mkdir', '-p', theirKernels]);
      execFileSync('cp', ['-r', path.join(kernels, k), theirKernels]);
      if (user) execFileSync('chown', ['-R', `${user}:`, path.join(theirKernels, k)]);
    }

    const build = run(['template', 'build', 'minimal', '--default']);
    assert.equal(build.status, 0, `${build.stdout}\n${build.stderr}`);
    assert.match(build.stdout, /template: "minimal" is [0-9a-f]+ \(the default\)/);
    const owners = execFileSync('find', [state, '-xdev', '!', '-uid', String(uid), '-print'], { encoding: 'utf8' }).trim();
    assert.equal(owners, '', 'everything in the user\'s state directory belongs to the user');

    const demo = run(['demo', '--json', '--driver', 'qemu']);
    let report;
    try { report = DemoReport.parse(JSON.parse(demo.stdout)); } catch { assert.fail(`demo printed no report (exit ${demo.status}):\n${demo.stdout}\n${demo.stderr}`); }
    assert.equal(report.driver, 'qemu');
    assert.deepEqual(report.calls.filter((c) => !c.ok).map((c) => `${c.label}: ${c.reason}`), [], demo.stderr);
    assert.equal(report.ok, true);
    assert.equal(demo.status, 0, demo.stderr);
  });
});
