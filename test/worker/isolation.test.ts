// The built CLI on a host where no microVM can run: `perimeter worker` refuses to start (reason and fix on stderr,
// no request to the control plane), the process driver runs only when named and serves a remote control plane only
// with --allow-no-isolation (after a banner); the environment key does not stay readable in /proc/<pid>/environ;
// and the README's first command, `npm run demo`, passes on a fresh machine (no QEMU, no ripgrep, a fresh state
// directory), saying in one line that there is no VM isolation and how to get it.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { DevQueue } from '../../companion/devqueue/server';
import { CLI, killAll, rmDir, ROOT, runCli, scenario, startDevQueue, tmpDir, type Child } from './helpers';

describe('worker isolation: no silent fallback to no isolation', function () {
  this.timeout(180_000);
  let dq: DevQueue | undefined;
  const dirs: string[] = [];
  const children: Child[] = [];
  const tmp = () => { const d = tmpDir(); dirs.push(d); return d; };
  const cli = (args: string[], env: Record<string, string> = {}, stdin?: string) => { const c = runCli(args, env, stdin); children.push(c); return c; };
  afterEach(async () => {
    await killAll(children);
    await dq?.close();
    dq = undefined;
    for (const d of dirs.splice(0)) rmDir(d);
  });

  /** A state directory where QEMU "is not installed" (the configured binary does not exist) and no template exists. */
  const homeWithoutQemu = () => {
    const home = tmp();
    writeFileSync(path.join(home, 'config.json'), JSON.stringify({ sandbox: { qemuBinary: path.join(home, 'qemu-system-x86_64') } }));
    return home;
  };

  it('worker with the default driver refuses to start when no VM can run, naming the reason and the fix', async () => {
    dq = await startDevQueue();
    for (const home of [tmp(), homeWithoutQemu()]) {
      const w = cli(['worker', '--home', home, '--base-url', dq.baseUrl, '--environment-id', dq.environmentId, '--no-control'], { ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey });
      assert.equal((await w.exit).code, 1, w.stderr());
      const last = w.stderr().trim().split('\n').pop()!;
      assert.match(last, /^perimeter worker: no microVM sandbox can run here, and the worker does not run tool calls without isolation\. qemu: /);
      assert.match(last, /no template built yet|qemu-system-x86_64 is not installed/);
      assert.match(last, /fix: sudo apt-get install qemu-system-x86 .*perimeter template build/);
      assert.doesNotMatch(w.stderr(), /NO ISOLATION|state: polling/);
    }
    assert.equal(dq.requests.length, 0, 'the worker never polled');
  });

  it('the process driver, named, serves a remote control plane only with --allow-no-isolation, after a banner', async () => {
    const remote = ['--base-url', 'http://192.0.2.1:9', '--environment-id', 'env_remote', '--no-control', '--driver', 'process'];
    const refused = cli(['worker', '--home', tmp(), ...remote], { ANTHROPIC_ENVIRONMENT_KEY: 'sk-ant-env01-remote-remote-remote' });
    assert.equal((await refused.exit).code, 1);
    assert.match(refused.stderr(), /perimeter worker: the process driver has no isolation and serves only a control plane on this machine .* not http:\/\/192\.0\.2\.1:9\/?\..*--allow-no-isolation/);

    const allowed = cli(['worker', '--home', tmp(), ...remote, '--allow-no-isolation'], { ANTHROPIC_ENVIRONMENT_KEY: 'sk-ant-env01-remote-remote-remote' });
    for (const deadline = Date.now() + 60_000; !/state: polling/.test(allowed.stderr()) && allowed.proc.exitCode === null && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 100));
    assert.match(allowed.stderr(), /NO ISOLATION: sandbox driver "process"/);
    assert.match(allowed.stderr(), /state: polling/);
    allowed.proc.kill('SIGTERM');
    await allowed.exit;
  });

  it('the environment key is not readable in /proc/<pid>/environ of a started worker', async () => {
    dq = await startDevQueue();
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'echo ran' }, expectIncludes: ['ran'] }]));
    const w = cli(['worker', '--home', tmp(), '--base-url', dq.baseUrl, '--environment-id', dq.environmentId, '--driver', 'process', '--no-control', '--max-idle-ms', '60000'],
      { ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey, PERIMETER_ENVIRON_MARKER: 'still-here' });
    await dq.waitFor(() => dq!.report(sid).finished, 60_000, 'the worker to serve the session with the key');
    assert.equal(dq.report(sid).steps[0]!.status, 'passed');
    const environ = readFileSync(`/proc/${w.proc.pid}/environ`).toString('latin1');
    assert.match(environ, /PERIMETER_ENVIRON_MARKER=still-here/, 'the rest of the environment is untouched');
    assert.ok(!environ.includes(dq.environmentKey), 'the environment key is readable in /proc/<pid>/environ');
    assert.ok(!environ.includes('ANTHROPIC_ENVIRONMENT_KEY='), 'the variable itself is gone');
    w.proc.kill('SIGTERM');
    assert.equal((await w.exit).code, 0);
  });

  it('`npm run demo` on a fresh machine (no QEMU, no ripgrep, fresh state) exits 0 and says in one line how to get VMs', async function () {
    // The machine: this one seen through a private mount namespace where /usr/bin (and /bin, merged into it) holds
    // everything but QEMU and ripgrep, so neither the companion, nor QEMU's default lookup, nor the sandbox finds them.
    if (process.getuid?.() !== 0 || !existsSync('/usr/bin/unshare')) {
      console.log('      SKIPPED: simulating a machine without QEMU and ripgrep needs root and unshare (a private mount namespace)');
      this.skip();
    }
    const bin = path.join(tmp(), 'usr-bin');
    try { execFileSync('cp', ['-al', '/usr/bin/.', bin], { stdio: 'ignore' }); }   // hard links: the same files, in a directory of our own
    catch { execFileSync('cp', ['-a', '/usr/bin/.', bin], { stdio: 'ignore' }); }  // another filesystem: copies
    for (const name of readdirSync(bin)) if (/^(qemu-|rg$)/.test(name)) unlinkSync(path.join(bin, name));
    const home = tmp();
    const demo = spawn('/usr/bin/unshare', ['--mount', '--propagation', 'private', '/bin/sh', '-c',
      'mount --bind "$1" /usr/bin && exec node "$2" demo', 'sh', bin, path.relative(ROOT, CLI)], {
      cwd: ROOT, env: { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: tmp(), PERIMETER_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    demo.stdout.on('data', (d) => { out += d; });
    demo.stderr.on('data', (d) => { err += d; });
    const code = await new Promise<number | null>((resolve) => demo.on('exit', resolve));
    assert.equal(code, 0, `${out}\n${err}`);
    const lines = out.split('\n');
    const notes = lines.filter((l) => /isolation/i.test(l));
    assert.equal(notes.length, 1, out);
    assert.match(notes[0]!, /^no VM isolation available \(qemu: qemu-system-x86_64 is not installed\): these calls run as host processes \(process driver, no isolation\)\. For microVMs: sudo apt-get install qemu-system-x86 .*, then \(as yourself, no root needed\): node dist\/perimeter\.js template build \(once, ~10 min\); then the demo uses them automatically$/);
    assert.match(lines[0]!, /sandbox driver process/);
    assert.match(out, /\n\d+ +grep +grep +ok /, 'grep answered without ripgrep');
    assert.match(out, /\n(\d+)\/\1 calls answered as expected\n/);
  });
});
