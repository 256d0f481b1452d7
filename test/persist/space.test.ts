// No persisted state may make a session unusable. A generation a fresh sandbox cannot hold (its writable space) is
// refused at commit with a note; files a sandbox cannot take at copy-in (no space left, a damaged blob) are left out
// with a note saying what is missing and how to drop it, the call still runs, and the files stay saved unchanged
// until the model replaces them or deletes their directory. On the process driver with sandboxes that report a small
// writable space or refuse large files (what a small VM does), and in real VMs (skipping, saying why, only when QEMU
// or the template is absent).
import assert from 'node:assert/strict';
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EventHub } from '../../companion/events';
import { Journal } from '../../companion/journal/journal';
import { MemoryMountRegistry } from '../../companion/persist/memory';
import { CallRunner } from '../../companion/tools/call-runner';
import type { AcquireOptions, Sandbox, SandboxDriver } from '../../companion/sandbox/types';
import { GuestError, type PutFile } from '../../companion/guest/types';
import type { QemuDriver } from '../../companion/sandbox/qemu/driver';
import { newDriver, skipWithoutVms } from '../vm/helpers';
import { newPersistence, processDriver, runCall, tempDir } from './helpers';

/** A driver whose sandboxes report `writableBytes` and, like a full guest, refuse with ENOSPC any single write of
 *  more than `refuseAbove` bytes (or anything under `refusePrefix`). */
function smallSandboxes(driver: SandboxDriver, o: { writableBytes?: number; refuseAbove?: number; refusePrefix?: string }): SandboxDriver {
  const limited: SandboxDriver = Object.create(driver) as SandboxDriver;
  limited.acquire = async (opts: AcquireOptions): Promise<Sandbox> => {
    const sb = await driver.acquire(opts);
    const putFiles = sb.putFiles.bind(sb);
    return Object.assign(sb, {
      writableBytes: o.writableBytes,
      putFiles: async (files: PutFile[], deletes: string[]) => {
        for (const f of files) {
          if ((o.refuseAbove !== undefined && f.data.length > o.refuseAbove) || (o.refusePrefix && f.path.startsWith(o.refusePrefix))) {
            await putFiles(files.slice(0, files.indexOf(f)), deletes);
            throw new GuestError('ENOSPC', `write ${f.path}: No space left on device`);
          }
        }
        await putFiles(files, deletes);
      },
    });
  };
  return limited;
}

/** What the model reads of a call: the tool's text and the persistence notes, as the orchestrator joins them. */
function modelText(r: { outcome: { text: string }; report: { notes: string[] } }): string {
  return [r.outcome.text, ...r.report.notes].join('\n');
}

function assertNoHostPath(text: string, ...dirs: string[]): void {
  for (const d of [...dirs, `${os.tmpdir()}/perimeter-`]) assert.ok(!text.includes(d), `host path ${d} in: ${text}`);
}

describe('persist: a session stays usable whatever its persisted files (process driver)', function () {
  this.timeout(120_000);
  let home: string;
  let sbx: ReturnType<typeof processDriver>;
  beforeEach(() => { home = tempDir('persist-space'); sbx = processDriver(); });
  afterEach(async () => { await sbx.dispose(); rmSync(home, { recursive: true, force: true }); });

  it('a generation a fresh sandbox cannot hold is refused at commit with a note; the previous state stays', async () => {
    const p = newPersistence(home);
    const s = 'sesn_space_refused';
    const small = smallSandboxes(sbx.driver, { writableBytes: 32 * 1024 * 1024 });
    const kept = await runCall(small, p, s, 'bash', { command: 'echo keep > keep.txt' });
    assert.deepEqual(kept.report, { generation: 1, notes: [], changes: { added: ['/workspace/keep.txt'], changed: [], removed: [] } });
    const fill = await runCall(small, p, s, 'bash', { command: 'head -c 20000000 /dev/zero > fill && echo filled' });
    assert.equal(fill.outcome.text.trim(), 'filled');
    assert.equal(fill.report.generation, 1);
    assert.equal(fill.report.notes.length, 1, fill.report.notes.join('\n'));
    assert.match(fill.report.notes[0]!, /^not persisted: the persisted paths would need 27 MiB in a sandbox, more than a fresh one can hold \(16 MiB of its 32 MiB writable space; .*the previous state \(generation 1\) is kept\. Largest: "\/workspace\/fill" \(19 MiB\),/);
    assertNoHostPath(modelText(fill), home);
    const next = await runCall(small, p, s, 'bash', { command: 'echo alive; ls' });
    assert.equal(next.outcome.text.trim(), 'alive\nkeep.txt');
    // What fits is accepted, and a generation that shrinks is accepted even when it is still too large.
    const fits = await runCall(small, p, s, 'bash', { command: 'head -c 10000000 /dev/zero > ten && echo ok' });
    assert.deepEqual(fits.report, { generation: 2, notes: [], changes: { added: ['/workspace/ten'], changed: [], removed: [] } });
    await runCall(sbx.driver, p, s, 'bash', { command: 'head -c 30000000 /dev/zero > thirty' });
    const shrink = await runCall(small, p, s, 'bash', { command: 'rm ten' });
    assert.deepEqual(shrink.report, { generation: 4, notes: [], changes: { added: [], changed: [], removed: ['/workspace/ten'] } });
  });

  it('files a sandbox cannot take are left out with a note; the call runs; they stay saved until replaced or their directory goes', async () => {
    const p = newPersistence(home);
    const s = 'sesn_space_missing';
    const made = await runCall(sbx.driver, p, s, 'bash', {
      command: 'mkdir -p data big && echo small > data/small.txt && head -c 3000000 /dev/urandom > data/a.bin && head -c 20000000 /dev/urandom > big/huge.bin && sha256sum data/a.bin big/huge.bin',
    });
    assert.deepEqual(made.report, { generation: 1, notes: [], changes: { added: ['/workspace/big/huge.bin', '/workspace/data/a.bin', '/workspace/data/small.txt'], changed: [], removed: [] } });
    const tight = smallSandboxes(sbx.driver, { refuseAbove: 1_000_000 });

    const alive = await runCall(tight, p, s, 'bash', { command: 'echo alive; find . -type f | sort' });
    assert.equal(alive.outcome.isError, false);
    assert.equal(alive.outcome.text.trim(), 'alive\n./data/small.txt');
    assert.equal(alive.report.notes.length, 1, alive.report.notes.join('\n'));
    assert.match(alive.report.notes[0]!, /^Saved files missing from this sandbox \(no space left on device: "\/workspace\/data\/a\.bin" \(2\.9 MiB\), "\/workspace\/big\/huge\.bin" \(19 MiB\)\)\. They stay saved unchanged; to drop one, overwrite it/);
    assertNoHostPath(modelText(alive), home);
    assert.equal(alive.report.generation, 1, 'absence from the sandbox is not a deletion');

    // A call that changes something else commits without losing the missing files.
    const other = await runCall(tight, p, s, 'bash', { command: 'echo more > data/more.txt' });
    assert.equal(other.report.generation, 2);
    assert.deepEqual(other.report.changes, { added: ['/workspace/data/more.txt'], changed: [], removed: [] }, 'the missing files are not removed');
    const all = await runCall(sbx.driver, p, s, 'bash', { command: 'find . -type f | sort; sha256sum data/a.bin big/huge.bin' });
    assert.equal(all.outcome.text.trim(), `./big/huge.bin\n./data/a.bin\n./data/more.txt\n./data/small.txt\n${made.outcome.text.trim()}`);

    // Overwritten, then deleted in the next call: gone. A deleted directory takes its missing files with it.
    await runCall(tight, p, s, 'bash', { command: ': > data/a.bin' });
    await runCall(tight, p, s, 'bash', { command: 'rm data/a.bin && rm -r big' });
    const after = await runCall(sbx.driver, p, s, 'bash', { command: 'find . -type f | sort' });
    assert.equal(after.outcome.text.trim(), './data/more.txt\n./data/small.txt');
    assert.deepEqual(after.report.notes, []);
  });

  it('per-session mode: the sandbox prepared once reports missing files once, keeps them saved, and lets them be dropped', async () => {
    const p = newPersistence(home);
    const s = 'sesn_space_session';
    await runCall(sbx.driver, p, s, 'bash', { command: 'echo small > small.txt && head -c 3000000 /dev/zero > big.bin' });
    const session = new CallRunner({
      driver: smallSandboxes(sbx.driver, { refuseAbove: 1_000_000 }), journal: Journal.open(path.join(home, 'journal')), hub: new EventHub(),
      mode: 'per-session', callTimeoutMs: 60_000, persistence: p, stateDir: home,
    }).openSession(s, 'work_1');
    let n = 0;
    const bash = (command: string) => session.run({ id: `toolu_space_${n++}`, name: 'bash', input: { command } });
    try {
      const first = await bash('echo small.txt; ls');
      assert.match(first.text, /^small\.txt\nsmall\.txt\n\[persisted files\] Saved files missing from this sandbox \(no space left on device: "\/workspace\/big\.bin" \(2\.9 MiB\)\)/);
      const second = await bash('echo more > more.txt && ls');
      assert.equal(second.text.trim(), 'more.txt\nsmall.txt', 'the note is given once per sandbox');
      assert.deepEqual((await p.state(s)).files.map((f) => f.path), ['/workspace/big.bin', '/workspace/more.txt', '/workspace/small.txt']);
      await bash(': > big.bin');
      await bash('rm big.bin');
      assert.deepEqual((await p.state(s)).files.map((f) => f.path), ['/workspace/more.txt', '/workspace/small.txt']);
    } finally { await session.close(); }
  });

  it('a damaged blob in the store leaves that file out with a note instead of failing every call', async () => {
    const p = newPersistence(home);
    const s = 'sesn_space_damaged';
    await runCall(sbx.driver, p, s, 'bash', { command: 'echo intact > ok.txt && echo will-be-damaged > bad.txt' });
    const blobs = path.join(home, 'sessions', s, 'blobs');
    const state = await p.state(s);
    const bad = state.files.find((f) => f.path === '/workspace/bad.txt')!;
    const shard = readdirSync(blobs).find((d) => d === bad.sha256.slice(0, 2))!;
    writeFileSync(path.join(blobs, shard, bad.sha256), 'tampered');
    const fresh = newPersistence(home);
    const r = await runCall(sbx.driver, fresh, s, 'bash', { command: 'cat ok.txt; ls' });
    assert.equal(r.outcome.text.trim(), 'intact\nok.txt');
    assert.match(r.report.notes.join('\n'), /Saved files missing from this sandbox \(damaged in the companion's store: "\/workspace\/bad\.txt"/);
    assertNoHostPath(modelText(r), home);
  });

  it('memory stores that cannot be placed whole are not written back (the host copy is never emptied)', async () => {
    const memDir = tempDir('persist-space-mem');
    try {
      writeFileSync(path.join(memDir, '.anthropic-memory-store'), 'version 1\nmemstore_1');
      writeFileSync(path.join(memDir, 'prefs.md'), 'likes tea\n');
      const registry = new MemoryMountRegistry();
      const s = 'sesn_space_memory';
      registry.set(s, [{ guestPath: '/mnt/memory/notes', hostDir: memDir, readOnly: false }]);
      const p = newPersistence(home, { memoryMounts: registry.resolve });
      const r = await runCall(smallSandboxes(sbx.driver, { refusePrefix: '/mnt/memory/' }), p, s, 'bash', {
        command: 'M="${PERIMETER_GUEST_PREFIX:-}/mnt/memory/notes"; mkdir -p "$M"; echo new > "$M/other.md"; echo alive',
      });
      assert.equal(r.outcome.text.trim(), 'alive');
      assert.match(r.report.notes.join('\n'), /Memory stores could not be placed whole in this sandbox \(no space left on device\); what this call changes under \/mnt\/memory is not saved\./);
      assert.deepEqual(readdirSync(memDir).sort(), ['.anthropic-memory-store', 'prefs.md']);
    } finally { rmSync(memDir, { recursive: true, force: true }); }
  });
});

describe('persist: a session stays usable whatever its persisted files (real VMs)', function () {
  this.timeout(900_000);
  let roomy: QemuDriver;
  let tight: QemuDriver;
  let home: string;
  before(function () {
    skipWithoutVms(this);
    roomy = newDriver();
    tight = newDriver({ diskMiB: 32 });
  });
  after(async () => { await roomy?.close(); await tight?.close(); });
  beforeEach(() => { home = tempDir('persist-space-vm'); });
  afterEach(() => { rmSync(home, { recursive: true, force: true }); });

  it('a file that fills the VM is refused at commit; the next call runs and the previous state stays', async () => {
    const p = newPersistence(home, { limits: { maxBytes: 1024 * 1024 * 1024 } });
    const s = 'sesn_vm_fill';
    const first = await runCall(roomy, p, s, 'bash', { command: 'echo keep > keep.txt' });
    assert.deepEqual(first.report, { generation: 1, notes: [], changes: { added: ['/workspace/keep.txt'], changed: [], removed: [] } });
    const fill = await runCall(roomy, p, s, 'bash', { command: 'dd if=/dev/zero of=/workspace/fill bs=1M count=20000 2>&1 | head -1; ls -s --block-size=1M fill', timeout_ms: 120_000 });
    assert.match(fill.outcome.text, /No space left on device/);
    assert.equal(fill.report.generation, 1);
    assert.match(fill.report.notes.join('\n'), /^not persisted: the persisted paths would need 13\d MiB in a sandbox, more than a fresh one can hold \(112 MiB of its 128 MiB writable space;[^]*generation 1\) is kept\. Largest: "\/workspace\/fill"/);
    assertNoHostPath(modelText(fill), home);
    const next = await runCall(roomy, p, s, 'bash', { command: 'echo alive; ls' });
    assert.equal(next.outcome.isError, false, next.outcome.text);
    assert.equal(next.outcome.text.trim(), 'alive\nkeep.txt');
    assert.deepEqual(next.report.notes, []);
  });

  it('a generation a smaller VM cannot hold: what fits is placed, the call runs, the rest stays saved and can be dropped', async () => {
    const p = newPersistence(home, { limits: { maxBytes: 1024 * 1024 * 1024 } });
    const s = 'sesn_vm_tight';
    const made = await runCall(roomy, p, s, 'bash', {
      command: 'for i in 1 2 3 4 5; do head -c 7000000 /dev/urandom > s$i; done && head -c 40000000 /dev/urandom > big.bin && sha256sum s5 big.bin',
      timeout_ms: 120_000,
    });
    assert.deepEqual(made.report, { generation: 1, notes: [], changes: {
      added: ['big.bin', 's1', 's2', 's3', 's4', 's5'].map((f) => `/workspace/${f}`), changed: [], removed: [],
    } });

    const alive = await runCall(tight, p, s, 'bash', { command: 'echo alive; ls; df -B1M --output=avail /workspace | tail -1', timeout_ms: 120_000 });
    assert.equal(alive.outcome.isError, false, alive.outcome.text);
    const [said, ...rest] = alive.outcome.text.trim().split('\n');
    assert.equal(said, 'alive');
    assert.deepEqual(rest.slice(0, -1), ['s1', 's2', 's3', 's4'], 'the files that fit are placed; no parts or partial files are left');
    assert.ok(Number(rest.at(-1)) >= 4, `the call has room to work (${rest.at(-1)} MiB free)`);
    assert.equal(alive.report.notes.length, 1, alive.report.notes.join('\n'));
    assert.match(alive.report.notes[0]!, /^Saved files missing from this sandbox \(no space left on device: "\/workspace\/s5" \(6\.7 MiB\), "\/workspace\/big\.bin" \(38 MiB\)\)/);
    assertNoHostPath(modelText(alive), home);
    assert.equal(alive.report.generation, 1);

    const whole = await runCall(roomy, p, s, 'bash', { command: 'sha256sum s5 big.bin', timeout_ms: 120_000 });
    assert.equal(whole.outcome.text.trim(), made.outcome.text.trim(), 'nothing was lost while a smaller VM served the session');

    const replaced = await runCall(tight, p, s, 'bash', { command: ': > big.bin', timeout_ms: 120_000 });
    assert.equal(replaced.report.generation, 2);
    assert.deepEqual(replaced.report.changes, { added: [], changed: ['/workspace/big.bin'], removed: [] }, 'the files this VM lacked are not removed');
    await runCall(tight, p, s, 'bash', { command: 'rm big.bin', timeout_ms: 120_000 });
    const end = await runCall(roomy, p, s, 'bash', { command: 'ls', timeout_ms: 120_000 });
    assert.equal(end.outcome.text.trim(), 's1\ns2\ns3\ns4\ns5');
    assert.deepEqual(end.report.notes, []);
  });
});
