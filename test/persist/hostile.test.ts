// A hostile guest against copy-out (security-and-reliability.md §4, §8.3): every trick is refused or contained
// with a clear note, the store holds only validated data, and host files outside the store are untouched.
// Part 1 plants the tricks for real in the sandbox (symlinks to host paths, FIFO, socket, bad names, a 10 GB
// sparse file, 100 000 files, setuid, hardlinks). Part 2 simulates a compromised guest agent that lies in its
// walk and getFiles answers — the only way to test lies a real agent would not tell.
import assert from 'node:assert/strict';
import { lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { PerimeterError } from '../../companion/errors';
import type { Sandbox } from '../../companion/sandbox/types';
import type { GotFile, GuestEntry } from '../../companion/guest/types';
import { sha256 } from '../../companion/persist/store';
import { fingerprint, newPersistence, processDriver, runCall, tempDir } from './helpers';

/** Every path in the store is a real directory or a regular file (no symlink, FIFO or device ever lands there). */
function assertStoreClean(home: string): void {
  const visit = (p: string): void => {
    const st = lstatSync(p);
    assert.ok(st.isDirectory() || st.isFile(), `${p} is neither a directory nor a regular file`);
    if (st.isDirectory()) for (const n of readdirSync(p)) visit(path.join(p, n));
  };
  visit(path.join(home, 'sessions'));
}

function storeContains(home: string, needle: Buffer): boolean {
  const blobs = path.join(home, 'sessions');
  const visit = (p: string): boolean => {
    const st = lstatSync(p);
    if (st.isDirectory()) return readdirSync(p).some((n) => visit(path.join(p, n)));
    return st.isFile() && readFileSync(p).includes(needle);
  };
  return visit(blobs);
}

describe('persist: hostile guest, real tricks in the sandbox', function () {
  let home: string;
  let canary: string;
  let canaryPrint: string;
  let sbx: ReturnType<typeof processDriver>;
  beforeEach(() => {
    home = tempDir('persist-hostile');
    canary = tempDir('persist-canary');
    writeFileSync(path.join(canary, 'secret.txt'), 'CANARY-SECRET-CONTENT');
    canaryPrint = fingerprint(canary);
    sbx = processDriver();
  });
  afterEach(async () => {
    assert.equal(fingerprint(canary), canaryPrint, 'the host canary directory was touched');
    assertStoreClean(home);
    await sbx.dispose();
    rmSync(home, { recursive: true, force: true });
    rmSync(canary, { recursive: true, force: true });
  });

  it('symlinks to /etc/shadow, /, and a host directory are stored as data and recreated only inside the next sandbox', async () => {
    const p = newPersistence(home);
    const s = 'sesn_links';
    const r = await runCall(sbx.driver, p, s, 'bash', { command: `ln -s /etc/shadow shadow && ln -s / root && ln -s ${canary} hostdir && ln -s ${canary}/secret.txt secret && echo ok > plain` });
    assert.equal(r.outcome.isError, false, r.outcome.text);
    assert.deepEqual(r.report.notes, []);
    assert.equal(storeContains(home, Buffer.from('CANARY-SECRET-CONTENT')), false, 'a symlink was followed on the host');
    const next = await runCall(sbx.driver, p, s, 'bash', { command: 'for l in shadow root hostdir secret; do printf "%s -> %s\\n" "$l" "$(readlink $l)"; done; test -L hostdir && echo still-a-link' });
    assert.equal(next.outcome.text.trim(), [`shadow -> /etc/shadow`, 'root -> /', `hostdir -> ${canary}`, `secret -> ${canary}/secret.txt`, 'still-a-link'].join('\n'));
  });

  it('FIFOs and sockets are refused with a note; regular files beside them persist', async () => {
    const p = newPersistence(home);
    const r = await runCall(sbx.driver, p, 'sesn_fifo', 'bash', { command: 'mkfifo pipe && python3 -c "import socket; socket.socket(socket.AF_UNIX).bind(\'sock\')" && echo fine > ok.txt' });
    assert.equal(r.outcome.isError, false, r.outcome.text);
    const note = r.report.notes.join('\n');
    assert.match(note, /Not persisted \(refused\): not a regular file, directory or symlink \(device, socket or FIFO\): .*"\/workspace\/pipe"/);
    assert.match(note, /"\/workspace\/sock"/);
    assert.deepEqual((await p.state('sesn_fifo')).files.map((f) => f.path), ['/workspace/ok.txt']);
  });

  it('names with newlines, invalid UTF-8 or direction overrides are refused with a note', async () => {
    const p = newPersistence(home);
    const r = await runCall(sbx.driver, p, 'sesn_names', 'bash', { command: `touch $'bad\\nname' $'\\xff\\xfe.txt' $'\\u202etxt.exe' good.txt && mkdir $'dir\\nx' && touch $'dir\\nx/inner'` });
    assert.equal(r.outcome.isError, false, r.outcome.text);
    const note = r.report.notes.join('\n');
    assert.match(note, /control or direction character U\+000A: .*"\/workspace\/bad\\nname"/);
    assert.match(note, /U\+202E/);
    // The invalid UTF-8 name never becomes a persisted file (its note is checked with a guest agent below: the
    // process driver itself cannot represent such a name and skips it).
    assert.deepEqual((await p.state('sesn_names')).files.map((f) => f.path), ['/workspace/good.txt']);
  });

  it('a 10 GB sparse file exceeds the quota before anything is hashed or copied; the previous generation stays', async () => {
    const p = newPersistence(home);
    const s = 'sesn_sparse';
    await runCall(sbx.driver, p, s, 'write', { file_path: '/workspace/keep.txt', content: 'keep' });
    const r = await runCall(sbx.driver, p, s, 'bash', { command: 'truncate -s 10G huge.img && echo changed > keep.txt' });
    assert.equal(r.report.generation, 1);
    assert.match(r.report.notes.join('\n'), /persist quota exceeded: the persisted paths hold 10 GiB \(limit 64 MiB\); nothing from this call was persisted and the previous state is kept\. Largest: "\/workspace\/huge\.img" \(10 GiB\)/);
    const read = await runCall(sbx.driver, p, s, 'read', { file_path: '/workspace/keep.txt' });
    assert.match(read.outcome.text, /keep/);
  });

  it('100 000 tiny files exceed the file quota with a clear message; nothing partial is committed', async () => {
    const p = newPersistence(home);
    const r = await runCall(sbx.driver, p, 'sesn_many', 'bash', { command: 'mkdir many && cd many && seq 1 100000 | xargs touch && ls | wc -l', timeout_ms: 120000 });
    assert.equal(r.outcome.text.trim(), '100000');
    assert.equal(r.report.generation, 0);
    assert.match(r.report.notes.join('\n'), /persist quota exceeded: more than 20000 files and directories under the persisted paths; nothing from this call was persisted/);
    assert.deepEqual(readdirSync(path.join(home, 'sessions', 'sesn_many', 'gens')), []);
  });

  it('case and Unicode-normalisation twins (F11) stay distinct files, never merged', async () => {
    const p = newPersistence(home);
    const s = 'sesn_twins';
    const nfc = 'caf\u00e9';
    const nfd = 'cafe\u0301';
    const r = await runCall(sbx.driver, p, s, 'bash', { command: `mkdir -p Keep keep && echo upper > Keep/A && echo lower > keep/a && echo nfc > $'${nfc}' && echo nfd > $'${nfd}'` });
    assert.equal(r.outcome.isError, false, r.outcome.text);
    assert.deepEqual((await p.state(s)).files.map((f) => f.path).sort(), ['/workspace/Keep/A', `/workspace/${nfc}`, `/workspace/${nfd}`, '/workspace/keep/a'].sort());
    const next = await runCall(sbx.driver, p, s, 'bash', { command: `cat Keep/A keep/a $'${nfc}' $'${nfd}'` });
    assert.equal(next.outcome.text.trim(), 'upper\nlower\nnfc\nnfd');
  });

  it('setuid bits are stripped (0755/0644) and a hardlink to a host file becomes an independent copy', async () => {
    const p = newPersistence(home);
    const s = 'sesn_modes';
    const hostFile = path.join(canary, 'secret.txt');
    const r = await runCall(sbx.driver, p, s, 'bash', { command: `echo x > suid && chmod 4777 suid && echo y > private && chmod 600 private && (ln ${hostFile} hard 2>/dev/null || cp ${hostFile} hard)` });
    assert.equal(r.outcome.isError, false, r.outcome.text);
    const modes = Object.fromEntries((await p.state(s)).files.map((f) => [path.basename(f.path), f.mode]));
    assert.deepEqual(modes, { suid: 0o755, private: 0o644, hard: 0o644 });
    const next = await runCall(sbx.driver, p, s, 'bash', { command: 'stat -c "%n %a %h" suid private hard && echo changed > hard' });
    assert.equal(next.outcome.text.trim(), 'suid 755 1\nprivate 644 1\nhard 644 1');
  });
});

/** A compromised guest agent: a real sandbox whose walk/getFiles answers are rewritten by `lie`. */
function lyingSandbox(sb: Sandbox, lie: { walk?: (root: string, real: GuestEntry[], hash: boolean) => GuestEntry[]; getFiles?: (real: GotFile[], paths: string[]) => GotFile[] | Promise<GotFile[]> }): Sandbox {
  return new Proxy(sb, {
    get(target, prop, receiver) {
      if (prop === 'walk' && lie.walk) {
        return async (root: string, opts: { hash: boolean; maxEntries: number }) => {
          const real = await target.walk(root, opts);
          return { entries: lie.walk!(root, real.entries, opts.hash), truncated: real.truncated };
        };
      }
      if (prop === 'getFiles' && lie.getFiles) {
        return async (paths: string[], opts: { maxTotalBytes: number }) => {
          const real = await target.getFiles(paths.filter((p) => !p.includes('..') && p.startsWith('/workspace/')), opts).catch(() => [] as GotFile[]);
          return lie.getFiles!(real, paths);
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

describe('persist: hostile guest agent (lying walk and getFiles answers)', function () {
  let home: string;
  let sbx: ReturnType<typeof processDriver>;
  const s = 'sesn_liar';
  beforeEach(() => { home = tempDir('persist-liar'); sbx = processDriver(); });
  afterEach(async () => { assertStoreClean(home); await sbx.dispose(); rmSync(home, { recursive: true, force: true }); });

  async function withSandbox<T>(fn: (sb: Sandbox) => Promise<T>): Promise<T> {
    const sb = await sbx.driver.acquire({ sessionId: s });
    try { return await fn(sb); } finally { await sb.destroy(); }
  }
  const file = (p: string, data: string, hash = sha256(Buffer.from(data))): GuestEntry => ({ path: p, type: 'file', size: Buffer.byteLength(data), mode: 0o644, mtimeMs: 1, sha256: hash });

  it('traversal, absolute escapes, empty segments and NUL in walk entries are refused with notes', async () => {
    const p = newPersistence(home);
    const report = await withSandbox(async (real) => {
      await p.prepare(s, real);
      await real.writeFile('/workspace/real.txt', Buffer.from('real'));
      const sb = lyingSandbox(real, {
        walk: (_root, entries) => [...entries,
          file('/workspace/../../etc/passwd', 'x'), file('/etc/shadow', 'x'), file('/workspace/a/../../b', 'x'),
          file('/workspace//b', 'x'), file('/workspace/a\0b', 'x'), file(`/workspace/${'n'.repeat(300)}`, 'x'),
          file('/workspace/\ufffd\ufffd.txt', 'x'), file('/workspace/\ud800.txt', 'x'),
          file('/workspace/real.txt', 'real')],
      });
      return p.commit(s, sb, null);
    });
    const note = report.notes.join('\n');
    assert.match(note, /path has a "\.\." segment: "\/workspace\/\.\.\/\.\.\/etc\/passwd", "\/workspace\/a\/\.\.\/\.\.\/b"/);
    assert.match(note, /outside the walked directory \/workspace: "\/etc\/shadow"/);
    assert.match(note, /empty segment/);
    assert.match(note, /U\+0000/);
    assert.match(note, /longer than 255 bytes/);
    assert.match(note, /name is not valid UTF-8: "\/workspace\/\ufffd\ufffd\.txt", "\/workspace\/\\ud800\.txt"/);
    assert.match(note, /listed twice by the guest: "\/workspace\/real\.txt"/);
    assert.deepEqual((await p.state(s)).files.map((f) => f.path), ['/workspace/real.txt']);
  });

  it('a file below a symlinked directory (F3) is refused: its parent is not a directory', async () => {
    const p = newPersistence(home);
    const report = await withSandbox(async (real) => {
      await p.prepare(s, real);
      const sb = lyingSandbox(real, {
        walk: (_root, entries) => [...entries, { path: '/workspace/dir', type: 'symlink', size: 4, mode: 0o777, mtimeMs: 1, linkTarget: '/etc' }, file('/workspace/dir/f', 'x')],
      });
      return p.commit(s, sb, null);
    });
    assert.match(report.notes.join('\n'), /its parent is not a directory: "\/workspace\/dir\/f"/);
    assert.deepEqual((await p.state(s)).files, []);
  });

  it('a file that changes during copy-out keeps its previous version; a lying hash or unrequested file is refused', async () => {
    const p = newPersistence(home);
    await withSandbox(async (sb) => { await p.prepare(s, sb); await sb.writeFile('/workspace/racy.txt', Buffer.from('v1')); await p.commit(s, sb, null); });
    const report = await withSandbox(async (real) => {
      await p.prepare(s, real);
      await real.writeFile('/workspace/racy.txt', Buffer.from('v2'));
      await real.writeFile('/workspace/liar.txt', Buffer.from('truth'));
      const sb = lyingSandbox(real, {
        getFiles: (got) => [
          ...got.map((f) => {
            if (f.path === '/workspace/racy.txt') return { ...f, data: Buffer.from('v3'), sha256: sha256(Buffer.from('v3')) };
            if (f.path === '/workspace/liar.txt') return { ...f, data: Buffer.from('lies!'), sha256: f.sha256 };
            return f;
          }),
          { path: '/etc/passwd', data: Buffer.from('root:x:0:0'), mode: 0o644, sha256: sha256(Buffer.from('root:x:0:0')) },
        ],
      });
      return p.commit(s, sb, null);
    });
    const note = report.notes.join('\n');
    assert.match(note, /changed while being copied out: "\/workspace\/racy\.txt"/);
    assert.match(note, /the guest reported a hash that does not match the data: "\/workspace\/liar\.txt"/);
    assert.match(note, /sent by the guest without being asked for: "\/etc\/passwd"/);
    const files = (await p.state(s)).files;
    assert.deepEqual(files.map((f) => [f.path, f.sha256]), [['/workspace/racy.txt', sha256(Buffer.from('v1'))]]);
    assert.equal(storeContains(home, Buffer.from('root:x:0:0')), false);
  });

  it('more data than the walk announced is refused', async () => {
    const p = newPersistence(home);
    const report = await withSandbox(async (real) => {
      await p.prepare(s, real);
      await real.writeFile('/workspace/small.txt', Buffer.from('tiny'));
      const big = Buffer.alloc(10 * 1024 * 1024, 1);
      const sb = lyingSandbox(real, { getFiles: (got) => got.map((f) => ({ ...f, data: big, sha256: sha256(big) })) });
      return p.commit(s, sb, null);
    });
    assert.match(report.notes.join('\n'), /more data than the walk announced: "\/workspace\/small\.txt"/);
    assert.equal(report.generation, 1, 'the directory entry itself still commits');
    assert.deepEqual((await p.state(s)).files, []);
  });

  it('a VM that dies during copy-out or answers garbage rejects the commit; the previous generation stays intact', async () => {
    const p = newPersistence(home);
    await withSandbox(async (sb) => { await p.prepare(s, sb); await sb.writeFile('/workspace/a.txt', Buffer.from('gen1')); await p.commit(s, sb, null); });
    for (const broken of [
      (real: Sandbox) => lyingSandbox(real, { getFiles: () => { throw new Error('guest connection reset'); } }),
      (real: Sandbox) => lyingSandbox(real, { walk: () => 'garbage' as unknown as GuestEntry[] }),
    ]) {
      await withSandbox(async (real) => {
        await p.prepare(s, real);
        await real.writeFile('/workspace/a.txt', Buffer.from('gen2'));
        await assert.rejects(p.commit(s, broken(real), null), (err: unknown) => err instanceof PerimeterError && err.kind === 'transient' && /previous state is kept/.test(err.message));
      });
      const st = await p.state(s);
      assert.equal(st.generation, 1);
      assert.equal(st.files[0]?.sha256, sha256(Buffer.from('gen1')));
      assert.deepEqual(readdirSync(path.join(home, 'sessions', s, 'staging')), []);
    }
  });

  it('copy-in writes only through the sandbox: a crafted store path never reaches the host', async () => {
    // Defence in depth: even a manifest entry that somehow held `..` would be placed by the guest agent, not the host.
    const p = newPersistence(home);
    mkdirSync(path.join(home, 'outside'), { recursive: true });
    const before = fingerprint(path.join(home, 'outside'));
    await withSandbox(async (sb) => { await p.prepare(s, sb); await sb.writeFile('/workspace/x', Buffer.from('x')); await p.commit(s, sb, null); });
    await withSandbox(async (sb) => { await p.prepare(s, sb); });
    assert.equal(fingerprint(path.join(home, 'outside')), before);
  });
});
