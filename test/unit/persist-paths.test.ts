// Persist-list patterns and guest-name rules (security-and-reliability.md §8.3 F1, F11): every bad entry is refused
// before any I/O with a message that names the problem; globs select what users expect.
import assert from 'node:assert/strict';
import { checkGuestPath, checkLinkTarget, checkSessionId, parsePattern, parsePatterns, walkRoots } from '../../companion/persist/paths';
import { admitEntry } from '../../companion/persist/admit';
import { sanitizeShell } from '../../companion/persist/shell';

describe('persist: persisted-path patterns', () => {
  const refused: Array<[string, RegExp]> = [
    ['../../etc/passwd', /not absolute/],
    ['workspace/x', /not absolute/],
    ['/workspace/a/../../b', /".." segment/],
    ['/workspace/./b', /"\." segment/],
    ['/workspace//b', /empty segment/],
    ['', /not absolute/],
    ['.', /not absolute/],
    ['/', /whole filesystem/],
    ['/work\0space', /U\+0000/],
    ['/workspace/a\nb', /U\+000A/],
    ['/workspace/a\\..\\b', /not supported/],
    [`/${'a'.repeat(5000)}`, /longer than/],
    [`/${Array(1000).fill('d').join('/')}`, /deeper than/],
    ['/workspace/\u202egnp.exe', /U\+202E/],
    ['/workspace/cafe\u0301', /normal form C/],
    ['/proc/self/environ', /kernel and runtime state/],
    ['/sys', /kernel and runtime state/],
    ['/*/x', /literal directory/],
    ['/workspace/a**b', /whole path segment/],
    ['/workspace/[ab]', /not supported/],
  ];
  for (const [raw, why] of refused) {
    it(`refuses ${JSON.stringify(raw.length > 40 ? `${raw.slice(0, 40)}…` : raw)}`, () => {
      assert.throws(() => parsePattern(raw), (err: Error) => why.test(err.message) && err.message.startsWith('persisted path'));
    });
  }

  it('refuses non-strings and keeps the first of duplicates', () => {
    assert.throws(() => parsePattern(42), /must be a string/);
    assert.deepEqual(parsePatterns(['/workspace', '/workspace/', '/home/agent/.cache/pip/**']).map((p) => p.text), ['/workspace', '/home/agent/.cache/pip/**']);
  });

  it('a directory pattern selects the directory and everything below it, nothing beside it', () => {
    const p = parsePattern('/workspace');
    assert.equal(p.root, '/workspace');
    for (const yes of ['/workspace', '/workspace/a', '/workspace/a/b/c.txt']) assert.ok(p.matches(yes), yes);
    for (const no of ['/workspace2', '/work', '/', '/tmp/workspace']) assert.ok(!p.matches(no), no);
  });

  it('globs: * and ? within a segment, ** across segments', () => {
    const py = parsePattern('/workspace/**/*.py');
    assert.equal(py.root, '/workspace');
    for (const yes of ['/workspace/a.py', '/workspace/x/y/z.py', '/workspace/pkg.py/inner']) assert.ok(py.matches(yes), yes);
    for (const no of ['/workspace/a.txt', '/workspace/x/a.pyc', '/home/a.py']) assert.ok(!py.matches(no), no);
    const pip = parsePattern('/home/agent/.cache/pip/**');
    assert.equal(pip.root, '/home/agent/.cache/pip');
    assert.ok(pip.matches('/home/agent/.cache/pip/wheels/a.whl'));
    const q = parsePattern('/data/run-?');
    assert.ok(q.matches('/data/run-1/out.csv'));
    assert.ok(!q.matches('/data/run-10'));
  });

  it('walk roots: one per tree, none below another', () => {
    assert.deepEqual(walkRoots(parsePatterns(['/workspace/**/*.py', '/workspace/skills', '/home/agent/.cache/pip/**', '/mnt/memory'])),
      ['/home/agent/.cache/pip', '/mnt/memory', '/workspace']);
  });
});

describe('persist: guest names', () => {
  it('accepts ordinary names, including spaces, unicode and backslashes', () => {
    for (const ok of ['/workspace/a b.txt', '/workspace/ünï/çødé.md', '/workspace/back\\slash', '/workspace/Keep/A']) assert.equal(checkGuestPath(ok), null, ok);
  });
  it('refuses traversal, control characters, invalid UTF-8 and overlong names', () => {
    assert.match(checkGuestPath('/workspace/../etc/shadow')!, /"\.\."/);
    assert.match(checkGuestPath('/workspace/a\rb')!, /U\+000D/);
    assert.match(checkGuestPath('/workspace/\ufffd')!, /not valid UTF-8/);
    assert.match(checkGuestPath('/workspace/\ud800x')!, /not valid UTF-8/);
    assert.match(checkGuestPath(`/workspace/${'x'.repeat(256)}`)!, /longer than 255/);
    assert.match(checkGuestPath(42)!, /not a string/);
  });
  it('symlink targets are data: relative and `..` allowed, control characters and NUL not', () => {
    assert.equal(checkLinkTarget('../../etc/shadow'), null);
    assert.equal(checkLinkTarget('/etc/shadow'), null);
    assert.match(checkLinkTarget('a\0b')!, /U\+0000/);
    assert.match(checkLinkTarget('')!, /empty/);
  });
  it('session ids are confined to one directory name', () => {
    assert.equal(checkSessionId('sesn_011CZkZ2abc-9'), null);
    for (const bad of ['..', '../x', 'a/b', '', '.hidden', 'a'.repeat(200), 'a b']) assert.ok(checkSessionId(bad), bad);
  });
  it('admits walk entries only with sane types, sizes, modes and hashes; strips setuid', () => {
    const hash = 'a'.repeat(64);
    const ok = admitEntry({ path: '/workspace/x', type: 'file', size: 3, mode: 0o4777, mtimeMs: 1, sha256: hash }, '/workspace', true);
    assert.deepEqual(ok, { type: 'file', path: '/workspace/x', size: 3, mode: 0o755, mtimeMs: 1, sha256: hash });
    assert.equal((admitEntry({ path: '/workspace/y', type: 'file', size: 3, mode: 0o600, mtimeMs: 1, sha256: hash }, '/workspace', true) as { mode: number }).mode, 0o644);
    assert.match(admitEntry({ path: '/workspace/f', type: 'other', size: 0, mode: 0o644, mtimeMs: 1 }, '/workspace', true) as string, /FIFO/);
    assert.match(admitEntry({ path: '/etc/shadow', type: 'file', size: 3, mode: 0o644, mtimeMs: 1, sha256: hash }, '/workspace', true) as string, /outside/);
    assert.match(admitEntry({ path: '/workspace/x', type: 'file', size: -1, mode: 0o644, mtimeMs: 1, sha256: hash }, '/workspace', true) as string, /size/);
    assert.match(admitEntry({ path: '/workspace/x', type: 'file', size: 1, mode: 0o644, mtimeMs: 1, sha256: 'zz' }, '/workspace', true) as string, /hash/);
    assert.match(admitEntry({ path: '/workspace/l', type: 'symlink', size: 1, mode: 0o777, mtimeMs: 1 }, '/workspace', true) as string, /target/);
  });
});

describe('persist: shell state', () => {
  it('keeps cwd and ordinary exports, drops secrets and shell internals, says what it dropped', () => {
    const { shell, dropped } = sanitizeShell({
      cwd: '/workspace/src',
      env: { FOO: 'bar', PATH: '/usr/bin', ANTHROPIC_API_KEY: 'sk-ant-xyz', GITHUB_TOKEN: 'ghp_1', DB_PASSWORD: 'p', X: 'sk-ant-abcdef', PWD: '/x', SHLVL: '2', 'BAD-NAME': 'v' },
    });
    assert.deepEqual(shell, { cwd: '/workspace/src', env: { FOO: 'bar', PATH: '/usr/bin' } });
    assert.deepEqual(dropped.sort(), ['ANTHROPIC_API_KEY (looks like a secret)', 'DB_PASSWORD (looks like a secret)', 'GITHUB_TOKEN (looks like a secret)', 'X (looks like a secret)']);
  });
  it('bounds the state and refuses a relative or hostile cwd', () => {
    assert.equal(sanitizeShell({ cwd: 'relative', env: {} }).shell, null);
    assert.equal(sanitizeShell({ cwd: '/a/../b', env: {} }).shell, null);
    assert.equal(sanitizeShell(null).shell, null);
    const big = sanitizeShell({ cwd: '/', env: { BIG: 'x'.repeat(40_000), OK: 'y' } });
    assert.deepEqual(big.shell, { cwd: '/', env: { OK: 'y' } });
    assert.deepEqual(big.dropped, ['BIG (too large)']);
  });
});
