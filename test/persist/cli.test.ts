// `perimeter persist add|rm|ls`: the real CLI entry point in a child process against a state directory; the list it
// writes is the one the next tool call uses.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { startControlServer } from '../../companion/control/server';
import type { WorkerControl } from '../../companion/control/types';
import { EventHub } from '../../companion/events';
import { Journal } from '../../companion/journal/journal';
import type { ControlEvent } from '../../companion/protocol/control';
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

