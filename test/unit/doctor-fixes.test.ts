// `perimeter doctor` names fixes that work on the host it runs on: the CLI as it is installed there (the copy the
// extension puts under ~/.perimeter/bin is not on PATH), and /dev/kvm access through the group that owns the device
// (no `usermod -aG kvm` on a host without a kvm group). The pure helpers, and the built CLI run from such a copy.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cliInvocation, fitCommands, groupName, kvmAccessFix, ripgrepCheck } from '../../companion/commands/doctor';
import { kvmProblemForVmUids } from '../../companion/sandbox/qemu/confine';
import { DoctorReport } from '../../companion/protocol/doctor';

const ROOT = path.resolve(__dirname, '..', '..');

describe('doctor fixes fit the host', () => {
  it('joins the group that owns /dev/kvm, and never a kvm group the host does not have', () => {
    assert.match(kvmAccessFix('ann', 'kvm'), /sudo usermod -aG kvm ann/);
    assert.match(kvmAccessFix('ann', 'vmusers'), /sudo usermod -aG vmusers ann/);
    for (const group of ['root', null]) {
      const fix = kvmAccessFix('ann', group);
      assert.doesNotMatch(fix, /^add this user to the kvm group|usermod -aG kvm ann\) and log in/);
      assert.match(fix, /setfacl -m u:ann:rw \/dev\/kvm/);
      assert.match(fix, /groupadd -r kvm/, 'creating the group comes before joining it');
    }
    assert.equal(groupName(993, 'root:x:0:\nkvm:x:993:ann\n'), 'kvm');
    assert.equal(groupName(993, 'root:x:0:\n'), null);
  });

  it('lets a root companion\'s VMs (their own uids) open /dev/kvm through the group the host has, or one it creates', () => {
    const etc = (...groups: string[]) => ['root:x:0:', ...groups].join('\n');
    const CHR = 0o20000;
    assert.equal(kvmProblemForVmUids({ mode: CHR | 0o660, gid: 993 }, etc('kvm:x:993:')), null);
    assert.equal(kvmProblemForVmUids({ mode: CHR | 0o666, gid: 0 }, etc()), null, 'open to all');
    const rule = (g: string) => `; to keep it across reboots, add the udev rule 'KERNEL=="kvm", GROUP="${g}", MODE="0660"' to /etc/udev/rules.d/65-kvm.rules`;
    // root's device on a host without a kvm group (this container's case): the group is created first
    assert.deepEqual(kvmProblemForVmUids({ mode: CHR | 0o600, gid: 0 }, etc('users:x:100:')), {
      problem: '/dev/kvm (mode 600, group root) is not usable by VMs running as their own uid',
      fix: `sudo groupadd -r kvm && sudo chgrp kvm /dev/kvm && sudo chmod 660 /dev/kvm${rule('kvm')}`,
    });
    assert.equal(kvmProblemForVmUids({ mode: CHR | 0o660, gid: 0 }, etc('kvm:x:993:'))!.fix, `sudo chgrp kvm /dev/kvm && sudo chmod 660 /dev/kvm${rule('kvm')}`,
      'root\'s group is never handed to VMs; an existing kvm group is used');
    assert.equal(kvmProblemForVmUids({ mode: CHR | 0o600, gid: 994 }, etc('vmusers:x:994:'))!.fix, `sudo chmod 660 /dev/kvm${rule('vmusers')}`,
      'the group that owns the device stays');
    for (const gid of [0, 994]) {
      for (const groups of [etc(), etc('vmusers:x:994:')]) {
        const fix = kvmProblemForVmUids({ mode: CHR | 0o600, gid }, groups)!.fix;
        assert.ok(!fix.includes('chgrp kvm') || fix.includes('groupadd -r kvm') || groups.includes('\nkvm:'), `no kvm group is assumed: ${fix}`);
      }
    }
  });

  it('says what grep loses without ripgrep, and how to install it', () => {
    const missing = ripgrepCheck(null);
    assert.equal(missing.ok, false);
    assert.equal(missing.severity, 'warning', 'the tools still work');
    assert.match(missing.detail, /^rg not found on this host: with the process driver, grep falls back to a host-side search .*slower/);
    assert.match(missing.detail, /\.gitignore/);
    assert.equal(missing.fix, 'sudo apt-get install ripgrep');
    assert.deepEqual(ripgrepCheck('ripgrep 13.0.0'), { name: 'ripgrep', ok: true, severity: 'warning', detail: 'ripgrep 13.0.0 (the process driver\'s grep tool runs it)', fix: null });
  });

  it('names the CLI as this installation runs it', () => {
    const home = os.homedir();
    assert.equal(cliInvocation(path.join(home, '.perimeter/bin/perimeter.js'), null), 'node ~/.perimeter/bin/perimeter.js');
    assert.equal(cliInvocation('/opt/my tools/perimeter.js', null), 'node "/opt/my tools/perimeter.js"');
    const cli = path.join(ROOT, 'dist', 'perimeter.js');
    assert.equal(cliInvocation(cli, cli), 'perimeter', 'on PATH: the short name');
    const node = 'node ~/.perimeter/bin/perimeter.js';
    assert.equal(fitCommands('no VM template: run `perimeter template build` (once)', node), `no VM template: run \`${node} template build\` (once)`);
    assert.equal(fitCommands('then: perimeter template build --force', node), `then: ${node} template build --force`);
    assert.equal(fitCommands('5 template(s) in /root/.local/state/perimeter/templates', node), '5 template(s) in /root/.local/state/perimeter/templates');
  });

  it('run from a copy outside PATH (as installed over SSH), every fix names that copy', function () {
    this.timeout(60_000);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-doctor-'));
    try {
      const bin = path.join(dir, 'bin');
      mkdirSync(bin);
      cpSync(path.join(ROOT, 'dist', 'perimeter.js'), path.join(bin, 'perimeter.js'));
      cpSync(path.join(ROOT, 'dist', 'guest'), path.join(bin, 'guest'), { recursive: true });
      let out: string;
      try {
        out = execFileSync(process.execPath, [path.join(bin, 'perimeter.js'), 'doctor', '--json', '--home', path.join(dir, 'home')],
          { encoding: 'utf8', env: { PATH: '/usr/bin:/bin', HOME: process.env.HOME ?? '/root' } });
      } catch (err) { out = (err as { stdout: string }).stdout; }   // exit 1: the empty home has no template
      const report = DoctorReport.parse(JSON.parse(out));
      const template = report.checks.find((c) => c.name === 'template')!;
      assert.equal(template.ok, false);
      assert.equal(template.fix, `node ${path.join(bin, 'perimeter.js')} template build`);
      const texts = report.checks.flatMap((c) => [c.detail, c.fix ?? '']);
      assert.ok(!texts.some((t) => /(^|[\s`:])perimeter template build/.test(t)), texts.filter((t) => /perimeter template/.test(t)).join('\n'));
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });

  it('with a template that runs under TCG, the kvm check\'s fix fits this host\'s /dev/kvm and groups (built CLI)', function () {
    this.timeout(60_000);
    const home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-doctor-kvm-'));
    try {
      const tdir = path.join(home, 'templates', '0123456789abcdef');
      mkdirSync(tdir, { recursive: true });
      writeFileSync(path.join(home, 'templates', 'current'), '0123456789abcdef');
      writeFileSync(path.join(tdir, 'template.json'), JSON.stringify({ version: 1, hash: '0123456789abcdef', createdAt: new Date().toISOString(), kernel: 'tiny', accel: 'tcg',
        qemuVersion: 'QEMU 7.2', memoryMiB: 256, vcpus: 1, writableMiB: 128, append: '', machineOpts: '', rootfsSource: 'mmdebstrap', files: {}, bootMs: 1, snapshotMs: 1 }));
      mkdirSync(path.join(home, 'cache'));
      // a verdict recorded before this fix, with the advice it gave then
      writeFileSync(path.join(home, 'cache', 'accel.json'), JSON.stringify({ k: { accel: 'tcg',
        detail: 'KVM test boot failed (/dev/kvm (mode 600, gid 0) is not usable by VMs running as their own uid (fix: chgrp kvm /dev/kvm && chmod 660 /dev/kvm, as Debian\'s udev rules do)): using TCG (software CPU: for testing only, much slower)' } }));
      let out: string;
      try {
        out = execFileSync(process.execPath, [path.join(ROOT, 'dist', 'perimeter.js'), 'doctor', '--json', '--home', home], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin', HOME: process.env.HOME ?? '/root' } });
      } catch (err) { out = (err as { stdout: string }).stdout; }
      const kvm = DoctorReport.parse(JSON.parse(out)).checks.find((c) => c.name === 'kvm')!;
      const etcGroup = readFileSync('/etc/group', 'utf8');
      const text = `${kvm.detail} ${kvm.fix ?? ''}`;
      if (!/^kvm:/m.test(etcGroup)) assert.ok(!/chgrp kvm/.test(text) || /groupadd -r kvm && sudo chgrp kvm/.test(text), `no kvm group here: ${text}`);
      if (!existsSync('/dev/kvm')) return;   // the check says it is missing; nothing about VM uids to fit
      const forVms = process.getuid?.() === 0 ? kvmProblemForVmUids(statSync('/dev/kvm'), etcGroup) : null;
      if (forVms) {
        assert.match(kvm.detail, new RegExp(`; ${forVms.problem.replace(/[()]/g, '\\$&')}: VMs run under TCG`));
        assert.ok(kvm.fix!.startsWith(`${forVms.fix}, then: `), kvm.fix!);
      } else assert.doesNotMatch(text, /not usable by VMs running as their own uid/);
    } finally { rmSync(home, { recursive: true, force: true }); }
  });
});
