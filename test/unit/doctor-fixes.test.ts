// `perimeter doctor` names fixes that work on the host it runs on: the CLI as it is installed there (the copy the
// extension puts under ~/.perimeter/bin is not on PATH), and /dev/kvm access through the group that owns the device
// (no `usermod -aG kvm` on a host without a kvm group). The pure helpers, and the built CLI run from such a copy.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cliInvocation, fitCommands, groupName, kvmAccessFix } from '../../companion/commands/doctor';
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
});
