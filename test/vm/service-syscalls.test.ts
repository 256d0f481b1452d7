// The service unit's SystemCallFilter against what really runs: the built CLI plays a scenario through confined QEMU
// microVMs under `strace -f -c` (the companion, bwrap, setpriv and QEMU with its own seccomp), once as root and once
// as an unprivileged user (as the system service runs: its own user, VMs in user namespaces). Every syscall seen must
// be allowed by the unit's filter as systemd expands it (`systemd-analyze syscall-filter`), and none may be in its
// deny list. systemd is not PID 1 here, so the unit cannot be started; this is the same check, syscall by syscall.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import { SYSCALL_FILTER } from '../../companion/service/unit';
import { CLI } from '../worker/helpers';
import { skipWithoutVms, vmConfig } from './helpers';

const SCENARIO = {
  name: 'syscalls',
  steps: [
    { tool: 'write', input: { file_path: 'a.txt', content: 'hello\n' } },
    { tool: 'bash', input: { command: 'cat a.txt && echo done' }, expectIncludes: ['hello', 'done'] },
    { tool: 'grep', input: { pattern: 'hello' }, expectIncludes: ['a.txt'] },
  ],
};

/** The syscalls a systemd filter entry (a group or a name) stands for, groups expanded recursively. */
function expand(entries: string[], seen = new Set<string>()): Set<string> {
  const out = new Set<string>();
  for (const e of entries) {
    if (!e.startsWith('@')) { out.add(e); continue; }
    if (seen.has(e)) continue;
    seen.add(e);
    const listed = execFileSync('systemd-analyze', ['syscall-filter', e], { encoding: 'utf8' })
      .split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#') && l !== e);
    for (const s of expand(listed, seen)) out.add(s);
  }
  return out;
}

function lookupUser(name: string): { uid: number; gid: number } | null {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.split(':')[0] === name);
  return line ? { uid: Number(line.split(':')[2]), gid: Number(line.split(':')[3]) } : null;
}

/** Syscall names from a `strace -c` summary. */
function stracedSyscalls(summary: string): Set<string> {
  const names = new Set<string>();
  for (const line of summary.split('\n')) {
    const cols = line.trim().split(/\s+/);
    const name = cols[cols.length - 1]!;
    if (/^\d/.test(cols[0] ?? '') && /^[a-z_0-9]+$/.test(name) && name !== 'total') names.add(name);
  }
  return names;
}

describe('the service unit\'s syscall filter against a real run (strace)', function () {
  this.timeout(600_000);
  const dirs: string[] = [];
  before(function () {
    skipWithoutVms(this);
    for (const tool of ['strace', 'systemd-analyze']) {
      if (spawnSync(tool, ['--version']).status !== 0) { console.log(`      SKIPPED: ${tool} is missing (apt-get install ${tool === 'strace' ? 'strace' : 'systemd'})`); this.skip(); }
    }
  });
  after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

  const allowed = () => expand(SYSCALL_FILTER.allow);
  const denied = () => expand(SYSCALL_FILTER.deny);

  /** Plays SCENARIO with the built CLI under strace; `asUser` runs it through setpriv as that uid/gid. */
  function tracedRun(home: string, asUser?: { uid: number; gid: number }): Set<string> {
    const scenario = path.join(home, 'scenario.json');
    writeFileSync(scenario, JSON.stringify(SCENARIO));
    const summary = path.join(home, 'strace.txt');
    const cmd = [process.execPath, CLI, 'demo', '--json', '--driver', 'qemu', '--scenario', scenario, '--home', home];
    const argv = ['-f', '-qq', '-c', '-o', summary, ...(asUser ? ['setpriv', `--reuid=${asUser.uid}`, `--regid=${asUser.gid}`, '--clear-groups', '--'] : []), ...cmd];
    const r = spawnSync('strace', argv, { encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home }, timeout: 400_000 });
    assert.equal(r.status, 0, `the traced demo failed:\n${r.stdout}\n${r.stderr}`);
    const report = JSON.parse(r.stdout) as { driver: string; ok: boolean };
    assert.equal(report.driver, 'qemu');
    assert.equal(report.ok, true, r.stdout);
    return stracedSyscalls(readFileSync(summary, 'utf8'));
  }

  function assertWithinFilter(used: Set<string>): void {
    const allow = allowed();
    const deny = denied();
    assert.ok(used.size > 50 && used.has('execve'), `strace saw the run (${used.size} syscalls)`);
    assert.deepEqual([...used].filter((s) => !allow.has(s)).sort(), [], 'every syscall is in the allow list');
    assert.deepEqual([...used].filter((s) => deny.has(s)).sort(), [], 'no syscall is in the deny list');
    const systemService = expand(['@system-service']);
    assert.ok([...used].some((s) => !systemService.has(s)), 'the run needs more than @system-service (the jail\'s mounts, QEMU\'s seccomp): the check can fail');
  }

  it('a root companion: every syscall passes the filter', () => {
    const home = mkdtempSync('/var/tmp/perimeter-syscalls-');
    dirs.push(home);
    const template = findTemplate(vmConfig().home)!;
    mkdirSync(path.join(home, 'templates'));
    execFileSync('cp', ['-a', '--sparse=always', template.dir, path.join(home, 'templates', template.manifest.hash)]);
    writeFileSync(path.join(home, 'templates', 'current'), template.manifest.hash);
    assertWithinFilter(tracedRun(home));
  });

  it('an unprivileged companion (as the system service runs): every syscall passes the filter', function () {
    const nobody = lookupUser('nobody');
    if (process.getuid?.() !== 0 || !nobody) { console.log('      SKIPPED: needs root (to trace a run as nobody) and a nobody user'); this.skip(); }
    const home = mkdtempSync('/var/tmp/perimeter-syscalls-');
    dirs.push(home);
    const template = findTemplate(vmConfig().home)!;
    mkdirSync(path.join(home, 'templates'));
    execFileSync('cp', ['-a', '--sparse=always', template.dir, path.join(home, 'templates', template.manifest.hash)]);
    writeFileSync(path.join(home, 'templates', 'current'), template.manifest.hash);
    execFileSync('chown', ['-R', `${nobody!.uid}:${nobody!.gid}`, home]);
    chmodSync(home, 0o700);
    assertWithinFilter(tracedRun(home, nobody!));
  });
});
