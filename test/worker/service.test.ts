// `perimeter service` with the built CLI, installing offline into a temporary root (this machine's systemd is not PID
// 1): the unit passes `systemd-analyze verify` without a single warning, carries the hardening and the key only as a
// credential (encrypted with this root's host key, or a 0600 file), is enabled and removed again; the worker started
// as the unit's ExecStart with systemd's $CREDENTIALS_DIRECTORY serves a session of the dev queue with that key.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { DevQueue } from '../../companion/devqueue/server';
import { renderUnit, unitQuote, SYSCALL_FILTER } from '../../companion/service/unit';
import { CLI, rmDir, runCli, scenario, startDevQueue, tmpDir } from './helpers';

const KEY = 'sk-ant-env01-servicetest-0123456789abcdef';

/** `systemd-analyze verify` of a unit: its exit code and everything it printed (a clean unit prints nothing). */
function verify(unitFile: string, scope: 'system' | 'user', runtimeDir: string): { code: number | null; output: string } {
  const r = spawnSync('systemd-analyze', [...(scope === 'user' ? ['--user'] : []), 'verify', unitFile], {
    encoding: 'utf8', env: { ...process.env, XDG_RUNTIME_DIR: runtimeDir, SYSTEMD_LOG_COLOR: '0' },
  });
  return { code: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

/** The base64 blob of a unit's SetCredentialEncrypted= (continuation lines joined). */
function credentialBlob(unit: string): string {
  const m = /^SetCredentialEncrypted=environment-key: \\\n((?:\s+\S+ \\\n)*\s+\S+)$/m.exec(unit);
  assert.ok(m, 'the unit has SetCredentialEncrypted=environment-key');
  return m[1]!.replace(/[\s\\]+/g, '');
}

async function install(root: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  const c = runCli(['service', 'install', '--root', root, ...args], { HOME: '/home/tester', ...env }, `${KEY}\n`);
  const { code } = await c.exit;
  assert.equal(code, 0, c.stderr() + c.stdout());
  return c.stdout();
}

describe('perimeter service (offline install into a temporary root)', function () {
  let dir: string;
  let dq: DevQueue | null = null;
  before(function () {
    if (spawnSync('systemd-analyze', ['--version']).status !== 0) { console.log('      SKIPPED: systemd-analyze is missing (apt-get install systemd)'); this.skip(); }
  });
  beforeEach(() => { dir = tmpDir('perimeter-service-'); });
  afterEach(async () => { await dq?.close(); dq = null; rmDir(dir); });

  it('system unit, encrypted credential: verifies cleanly, hardened, the key only as a blob this root decrypts, enabled, then removed', async () => {
    const root = path.join(dir, 'root');
    const runtime = path.join(dir, 'run');
    mkdirSync(runtime, { mode: 0o700 });
    await install(root, ['--system', '--environment-id', 'env_service_test', '--key-stdin', '--credential', 'encrypted', '--metrics', '127.0.0.1:9464']);
    const unitFile = path.join(root, 'etc/systemd/system/perimeter.service');
    const unit = readFileSync(unitFile, 'utf8');
    assert.deepEqual(verify(unitFile, 'system', runtime), { code: 0, output: '' });
    assert.ok(!unit.includes(KEY), 'the key is not in the unit');
    assert.doesNotMatch(unit, /^Environment=/m);
    for (const line of ['NoNewPrivileges=yes', 'ProtectSystem=strict', 'ProtectHome=yes', 'PrivateTmp=yes', 'ReadWritePaths=/var/lib/perimeter',
      'DeviceAllow=/dev/kvm rw', 'Delegate=yes', 'Restart=on-failure', 'KillMode=mixed', 'TimeoutStopSec=60s', 'SystemCallErrorNumber=EPERM', 'User=perimeter']) {
      assert.ok(unit.split('\n').includes(line), `${line} in the unit`);
    }
    assert.match(unit, /^ExecStart=\/\S+\/node \/usr\/local\/lib\/perimeter\/perimeter\.js worker --environment-id env_service_test --home \/var\/lib\/perimeter --drain-timeout-ms 30000 --metrics 127\.0\.0\.1:9464$/m);
    const decrypted = spawnSync('systemd-creds', ['decrypt', '--name=environment-key', '-', '-'], {
      input: credentialBlob(unit), encoding: 'utf8', env: { ...process.env, SYSTEMD_CREDENTIAL_SECRET: path.join(root, 'var/lib/systemd/credential.secret') },
    });
    assert.equal(decrypted.status, 0, decrypted.stderr);
    assert.equal(decrypted.stdout, KEY);
    assert.ok(lstatSync(path.join(root, 'etc/systemd/system/multi-user.target.wants/perimeter.service')).isSymbolicLink(), 'enabled');
    assert.ok(existsSync(path.join(root, 'usr/local/lib/perimeter/perimeter.js')), 'the bundle was copied where ProtectHome= cannot hide it');
    assert.ok(existsSync(path.join(root, 'usr/local/lib/perimeter/guest/perimeter-journal-send')));
    const status = runCli(['service', 'status', '--system', '--root', root, '--json'], { HOME: '/home/tester' });
    assert.equal((await status.exit).code, 0, status.stderr());
    assert.deepEqual({ ...JSON.parse(status.stdout()), unitFile: null }, { scope: 'system', installed: true, unitFile: null, environmentId: 'env_service_test', credential: 'encrypted', enabled: 'enabled', active: null });
    const un = runCli(['service', 'uninstall', '--system', '--root', root], { HOME: '/home/tester' });
    assert.equal((await un.exit).code, 0, un.stderr());
    assert.equal(existsSync(unitFile), false);
    assert.equal(existsSync(path.join(root, 'etc/systemd/system/multi-user.target.wants/perimeter.service')), false);
    assert.equal(existsSync(path.join(root, 'usr/local/lib/perimeter')), false);
    assert.equal((await runCli(['service', 'status', '--system', '--root', root], { HOME: '/home/tester' }).exit).code, 3);
  });

  it('LoadCredential= from a root-only file; the worker run as the unit runs it reads $CREDENTIALS_DIRECTORY and serves the queue', async () => {
    dq = await startDevQueue();
    const root = path.join(dir, 'root');
    const runtime = path.join(dir, 'run');
    mkdirSync(runtime, { mode: 0o700 });
    const c = runCli(['service', 'install', '--root', root, '--system', '--run-as', 'root', '--environment-id', dq.environmentId, '--key-stdin', '--credential', 'file'], { HOME: '/home/tester' }, `${dq.environmentKey}\n`);
    assert.equal((await c.exit).code, 0, c.stderr());
    const unitFile = path.join(root, 'etc/systemd/system/perimeter.service');
    const unit = readFileSync(unitFile, 'utf8');
    assert.deepEqual(verify(unitFile, 'system', runtime), { code: 0, output: '' });
    assert.match(unit, /^LoadCredential=environment-key:\/etc\/perimeter\/credentials\/environment-key$/m);
    assert.doesNotMatch(unit, /^User=/m, '--run-as root');
    const credFile = path.join(root, 'etc/perimeter/credentials/environment-key');
    assert.equal(statSync(credFile).mode & 0o777, 0o600);
    assert.equal(statSync(path.dirname(credFile)).mode & 0o777, 0o700);
    assert.equal(readFileSync(credFile, 'utf8'), `${dq.environmentKey}\n`);

    // What systemd does at start: the credential in a private directory, $CREDENTIALS_DIRECTORY, then ExecStart.
    const creds = path.join(dir, 'credentials');
    mkdirSync(creds, { mode: 0o700 });
    writeFileSync(path.join(creds, 'environment-key'), readFileSync(credFile));
    chmodSync(path.join(creds, 'environment-key'), 0o400);
    const argv = /^ExecStart=(.*)$/m.exec(unit)![1]!.split(' ');
    assert.equal(argv[1], '/usr/local/lib/perimeter/perimeter.js');
    argv[1] = path.join(root, argv[1]!);
    argv[argv.indexOf('--home') + 1] = path.join(dir, 'state');
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'echo served-by-the-unit' }, expectIncludes: ['served-by-the-unit'] }]));
    const worker = spawn(argv[0]!, [...argv.slice(1), '--base-url', dq.baseUrl, '--driver', 'process', '--no-control', '--max-idle-ms', '800'], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, CREDENTIALS_DIRECTORY: creds }, stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    worker.stderr!.on('data', (d) => { stderr += d; });
    try {
      await dq.waitFor(() => dq!.report(sid).finished || worker.exitCode !== null, 60_000, 'the session');
      assert.equal(dq.report(sid).steps[0]!.status, 'passed', stderr);
      assert.ok(!stderr.includes(dq.environmentKey), 'the key is not logged');
    } finally {
      worker.kill('SIGTERM');
      await new Promise((r) => worker.once('exit', r));
    }
  });

  it('user unit: ~/.config/systemd/user, a credential file in the user\'s config, verified as a user unit', async () => {
    const root = path.join(dir, 'root');
    const runtime = path.join(dir, 'run');
    mkdirSync(runtime, { mode: 0o700 });
    await install(root, ['--user', '--environment-id', 'env_user_test', '--key-stdin']);
    const unitFile = path.join(root, 'home/tester/.config/systemd/user/perimeter.service');
    const unit = readFileSync(unitFile, 'utf8');
    assert.deepEqual(verify(unitFile, 'user', runtime), { code: 0, output: '' });
    assert.match(unit, /^LoadCredential=environment-key:\/home\/tester\/\.config\/perimeter\/credentials\/environment-key$/m);
    assert.match(unit, /^ReadWritePaths=\/home\/tester\/\.local\/state\/perimeter$/m);
    assert.match(unit, /^ExecStart=\S+ \S*perimeter\.js worker --environment-id env_user_test --home \/home\/tester\/\.local\/state\/perimeter /m);
    assert.match(unit, /^WantedBy=default\.target$/m);
    assert.doesNotMatch(unit, /^User=/m);
    assert.equal(readFileSync(path.join(root, 'home/tester/.config/perimeter/credentials/environment-key'), 'utf8'), `${KEY}\n`);
  });

  it('the verify check bites: a unit with an unknown directive or syscall group is reported', () => {
    const runtime = path.join(dir, 'run');
    mkdirSync(runtime, { mode: 0o700 });
    const good = renderUnit({ scope: 'system', node: process.execPath, cli: CLI, environmentId: 'env_x', home: '/var/lib/perimeter', runAs: 'perimeter', kvmGroup: false, credential: { kind: 'file', path: '/etc/perimeter/credentials/environment-key' }, drainTimeoutMs: 30_000 });
    const file = path.join(dir, 'perimeter.service');
    writeFileSync(file, good);
    assert.deepEqual(verify(file, 'system', runtime), { code: 0, output: '' });
    writeFileSync(file, good.replace('NoNewPrivileges=yes', 'NoNewPrivilege=yes'));
    assert.match(verify(file, 'system', runtime).output, /Unknown key 'NoNewPrivilege'/);
    writeFileSync(file, good.replace(SYSCALL_FILTER.allow.join(' '), '@system-servce'));
    assert.match(verify(file, 'system', runtime).output, /Unknown system call group/);
  });

  it('no input can add a directive: ids are checked, Exec arguments quoted and escaped', () => {
    const spec = { scope: 'system' as const, node: '/usr/bin/node', cli: '/opt/p/perimeter.js', environmentId: 'env_x', home: '/var/lib/perimeter', kvmGroup: true, credential: { kind: 'file' as const, path: '/etc/k' }, drainTimeoutMs: 30_000 };
    assert.throws(() => renderUnit({ ...spec, environmentId: 'env_x\nExecStartPre=/bin/sh' }), /environment id/);
    assert.throws(() => renderUnit({ ...spec, metrics: '127.0.0.1:1\nUser=root' }));
    assert.equal(unitQuote('/opt/my dir/perimeter.js'), '"/opt/my dir/perimeter.js"');
    assert.equal(unitQuote('50%$HOME'), '"50%%$$HOME"');
    assert.throws(() => unitQuote('a\nb'), /cannot put/);
    assert.match(renderUnit({ ...spec, cli: '/opt/my dir/perimeter.js' }), /^ExecStart=\/usr\/bin\/node "\/opt\/my dir\/perimeter\.js" worker /m);
  });
});
