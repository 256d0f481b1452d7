// `perimeter persist add|rm|ls`: the real CLI entry point in a child process against a state directory; the list it
// writes is the one the next tool call uses.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
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
    } finally { await sbx.dispose(); }
  });
});
