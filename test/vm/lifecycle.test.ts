// VM lifecycle with real QEMU: the warm pool refills behind each call, and no QEMU survives a SIGKILLed companion
// once the next one starts (startup sweep of <home>/vms).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { QemuDriver, QemuSandbox } from '../../companion/sandbox/qemu/driver';
import { newDriver, sh, skipWithoutVms, text } from './helpers';

/** Running (a killed process whose new parent has not reaped it yet is a zombie: dead, not running). */
function alive(pid: number): boolean {
  try { return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')); } catch { return false; }
}

describe('qemu driver lifecycle (real VMs)', function () {
  let driver: QemuDriver | null = null;
  before(function () { skipWithoutVms(this); });
  afterEach(async () => { await driver?.close(); driver = null; });

  it('hands out pooled VMs and refills the pool behind each acquire', async () => {
    driver = newDriver({ poolSize: 2 });
    await driver.warm(120_000);
    assert.equal(driver.info().pooled, 2);
    const a = await driver.acquire({ sessionId: 's' });
    assert.equal(text(await sh(a, 'echo pooled')), 'pooled\n');
    await driver.warm(120_000);
    assert.equal(driver.info().pooled, 2, 'the pool refilled');
    assert.equal(driver.info().running, 1);
    await a.destroy();
    assert.equal(driver.info().running, 0);
  });

  it('replaces a pooled VM that died while waiting', async () => {
    driver = newDriver({ poolSize: 1 });
    await driver.warm(120_000);
    const first = (await driver.acquire({ sessionId: 's' })) as QemuSandbox;
    await driver.warm(120_000);
    // kill the pooled VM behind the driver's back
    const pooled = (driver as unknown as { pool: { ready: QemuSandbox[] } }).pool.ready[0]!;
    pooled.vm.proc.kill('SIGKILL');
    await pooled.vm.exited;
    const next = await driver.acquire({ sessionId: 's' });
    assert.notEqual(next.id, pooled.id);
    assert.equal(text(await sh(next, 'echo replaced')), 'replaced\n');
    await Promise.all([first.destroy(), next.destroy()]);
  });

  it('starts one QEMU ahead of the next restore, restores into it, and kills it on close', async () => {
    driver = newDriver({ poolSize: 0 });
    const ahead = () => (driver as unknown as { emulatorAhead: Promise<{ id: string; pid: number; alive: boolean }> | null }).emulatorAhead;
    const a = (await driver.acquire({ sessionId: 's' })) as QemuSandbox;
    const waiting = await ahead();
    assert.ok(waiting?.alive && alive(waiting.pid), 'a QEMU waits for the next restore');
    const b = (await driver.acquire({ sessionId: 's' })) as QemuSandbox;
    assert.equal(b.vm.id, waiting.id, 'the next restore used it');
    assert.equal(text(await sh(b, 'echo restored')), 'restored\n');
    const next = await ahead();
    assert.ok(next && next.id !== waiting.id && alive(next.pid), 'and the one after it is started');
    const pids = [a.vm.pid, b.vm.pid, next.pid];
    await driver.close();
    driver = null;
    for (const pid of pids) assert.equal(alive(pid), false, `QEMU ${pid} is gone after close`);
  });

  it('leaves no QEMU running after the companion is SIGKILLed and restarted', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'fixtures', 'orphan-child.ts')], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve, reject) => {
      let buf = '';
      child.stdout.on('data', (d: Buffer) => { buf += d; const i = buf.indexOf('\n'); if (i >= 0) resolve(buf.slice(0, i)); });
      child.once('exit', (code) => reject(new Error(`child exited early (${code})`)));
    });
    const { pid, dir } = JSON.parse(line) as { pid: number; dir: string };
    assert.ok(alive(pid), 'the VM runs');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    driver = newDriver();
    await driver.start();
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(alive(pid), false, 'the restarted companion killed the orphan');
    assert.equal(existsSync(dir), false, 'and removed its run directory');
  });
});
