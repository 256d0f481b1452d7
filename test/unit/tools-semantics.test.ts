// Tool semantics (bash, read, write, edit, glob, grep) against the process driver: reference field names, caps,
// error rules, never-empty text, shell continuity through ShellState.
import assert from 'node:assert/strict';
import { ProcessDriver } from '../../companion/sandbox/process/driver';
import type { Sandbox } from '../../companion/sandbox/types';
import type { ShellState } from '../../companion/persist/types';
import { runTool, INITIAL_SHELL, BASH_OUTPUT_LIMIT, type ToolOutcome } from '../../companion/tools/semantics';
import { assertNumberedWithOneGap } from './numbered-output';
import { assertGrepSameWithoutRipgrep, GREP_TREE_SCRIPT, withoutRipgrep } from './grep-cases';
import type { ToolName } from '../../companion/tools/schemas';
import { setStderrLogging } from '../../companion/log';

describe('tools on the process driver', () => {
  const driver = new ProcessDriver();
  let sb: Sandbox;
  let shell: ShellState;
  const run = async (name: ToolName, input: unknown): Promise<ToolOutcome> => {
    const o = await runTool(name, input, { sandbox: sb, shell, callTimeoutMs: 20_000 });
    if (o.shell) shell = o.shell;
    assert.ok(o.text.length > 0, 'never an empty text');
    return o;
  };
  before(() => setStderrLogging(false));
  beforeEach(async () => { sb = await driver.acquire({ sessionId: 'unit' }); shell = { ...INITIAL_SHELL, env: {} }; });
  afterEach(async () => { await sb.destroy(); });
  after(() => setStderrLogging(true));

  it('write then read, relative and absolute paths, view_range', async () => {
    assert.equal((await run('write', { file_path: 'd/a.txt', content: 'l1\nl2\nl3\n' })).text, 'wrote 9 bytes to d/a.txt');
    assert.equal((await run('read', { file_path: '/workspace/d/a.txt' })).text, 'l1\nl2\nl3\n');
    assert.equal((await run('read', { file_path: 'd/a.txt', view_range: [2, 3] })).text, 'l2\nl3');
    assert.equal((await run('read', { file_path: 'd/a.txt', view_range: [2, -1] })).text, 'l2\nl3\n');
    const bad = await run('read', { file_path: 'd/a.txt', view_range: [1] });
    assert.equal(bad.isError, true);
    assert.match(bad.text, /view_range must be/);
  });

  it('read: missing file, directory, outside the workdir, oversized file', async () => {
    assert.match((await run('read', { file_path: 'nope.txt' })).text, /no such file or directory/);
    assert.match((await run('read', { file_path: '/workspace' })).text, /not a regular file/);
    for (const p of ['/etc/passwd', '../x', '/workspace/../etc/passwd']) {
      const o = await run('read', { file_path: p });
      assert.equal(o.isError, true);
      assert.match(o.text, /outside \/workspace/);
    }
    await run('bash', { command: 'head -c 300000 /dev/zero | tr "\\0" "a" > big.txt; printf "\\nlast\\n" >> big.txt' });
    const big = await run('read', { file_path: 'big.txt' });
    assert.equal(big.isError, true);
    assert.match(big.text, /exceeds 262144-byte limit\. Use the view_range parameter/);
    assert.equal((await run('read', { file_path: 'big.txt', view_range: [2, 2] })).text, 'last');
  });

  it('edit: unique match, literal $ sequences, replace_all, not found, ambiguous', async () => {
    await run('write', { file_path: 'e.txt', content: 'x = 1\ny = 1\n' });
    assert.match((await run('edit', { file_path: 'e.txt', old_string: 'x = 1', new_string: 'x = $&2' })).text, /1 replacement/);
    assert.equal((await run('read', { file_path: 'e.txt' })).text, 'x = $&2\ny = 1\n');
    const amb = await run('edit', { file_path: 'e.txt', old_string: ' = ', new_string: '=' });
    assert.equal(amb.isError, true);
    assert.match(amb.text, /appears 2 times .*must be unique/);
    assert.match((await run('edit', { file_path: 'e.txt', old_string: ' = ', new_string: '=', replace_all: true })).text, /\(2 replacement\(s\)\)/);
    assert.match((await run('edit', { file_path: 'e.txt', old_string: 'zzz', new_string: 'q' })).text, /old_string not found/);
  });

  it('bad input: wrong types and missing fields are clear is_error results', async () => {
    const cases: Array<[ToolName, unknown, RegExp]> = [
      ['read', { file_path: 7 }, /read: invalid input: file_path/],
      ['write', { file_path: 'a' }, /write: invalid input: content/],
      ['edit', { file_path: 'a', old_string: '', new_string: 'b' }, /old_string is required/],
      ['bash', { command: ['ls'] }, /bash: invalid input: command/],
      ['bash', {}, /bash: command is required/],
      ['glob', {}, /glob: invalid input: pattern/],
      ['grep', { pattern: 'x', path: 3 }, /grep: invalid input: path/],
    ];
    for (const [name, input, re] of cases) {
      const o = await run(name, input);
      assert.equal(o.isError, true, name);
      assert.match(o.text, re);
    }
  });

  it('bash: exit codes, stderr merged, empty output, ANSI stripped', async () => {
    const fail = await run('bash', { command: 'echo out; echo err >&2; exit 7' });
    assert.deepEqual([fail.isError, fail.exitCode, fail.text], [true, 7, 'out\nerr']);
    assert.equal((await run('bash', { command: 'exit 3' })).text, 'exit 3');
    assert.equal((await run('bash', { command: 'true' })).text, '(no output)');
    assert.equal((await run('bash', { command: 'printf "\\033[31mred\\033[0m\\n\\n"' })).text, 'red');
  });

  it('bash: output over the cap keeps whole lines of head and tail, the marker where lines are missing', async () => {
    for (const last of [100_000, 200_000]) {
      const big = await run('bash', { command: `seq 1 ${last}` });
      assert.equal(big.isError, false);
      assertNumberedWithOneGap(big.text, last);
      assert.ok(Buffer.byteLength(big.text) <= BASH_OUTPUT_LIMIT, `${Buffer.byteLength(big.text)} bytes`);
    }
  });

  it('bash: line numbers are the command\'s own ($LINENO and bash\'s messages count from its first line)', async () => {
    assert.equal((await run('bash', { command: 'nosuchcmd' })).text, '/bin/bash: line 1: nosuchcmd: command not found');
    assert.equal((await run('bash', { command: 'echo $LINENO\necho "$LINENO"\nnosuchcmd' })).text, '1\n2\n/bin/bash: line 3: nosuchcmd: command not found');
    assert.match((await run('bash', { command: 'echo a\nfoo(' })).text, /^a\n\/bin\/bash: eval: line 2: syntax error near unexpected token/);
    assert.equal((await run('bash', { command: 'f() {\n  echo "$LINENO"\n}\nf' })).text, '2');
    const long = await run('bash', { command: `# ${'x'.repeat(40_000)}\necho $LINENO\nnosuchcmd` }); // travels on stdin
    assert.equal(long.text, '2\n/bin/bash: line 3: nosuchcmd: command not found');
  });

  it('bash: timeout kills the command (and background jobs do not hold the call open)', async () => {
    const t = await run('bash', { command: 'echo before; sleep 30', timeout_ms: 500 });
    assert.equal(t.isError, true);
    assert.match(t.text, /before\nbash: command timed out after 500 ms/);
    const bg = await run('bash', { command: 'sleep 100 & echo started' });
    assert.deepEqual([bg.isError, bg.text], [false, 'started']);
  });

  it('bash: cwd and exported variables carry over between calls; restart resets them', async () => {
    await run('bash', { command: 'mkdir -p p/q && cd p/q && export FOO="a b" && BAR=unexported' });
    assert.equal(shell.cwd, '/workspace/p/q');
    assert.equal(shell.env.FOO, 'a b');
    assert.equal(shell.env.BAR, undefined);
    assert.equal(shell.env.PERIMETER_GUEST_PREFIX, undefined, 'driver internals are not part of the shell state');
    assert.equal((await run('bash', { command: 'echo "$FOO"; basename "$PWD"' })).text, 'a b\nq');
    await run('bash', { command: 'exit 4' });
    assert.equal(shell.cwd, '/workspace/p/q', 'state survives a failing command');
    assert.equal((await run('bash', { restart: true })).text, 'bash session restarted');
    assert.equal((await run('bash', { command: 'echo "[$FOO]"; basename "$PWD"' })).text, '[]\nworkspace');
  });

  it('bash: a long command (a 200 KB heredoc) runs like a short one; stdin is empty; an oversized one is refused', async () => {
    const body = 'x'.repeat(200_000);
    const long = `cat > big.txt <<'EOF'\n${body}\nEOF\nwc -c < big.txt; read -r line; echo "stdin:[$line] rc=$?"; cd /tmp && export LONG=yes`;
    const r = await run('bash', { command: long });
    assert.equal(r.isError, false, r.text);
    assert.equal(r.text, '200001\nstdin:[] rc=1');
    assert.deepEqual([shell.cwd, shell.env.LONG], ['/tmp', 'yes'], 'the shell state carries over as for a short command');
    assert.equal(shell.env.__perimeter_cmd, undefined);
    const huge = await run('bash', { command: `: ${'y'.repeat(4 * 1024 * 1024)}` });
    assert.equal(huge.isError, true);
    assert.match(huge.text, /^bash: the command is \d+ bytes; the limit is 4194304/);
  });

  it('bash: the saved state survives awkward values, unset variables, shadowing functions, noclobber and a clobbered PWD', async () => {
    await run('bash', { command: [
      'mkdir -p w/x && cd w/x',
      "export MULTI=$'l1\\nl2=x' EMPTY= ; export NOVALUE; declare -ax ARR=(1 2)",
      'export GONE=1; unset GONE; export -n DEMOTED 2>/dev/null; DEMOTED=1',
      'cd() { echo shadowed; }; printf() { echo shadowed; }; export -f cd',
      'PWD=/nonexistent; set -o noclobber -o nounset',
    ].join('\n') });
    assert.equal(shell.cwd, '/workspace/w/x', 'the real cwd is saved even when $PWD was clobbered');
    assert.equal(shell.env.MULTI, 'l1\nl2=x');
    assert.equal(shell.env.EMPTY, '');
    for (const k of ['NOVALUE', 'ARR', 'GONE', 'DEMOTED', 'PWD', 'OLDPWD', 'SHLVL', '_', 'TMPDIR']) assert.equal(shell.env[k], undefined, k);
    assert.equal(shell.env.HOME, '/root', 'HOME is the guest path');
    assert.equal((await run('bash', { command: 'echo "$MULTI|$EMPTY"; basename "$PWD"' })).text, 'l1\nl2=x|\nx');
  });

  it('bash: saving the shell state starts no process (only builtins run in the EXIT trap)', async () => {
    // With an empty PATH any program the trap executed (it used to run `env -0`) cannot be found; the state must
    // still be complete. (Under TCG each guest fork+exec costs 30-100 ms, see BENCHMARKS.md.)
    await run('bash', { command: 'mkdir -p e && cd e && export KEPT=1 && PATH=' });
    assert.equal(shell.cwd, '/workspace/e');
    assert.equal(shell.env.KEPT, '1');
    assert.equal(shell.env.PATH, '');
  });

  it('glob: relative doublestar patterns, newest first, skips .git and node_modules, rejects .. and absolute', async () => {
    await run('bash', { command: 'mkdir -p a/b .git node_modules/m && echo 1 > a/old.ts && touch -d "2020-01-01" a/old.ts && echo 2 > a/b/new.ts && echo 3 > .git/x.ts && echo 4 > node_modules/m/y.ts && echo 5 > top.md' });
    assert.equal((await run('glob', { pattern: '**/*.ts' })).text, '/workspace/a/b/new.ts\n/workspace/a/old.ts');
    assert.equal((await run('glob', { pattern: '*.{md,txt}' })).text, '/workspace/top.md');
    assert.equal((await run('glob', { pattern: '*.ts', path: 'a' })).text, '/workspace/a/old.ts');
    assert.equal((await run('glob', { pattern: '*.none' })).text, 'no matches');
    assert.match((await run('glob', { pattern: '../*' })).text, /"\.\." is not permitted/);
    assert.match((await run('glob', { pattern: '/etc/*' })).text, /absolute pattern not permitted/);
  });

  it('glob: at most 200 results', async () => {
    await run('bash', { command: 'mkdir -p many && for i in $(seq 1 250); do : > many/f$i.txt; done' });
    assert.equal((await run('glob', { pattern: 'many/*.txt' })).text.split('\n').length, 200);
  });

  it('grep: rg output with absolute paths, "no matches", a single file, an invalid regex', async () => {
    await run('write', { file_path: 's/a.py', content: 'def f():\n    # TODO one\n' });
    await run('write', { file_path: 's/b.py', content: 'TODO two\n' });
    const o = await run('grep', { pattern: 'TODO' });
    assert.deepEqual(o.text.split('\n').sort(), ['/workspace/s/a.py:2:    # TODO one', '/workspace/s/b.py:1:TODO two']);
    assert.equal((await run('grep', { pattern: 'absent-word' })).text, 'no matches');
    assert.equal((await run('grep', { pattern: 'two', path: 's/b.py' })).text, '1:TODO two');
    const bad = await run('grep', { pattern: '(' });
    assert.equal(bad.isError, true);
    assert.match(bad.text, /grep: rg failed/);
  });

  it('grep: without rg in the sandbox, the tool\'s own search gives the same answers (paths, binary, hidden, cap)', async () => {
    const tree = await run('bash', { command: GREP_TREE_SCRIPT });
    assert.equal(tree.isError, false, tree.text);
    await assertGrepSameWithoutRipgrep(sb);
  });

  it('grep: without rg, a catastrophic pattern ends at the time limit and never blocks the companion', async () => {
    await run('write', { file_path: 'redos.txt', content: `${'a'.repeat(40)}!\n` });
    let ticks = 0;
    const ticker = setInterval(() => { ticks++; }, 10);
    try {
      const o = await runTool('grep', { pattern: '^(a+)+$', path: 'redos.txt' }, { sandbox: withoutRipgrep(sb), shell, callTimeoutMs: 1000 });
      assert.deepEqual([o.isError, o.text], [true, 'grep: timed out after 1s']);
    } finally { clearInterval(ticker); }
    assert.ok(ticks > 0, 'the event loop kept running during the search');
  });
});
