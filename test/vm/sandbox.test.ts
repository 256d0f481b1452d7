// Real QEMU microVMs restored from the template: guest operations, isolation between calls, fresh randomness per
// clone, no network device and no host credentials inside the guest.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { Sandbox } from '../../companion/sandbox/types';
import { GuestError } from '../../companion/guest/types';
import type { QemuDriver } from '../../companion/sandbox/qemu/driver';
import { newDriver, sh, skipWithoutVms, text } from './helpers';
import { INITIAL_SHELL, runTool } from '../../companion/tools/semantics';

describe('qemu sandbox (real VMs)', function () {
  let driver: QemuDriver;
  const opened: Sandbox[] = [];
  const acquire = async () => { const s = await driver.acquire({ sessionId: 'test' }); opened.push(s); return s; };

  before(function () { skipWithoutVms(this); driver = newDriver(); });
  afterEach(async () => { await Promise.all(opened.splice(0).map((s) => s.destroy())); });
  after(async () => { await driver?.close(); });

  it('runs a command with argv, cwd, env and stdin, and reports the exit code', async () => {
    const s = await acquire();
    const r = await s.exec({ argv: ['/bin/bash', '-c', 'pwd; echo "$GREETING"; cat; exit 3'], cwd: '/etc', env: { GREETING: 'hello', PATH: '/usr/bin:/bin' }, stdin: Buffer.from('from stdin\n'), timeoutMs: 20_000, maxOutputBytes: 4096 });
    assert.equal(r.exitCode, 3);
    assert.equal(r.timedOut, false);
    assert.equal(text(r), '/etc\nhello\nfrom stdin\n');
  });

  it('merges stdout and stderr and reports a missing program clearly', async () => {
    const s = await acquire();
    const r = await sh(s, 'echo out; echo err >&2');
    assert.equal(text(r), 'out\nerr\n');
    const missing = await s.exec({ argv: ['/no/such/program'], timeoutMs: 10_000, maxOutputBytes: 4096 });
    assert.equal(missing.exitCode, 127);
    assert.match(text(missing), /exec \/no\/such\/program: No such file or directory/);
  });

  it('serves native file operations: write/read ranges/stat/walk/putFiles/getFiles', async () => {
    const s = await acquire();
    await s.writeFile('/workspace/a/b/c.txt', Buffer.from('0123456789'), { mode: 0o640 });
    assert.deepEqual((await s.readFile('/workspace/a/b/c.txt', { offset: 2, length: 3 })).data.toString(), '234');
    const whole = await s.readFile('/workspace/a/b/c.txt');
    assert.equal(whole.size, 10);
    const st = await s.stat('/workspace/a/b/c.txt');
    assert.equal(st?.type, 'file');
    assert.equal(st?.mode, 0o640);
    assert.equal(await s.stat('/workspace/nope'), null);
    await assert.rejects(s.readFile('/workspace/a'), (e: unknown) => e instanceof GuestError && e.code === 'EISDIR');
    await assert.rejects(s.readFile('/workspace/missing'), (e: unknown) => e instanceof GuestError && e.code === 'ENOENT');

    await s.putFiles([
      { path: '/workspace/p/x.bin', data: Buffer.from([0, 1, 2, 255]), mode: 0o755, mtimeMs: 1_600_000_000_000 },
      { path: '/workspace/p/deep/y.txt', data: Buffer.from('y'), mode: 0o644 },
    ], ['/workspace/a']);
    await sh(s, 'ln -s /etc/passwd /workspace/p/link && mkdir -p /workspace/p/node_modules/z && touch /workspace/p/node_modules/z/f');
    const w = await s.walk('/workspace', { hash: true, maxEntries: 100, skipNames: ['node_modules'] });
    const byPath = new Map(w.entries.map((e) => [e.path, e]));
    assert.equal(w.truncated, false);
    assert.equal(byPath.has('/workspace/a'), false, 'deleted tree is gone');
    assert.equal(byPath.get('/workspace/p/x.bin')?.sha256, createHash('sha256').update(Buffer.from([0, 1, 2, 255])).digest('hex'));
    assert.equal(byPath.get('/workspace/p/x.bin')?.mode, 0o755);
    assert.equal(byPath.get('/workspace/p/x.bin')?.mtimeMs, 1_600_000_000_000);
    assert.equal(byPath.get('/workspace/p/link')?.type, 'symlink');
    assert.equal(byPath.get('/workspace/p/link')?.linkTarget, '/etc/passwd');
    assert.equal(byPath.get('/workspace/p/link')?.sha256, undefined, 'symlinks are never followed or hashed');
    assert.equal([...byPath.keys()].some((p) => p.includes('node_modules')), false);
    const limited = await s.walk('/workspace', { hash: false, maxEntries: 2 });
    assert.equal(limited.truncated, true);
    assert.equal(limited.entries.length, 2);

    const got = await s.getFiles(['/workspace/p/x.bin', '/workspace/p/deep/y.txt'], { maxTotalBytes: 1 << 20 });
    assert.deepEqual(got.map((g) => [g.path, g.data.toString('hex'), g.mode]), [['/workspace/p/x.bin', '000102ff', 0o755], ['/workspace/p/deep/y.txt', '79', 0o644]]);
    assert.equal(got[1]!.sha256, createHash('sha256').update('y').digest('hex'));
    await assert.rejects(s.getFiles(['/workspace/p/link'], { maxTotalBytes: 1 << 20 }), GuestError, 'a symlink is not a regular file');
    await assert.rejects(s.getFiles(['/workspace/p/x.bin'], { maxTotalBytes: 2 }), (e: unknown) => e instanceof GuestError && e.code === 'EFBIG');
  });

  it('moves a multi-megabyte file in and out intact (chunked frames)', async () => {
    const s = await acquire();
    const big = Buffer.alloc(3 * 1024 * 1024 + 17);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7919) & 0xff;
    await s.writeFile('/workspace/big.bin', big);
    const back = await s.readFile('/workspace/big.bin');
    assert.equal(back.data.length, big.length);
    assert.ok(back.data.equals(big));
    const r = await sh(s, 'sha256sum /workspace/big.bin | cut -d" " -f1');
    assert.equal(text(r).trim(), createHash('sha256').update(big).digest('hex'));
  });

  it('keeps nothing between calls: a file written in one sandbox is absent in the next', async () => {
    const first = await acquire();
    await sh(first, 'echo secret > /workspace/left-behind && echo x > /tmp/t && echo y > /root/r');
    await first.destroy();
    const second = await acquire();
    const r = await sh(second, 'ls /workspace/left-behind /tmp/t /root/r 2>&1; true');
    assert.match(text(r), /\/workspace\/left-behind'?: No such file or directory/);
    assert.match(text(r), /\/tmp\/t'?: No such file or directory/);
    assert.match(text(r), /\/root\/r'?: No such file or directory/);
  });

  it('runs a 200 KB bash tool command through the ready shell and through fork/exec alike', async () => {
    const s = await acquire();
    const command = `cat > /tmp/big.txt <<'EOF'\n${'x'.repeat(200_000)}\nEOF\nwc -c < /tmp/big.txt`;
    for (const way of ['ready shell', 'fork/exec (issued before the next ready shell is up)']) {
      const r = await runTool('bash', { command }, { sandbox: s, shell: INITIAL_SHELL, callTimeoutMs: 60_000 });
      assert.deepEqual([r.isError, r.text], [false, '200001'], way);
    }
  });

  it('gives two clones of one snapshot different random bytes', async () => {
    const [a, b] = await Promise.all([acquire(), acquire()]);
    // bash's $RANDOM too: the first command of a clone runs in the ready shell the snapshot holds
    const read = (s: Sandbox) => sh(s, 'echo "$RANDOM $RANDOM $RANDOM"; head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; python3 -c "import random; print(random.random())"');
    const [ra, rb] = await Promise.all([read(a), read(b)]);
    assert.equal(ra.exitCode, 0, text(ra));
    const [bashA, urandomA, pythonA] = text(ra).split('\n');
    const [bashB, urandomB, pythonB] = text(rb).split('\n');
    assert.notEqual(bashA, bashB, 'bash $RANDOM');
    assert.notEqual(urandomA, urandomB, '/dev/urandom');
    assert.notEqual(pythonA, pythonB, 'python random');
    assert.equal(urandomA!.length, 64);
  });

  it('has no network device, and no host credential reaches the guest', async () => {
    process.env.ANTHROPIC_API_KEY = 'sk-ant-test-never-in-guest-0123456789';
    try {
      const s = await acquire();
      const r = await sh(s, 'for n in /sys/class/net/*; do [ -e $n/device ] && echo "device: $n"; done; ls /sys/class/net | grep -qx lo && echo lo; echo ---; cat /proc/1/environ | tr "\\0" "\\n"; env; cat /proc/cmdline; echo ---; (exec 3<>/dev/tcp/1.1.1.1/80) 2>&1; true');
      const [nets, , connect] = text(r).split('---\n');
      assert.equal(nets!.trim(), 'lo', 'only the loopback interface, no device-backed NIC');
      assert.doesNotMatch(text(r), /sk-ant-|ANTHROPIC/);
      assert.match(connect!, /Network is unreachable/);
    } finally { delete process.env.ANTHROPIC_API_KEY; }
  });

  it('mounts the root image read-only with a size-capped writable layer', async () => {
    const s = await acquire();
    const r = await sh(s, 'grep -E " /lower | / " /proc/mounts; df -m / | tail -1');
    assert.match(text(r), /overlay \/ overlay/);
    const sizeMiB = Number(text(r).trim().split('\n').pop()!.split(/\s+/)[1]);
    assert.ok(sizeMiB > 0 && sizeMiB <= 256, `writable layer is capped (got ${sizeMiB} MiB)`);
  });
});
