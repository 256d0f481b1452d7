// Driver selection (companion/sandbox/select.ts) against the real QEMU driver's probe: `auto` picks a VM driver or
// refuses (template missing, probe timeout), never the process driver; a QEMU whose version differs from the
// template's keeps the QEMU driver (the snapshot is remade, see test/vm/remake.test.ts); the process driver runs only
// when named, and serves a remote control plane only with allowNoIsolation. QEMU stand-ins are shell scripts.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig, type ConfigInput } from '../../companion/config';
import { EventHub } from '../../companion/events';
import { PerimeterError } from '../../companion/errors';
import { IsolationRequired, NoVmSandbox, isLoopbackUrl, selectDriver, type DriverSelection, type SelectOptions } from '../../companion/sandbox/select';
import { setStderrLogging } from '../../companion/log';

const OLD_QEMU = 'QEMU emulator version 7.2.0 (a version this host no longer has)';

describe('sandbox driver selection', function () {
  this.timeout(60_000);
  let dir: string;
  const selections: DriverSelection[] = [];
  before(() => setStderrLogging(false));
  after(() => setStderrLogging(true));
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-select-')); });
  afterEach(async () => {
    for (const s of selections.splice(0)) await s.driver.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const home = () => path.join(dir, 'home');
  const select = async (sandbox: ConfigInput['sandbox'], opts: SelectOptions = {}) => {
    const s = await selectDriver(loadConfig({ home: home(), sandbox }, {}), new EventHub(), opts);
    selections.push(s);
    return s;
  };
  /** A QEMU stand-in: answers `--version` with `version`, or never answers. */
  const fakeQemu = (behaviour: { version: string } | 'hangs') => {
    const file = path.join(dir, 'qemu-system-x86_64');
    writeFileSync(file, behaviour === 'hangs' ? '#!/bin/sh\nexec sleep 60\n' : `#!/bin/sh\necho '${behaviour.version}'\n`);
    chmodSync(file, 0o755);
    return file;
  };
  /** A template as `perimeter template build` leaves it, recorded with `qemuVersion`. */
  const fakeTemplate = (qemuVersion: string) => {
    const hash = 'ab'.repeat(12);
    const t = path.join(home(), 'templates', hash);
    mkdirSync(t, { recursive: true });
    for (const f of ['vmlinux', 'initramfs.cpio', 'rootfs.ext4', 'mem.bin', 'state.bin']) writeFileSync(path.join(t, f), '');
    writeFileSync(path.join(t, 'template.json'), JSON.stringify({
      version: 1, hash, createdAt: new Date().toISOString(), kernel: 'tiny', accel: 'tcg', qemuVersion, memoryMiB: 256, vcpus: 1,
      writableMiB: 128, append: 'quiet', machineOpts: '', rootfsSource: 'debootstrap bookworm minbase', files: {}, bootMs: 1, snapshotMs: 1,
    }));
    writeFileSync(path.join(home(), 'templates', 'current'), hash);
  };

  it('auto with no template refuses, naming the reason and the fix; it never picks the process driver', async () => {
    const err = await select({ driver: 'auto', qemuBinary: fakeQemu({ version: 'QEMU emulator version 9.9.9' }) }).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof NoVmSandbox, `expected a refusal, got ${String(err)}`);
    assert.match(err.message, /qemu: no template built yet/);
    assert.match(err.message, /fix: sudo apt-get install qemu-system-x86 .*perimeter template build/);
    assert.match(err.message, /perimeter doctor/);
    assert.deepEqual(err.rejected.map((r) => r.kind), ['qemu', 'firecracker']);
  });

  it('auto with a QEMU that is not installed refuses and says how to install it', async () => {
    const err = await select({ driver: 'auto', qemuBinary: path.join(dir, 'no-such-qemu') }).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof NoVmSandbox);
    assert.match(err.message, /no-such-qemu is not installed \(fix: sudo apt-get install qemu-system-x86/);
  });

  it('auto whose QEMU probe does not answer refuses (it does not fall back)', async () => {
    const err = await select({ driver: 'auto', qemuBinary: fakeQemu('hangs') }).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof NoVmSandbox, `expected a refusal, got ${String(err)}`);
    assert.match(err.message, /qemu: `.*qemu-system-x86_64 --version` did not answer within 10 s/);
  });

  it('auto after a QEMU upgrade keeps the QEMU driver and says the snapshot will be remade', async () => {
    fakeTemplate(OLD_QEMU);
    const s = await select({ driver: 'auto', qemuBinary: fakeQemu({ version: 'QEMU emulator version 9.9.9' }) });
    assert.equal(s.driver.kind, 'qemu');
    assert.equal(s.probe.ok, true);
    assert.match(s.probe.detail, /snapshot was made with QEMU emulator version 7\.2\.0 .*it is remade from the template's kernel and root filesystem/);
    assert.equal(s.noVm, undefined);
  });

  it('an explicitly named VM driver that cannot run is fatal, never replaced', async () => {
    const err = await select({ driver: 'qemu', qemuBinary: fakeQemu({ version: 'QEMU emulator version 9.9.9' }) }).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof PerimeterError && err.code === 'driver_unavailable', String(err));
    assert.match(err.message, /sandbox driver "qemu" cannot run: no template built yet/);
  });

  it('the process driver, named, serves a control plane on this machine', async () => {
    for (const baseUrl of ['http://127.0.0.1:4100', 'http://localhost:8080/', 'http://[::1]:9']) {
      const s = await select({ driver: 'process' }, { baseUrl });
      assert.equal(s.driver.kind, 'process', baseUrl);
      assert.equal(s.noVm, undefined);
    }
  });

  it('the process driver refuses a remote control plane unless allowNoIsolation is set', async () => {
    for (const baseUrl of [undefined, 'https://api.anthropic.com', 'http://127.0.0.1.example.com', 'http://10.0.0.5:4100']) {
      const err = await select({ driver: 'process' }, { baseUrl }).then(() => null, (e: unknown) => e);
      assert.ok(err instanceof IsolationRequired, `${baseUrl}: ${String(err)}`);
      assert.match(err.message, /--allow-no-isolation/);
      const allowed = await select({ driver: 'process', allowNoIsolation: true }, { baseUrl });
      assert.equal(allowed.driver.kind, 'process');
    }
  });

  it('only a caller with its own queue (the demo) may get the process driver when no VM can run, told why and how to get VMs', async () => {
    const s = await select({ driver: 'auto', qemuBinary: fakeQemu({ version: 'QEMU emulator version 9.9.9' }) }, { baseUrl: 'http://127.0.0.1:4100', whenNoVm: 'process' });
    assert.equal(s.driver.kind, 'process');
    assert.match(s.noVm!.reason, /^qemu: no template built yet/);
    assert.match(s.noVm!.fix, /perimeter template build/);
    const remote = await select({ driver: 'auto', qemuBinary: fakeQemu({ version: 'QEMU emulator version 9.9.9' }) }, { baseUrl: 'https://api.anthropic.com', whenNoVm: 'process' })
      .then(() => null, (e: unknown) => e);
    assert.ok(remote instanceof IsolationRequired);
  });

  it('recognises loopback URLs only', () => {
    assert.deepEqual(['http://127.0.0.1:1', 'http://127.1.2.3', 'http://localhost', 'http://[::1]:2'].map(isLoopbackUrl), [true, true, true, true]);
    assert.deepEqual([undefined, 'https://api.anthropic.com', 'http://localhost.example.com', 'http://0.0.0.0:1', 'not a url'].map(isLoopbackUrl), [false, false, false, false, false]);
  });
});
