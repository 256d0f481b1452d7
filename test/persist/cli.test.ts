// `perimeter persist add|rm|ls|export`: the real CLI entry point in a child process against a state directory; the
// list it writes is the one the next tool call uses; export writes under the safe-copy rules, from the state directory
// or through a running companion's control API.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startControlServer } from '../../companion/control/server';
import type { WorkerControl } from '../../companion/control/types';
import { EventHub } from '../../companion/events';
import { Journal } from '../../companion/journal/journal';
import type { ControlEvent } from '../../companion/protocol/control';
import type { PersistHistory } from '../../companion/persist/types';
import { newPersistence, processDriver, runCall, tempDir } from './helpers';

const ROOT = path.resolve(__dirname, '..', '..');

function cli(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import=tsx', path.join(ROOT, 'companion/cli.ts'), 'persist', ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PERIMETER_HOME: '' } });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

describe('persist: perimeter persist CLI', function () {
  let home: string;
  beforeEach(() => { home = tempDir('persist-cli'); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('add, rm and ls change the list the next call uses; bad input gets a clear error and changes nothing', async () => {
    const s = 'sesn_cli';
    for (const action of ['ls', 'rm']) {
      const unknown = cli(action, '--home', home, '--session', 'sesn_unknown', '--json', ...(action === 'rm' ? ['/workspace'] : []));
      assert.equal(unknown.code, 1, `${action}: ${unknown.out}`);
      assert.equal(unknown.out, '', 'no empty store is printed');
      assert.match(unknown.err, /no session "sesn_unknown": this companion has not served it and holds no persisted files for it/);
    }
    assert.equal(existsSync(path.join(home, 'sessions', 'sesn_unknown')), false, 'asking creates nothing');
    const added = cli('add', '--home', home, '--session', s, '--json', '/srv/data/', '/root/.cache/pip/**');
    assert.equal(added.code, 0, added.err);
    assert.deepEqual(JSON.parse(added.out).patterns, ['/workspace', '/srv/data', '/root/.cache/pip/**']);

    const bad = cli('add', '--home', home, '--session', s, '/srv/../etc');
    assert.equal(bad.code, 1);
    assert.match(bad.err, /persisted path "\/srv\/\.\.\/etc": path has a "\.\." segment/);
    const always = cli('rm', '--home', home, '--session', s, '/workspace/skills');
    assert.equal(always.code, 2);
    assert.match(always.err, /always persisted/);
    const usage = cli('add', '--home', home, '--session', s);
    assert.equal(usage.code, 2);
    assert.match(usage.err, /needs at least one PATTERN/);

    const removed = cli('rm', '--home', home, '--session', s, '--json', '/workspace');
    assert.equal(removed.code, 0, removed.err);
    assert.deepEqual(JSON.parse(removed.out).patterns, ['/srv/data', '/root/.cache/pip/**']);

    const sbx = processDriver();
    try {
      const p = newPersistence(home);
      await runCall(sbx.driver, p, s, 'bash', { command: 'P="${PERIMETER_GUEST_PREFIX:-}"; mkdir -p "$P/srv/data"; echo d > "$P/srv/data/x"; echo w > /dev/null; echo w > w.txt' });
      const listed = cli('ls', '--home', home, '--session', s);
      assert.equal(listed.code, 0, listed.err);
      assert.match(listed.out, /generation 1, 1 file\(s\), 2 B/);
      assert.match(listed.out, /0644 +2 {2}\/srv\/data\/x/);
      assert.doesNotMatch(listed.out, /w\.txt/, '/workspace is no longer persisted');
      const cat = cli('cat', '--home', home, '--session', s, '/srv/data/x');
      assert.deepEqual([cat.code, cat.out], [0, 'd\n'], cat.err);
      const none = cli('cat', '--home', home, '--session', s, '--generation', '1', '/srv/data/nope');
      assert.equal(none.code, 1);
      assert.match(none.err, /has no file \/srv\/data\/nope/);
    } finally { await sbx.dispose(); }
  });

  it('export --to DIR: regular files only, in slices; a symlink in DIR is never followed; existing files need --overwrite; also through a running companion', async () => {
    const s = 'sesn_export';
    // 600 000 lines: about 4 MiB, read in several PERSIST_READ_MAX slices
    const big = Array.from({ length: 600_000 }, (_, i) => `${i + 1}\n`).join('');
    const sbx = processDriver();
    const persistence = newPersistence(home);
    const outside = tempDir('persist-cli-outside');
    try {
      await runCall(sbx.driver, persistence, s, 'bash', { command: 'mkdir -p sub && printf one > a.txt && seq 1 600000 > sub/big.txt && ln -s a.txt link && : > empty' });
      const to = path.join(home, 'out');
      const first = cli('export', '--home', home, '--session', s, '--to', to, '--json');
      assert.equal(first.code, 0, first.err);
      const report = JSON.parse(first.out) as { generation: number; written: string[]; skipped: Array<{ guestPath: string; reason: string }>; refused: string[] };
      assert.deepEqual([report.generation, report.written, report.refused], [1, ['workspace/a.txt', 'workspace/empty', 'workspace/sub/big.txt'], []]);
      assert.deepEqual(report.skipped.map((x) => x.guestPath), ['/workspace/link']);
      assert.equal(readFileSync(path.join(to, 'workspace/sub/big.txt'), 'utf8'), big);
      assert.equal(readFileSync(path.join(to, 'workspace/a.txt'), 'utf8'), 'one');
      assert.equal(lstatSync(path.join(to, 'workspace/link'), { throwIfNoEntry: false }), undefined, 'no symlink is exported');

      // a symlinked directory in the target: nothing is written through it
      const viaLink = path.join(home, 'out-link');
      mkdirSync(viaLink);
      symlinkSync(outside, path.join(viaLink, 'workspace'));
      const linked = cli('export', '--home', home, '--session', s, '--to', viaLink);
      assert.equal(linked.code, 1, linked.err);
      assert.match(linked.err, /not written: workspace is a symlink: not followed/);
      assert.deepEqual(readdirSync(outside), []);
      // the target itself a symlink: refused
      const linkedRoot = cli('export', '--home', home, '--session', s, '--to', path.join(viaLink, 'workspace'));
      assert.equal(linkedRoot.code, 1);
      assert.match(linkedRoot.err, /is not a directory \(a symlink: not followed\)/);

      // a symlinked file in the target is refused even with --overwrite; an existing file is replaced only with it
      writeFileSync(path.join(outside, 'secret'), 'keep');
      rmSync(path.join(to, 'workspace/a.txt'));
      symlinkSync(path.join(outside, 'secret'), path.join(to, 'workspace/a.txt'));
      writeFileSync(path.join(to, 'workspace/empty'), 'old');
      const again = cli('export', '--home', home, '--session', s, '--to', to, '/workspace');
      assert.equal(again.code, 1);
      assert.match(again.err, /not written: workspace\/a\.txt exists and is not a regular file/);
      assert.match(again.err, /not written: workspace\/empty exists \(not replaced\)/);
      assert.match(again.err, /skipped \/workspace\/link: a symlink \(→ a\.txt\): not followed/);
      const forced = cli('export', '--home', home, '--session', s, '--to', to, '--overwrite', '/workspace/');
      assert.equal(forced.code, 1);
      assert.doesNotMatch(forced.err, /workspace\/empty/);
      assert.equal(readFileSync(path.join(outside, 'secret'), 'utf8'), 'keep', 'the symlink\'s target is untouched');
      assert.equal(readFileSync(path.join(to, 'workspace/empty'), 'utf8'), '');

      const usage = cli('export', '--home', home, '--session', s, '--to', to, '/workspace/../etc');
      assert.equal(usage.code, 2);
      assert.match(usage.err, /"\.\." segment/);

      // through a running companion (its control API), one directory of generation 1
      const worker: WorkerControl = {
        state: () => 'polling',
        hostFacts: () => ({ hostname: 'test', driver: 'process', accel: 'none', vmsRunning: 0, vmsPooled: 0, memoryAvailableMb: 1, concurrency: 1, version: 'test', pid: process.pid, startedAt: Date.now() }),
        drain: async () => {}, shutdown: async () => {},
      };
      const server = await startControlServer({ home, hub: new EventHub(), journal: Journal.open(path.join(home, 'journal')), persistence, persistHistory: persistence, worker });
      try {
        const live = path.join(home, 'out-live');
        const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
          const child = spawn(process.execPath, ['--import=tsx', path.join(ROOT, 'companion/cli.ts'), 'persist', 'export', '--home', home, '--session', s, '--generation', '1', '--to', live, '/workspace/sub'], { cwd: ROOT });
          let out = ''; let err = '';
          child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
          child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
          child.on('exit', (code) => resolve({ code, out, err }));
        });
        assert.equal(r.code, 0, r.err);
        assert.match(r.out, /^exported 1 file\(s\) of generation 1 to /);
        assert.deepEqual(readdirSync(live), ['sub']);
        assert.equal(readFileSync(path.join(live, 'sub/big.txt'), 'utf8'), big);
      } finally { await server.close(); }
      // a reader that stops answering bytes before the listed size: the export fails, it does not end the file short;
      // a listing that does not hold the whole generation: what it holds is exported, and the export says it is incomplete
      const short: PersistHistory = {
        generations: (id) => persistence.generations(id), rollback: (id, g) => persistence.rollback(id, g),
        entries: async (id, g, page) => ({ ...await persistence.entries(id, g, page), truncated: true }),
        readFile: async (id, g, file, offset, length) => {
          const r = await persistence.readFile(id, g, file, offset, length);
          return offset > 0 ? { size: r.size, data: Buffer.alloc(0) } : r;
        },
      };
      const shortServer = await startControlServer({ home, hub: new EventHub(), journal: Journal.open(path.join(home, 'journal')), persistence, persistHistory: short, worker });
      try {
        const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
          const child = spawn(process.execPath, ['--import=tsx', path.join(ROOT, 'companion/cli.ts'), 'persist', 'export', '--home', home, '--session', s, '--to', path.join(home, 'out-short'), '/workspace/sub'], { cwd: ROOT });
          let err = '';
          child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
          child.on('exit', (code) => resolve({ code, err }));
        });
        assert.equal(r.code, 1);
        assert.match(r.err, new RegExp(`"/workspace/sub/big\\.txt" ended after 1048576 of its ${big.length} bytes`));
        const partial = await new Promise<{ code: number | null; out: string }>((resolve) => {
          const child = spawn(process.execPath, ['--import=tsx', path.join(ROOT, 'companion/cli.ts'), 'persist', 'export', '--home', home, '--session', s, '--to', path.join(home, 'out-partial'), '--json', '/workspace/a.txt'], { cwd: ROOT });
          let out = '';
          child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
          child.on('exit', (code) => resolve({ code, out }));
        });
        assert.equal(partial.code, 1);
        assert.deepEqual(JSON.parse(partial.out), { generation: 1, written: ['a.txt'], skipped: [], refused: [], truncated: true });
      } finally { await shortServer.close(); }
    } finally { await sbx.dispose(); rmSync(outside, { recursive: true, force: true }); }
  });

  it('with a companion running on the same home, the change goes through its control API and clients get the event', async () => {
    const hub = new EventHub();
    const events: ControlEvent[] = [];
    hub.subscribe((e) => events.push(e));
    const persistence = newPersistence(home, { hub });   // as the worker wires it: the store announces changes
    const worker: WorkerControl = {
      state: () => 'polling',
      hostFacts: () => ({ hostname: 'test', driver: 'process', accel: 'none', vmsRunning: 0, vmsPooled: 0, memoryAvailableMb: 1, concurrency: 1, version: 'test', pid: process.pid, startedAt: Date.now() }),
      drain: async () => {}, shutdown: async () => {},
    };
    const server = await startControlServer({ home, hub, journal: Journal.open(path.join(home, 'journal')), persistence, worker });
    // Asynchronous: this process serves the control API the child talks to.
    const cliAsync = (...args: string[]) => new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const child = spawn(process.execPath, ['--import=tsx', path.join(ROOT, 'companion/cli.ts'), 'persist', ...args], { cwd: ROOT });
      let out = ''; let err = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.on('exit', (code) => resolve({ code, out, err }));
    });
    try {
      const unknown = await cliAsync('ls', '--home', home, '--session', 'nope');
      assert.equal(unknown.code, 1, unknown.out);
      assert.match(unknown.err, /no session "nope": this companion has not served it/, 'the running companion refuses it too');
      const r = await cliAsync('add', '--home', home, '--session', 'sesn_live', '--json', '/opt/tools/**');
      assert.equal(r.code, 0, r.err);
      assert.deepEqual(JSON.parse(r.out).patterns, ['/workspace', '/opt/tools/**']);
      const announced = events.filter((e) => e.type === 'persist.changed' && e.persist.sessionId === 'sesn_live');
      assert.equal(announced.length, 1, 'the change is announced exactly once');
      assert.ok(announced[0]!.type === 'persist.changed' && announced[0]!.persist.patterns.includes('/opt/tools/**'));
      assert.deepEqual(await persistence.patterns('sesn_live'), ['/workspace', '/opt/tools/**']);
    } finally { await server.close(); }
  });
});

