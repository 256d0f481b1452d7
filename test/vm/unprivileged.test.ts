// A root companion runs QEMU as `nobody` when the template and run directories are reachable by that uid, and keeps
// root (saying why) when they are not. Checked on real QEMU processes: uid, gid, groups, seccomp, no_new_privs.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../companion/config';
import { QemuDriver, type QemuSandbox } from '../../companion/sandbox/qemu/driver';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import { chooseQemuUser, lookupUser } from '../../companion/sandbox/qemu/user';
import { skipWithoutVms, sh, text, vmConfig } from './helpers';

function status(pid: number): Record<string, string> {
  return Object.fromEntries(readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').filter(Boolean).map((l) => { const i = l.indexOf(':'); return [l.slice(0, i), l.slice(i + 1).trim()]; }));
}

describe('QEMU privileges (real VMs)', function () {
  let home: string | null = null;
  before(function () {
    skipWithoutVms(this);
    if (process.getuid?.() !== 0 || !lookupUser('nobody')) { console.log('      SKIPPED: only meaningful when the companion runs as root and a `nobody` user exists'); this.skip(); }
  });
  after(() => { if (home) rmSync(home, { recursive: true, force: true }); });

  it('drops QEMU to nobody when the template is reachable, with seccomp and no_new_privs', async () => {
    const src = findTemplate(vmConfig().home)!;
    home = mkdtempSync('/var/tmp/perimeter-unpriv-');
    chmodSync(home, 0o755);
    const tdir = path.join(home, 'templates', src.manifest.hash);
    mkdirSync(path.dirname(tdir), { recursive: true });
    execFileSync('cp', ['-a', '--sparse=always', src.dir, tdir]);
    const nobody = lookupUser('nobody')!;
    chownSync(path.join(tdir, 'mem.bin'), nobody.uid, nobody.gid); // what `template build` does as root
    chmodSync(path.join(tdir, 'mem.bin'), 0o644);
    writeFileSync(path.join(home, 'templates', 'current'), src.manifest.hash);
    const driver = new QemuDriver(loadConfig({ home, sandbox: { poolSize: 0 } }));
    try {
      assert.match((await driver.probe()).detail, /QEMU drops to nobody/);
      const s = (await driver.acquire({ sessionId: 'unpriv' })) as QemuSandbox;
      const st = status(s.vm.pid);
      assert.equal(st.Uid!.split(/\s+/)[0], String(nobody.uid));
      assert.equal(st.Gid!.split(/\s+/)[0], String(nobody.gid));
      assert.equal(st.Groups ?? '', '', 'no supplementary groups (root\'s are dropped)');
      assert.equal(st.Seccomp, '2');
      assert.equal(st.NoNewPrivs, '1');
      assert.equal(text(await sh(s, 'sleep 0.1; echo works')), 'works\n');
      await s.destroy();
    } finally { await driver.close(); }
  });

  it('keeps root and explains why when the state directory is private', () => {
    const priv = mkdtempSync('/var/tmp/perimeter-private-');
    try {
      chmodSync(priv, 0o700);
      const f = path.join(priv, 'templates', 'x', 'vmlinux');
      mkdirSync(path.dirname(f), { recursive: true });
      writeFileSync(f, 'k');
      const choice = chooseQemuUser({ readOnlyFiles: [f], memFile: f, vmsDir: path.join(priv, 'vms') });
      assert.equal(choice.user, null);
      assert.match(choice.reason, /not reachable by nobody.*QEMU keeps root/);
    } finally { rmSync(priv, { recursive: true, force: true }); }
  });
});
