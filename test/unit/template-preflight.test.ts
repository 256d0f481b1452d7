// A template build checks every tool its steps need before the first expensive one: what each step requires (found
// as spawn finds it), one fix line for all of it, and the CLI failing at once, before bootstrapping anything.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Confinement } from '../../companion/sandbox/qemu/confine';
import { combinedFix, templateBuildNeeds, type BuildSteps } from '../../companion/sandbox/template/preflight';

const ROOT = path.resolve(__dirname, '../..');
const unconfined = new Confinement({ confinement: 'none', vmUidBase: 0x70000000, vmUidCount: 16, hostCgroup: 'auto' });
const CACHED: BuildSteps = { rootfs: 'cached', compileKernel: false };

describe('template build preflight', () => {
  let dir: string;
  let qemu: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'tpl-preflight-'));
    qemu = path.join(dir, 'qemu-system-x86_64');
    writeFileSync(qemu, '#!/bin/sh\necho "QEMU emulator version 8.2.2"\n');
    chmodSync(qemu, 0o755);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** A PATH directory holding stand-ins for `programs`. */
  function pathWith(programs: string[]): string {
    const bin = mkdtempSync(path.join(dir, 'bin-'));
    for (const p of programs) { writeFileSync(path.join(bin, p), '#!/bin/sh\n'); chmodSync(path.join(bin, p), 0o755); }
    return bin;
  }
  const problems = (steps: BuildSteps, o: { searchPath: string; user?: os.UserInfo<string>; qemuBinary?: string }) =>
    templateBuildNeeds({ qemuBinary: o.qemuBinary ?? qemu, confinement: unconfined, steps, searchPath: o.searchPath, ...(o.user ? { user: o.user } : {}) })
      .map((n) => n.problem).filter((p) => !p.startsWith('/usr/')); // tools at fixed paths are this host's business

  it('a build from cached parts needs QEMU alone; a missing QEMU is named with its fix', () => {
    assert.deepEqual(templateBuildNeeds({ qemuBinary: qemu, confinement: unconfined, steps: CACHED, searchPath: pathWith([]) }), []);
    const missing = templateBuildNeeds({ qemuBinary: path.join(dir, 'nonexistent', 'qemu'), confinement: unconfined, steps: CACHED, searchPath: pathWith([]) });
    assert.deepEqual(missing, [{ problem: `${path.join(dir, 'nonexistent', 'qemu')} is not installed`, fix: 'sudo apt-get install qemu-system-x86' }]);
  });

  it('bootstrapping Debian and compiling the kernel need their tools, looked up on PATH as the build spawns them', () => {
    const all = ['mmdebstrap', 'newuidmap', 'newgidmap', 'nice', 'make', 'gcc', 'bc', 'bison', 'flex', 'tar', 'xz', 'mkfs.ext4'];
    const full = pathWith(all);
    const user = { uid: 4242, gid: 4242, username: 'perimeter-preflight-test-user', homedir: dir, shell: '/bin/sh' };
    const root = { ...user, uid: 0, username: 'root' };
    assert.deepEqual(problems({ rootfs: 'bootstrap', compileKernel: true }, { searchPath: full, user: root }), []);
    assert.deepEqual(problems({ rootfs: 'bootstrap', compileKernel: true }, { searchPath: pathWith(all.filter((p) => p !== 'bison' && p !== 'newgidmap')), user }), [
      'newgidmap is missing',
      `${user.username} has no subordinate ids in /etc/subuid and /etc/subgid, which mmdebstrap --mode=unshare needs to build a root filesystem without root (fix, once, as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 ${user.username})`,
      'bison is missing',
    ]);
    assert.deepEqual(problems({ rootfs: 'bootstrap', compileKernel: false }, { searchPath: pathWith([]), user: root }), ['mmdebstrap is missing', 'nice is missing'], 'root needs no uid maps');
    assert.deepEqual(problems({ rootfs: 'directory', compileKernel: false }, { searchPath: pathWith([]), user: root }), ['mkfs.ext4 is missing']);
    assert.deepEqual(problems(CACHED, { searchPath: pathWith([]), user }), [], 'a cached root filesystem and kernel need neither');
  });

  it('gathers the fixes into one apt-get line, then the others', () => {
    assert.equal(combinedFix([
      { problem: 'a', fix: 'sudo apt-get install qemu-system-x86' }, { problem: 'b', fix: 'sudo apt-get install build-essential' },
      { problem: 'c', fix: 'sudo apt-get install build-essential' }, { problem: 'd' }, { problem: 'e', fix: 'remove sandbox.confinement' },
      { problem: 'f', fix: 'sudo apt-get install bison flex' },
    ]), 'sudo apt-get install qemu-system-x86 build-essential bison flex; remove sandbox.confinement');
  });

  it('`perimeter template build` on a host without QEMU and build tools fails at once, before any step, naming all of it', function () {
    if (!existsSync(path.join(ROOT, 'dist', 'perimeter.js'))) throw new Error('dist/perimeter.js is missing: build first (node scripts/build.mjs)');
    const home = mkdtempSync(path.join(dir, 'home-'));
    writeFileSync(path.join(home, 'config.json'), JSON.stringify({ sandbox: { qemuBinary: '/nonexistent/qemu-system-x86_64', confinement: 'none' } }));
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'perimeter.js'), 'template', 'build'], {
      env: { PATH: pathWith([]), HOME: dir, PERIMETER_HOME: home }, encoding: 'utf8', timeout: 60_000,
    });
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stdout, '', 'no step started');
    const uidMaps = process.getuid?.() === 0 ? '' : 'newuidmap is missing; newgidmap is missing; ';
    const head = `perimeter template: cannot build a template on this host: /nonexistent/qemu-system-x86_64 is not installed; mmdebstrap is missing; ${uidMaps}`;
    assert.ok(r.stderr.startsWith(head), r.stderr);
    assert.match(r.stderr, /; make is missing; gcc is missing; bc is missing; bison is missing; flex is missing; tar is missing; xz is missing[^(]* \(fix: sudo apt-get install qemu-system-x86 mmdebstrap (uidmap )?.*build-essential bc bison flex tar xz-utils.*\)\n$/);
    assert.equal(r.stderr.split('\n').length, 2, 'one line');
  });
});
