// The ready shell (companion/guest/ready-shell.ts + the agent's 'Z'): the real C agent in host test mode with the
// host's bash (the guest's bash is the same Debian 12 package). Every script runs twice in the same agent, once by
// fork/exec (`bash -c`, the reference) and once through a ready shell, and what the script can observe must match:
// variables, options, environment, cwd, fds, signal dispositions, stdin, exit status.
import assert from 'node:assert/strict';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import type { GuestClient } from '../../companion/guest/client';
import { startHostAgent, type HostAgent } from './host-agent';
import { READY_SHELL_ARGV, READY_SHELL_BOOTSTRAP, READY_SHELL_ENV, SHELL_ARGV_PREFIX, shellArgv } from '../../companion/guest/ready-shell';
import { GuestError, type ExecRequest } from '../../companion/guest/types';
import { bashScript } from '../../companion/tools/semantics';

/** What differs between any two shells, so it is no evidence either way. */
const VOLATILE = /^(declare -[-a-zA-Z]+ )?(BASHPID|RANDOM|SRANDOM|EPOCHREALTIME|EPOCHSECONDS|SECONDS|_|BASH_ARGV0)(=|$)/;

describe('guest ready shell (host test mode)', function () {
  let agent: HostAgent;
  let proc: ChildProcess;
  let client: GuestClient;
  let dir: string;

  before(async function () {
    agent = await startHostAgent(this);
    ({ proc, client, dir } = agent);
  });
  after(() => agent?.close());

  /** The pid of the agent's ready shell, once it is ready. */
  async function readyPid(): Promise<number> {
    await client.waitReadyShell(5000);
    const kids = execFileSync('ps', ['-o', 'pid=', '--ppid', String(proc.pid)], { encoding: 'utf8' }).trim().split(/\s+/).map(Number);
    assert.equal(kids.length, 1, `one ready shell expected, found ${kids.join(',')}`);
    return kids[0]!;
  }

  /** A request may differ from the ready shell's own environment in values and extra names, not in missing ones. */
  const ENV: Record<string, string> = { ...READY_SHELL_ENV, PATH: '/usr/bin:/bin' };
  const run = (script: string, extra: Partial<ExecRequest> = {}) =>
    client.exec({ argv: shellArgv(`echo "pid=$$"\n${script}`), timeoutMs: 10_000, maxOutputBytes: 1 << 20, env: ENV, ...extra });

  function observable(out: Buffer): string {
    return out.toString('utf8').split('\n').filter((l) => !l.startsWith('pid=') && !VOLATILE.test(l)).join('\n');
  }

  /** Runs `script` by fork/exec (no ready shell configured yet) and through the ready shell; returns both. */
  const cases: { name: string; script: string; extra?: Partial<ExecRequest> }[] = [
    { name: 'variables, options and shopts', script: 'declare -p; set -o; shopt -p; trap -p; umask; ulimit -a' },
    { name: 'exactly the environment the ready shell started with (nothing to export)', script: 'declare -px; locale 2>&1', extra: { env: { ...READY_SHELL_ENV } } },
    { name: 'the same names, one value changed', script: 'declare -px', extra: { env: { ...READY_SHELL_ENV, TERM: 'xterm' } } },
    { name: 'another locale', script: 'locale 2>&1; printf "%s|%s\\n" "$LANG" "${LC_ALL-unset}"; x=$(printf "\\xc3\\xa9"); echo "${#x}"', extra: { env: { ...ENV, LANG: 'C', LC_ALL: 'C.UTF-8' } } },
    { name: 'exported environment', script: 'env -0 | LC_ALL=C sort -z | tr "\\0" "\\n"', extra: { env: { ...ENV, ODD: 'a b\nc $(x) =y', TZ: 'UTC', LANG: '' } } },
    { name: '$0, arguments, $LINENO, BASH_EXECUTION_STRING', script: 'echo "$0|$#|$LINENO"\necho "$LINENO"\nf() { echo "${FUNCNAME[*]}|$LINENO"; }; f\nprintf %s "$BASH_EXECUTION_STRING" | sha256sum' },
    { name: 'cwd (physical, like a fresh bash) and OLDPWD', script: 'pwd; echo "$PWD|${OLDPWD-unset}|${OLDPWD+set}"; cd -; echo "rc=$?"', extra: { cwd: 'LINK' } },
    { name: 'cwd / (where the ready shell already is)', script: 'pwd; echo "$PWD|${OLDPWD-unset}|${OLDPWD+set}"; declare -p PWD OLDPWD', extra: { cwd: '/' } },
    // With no EXIT trap, `bash -c` execs its last simple command in place of itself, while eval forks it: only $$
    // shows the difference, and the bash tool's script always sets an EXIT trap.
    { name: 'open descriptors and signal dispositions', script: 'trap : EXIT; for f in /proc/$$/fd/*; do printf "%s " "${f##*/}"; done; echo; grep -E "^(SigBlk|SigIgn|SigCgt|NoNewPrivs)" /proc/$$/status' },
    { name: 'stdin', script: 'cat; echo; read -r x <&0; echo "[$x]"', extra: { stdin: Buffer.from('line one\nline two') } },
    { name: 'exit status and the EXIT trap', script: 'trap "echo trapped \\$?" EXIT; (exit 7); echo "sub=$?"; exit 3' },
    { name: 'set -e inside the script', script: 'set -e; echo before; false; echo after' },
    { name: 'the last command replaces nothing visible', script: 'sleep 0.01 & wait $!; echo "waited $?"' },
  ];

  it('runs every observation script identically through fork/exec and through the ready shell', async () => {
    mkdirSync(path.join(dir, 'real/sub'), { recursive: true });
    symlinkSync(path.join(dir, 'real/sub'), path.join(dir, 'LINK'));
    const resolveCwd = (c: Partial<ExecRequest> | undefined) => c?.cwd === 'LINK' ? { ...c, cwd: path.join(dir, 'LINK') } : c;
    const reference: { out: string; code: number }[] = [];
    for (const c of cases) {
      const r = await run(c.script, resolveCwd(c.extra));
      reference.push({ out: observable(r.output), code: r.exitCode });
    }
    await client.startReadyShell(READY_SHELL_ARGV, READY_SHELL_ENV);
    for (const [i, c] of cases.entries()) {
      const pid = await readyPid();
      const r = await run(c.script, resolveCwd(c.extra));
      assert.match(r.output.toString(), new RegExp(`^pid=${pid}\\n`), `${c.name}: ran in the ready shell`);
      assert.equal(observable(r.output), reference[i]!.out, c.name);
      assert.equal(r.exitCode, reference[i]!.code, `${c.name}: exit status`);
    }
  });

  it('numbers a bash tool command\'s lines from 1 through fork/exec and through the ready shell alike', async () => {
    const command = 'echo "pid=$$"\necho "$LINENO"\nnosuchcmd\nf() {\n  echo "in f $LINENO"\n}\nf\nfoo(';
    const expected = [
      '2', '/bin/bash: line 3: nosuchcmd: command not found', 'in f 5',
      "/bin/bash: eval: line 8: syntax error near unexpected token `newline'", "/bin/bash: eval: line 8: `foo('", '',
    ].join('\n');
    const script = bashScript(command, dir);
    const pid = await readyPid();
    const ready = await client.exec({ argv: shellArgv(script), timeoutMs: 10_000, maxOutputBytes: 1 << 20, env: ENV });
    assert.equal(ready.output.toString(), `pid=${pid}\n${expected}`, 'through the ready shell');
    // A name the ready shell leaves to fork/exec (it is not an identifier bash would export).
    const forked = await client.exec({ argv: shellArgv(script), timeoutMs: 10_000, maxOutputBytes: 1 << 20, env: { ...ENV, 'NOT-AN-IDENT': '1' } });
    assert.match(forked.output.toString(), /^pid=\d+\n/);
    assert.doesNotMatch(forked.output.toString(), new RegExp(`^pid=${pid}\\n`), 'through fork/exec');
    assert.equal(forked.output.toString().replace(/^pid=\d+\n/, ''), expected, 'through fork/exec');
  });

  it('reseeds RANDOM and restarts SECONDS in every ready shell', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      await readyPid();
      if (i === 0) await new Promise((r) => setTimeout(r, 1100)); // the shell has been waiting for over a second
      const [, randoms, seconds] = (await run('echo "$RANDOM $RANDOM $RANDOM"; echo "$SECONDS"')).output.toString().split('\n');
      seen.add(randoms!);
      assert.equal(seconds, '0', 'SECONDS counts from the claim, not from when the shell started');
    }
    assert.equal(seen.size, 4);
  });

  it('leaves requests it cannot reproduce exactly to fork/exec', async () => {
    const withoutTerm = Object.fromEntries(Object.entries(ENV).filter(([k]) => k !== 'TERM')); // a fresh bash sets TERM=dumb itself
    const unusual: Record<string, string>[] = [{ ...ENV, BASH_ENV: '/dev/null' }, { ...ENV, SHELLOPTS: 'xtrace' }, { ...ENV, 'NOT-AN-IDENT': '1' }, { ...ENV, SHLVL: '4' }, withoutTerm];
    for (const env of unusual) {
      const pid = await readyPid();
      const r = await run('echo ok; declare -p TERM', { env });
      assert.doesNotMatch(r.output.toString(), new RegExp(`^pid=${pid}\\n`), JSON.stringify(env));
      assert.equal(await readyPid(), pid, 'the ready shell is still there for the next call');
    }
    const pid = await readyPid();
    const r = await run('pwd', { cwd: path.join(dir, 'missing') });
    assert.doesNotMatch(r.output.toString(), new RegExp(`^pid=${pid}\\n`));
    assert.equal(r.exitCode, 127);
    assert.match(r.output.toString(), /cwd .*missing/);
  });

  it('replaces a ready shell killed before use, and times out a claimed one like any command', async () => {
    const pid = await readyPid();
    process.kill(pid, 'SIGKILL');
    for (const until = Date.now() + 5000; existsSync(`/proc/${pid}`) && Date.now() < until;) await new Promise((r) => setTimeout(r, 10));
    const next = await readyPid();
    assert.notEqual(next, pid);
    const r = await run('echo started; sleep 30', { timeoutMs: 300 });
    assert.equal(r.timedOut, true);
    assert.match(r.output.toString(), new RegExp(`^pid=${next}\\nstarted\\n`));
    assert.throws(() => process.kill(next, 0), 'the claimed shell was killed at the timeout');
  });

  it('answers back-to-back calls correctly while ready shells are replaced', async () => {
    await readyPid();
    for (let i = 0; i < 12; i++) {
      const r = await run(`echo call ${i}`);
      assert.equal(r.exitCode, 0, r.output.toString());
      assert.equal(r.output.toString().split('\n')[1], `call ${i}`);
      if (i % 3 === 2) await new Promise((res) => setTimeout(res, 35)); // now and then, a replacement is starting
    }
  });

  it('does not hand a call to a shell that is still starting', async () => {
    await client.startReadyShell([...SHELL_ARGV_PREFIX, `sleep 0.5; ${READY_SHELL_BOOTSTRAP}`]);
    const r = await run('echo early');
    assert.equal(r.exitCode, 0, r.output.toString());
    assert.equal(r.output.toString().split('\n')[1], 'early');
    const slow = await readyPid();
    const claimed = await run('echo late');
    assert.equal(claimed.output.toString(), `pid=${slow}\nlate\n`, 'the shell that was starting took the next call');
    await client.startReadyShell(READY_SHELL_ARGV, READY_SHELL_ENV);
  });

  it('reports a ready shell that cannot start', async () => {
    await client.startReadyShell(['/nonexistent/bash', '-c', 'x']);
    await assert.rejects(client.waitReadyShell(5000), (e: unknown) => e instanceof GuestError && e.code === 'ENOENT');
    await client.startReadyShell(READY_SHELL_ARGV, READY_SHELL_ENV);
    await readyPid();
  });
});
