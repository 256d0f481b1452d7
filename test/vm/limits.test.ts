// Hostile workloads in real VMs: each is contained with a clear result, and both the same VM (per-session mode)
// and a fresh one (per-call mode) still work afterwards. Host-side deadlines kill a VM whose agent stops answering.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import type { Sandbox } from '../../companion/sandbox/types';
import type { QemuDriver, QemuSandbox } from '../../companion/sandbox/qemu/driver';
import { newDriver, sh, skipWithoutVms, text } from './helpers';

/** Running (a killed process its parent has not reaped yet is a zombie: dead, not running). */
function running(pid: number): boolean {
  try { return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')); } catch { return false; }
}

describe('qemu sandbox limits (real VMs)', function () {
  let driver: QemuDriver;
  const opened: Sandbox[] = [];
  const acquire = async () => { const s = await driver.acquire({ sessionId: 'limits' }); opened.push(s); return s; };

  before(function () { skipWithoutVms(this); driver = newDriver({ maxProcesses: 128 }); });
  afterEach(async () => { await Promise.all(opened.splice(0).map((s) => s.destroy())); });
  after(async () => { await driver?.close(); });

  async function stillWorks(s: Sandbox): Promise<void> {
    const same = await sh(s, 'echo alive');
    assert.equal(text(same), 'alive\n', 'the same VM answers after the hostile command');
    const fresh = await acquire();
    assert.equal(text(await sh(fresh, 'echo fresh')), 'fresh\n', 'a fresh VM works');
  }

  it('contains a fork bomb (process limit) and leaves nothing running', async () => {
    const s = await acquire();
    const r = await sh(s, ':(){ :|:& };: ; sleep 3; echo done', { timeoutMs: 20_000, maxOutputBytes: 65536 });
    assert.match(text(r), /fork: retry|Resource temporarily unavailable|fork: Interrupted/i, text(r).slice(0, 500));
    const left = await sh(s, 'ls /sys/fs/cgroup/call/ >/dev/null; cat /sys/fs/cgroup/call/pids.current');
    const count = Number(text(left).trim());
    assert.ok(count >= 1 && count <= 2, `only this command is in the cgroup, the bomb was killed (pids.current=${text(left).trim()})`);
    await stillWorks(s);
  });

  it('contains a memory hog (the guest OOM-kills it, the agent survives)', async () => {
    const s = await acquire();
    const r = await sh(s, 'python3 -c "a=[]\nwhile True: a.append(bytearray(8*1024*1024))"', { timeoutMs: 60_000 });
    assert.equal(r.exitCode, 137, `killed by SIGKILL (OOM): ${text(r)}`);
    assert.equal(r.timedOut, false);
    await stillWorks(s);
  });

  it('stops an infinite loop at the call timeout and says so', async () => {
    const s = await acquire();
    const r = await sh(s, 'echo started; while :; do :; done', { timeoutMs: 2_000 });
    assert.equal(r.timedOut, true);
    assert.equal(r.exitCode, 137);
    assert.equal(text(r), 'started\n', 'output before the timeout is kept');
    await stillWorks(s);
  });

  it('does not hang on a background process that keeps stdout open', async () => {
    const s = await acquire();
    const r = await sh(s, 'sleep 1000 & echo parent-done', { timeoutMs: 20_000 });
    assert.equal(r.timedOut, false);
    assert.equal(text(r), 'parent-done\n');
    await stillWorks(s);
  });

  it('contains a disk filler (writable layer full: ENOSPC)', async () => {
    const s = await acquire();
    const r = await sh(s, 'dd if=/dev/zero of=/workspace/fill bs=1M count=2000 2>&1; echo rc=$?', { timeoutMs: 60_000 });
    assert.match(text(r), /No space left on device/);
    assert.match(text(r), /rc=1/);
    const rm = await sh(s, 'rm /workspace/fill && echo removed');
    assert.equal(text(rm), 'removed\n');
    await stillWorks(s);
  });

  it('caps a 10 MB output flood, keeping head and tail and counting the rest', async () => {
    const s = await acquire();
    const r = await sh(s, 'echo HEAD; head -c 10000000 /dev/zero | tr "\\0" x; echo; echo TAIL', { timeoutMs: 60_000, maxOutputBytes: 100_000 });
    assert.equal(r.exitCode, 0);
    assert.ok(r.output.length <= 100_000, `output capped (got ${r.output.length})`);
    assert.ok(text(r).startsWith('HEAD\nxxx'));
    assert.ok(text(r).endsWith('xxx\nTAIL\n'));
    assert.equal(r.output.length + r.droppedBytes, 5 + 10_000_000 + 1 + 5);
    await stillWorks(s);
  });

  it('kills the VM when the agent misses the host deadline', async () => {
    const s = (await acquire()) as QemuSandbox;
    const q = await s.vm.qmp();
    await q.cmd('stop'); // the guest freezes: the agent can no longer answer
    const qemuPid = s.vm.pid;
    assert.ok(running(qemuPid), 'QEMU runs before the deadline');
    const r = await sh(s, 'echo never', { timeoutMs: 1_000 });
    assert.equal(r.timedOut, true);
    assert.equal(s.vm.alive, false, 'the missed deadline killed the VM');
    await s.vm.exited; // the launcher ended its jail and exited
    await s.destroy(); // the same teardown the missed deadline started: jail released, run directory removed
    assert.equal(running(qemuPid), false, `QEMU ${qemuPid} is gone`);
    assert.equal(existsSync(s.vm.dir), false, 'the run directory is removed');
    await assert.rejects(sh(s, 'echo again'), /closed|did not answer/);
  });
});
