// An SSH host where the companion runs as a systemd service (`perimeter service install --user`): the extension's
// SshHost starts it with `systemctl --user start`, sends neither key nor launch file, finds its control API, reads its
// log from `systemctl status`, and stops it with `systemctl stop` when it does not stop by itself; a host without the
// service is left to the usual detached start. `ssh` here runs the fixed remote script in a local `sh` (as the remote
// login shell would), and `systemctl` is a stand-in for systemd (not PID 1 here) that starts the built CLI exactly as
// the unit's ExecStart with the key in $CREDENTIALS_DIRECTORY, and logs every call.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { DevQueue } from '../../companion/devqueue/server';
import { setStderrLogging } from '../../companion/log';
import { SshHost } from '../../extension/launcher/sshHost';
import type { WorkerSettings } from '../../extension/launcher/workerHost';
import { CLI, rmDir, scenario, startDevQueue, tmpDir } from '../worker/helpers';

const SETTINGS: WorkerSettings = { mode: 'environment', environmentId: 'env_from_vscode', concurrency: 2, driver: 'process', persistDefaults: ['/workspace'], egressAllow: [], logLevel: 'info' };

describe('SSH host with the companion as a systemd service', function () {
  this.timeout(90_000);
  let dir: string;
  let dq: DevQueue;
  let host: SshHost;
  beforeEach(async () => {
    setStderrLogging(false);
    dir = tmpDir('perimeter-ssh-service-');
    dq = await startDevQueue();
  });
  afterEach(async () => {
    host?.dispose();
    const pidFile = path.join(dir, 'service.pid');
    if (existsSync(pidFile)) { try { process.kill(Number(readFileSync(pidFile, 'utf8')), 'SIGKILL'); } catch { /* gone */ } }
    await dq.close();
    rmDir(dir);
  });

  /** A fake `ssh` (runs the remote command locally) and `systemctl` (a user unit when `installed`). */
  function fakeHost(installed: boolean): { calls: () => string[]; home: string } {
    const bin = path.join(dir, 'bin');
    const home = path.join(dir, 'home');
    const creds = path.join(dir, 'credentials');
    mkdirSync(bin, { recursive: true });
    mkdirSync(creds, { recursive: true, mode: 0o700 });
    writeFileSync(path.join(creds, 'environment-key'), `${dq.environmentKey}\n`, { mode: 0o400 });
    const log = path.join(dir, 'systemctl.log');
    const state = path.join(home, '.local/state/perimeter');
    const execStart = [process.execPath, CLI, 'worker', '--environment-id', dq.environmentId, '--home', state, '--base-url', dq.baseUrl, '--driver', 'process'].join(' ');
    writeFileSync(path.join(bin, 'ssh'), `#!/bin/sh\nfor last; do :; done\nHOME=${home} PATH=${bin}:$PATH exec sh -c "$last"\n`);
    writeFileSync(path.join(bin, 'systemctl'), [
      '#!/bin/sh', `echo "$*" >> ${log}`,
      'case "$*" in',
      `  "--user cat perimeter.service") ${installed ? 'exit 0' : 'exit 1'};;`,
      `  "--user start perimeter.service") (cd ${dir} && CREDENTIALS_DIRECTORY=${creds} exec ${execStart}) > ${dir}/service.log 2>&1 < /dev/null & echo $! > ${dir}/service.pid; exit 0;;`,
      `  "--user stop perimeter.service") kill -TERM $(cat ${dir}/service.pid); while kill -0 $(cat ${dir}/service.pid) 2>/dev/null; do sleep 0.1; done; exit 0;;`,
      '  "--user status perimeter.service --no-pager --full --lines=200") echo "* perimeter.service - Perimeter companion"; echo "     Active: active (running)"; exit 0;;',
      'esac', 'exit 1', '',
    ].join('\n'));
    for (const f of ['ssh', 'systemctl']) chmodSync(path.join(bin, f), 0o755);
    mkdirSync(home, { recursive: true });
    host = new SshHost({ target: { host: 'box', remoteDir: '.perimeter' }, bundle: () => { throw new Error('the service host needs no bundle install'); }, sshPath: path.join(bin, 'ssh') });
    return { calls: () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []), home };
  }

  it('starts the service with systemctl (no key, no launch file), serves through it, reads its status, stops it by name', async () => {
    const { calls, home } = fakeHost(true);
    assert.equal(await host.serviceScope(), 'user');
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'echo via-the-service' }, expectIncludes: ['via-the-service'] }]));
    await host.startWorker(SETTINGS, 'sk-ant-env01-never-sent-0123456789');
    assert.ok(calls().includes('--user start perimeter.service'), calls().join('\n'));
    assert.equal(existsSync(path.join(home, '.local/state/perimeter/launch.json')), false, 'the service keeps its own settings');
    assert.ok(!readFileSync(path.join(dir, 'service.log'), 'utf8').includes('never-sent'));
    await dq.waitFor(() => dq.report(sid).finished, 60_000, 'the session');
    assert.equal(dq.report(sid).steps[0]!.status, 'passed');
    assert.match(await host.logTail(), /perimeter\.service - Perimeter companion/);
    await host.forceStop();
    assert.ok(calls().includes('--user stop perimeter.service'));
    const pid = Number(readFileSync(path.join(dir, 'service.pid'), 'utf8'));
    assert.throws(() => process.kill(pid, 0), /ESRCH/, 'the service\'s worker is gone');
  });

  it('a host without the service: no systemctl start, the usual detached start (which needs the bundle)', async () => {
    const { calls } = fakeHost(false);
    assert.equal(await host.serviceScope(), null);
    await assert.rejects(host.startWorker(SETTINGS, 'sk-ant-env01-key-0123456789'), /bundle install|Node/);
    assert.ok(!calls().some((c) => c.includes('start')), calls().join('\n'));
  });
});
