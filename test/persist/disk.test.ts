// Session disks with REAL VMs (QEMU microvm clones of a template built with a session-disk device): capacity beyond
// guest RAM, a full disk, calls that time out or die, QEMU killed at each step of a commit, concurrent sessions, a
// guest that corrupts its own filesystem, per-session mode on the same disk. Skips (saying why) only when QEMU or a
// template with a session disk is absent.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { lstatSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import type { QemuDriver, QemuSandbox } from '../../companion/sandbox/qemu/driver';
import { Persistence } from '../../companion/persist/persistence';
import { DiskPersistence } from '../../companion/persist/disk/persistence';
import { DiskStore } from '../../companion/persist/disk/store';
import type { Sandbox } from '../../companion/sandbox/types';
import { runTool, type ToolOutcome } from '../../companion/tools/semantics';
import type { ToolName } from '../../companion/tools/schemas';
import type { CommitReport } from '../../companion/persist/types';
import { newDriver, skipWithoutSessionDisk, skipWithoutVms, templateDiskBytes } from '../vm/helpers';
import { fingerprint, tempDir, TEST_LIMITS } from './helpers';

const CRASH_CHILD = path.join(__dirname, 'fixtures', 'disk-crash-child.ts');

/** Bytes the host filesystem has allocated to the files under `dir` (what the session's disks cost the host; a
 *  filesystem-wide free-space reading would also count whatever else runs on the machine). */
function allocatedBytes(dir: string): number {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    try { total += lstatSync(path.join(e.parentPath, e.name)).blocks * 512; } catch { /* removed meanwhile */ }
  }
  return total;
}

function newDisks(home: string, o: { maxBytes?: number; mode?: 'per-call' | 'per-session'; keepGenerations?: number } = {}): DiskPersistence {
  const persist = { ...TEST_LIMITS, maxBytes: o.maxBytes ?? templateDiskBytes()!, keepGenerations: o.keepGenerations ?? 3 };
  return new DiskPersistence({ home, persist, files: new Persistence({ home, persist }), mode: o.mode ?? 'per-call' });
}

interface DiskCall { outcome: ToolOutcome; report: CommitReport | null; error: Error | null }

/** One per-call tool call as the orchestrator runs it on session disks (the result counts after commit). */
async function diskCall(p: DiskPersistence, driver: QemuDriver, sessionId: string, name: ToolName, input: unknown,
  during?: (sb: QemuSandbox) => Promise<void>): Promise<DiskCall> {
  const sb = await p.acquire(sessionId, () => driver.acquire({ sessionId }));
  try {
    const shell = await p.prepare(sessionId, sb);
    const outcome = await runTool(name, input, { sandbox: sb, shell, callTimeoutMs: 600_000 });
    if (during) await during(sb as QemuSandbox);
    try {
      return { outcome, report: await p.commit(sessionId, sb, outcome.shell, { timedOut: outcome.timedOut }), error: null };
    } catch (err) { return { outcome, report: null, error: err as Error }; }
  } finally { await sb.destroy(); }
}

/** Sets $d to the session disk's device name, in the guest. */
const DISK_DEVICE = 'd=$(grep -l perimeter-disk /sys/block/vd*/serial | cut -d/ -f4)';

const bash = (p: DiskPersistence, d: QemuDriver, s: string, command: string, timeoutMs = 600_000) => diskCall(p, d, s, 'bash', { command, timeout_ms: timeoutMs });

describe('persist: session disks (real VMs)', function () {
  let driver: QemuDriver;
  let home: string;
  before(function () {
    skipWithoutVms(this);
    skipWithoutSessionDisk(this);
    driver = newDriver({ poolSize: 1 });
  });
  after(async () => { await driver?.close(); });
  beforeEach(() => { home = tempDir('disk'); });
  afterEach(() => { rmSync(home, { recursive: true, force: true }); });

  it('carries files, cwd and exported variables from call to call; the next call\'s VM is prepared ahead', async () => {
    const p = newDisks(home);
    const s = 'sesn_disk_roundtrip';
    const w = await diskCall(p, driver, s, 'write', { file_path: '/workspace/notes/todo.txt', content: 'first line\n' });
    assert.equal(w.outcome.isError, false, w.outcome.text);
    assert.deepEqual(w.report, { generation: 1, notes: [] });
    const b = await bash(p, driver, s, 'echo "second line" >> notes/todo.txt && mkdir -p proj/src && cd proj/src && export GREETING="hello disk"');
    assert.equal(b.report?.generation, 2);
    const r = await bash(p, driver, s, 'echo "$PWD|$GREETING"; cat /workspace/notes/todo.txt; rm /workspace/notes/todo.txt');
    assert.equal(r.outcome.text, '/workspace/proj/src|hello disk\nfirst line\nsecond line');
    const gone = await bash(p, driver, s, 'ls /workspace/notes | wc -l; mount | grep -c " /workspace "');
    assert.equal(gone.outcome.text, '0\n1');
    // each call after the first took a VM prepared while "the model thought" (its layer over the then CURRENT)
    const store = await DiskStore.open(home, s, { bytes: templateDiskBytes()!, keepGenerations: 3 });
    assert.equal((await store.current()).generation, 4);
    await p.close();
  });

  it('a 2 GiB file written in one call is intact in the next; guest RAM and the VM\'s memory do not grow with it', async function () {
    this.timeout(900_000);
    const p = newDisks(home);
    const s = 'sesn_disk_big';
    // 32 distinct 64 MiB chunks (a random block, each chunk numbered): md5 is cheap under TCG, /dev/urandom is not
    const make = 'head -c 67108864 /dev/urandom > /tmp/r && for i in $(seq -w 1 32); do printf "chunk%s" "$i"; cat /tmp/r; done > /workspace/big.bin'
      + ' && stat -c %s /workspace/big.bin && md5sum < /workspace/big.bin | cut -c1-32 && df -k / | tail -1 | awk \'{print $3}\'';
    const first = await bash(p, driver, s, make);
    assert.equal(first.outcome.isError, false, first.outcome.text);
    const [size, sum, rootUsedKiB] = first.outcome.text.split('\n');
    assert.equal(Number(size), 32 * (67108864 + 7));
    assert.ok(Number(rootUsedKiB) < 100 * 1024, `the VM's own writable layer holds ${rootUsedKiB} KiB: the file went to RAM, not the disk`);
    assert.deepEqual(first.report?.notes, []);
    let pssMiB = 0;
    const next = await diskCall(p, driver, s, 'bash', { command: 'stat -c %s big.bin && md5sum < big.bin | cut -c1-32' }, async (sb) => { pssMiB = sb.vm.pssMiB() ?? 0; });
    assert.equal(next.outcome.text, `${size}\n${sum}`);
    assert.ok(pssMiB > 0 && pssMiB < 256 + 200, `QEMU's memory after reading 2 GiB: ${pssMiB} MiB`);
    await p.close();
  });

  it('a full disk: the command sees ENOSPC, the result says the session disk is full, the host only lends the disk\'s size', async function () {
    this.timeout(600_000);
    const disk = 256 * 1024 * 1024;
    const p = newDisks(home, { maxBytes: disk });
    const s = 'sesn_disk_full';
    await bash(p, driver, s, 'echo keep > keep.txt');
    const before = allocatedBytes(home);
    const full = await bash(p, driver, s, 'dd if=/dev/urandom of=/workspace/fill bs=1M 2>&1 | grep -o "No space left on device" | head -1');
    const after = allocatedBytes(home);
    assert.equal(full.outcome.text, 'No space left on device');
    assert.ok(full.report, String(full.error));
    assert.match(full.report.notes.join('\n'), /the session disk is full \(\d+ MiB of \d+ MiB used\)/);
    const grew = after - before;
    assert.ok(grew < disk + 64 * 1024 * 1024, `the host lost ${grew} bytes for a ${disk}-byte disk`);
    const freed = await bash(p, driver, s, 'rm fill && cat keep.txt && echo more > more.txt && cat more.txt');
    assert.equal(freed.outcome.text, 'keep\nmore');
    assert.deepEqual(freed.report?.notes, []);
    await p.close();
  });

  it('every inode used: creating a file fails in the guest, the result says so, deleting files makes room', async function () {
    this.timeout(600_000);
    const p = newDisks(home, { maxBytes: 64 * 1024 * 1024 });
    const s = 'sesn_disk_inodes';
    const fill = await bash(p, driver, s, 'mkdir many && cd many && i=0; while : 2>/dev/null > f$i; do i=$((i+1)); done; echo made $i; : > one-more');
    assert.match(fill.outcome.text, /^made \d{4}\n.*one-more: No space left on device$/);
    assert.match(fill.report!.notes.join('\n'), /the session disk is full: no file can be created on it \(all \d+ inodes used\)/);
    const room = await bash(p, driver, s, 'cd /workspace && rm -r many && : > ok && ls');
    assert.equal(room.outcome.text, 'ok');
    assert.deepEqual(room.report?.notes, []);
    await p.close();
  });

  it('a call that times out or whose VM dies commits nothing; the next call sees the generation before it', async function () {
    this.timeout(300_000);
    const p = newDisks(home);
    const s = 'sesn_disk_fail';
    const a = await bash(p, driver, s, 'echo a > a.txt');
    assert.equal(a.report?.generation, 1);
    const slow = await bash(p, driver, s, 'echo b > b.txt; sleep 30', 2_000);
    assert.equal(slow.outcome.isError, true);
    assert.equal(slow.report?.generation, 1);
    assert.match(slow.report!.notes.join('\n'), /not saved: the call timed out.*stays at generation 1/);
    const died = await diskCall(p, driver, s, 'bash', { command: 'echo c > c.txt' }, async (sb) => { process.kill(sb.vm.pid, 'SIGKILL'); await sb.vm.exited; });
    assert.ok(died.error, 'a commit on a dead VM must fail');
    assert.match(died.error.message, /not saved: .*generation 1/);
    const check = await bash(p, driver, s, 'ls');
    assert.equal(check.outcome.text, 'a.txt');
    assert.equal(check.report?.generation, 2);
    await p.close();
  });

  for (const step of ['seal', 'quiesce', 'store commit'] as const) {
    it(`QEMU killed (SIGKILL) before the commit's ${step}: the next call sees the previous generation or the new one, whole`, async function () {
      this.timeout(300_000);
      const p = newDisks(home);
      const s = `sesn_disk_kill_${step.replace(' ', '_')}`;
      await bash(p, driver, s, 'for i in 1 2 3; do echo old$i > f$i; done');
      const kill = async (sb: QemuSandbox) => {
        const port = sb.sessionDisk!;
        const before = (name: 'seal' | 'quiesce') => { const orig = port[name].bind(port); (port as unknown as Record<string, unknown>)[name] = async (...args: unknown[]) => { process.kill(sb.vm.pid, 'SIGKILL'); await sb.vm.exited; return (orig as (...a: unknown[]) => unknown)(...args); }; };
        if (step === 'seal' || step === 'quiesce') before(step);
        else {
          const orig = sb.destroy.bind(sb);
          sb.destroy = async () => { if (sb.vm.alive) process.kill(sb.vm.pid, 'SIGKILL'); await sb.vm.exited; return orig(); };
        }
      };
      const mid = await diskCall(p, driver, s, 'bash', { command: 'for i in 1 2 3; do echo new$i > f$i; done; echo new > f4' }, kill);
      const next = await bash(p, driver, s, 'cat f1 f2 f3; cat f4 2>/dev/null || true');
      if (mid.error) {
        assert.equal(next.outcome.text, 'old1\nold2\nold3', `after a failed commit (${mid.error.message})`);
        assert.match(mid.error.message, /not saved/);
      } else {
        assert.equal(mid.report?.generation, 2);
        assert.equal(next.outcome.text, 'new1\nnew2\nnew3\nnew');
      }
      if (step !== 'store commit') assert.ok(mid.error, 'a VM killed before its seal or stop cannot have committed');
      await p.close();
    });
  }

  it('a long session keeping one old generation: compaction runs beside the prepared VMs and nothing is ever lost', async function () {
    this.timeout(600_000);
    const p = newDisks(home, { keepGenerations: 1 });
    const s = 'sesn_disk_long';
    const lines: string[] = [];
    for (let i = 1; i <= 10; i++) {
      // each call checks everything the previous ones left, then changes, adds and deletes files
      const expected = lines.length ? `${lines.join('\n')}\n` : '';
      const r = await bash(p, driver, s, `cat log.txt 2>/dev/null; echo line${i} >> log.txt; head -c ${i * 100_000} /dev/urandom > f${i}.bin; `
        + `rm -f f${i - 2}.bin; : > empty${i}; ls f*.bin | tr "\\n" " "`);
      lines.push(`line${i}`);
      const listed = [i - 1, i].filter((n) => n >= 1).map((n) => `f${n}.bin `).sort().join('');
      assert.equal(r.outcome.text, `${expected}${listed}`, `call ${i}`);
      assert.equal(r.report?.generation, i);
    }
    const store = await p.store(s);
    await store.idle();
    const current = await store.current();
    assert.ok(current.layers.length <= 1 + 1 + 2 + 1, `the chain has ${current.layers.length} layers`);
    const last = await bash(p, driver, s, 'cat log.txt | wc -l; ls empty* | wc -l');
    assert.equal(last.outcome.text, '10\n10');
    await p.close();
  });

  for (const [step, survives] of [['after-seal', false], ['after-quiesce', false], ['before-current', false], ['after-current', true]] as const) {
    it(`the companion SIGKILLed ${step.replace('-', ' ')} of a commit: the next companion sees the ${survives ? 'new' : 'previous'} generation, whole`, async function () {
      this.timeout(300_000);
      const s = `sesn_disk_crash_${step.replace('-', '_')}`;
      const child = spawn(process.execPath, ['--import=tsx', CRASH_CHILD, home, s, step], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      const [, signal] = await once(child, 'exit') as [number | null, string | null];
      assert.equal(signal, 'SIGKILL', `the child was not killed: ${out}${err}`);
      assert.match(out, /COMMITTED 1/);
      const p = newDisks(home);
      const store = await p.store(s);
      const referenced = new Set((await store.list()).flatMap((g) => g.layers));
      assert.deepEqual(readdirSync(path.join(store.dir, 'layers')).filter((l) => !referenced.has(l)), [], 'uncommitted layers are removed');
      const next = await bash(p, driver, s, 'cat f1 f2; cat f3 2>/dev/null || echo no-f3');
      assert.equal(next.outcome.text, survives ? 'new\nnew\nnew' : 'old\nold\nno-f3');
      assert.equal(next.report?.generation, survives ? 3 : 2);
      await p.close();
    });
  }

  it('four concurrent sessions on their own disks never see each other\'s files', async function () {
    this.timeout(600_000);
    const p = newDisks(home);
    const ids = ['sesn_disk_c1', 'sesn_disk_c2', 'sesn_disk_c3', 'sesn_disk_c4'];
    await Promise.all(ids.map((id) => bash(p, driver, id, `echo ${id} > mine.txt && mkdir -p d && echo ${id} > d/also.txt`)));
    const seen = await Promise.all(ids.map((id) => bash(p, driver, id, 'cat mine.txt d/also.txt; ls -A /workspace | tr "\\n" " "')));
    for (const [i, id] of ids.entries()) assert.equal(seen[i]!.outcome.text, `${id}\n${id}\nd mine.txt `);
    await p.close();
  });

  it('a guest that overwrites its superblock with garbage: that call commits nothing and says so; the next call has the files', async function () {
    this.timeout(600_000);
    const p = newDisks(home);
    const s = 'sesn_disk_garbage';
    await bash(p, driver, s, 'echo precious > precious.txt');
    const smash = await bash(p, driver, s, `${DISK_DEVICE}; head -c 4096 /dev/urandom | dd of=/dev/$d bs=4096 count=1 conv=notrunc 2>/dev/null; echo done`);
    assert.equal(smash.outcome.text, 'done');
    assert.ok(smash.error, 'a filesystem reporting impossible sizes is not committed');
    assert.match(smash.error.message, /not saved: .*superblock is damaged.*stays at generation 1/);
    const after = await bash(p, driver, s, 'cat precious.txt');
    assert.equal(after.outcome.text, 'precious');
    await p.close();
  });

  it('a damaged generation: the next call says which generation to roll back to and runs; other sessions are untouched; rollback restores it', async function () {
    this.timeout(600_000);
    const p = newDisks(home);
    const s = 'sesn_disk_corrupt';
    const other = 'sesn_disk_bystander';
    await bash(p, driver, s, 'echo precious > precious.txt');
    await bash(p, driver, other, 'echo mine > mine.txt');
    // zero the superblock's magic number (offset 1080): its sizes stay plausible, so the generation is committed
    const smash = await bash(p, driver, s, `${DISK_DEVICE}; head -c 2 /dev/zero | dd of=/dev/$d bs=1 seek=1080 count=2 conv=notrunc 2>/dev/null; echo done`);
    assert.equal(smash.outcome.text, 'done');
    assert.equal(smash.report?.generation, 2, String(smash.error));
    const after = await bash(p, driver, s, 'ls /workspace | wc -l; echo ran');
    assert.equal(after.outcome.text, '0\nran');
    const note = after.report!.notes.join('\n');
    assert.match(note, /generation 2 is damaged/);
    assert.match(note, new RegExp(`perimeter persist rollback --session ${s} --to 1\\b`));
    assert.equal(after.report!.generation, 2, 'nothing is committed over a damaged generation');
    const bystander = await bash(p, driver, other, 'cat mine.txt');
    assert.equal(bystander.outcome.text, 'mine');
    await p.rollback(s, 1);
    const back = await bash(p, driver, s, 'cat precious.txt');
    assert.equal(back.outcome.text, 'precious');
    await p.close();
  });

  it('per-session mode uses the same disk: one VM commits call after call, and a session can switch modes', async function () {
    this.timeout(300_000);
    const s = 'sesn_disk_modes';
    const perCall = newDisks(home);
    await bash(perCall, driver, s, 'echo from-per-call > a.txt');
    await perCall.close();
    const perSession = newDisks(home, { mode: 'per-session' });
    const sb: Sandbox = await driver.acquire({ sessionId: s });
    try {
      let shell = await perSession.prepare(s, sb);
      for (const cmd of ['cat a.txt; echo one > b.txt', 'cat b.txt; echo two >> b.txt']) {
        const out = await runTool('bash', { command: cmd }, { sandbox: sb, shell, callTimeoutMs: 60_000 });
        shell = out.shell ?? shell;
        const report = await perSession.commit(s, sb, shell, {});
        assert.deepEqual(report.notes, [], out.text);
      }
    } finally { await sb.destroy(); }
    await perSession.close();
    const again = newDisks(home);
    const last = await bash(again, driver, s, 'cat a.txt b.txt');
    assert.equal(last.outcome.text, 'from-per-call\none\ntwo');
    await again.close();
  });

  it('a session the file store holds files for finds them, and its shell state, on its new disk', async () => {
    const s = 'sesn_disk_migrate';
    const persist = { ...TEST_LIMITS, maxBytes: templateDiskBytes()! };
    const files = new Persistence({ home, persist });
    const sb = await driver.acquire({ sessionId: s });
    try {
      await files.prepare(s, sb);
      await runTool('write', { file_path: '/workspace/old/notes.md', content: 'from the file store\n' }, { sandbox: sb, shell: { cwd: '/workspace', env: {} }, callTimeoutMs: 60_000 });
      assert.equal((await files.commit(s, sb, { cwd: '/workspace/old', env: { CARRIED: 'yes' } })).generation, 1);
    } finally { await sb.destroy(); }
    const canary = fingerprint(path.join(home, 'sessions'));
    const p = newDisks(home);
    const r = await bash(p, driver, s, 'cat notes.md; echo "$PWD $CARRIED"');
    assert.equal(r.outcome.text, 'from the file store\n/workspace/old yes');
    assert.equal(fingerprint(path.join(home, 'sessions')), canary, 'the file store is left as it was');
    await p.close();
  });
});
