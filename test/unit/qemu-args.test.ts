// QEMU argv hardening and the orphan sweep's safety rules, without starting QEMU.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { qemuArgs, type VmImage } from '../../companion/sandbox/qemu/vm';
import { sweepOrphans } from '../../companion/sandbox/qemu/sweep';

const image: VmImage = { kernel: '/t/vmlinux', initrd: '/t/initramfs.cpio', rootfs: '/t/rootfs.ext4', append: 'quiet', memoryMiB: 256, vcpus: 1, machineOpts: 'acpi=off' };

describe('qemu argv', () => {
  const clone = qemuArgs(image, { binary: 'q', accel: 'tcg', vmsDir: '/v', memFile: '/t/mem.bin', role: 'clone' }, '/v/vm1', true);
  const tpl = qemuArgs(image, { binary: 'q', accel: 'tcg', vmsDir: '/v', memFile: '/t/mem.bin', role: 'template' }, '/v/t1', false);
  const value = (args: string[], flag: string) => args[args.indexOf(flag) + 1]!;

  it('is hardened: seccomp sandbox, no defaults, no NIC, raw read-only root, pidfile', () => {
    assert.equal(value(clone, '-sandbox'), 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
    for (const f of ['-nodefaults', '-no-user-config', '-no-reboot']) assert.ok(clone.includes(f), f);
    assert.ok(!clone.some((a) => /netdev|virtio-net|-nic/.test(a)), 'no network device');
    assert.match(value(clone, '-drive'), /format=raw,.*readonly=on/);
    assert.equal(value(clone, '-pidfile'), '/v/vm1/qemu.pid');
    assert.match(value(clone, '-M'), /^microvm,acpi=off,.*dump-guest-core=off/);
    assert.doesNotMatch(value(clone, '-M'), /pic=off/, 'the legacy PIC stays on (guest timers need it)');
  });

  it('maps template RAM shared and clone RAM private, restoring clones with -incoming defer', () => {
    assert.match(value(tpl, '-object'), /mem-path=\/t\/mem\.bin,share=on$/);
    assert.match(value(clone, '-object'), /mem-path=\/t\/mem\.bin,share=off$/);
    assert.equal(value(clone, '-incoming'), 'defer');
    assert.ok(!tpl.includes('-incoming'));
    const strip = (a: string[]) => a.filter((x) => !/share=|^-incoming$|^defer$|\/v\//.test(x));
    const withoutBoot = (a: string[]) => a.filter((x, i) => !['-kernel', '-initrd', '-append'].includes(x) && !['-kernel', '-initrd', '-append'].includes(a[i - 1]!));
    assert.deepEqual(strip(clone), strip(withoutBoot(tpl)), 'template and clone argv differ only where they must');
    assert.equal(value(tpl, '-kernel'), '/t/vmlinux');
    assert.ok(!clone.includes('-kernel') && !clone.includes('-initrd'), 'a clone does not load the kernel again: its RAM is the snapshot');
  });
});

describe('orphan sweep', () => {
  it('kills only QEMUs started with their run directory, and spares live owners', async () => {
    const vms = mkdtempSync(path.join(os.tmpdir(), 'vms-'));
    try {
      // an orphan: dead owner, pidfile names a "qemu-system" whose argv mentions its dir
      const orphanDir = path.join(vms, 'vm-orphan');
      mkdirSync(orphanDir);
      const fake = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)', orphanDir], { argv0: 'qemu-system-x86_64' });
      await new Promise((r) => setTimeout(r, 300));
      writeFileSync(path.join(orphanDir, 'qemu.pid'), String(fake.pid));
      writeFileSync(path.join(orphanDir, 'owner'), '999999');
      // a recycled pid: dead owner, the pidfile names an unrelated process
      const recycledDir = path.join(vms, 'vm-recycled');
      mkdirSync(recycledDir);
      const innocent = spawn('sleep', ['60']);
      writeFileSync(path.join(recycledDir, 'qemu.pid'), String(innocent.pid));
      // owned by a live companion (this very test process counts as one)
      const liveDir = path.join(vms, 'vm-live');
      mkdirSync(liveDir);
      writeFileSync(path.join(liveDir, 'owner'), String(process.ppid));
      const exited = new Promise((r) => fake.once('exit', r));
      assert.equal(sweepOrphans(vms), 1);
      await exited;
      assert.equal(existsSync(orphanDir), false);
      assert.equal(existsSync(recycledDir), false);
      assert.equal(innocent.exitCode, null, 'an unrelated process with a recycled pid is not killed');
      assert.equal(existsSync(liveDir), true, 'a live companion keeps its VMs');
      innocent.kill();
    } finally { rmSync(vms, { recursive: true, force: true }); }
  });
});
