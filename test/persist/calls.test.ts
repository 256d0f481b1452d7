// Persisted files across real tool calls (the real tools, a fresh sandbox per call, the real store on disk):
// write → read → bash change → delete; cd/export continuity; user patterns and globs; quotas; concurrent calls;
// persist.changed events. Runs against the development `process` driver (test/persist/vm.test.ts repeats the core
// round trip in real QEMU VMs).
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { EventHub } from '../../companion/events';
import type { ControlEvent } from '../../companion/protocol/control';
import type { Sandbox } from '../../companion/sandbox/types';
import { newPersistence, processDriver, runCall, tempDir } from './helpers';

describe('persist: tool calls with the process driver', function () {
  let home: string;
  let sbx: ReturnType<typeof processDriver>;
  beforeEach(() => { home = tempDir('persist-home'); sbx = processDriver(); });
  afterEach(async () => { await sbx.dispose(); rmSync(home, { recursive: true, force: true }); });

  it('a file written in call 1 is read in call 2, changed by bash in call 3, and its deletion persists', async () => {
    const p = newPersistence(home);
    const s = 'sesn_roundtrip';
    const w = await runCall(sbx.driver, p, s, 'write', { file_path: '/workspace/notes/todo.txt', content: 'first line\n' });
    assert.equal(w.outcome.isError, false, w.outcome.text);
    assert.equal(w.report.generation, 1);
    assert.deepEqual(w.report.notes, []);

    const r = await runCall(sbx.driver, p, s, 'read', { file_path: '/workspace/notes/todo.txt' });
    assert.equal(r.outcome.isError, false, r.outcome.text);
    assert.match(r.outcome.text, /first line/);

    const b = await runCall(sbx.driver, p, s, 'bash', { command: 'echo "second line" >> notes/todo.txt && wc -l < notes/todo.txt' });
    assert.equal(b.outcome.isError, false, b.outcome.text);
    assert.equal(b.outcome.text.trim(), '2');

    const r2 = await runCall(sbx.driver, p, s, 'read', { file_path: '/workspace/notes/todo.txt' });
    assert.match(r2.outcome.text, /first line[\s\S]*second line/);

    const del = await runCall(sbx.driver, p, s, 'bash', { command: 'rm notes/todo.txt' });
    assert.equal(del.outcome.isError, false, del.outcome.text);
    const gone = await runCall(sbx.driver, p, s, 'read', { file_path: '/workspace/notes/todo.txt' });
    assert.equal(gone.outcome.isError, true);
    assert.match(gone.outcome.text, /no such file/i);
    const state = await p.state(s);
    assert.deepEqual(state.files, []);
  });

  it('cd and export carry over to the next bash call; secrets do not, and the model is told', async () => {
    const p = newPersistence(home);
    const s = 'sesn_shell';
    const first = await runCall(sbx.driver, p, s, 'bash', { command: 'mkdir -p /tmp/x && mkdir -p proj/src && cd proj/src && export GREETING="hello there" && export API_TOKEN=abc123' });
    assert.equal(first.outcome.isError, false, first.outcome.text);
    assert.ok(first.report.notes.some((n) => n.includes('API_TOKEN (looks like a secret)')), first.report.notes.join('\n'));
    const second = await runCall(sbx.driver, p, s, 'bash', { command: 'echo "${PWD#"${PERIMETER_GUEST_PREFIX:-}"}|$GREETING|${API_TOKEN:-unset}"' });
    assert.equal(second.shellBefore.cwd, '/workspace/proj/src');
    assert.equal(second.outcome.text.trim(), '/workspace/proj/src|hello there|unset');
  });

  it('user patterns: a pip cache glob persists; removing the pattern stops carrying it; outside files never persist', async () => {
    const p = newPersistence(home);
    const s = 'sesn_patterns';
    await p.setPatterns(s, ['/workspace', '/root/.cache/pip/**']);
    await runCall(sbx.driver, p, s, 'bash', { command: 'P="${PERIMETER_GUEST_PREFIX:-}"; mkdir -p "$P/root/.cache/pip/wheels" "$P/root/other" && echo whl > "$P/root/.cache/pip/wheels/a.whl" && echo no > "$P/root/other/b"' });
    const state = await p.state(s);
    assert.deepEqual(state.files.map((f) => f.path), ['/root/.cache/pip/wheels/a.whl']);
    const check = await runCall(sbx.driver, p, s, 'bash', { command: 'P="${PERIMETER_GUEST_PREFIX:-}"; cat "$P/root/.cache/pip/wheels/a.whl"; ls "$P/root/other" 2>&1 | head -1' });
    assert.match(check.outcome.text, /^whl\n.*No such file/s);
    await p.setPatterns(s, ['/workspace']);
    const after = await runCall(sbx.driver, p, s, 'bash', { command: 'P="${PERIMETER_GUEST_PREFIX:-}"; test -e "$P/root/.cache/pip/wheels/a.whl" && echo present || echo absent' });
    assert.equal(after.outcome.text.trim(), 'absent');
  });

  it('a glob persists only matching files; directories and symlinks are recreated in the next sandbox', async () => {
    const p = newPersistence(home);
    const s = 'sesn_glob';
    await p.setPatterns(s, ['/workspace/**/*.py', '/workspace/keep']);
    await runCall(sbx.driver, p, s, 'bash', { command: 'mkdir -p pkg/sub keep/empty && echo a > pkg/sub/a.py && echo b > pkg/b.txt && echo c > keep/c && ln -s ../pkg/sub/a.py keep/link' });
    const check = await runCall(sbx.driver, p, s, 'bash', { command: 'find . \\( -type f -o -type l -o -type d \\) | sort; readlink keep/link; cat keep/link' });
    assert.equal(check.outcome.text.trim(), ['.', './keep', './keep/c', './keep/empty', './keep/link', './pkg', './pkg/sub', './pkg/sub/a.py', '../pkg/sub/a.py', 'a'].join('\n'));
  });

  it('a file larger than one agent message (40 MB) is copied out in ranges and reassembled byte-identical', async () => {
    const p = newPersistence(home);
    const s = 'sesn_large';
    const first = await runCall(sbx.driver, p, s, 'bash', { command: 'head -c 40000000 /dev/urandom > big.bin && chmod 755 big.bin && sha256sum big.bin | cut -c1-64' });
    assert.deepEqual(first.report.notes, []);
    const stored = (await p.state(s)).files.find((f) => f.path === '/workspace/big.bin');
    assert.equal(stored?.sha256, first.outcome.text.trim());
    const next = await runCall(sbx.driver, p, s, 'bash', { command: 'sha256sum big.bin | cut -c1-64; stat -c %a big.bin; ls -A | grep -c perimeter || true' });
    assert.equal(next.outcome.text.trim(), `${first.outcome.text.trim()}\n755\n0`);
  });

  it('changeDetection "mtime": only changed files are read from the guest; a same-size edit is still detected', async () => {
    const p = newPersistence(home, { limits: { changeDetection: 'mtime' } });
    const s = 'sesn_mtime';
    await runCall(sbx.driver, p, s, 'bash', { command: 'mkdir -p src && for i in $(seq 1 50); do echo "file $i" > src/f$i.txt; done' });
    const fetched: string[] = [];
    const spy = (sb: Sandbox): Sandbox => new Proxy(sb, {
      get(target, prop, receiver) {
        if (prop === 'getFiles') return async (paths: string[], o: { maxTotalBytes: number }) => { fetched.push(...paths); return target.getFiles(paths, o); };
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const sb = spy(await sbx.driver.acquire({ sessionId: s }));
    try {
      await p.prepare(s, sb);
      await new Promise((r) => setTimeout(r, 5));
      await sb.exec({ argv: ['/bin/bash', '-c', 'cd "$PERIMETER_GUEST_PREFIX/workspace/src" && echo "FILE 7" > f7.txt'], timeoutMs: 10_000, maxOutputBytes: 1000 });
      const report = await p.commit(s, sb, null);
      assert.equal(report.generation, 2);
    } finally { await sb.destroy(); }
    assert.deepEqual(fetched, ['/workspace/src/f7.txt']);
    const read = await runCall(sbx.driver, p, s, 'read', { file_path: '/workspace/src/f7.txt' });
    assert.match(read.outcome.text, /FILE 7/);
  });

  it('quota: an over-quota call commits nothing, says so, and the previous generation stays', async () => {
    const p = newPersistence(home, { limits: { maxBytes: 1024 * 1024, maxFiles: 50 } });
    const s = 'sesn_quota';
    const ok = await runCall(sbx.driver, p, s, 'write', { file_path: '/workspace/small.txt', content: 'small' });
    assert.equal(ok.report.generation, 1);
    const big = await runCall(sbx.driver, p, s, 'bash', { command: 'head -c 2000000 /dev/zero > big.bin && echo changed > small.txt' });
    assert.equal(big.report.generation, 1);
    assert.ok(big.report.notes.some((n) => /persist quota exceeded: .*1\.9 MiB \(limit 1\.0 MiB\).*Largest: "\/workspace\/big\.bin"/.test(n)), big.report.notes.join('\n'));
    const many = await runCall(sbx.driver, p, s, 'bash', { command: 'for i in $(seq 1 60); do echo $i > f$i; done' });
    assert.equal(many.report.generation, 1);
    assert.ok(many.report.notes.some((n) => /persist quota exceeded/.test(n) && /files and directories/.test(n)), many.report.notes.join('\n'));
    const read = await runCall(sbx.driver, p, s, 'read', { file_path: '/workspace/small.txt' });
    assert.match(read.outcome.text, /small/);
    assert.doesNotMatch(read.outcome.text, /changed/);
  });

  it('unchanged calls create no generation; persist.changed is published after commits and pattern changes', async () => {
    const hub = new EventHub();
    const events: ControlEvent[] = [];
    hub.subscribe((e) => events.push(e));
    const p = newPersistence(home, { hub });
    const s = 'sesn_events';
    await runCall(sbx.driver, p, s, 'write', { file_path: '/workspace/a', content: 'a' });
    const read = await runCall(sbx.driver, p, s, 'read', { file_path: '/workspace/a' });
    assert.equal(read.report.generation, 1, 'a read-only call commits no new generation');
    await p.setPatterns(s, ['/workspace', '/srv/data']);
    const kinds = events.filter((e) => e.type === 'persist.changed').map((e) => e.type === 'persist.changed' && [e.persist.generation, e.persist.patterns.join(',')]);
    assert.deepEqual(kinds, [[1, '/workspace'], [1, '/workspace,/srv/data']]);
    await assert.rejects(p.setPatterns(s, ['../etc']), /not absolute/);
  });

  it('concurrent calls of one session merge: neither call loses the other one\'s file', async () => {
    const p = newPersistence(home);
    const s = 'sesn_concurrent';
    await runCall(sbx.driver, p, s, 'write', { file_path: '/workspace/base', content: 'base' });
    const a = await sbx.driver.acquire({ sessionId: s });
    const b = await sbx.driver.acquire({ sessionId: s });
    await p.prepare(s, a);
    await p.prepare(s, b);
    await a.writeFile('/workspace/from-a', Buffer.from('a'));
    await b.writeFile('/workspace/from-b', Buffer.from('b'));
    await p.commit(s, a, null);
    await p.commit(s, b, null);
    await a.destroy(); await b.destroy();
    assert.deepEqual((await p.state(s)).files.map((f) => f.path), ['/workspace/base', '/workspace/from-a', '/workspace/from-b']);
  });

  it('a metadata-only change whose blob a concurrent commit pruned is re-fetched, never left dangling', async () => {
    const p = newPersistence(home, { limits: { keepGenerations: 1 } });
    const s = 'sesn_prune_race';
    await runCall(sbx.driver, p, s, 'write', { file_path: '/workspace/tool.sh', content: 'echo hi\n' });
    const slow = await sbx.driver.acquire({ sessionId: s });
    try {
      await p.prepare(s, slow);
      // Meanwhile other calls delete the file and move on: its blob is pruned (keepGenerations 1).
      await runCall(sbx.driver, p, s, 'bash', { command: 'rm tool.sh' });
      await runCall(sbx.driver, p, s, 'write', { file_path: '/workspace/other', content: 'x' });
      await slow.exec({ argv: ['/bin/bash', '-c', 'chmod +x "$PERIMETER_GUEST_PREFIX/workspace/tool.sh"'], timeoutMs: 10_000, maxOutputBytes: 1000 });
      await p.commit(s, slow, null);
    } finally { await slow.destroy(); }
    const check = await runCall(sbx.driver, p, s, 'bash', { command: 'stat -c %a tool.sh && ./tool.sh && cat other' });
    assert.equal(check.outcome.isError, false, check.outcome.text);
    assert.equal(check.outcome.text.trim(), '755\nhi\nx');
  });
});

