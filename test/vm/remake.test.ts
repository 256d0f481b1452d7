// A QEMU upgrade (its --version differs from the one the template recorded) with real VMs: `auto` keeps the QEMU
// driver, the snapshot is remade from the template's own kernel, initramfs and root filesystem (linked, not rebuilt)
// with progress in the log events and the driver's note, a clone of the remade snapshot answers, and a second start
// finds the remade template instead of booting again. The upgrade is a wrapper script around the real QEMU that
// answers --version with another version.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfig, type Config } from '../../companion/config';
import { EventHub } from '../../companion/events';
import type { ControlEvent } from '../../companion/protocol/control';
import { selectDriver } from '../../companion/sandbox/select';
import { findTemplate, loadTemplate, templatesDir } from '../../companion/sandbox/template/manifest';
import { setStderrLogging } from '../../companion/log';
import { sh, skipWithoutVms, text, vmConfig } from './helpers';
import { rmDir, tmpDir } from '../worker/helpers';

const UPGRADED = 'QEMU emulator version 7.2.99 (an upgrade, for a test)';

describe('QEMU upgrade: the template snapshot is remade, never abandoned', function () {
  this.timeout(600_000);
  let dir: string;
  before(function () { skipWithoutVms(this); setStderrLogging(process.env.PERIMETER_TEST_LOGS === '1'); });
  after(() => setStderrLogging(true));
  beforeEach(() => { dir = tmpDir('perimeter-remake-'); });
  afterEach(() => rmDir(dir));

  const upgradedConfig = (): Config => {
    const real = vmConfig();
    const wrapper = path.join(dir, 'qemu-system-x86_64');
    writeFileSync(wrapper, `#!/bin/sh\n[ "$1" = --version ] && { echo '${UPGRADED}'; exit 0; }\nexec ${real.sandbox.qemuBinary.startsWith('/') ? real.sandbox.qemuBinary : `/usr/bin/${real.sandbox.qemuBinary}`} "$@"\n`);
    chmodSync(wrapper, 0o755);
    const template = findTemplate(real.home, real.sandbox.template)!;
    return loadConfig({ home: path.join(dir, 'home'), sandbox: { driver: 'auto', template: template.dir, qemuBinary: wrapper, accel: template.manifest.accel, poolSize: 0 } }, {});
  };

  it('auto keeps QEMU, remakes the snapshot from the same kernel and root filesystem, and a clone answers', async () => {
    const config = upgradedConfig();
    const original = findTemplate(vmConfig().home, vmConfig().sandbox.template)!;
    assert.notEqual(original.manifest.qemuVersion, UPGRADED);
    const hub = new EventHub();
    const progress: Array<{ message: string; note: string | undefined }> = [];
    const selection = await selectDriver(config, hub);
    hub.subscribe((e: ControlEvent) => { if (e.type === 'log' && e.component === 'sandbox:template') progress.push({ message: e.message, note: selection.driver.info().note }); });
    try {
      assert.equal(selection.driver.kind, 'qemu', 'auto kept the VM driver');
      assert.match(selection.probe.detail, /remade from the template's kernel and root filesystem/);
      await selection.driver.prepare!();
      const messages = progress.map((p) => p.message);
      for (const step of [/remaking the snapshot of .* for QEMU emulator version 7\.2\.99/, /boot: agent ready/, /snapshot: device state written/, /template: ready at/]) {
        assert.ok(messages.some((m) => step.test(m)), `no progress line ${step} in:\n${messages.join('\n')}`);
      }
      assert.ok(progress.every((p) => p.note !== undefined && p.message === p.note), 'the driver reports what it is doing while it remakes');
      assert.equal(selection.driver.info().note, undefined, 'no note once the snapshot is remade');

      const remadeDir = /template: ready at (\S+)/.exec(messages.join('\n'))![1]!;
      assert.equal(path.dirname(remadeDir), templatesDir(config.home));
      const remade = loadTemplate(remadeDir);
      assert.equal(remade.manifest.qemuVersion, UPGRADED);
      for (const f of ['vmlinux', 'initramfs.cpio', 'rootfs.ext4']) {
        assert.equal(statSync(path.join(remadeDir, f)).ino, statSync(path.join(original.dir, f)).ino, `${f} is the template's own file`);
      }
      assert.notEqual(statSync(remade.stateFile).ino, statSync(original.stateFile).ino, 'a new snapshot');
      assert.ok(!existsSync(path.join(templatesDir(config.home), 'current')), 'a configured template directory is not replaced as `current`');

      const sandbox = await selection.driver.acquire({ sessionId: 'sesn_remake' });
      try {
        const r = await sh(sandbox, 'echo answered-from-the-remade-snapshot');
        assert.equal(text(r), 'answered-from-the-remade-snapshot\n');
      } finally { await sandbox.destroy(); }
    } finally { await selection.driver.close(); }

    const hub2 = new EventHub();
    const lines: string[] = [];
    hub2.subscribe((e) => { if (e.type === 'log') lines.push(e.message); });
    const again = await selectDriver(config, hub2);
    try {
      await again.driver.prepare!();
      assert.ok(lines.some((l) => /already remade/.test(l)) && !lines.some((l) => /boot:/.test(l)), `the second start booted again:\n${lines.join('\n')}`);
    } finally { await again.driver.close(); }
  });
});
