// The real C agent (dist/guest/perimeter-agent, built by `npm run build`) driven over a socket on the host, outside
// any VM (PERIMETER_AGENT_FD test mode; PID != 1, so no mounts and no cgroup): protocol conformance of every op.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, symlinkSync, statSync } from 'node:fs';
import path from 'node:path';
import type { GuestClient } from '../../companion/guest/client';
import { startHostAgent, type HostAgent } from './host-agent';
import { GuestError } from '../../companion/guest/types';


describe('guest agent binary (host test mode)', function () {
  let agent: HostAgent;
  let client: GuestClient;
  let dir: string;

  before(async function () {
    agent = await startHostAgent(this);
    ({ client, dir } = agent);
    assert.match(agent.hello, /^perimeter-agent 1 /);
  });
  after(() => agent?.close());

  it('answers ping', async () => { await client.ping(); });

  it('writes atomically with parents and modes, reads ranges, stats with lstat', async () => {
    const f = path.join(dir, 'w/x/y.txt');
    await client.writeFile(f, Buffer.from('abcdef'), { mode: 0o600 });
    assert.equal(readFileSync(f, 'utf8'), 'abcdef');
    assert.equal(statSync(f).mode & 0o777, 0o600);
    await client.writeFile(f, Buffer.from('XY'));
    assert.equal(statSync(f).mode & 0o777, 0o600, 'an overwrite keeps the existing mode');
    assert.deepEqual((await client.readFile(f, { offset: 1, length: 1 })).data.toString(), 'Y');
    symlinkSync('/etc/passwd', path.join(dir, 'lnk'));
    assert.equal((await client.stat(path.join(dir, 'lnk')))?.type, 'symlink');
    await assert.rejects(client.writeFile(path.join(dir, 'w'), Buffer.from('')), (e: unknown) => e instanceof GuestError && e.code === 'EISDIR');
    await assert.rejects(client.readFile('relative'), (e: unknown) => e instanceof GuestError && e.code === 'EINVAL');
  });

  it('walks with hashes without following symlinks, and honours skipNames and maxEntries', async () => {
    await client.putFiles([{ path: path.join(dir, 'walk/a.txt'), data: Buffer.from('a'), mode: 0o644 }, { path: path.join(dir, 'walk/.git/HEAD'), data: Buffer.from('h'), mode: 0o644 }], []);
    symlinkSync('/', path.join(dir, 'walk/root-link'));
    const w = await client.walk(path.join(dir, 'walk'), { hash: true, maxEntries: 10, skipNames: ['.git'] });
    const names = w.entries.map((e) => path.basename(e.path)).sort();
    assert.deepEqual(names, ['a.txt', 'root-link']);
    assert.equal(w.entries.find((e) => e.path.endsWith('a.txt'))?.sha256, createHash('sha256').update('a').digest('hex'));
  });

  it('runs commands with env, stdin and a cap that keeps head and tail', async () => {
    const r = await client.exec({ argv: ['/bin/sh', '-c', 'echo "$X"; cat; seq 1 20000'], env: { X: 'x-value' }, stdin: Buffer.from('in\n'), cwd: dir, timeoutMs: 10_000, maxOutputBytes: 1000 });
    const out = r.output.toString();
    assert.equal(r.exitCode, 0);
    assert.ok(out.startsWith('x-value\nin\n1\n2\n'));
    assert.ok(out.endsWith('19999\n20000\n'));
    assert.equal(r.output.length, 1000);
    assert.equal(r.output.length + r.droppedBytes, 'x-value\nin\n'.length + Array.from({ length: 20000 }, (_, i) => `${i + 1}\n`).join('').length);
  });

  it('says where it dropped output and how many newlines it dropped, so the host can cut on whole lines', async () => {
    const all = Array.from({ length: 20000 }, (_, i) => `${i + 1}\n`).join('');
    for (const cap of [1000, 1001, 65_537]) {
      const r = await client.exec({ argv: ['seq', '1', '20000'], cwd: dir, timeoutMs: 10_000, maxOutputBytes: cap });
      const out = r.output.toString();
      assert.equal(r.output.length, cap);
      assert.ok(all.startsWith(out.slice(0, r.droppedAt)), 'the head is the start of the output');
      assert.ok(all.endsWith(out.slice(r.droppedAt)), 'the tail is its end');
      const dropped = all.slice(r.droppedAt, all.length - (cap - r.droppedAt));
      assert.equal(r.droppedBytes, dropped.length);
      assert.equal(r.droppedNewlines, dropped.split('\n').length - 1);
    }
    const small = await client.exec({ argv: ['seq', '1', '3'], cwd: dir, timeoutMs: 10_000, maxOutputBytes: 1000 });
    assert.deepEqual([small.droppedBytes, small.droppedAt, small.droppedNewlines], [0, 6, 0]);
  });

  it('looks a bare program name up in the request\'s PATH, not its own', async () => {
    const missing = await client.exec({ argv: ['seq', '1', '2'], env: { PATH: '/nonexistent' }, cwd: dir, timeoutMs: 10_000, maxOutputBytes: 1000 });
    assert.equal(missing.exitCode, 127);
    assert.match(missing.output.toString(), /exec seq: No such file or directory/);
    const found = await client.exec({ argv: ['seq', '1', '2'], env: { PATH: '/nonexistent:/usr/bin:/bin' }, cwd: dir, timeoutMs: 10_000, maxOutputBytes: 1000 });
    assert.deepEqual([found.exitCode, found.output.toString()], [0, '1\n2\n']);
  });

  it('kills a command at its timeout and reports timedOut', async () => {
    const r = await client.exec({ argv: ['/bin/sh', '-c', 'echo before; sleep 30'], timeoutMs: 300, maxOutputBytes: 1000 });
    assert.equal(r.timedOut, true);
    assert.equal(r.output.toString(), 'before\n');
  });

  it('kills the running command on request (K frame)', async () => {
    let sawOutput!: () => void;
    const started = new Promise<void>((r) => { sawOutput = r; });
    const running = client.exec({ argv: ['/bin/sh', '-c', 'echo started; sleep 30'], timeoutMs: 20_000, maxOutputBytes: 1000 }, () => sawOutput());
    await started;
    await client.killExec();
    const r = await running;
    assert.equal(r.timedOut, true);
    assert.equal(r.output.toString(), 'started\n');
  });

  it('rejects a second concurrent exec with EBUSY', async () => {
    const first = client.exec({ argv: ['/bin/sh', '-c', 'sleep 0.3'], timeoutMs: 5000, maxOutputBytes: 100 });
    await assert.rejects(client.exec({ argv: ['/bin/true'], timeoutMs: 5000, maxOutputBytes: 100 }), (e: unknown) => e instanceof GuestError && e.code === 'EBUSY');
    assert.equal((await first).exitCode, 0);
  });

  it('getFiles refuses non-regular files and budgets bytes', async () => {
    await assert.rejects(client.getFiles([dir], { maxTotalBytes: 100 }), GuestError);
    const f = path.join(dir, 'w/x/y.txt');
    const [got] = await client.getFiles([f], { maxTotalBytes: 100 });
    assert.equal(got!.data.toString(), 'XY');
    await assert.rejects(client.getFiles([f], { maxTotalBytes: 1 }), (e: unknown) => e instanceof GuestError && e.code === 'EFBIG');
  });
});
