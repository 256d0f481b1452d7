// SSH command lines, the fixed remote scripts (run here through a real `sh`, as the remote login shell would), the
// companion bundle archive (unpacked by the system `tar`), and input validation.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync, statSync, rmSync, existsSync, lstatSync, realpathSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { scriptArgs, tunnelArgs, validateHost, validateRemoteDir, sshConfigHosts, REMOTE_SCRIPTS, type RemoteScript } from '../../extension/launcher/ssh';
import { packTar, readCompanionBundle, needsInstall } from '../../extension/launcher/bundle';
import { defaultHome } from '../../companion/config';
import { validateKeyInput, validatePersistPath, validateEnvironmentId } from '../../extension/validation';
import { doctorFacts, parseDoctorOutput, summarizeDoctor } from '../../extension/launcher/doctor';
import { doctorUriPath, parseDoctorUriPath, renderDoctorReport } from '../../extension/documents/doctorReport';
import { launchFor, workerStartFailure, type WorkerSettings } from '../../extension/launcher/workerHost';

const target = { host: 'box', remoteDir: '.perimeter' };

/** Runs what ssh would hand to the remote login shell (everything after the destination), with HOME=home. */
function runRemote(home: string, script: RemoteScript, stdin: string | Buffer = '', env: Record<string, string> = {}) {
  const argv = scriptArgs(target, script);
  const remoteCommand = argv.slice(argv.indexOf('box') + 1).join(' ');
  return spawnSync('sh', ['-c', remoteCommand], { env: { PATH: process.env.PATH, HOME: home, ...env }, input: stdin, cwd: home });
}

/** The companion's default state directory for a remote user whose home is `home` (config.ts defaultHome). */
const stateDir = (home: string) => path.join(home, '.local', 'state', 'perimeter');

describe('ssh command lines', () => {
  it('rejects hosts that could become options or shell syntax (V1)', () => {
    for (const bad of ['-oProxyCommand=touch pwned', '-p22', 'a b', 'a;b', '`x`', '$(x)', 'a\nb', "a'b", '', 'a|b', 'a/b']) {
      assert.throws(() => validateHost(bad), /refusing SSH host/, JSON.stringify(bad));
      assert.throws(() => scriptArgs({ ...target, host: bad }, 'probe'), /refusing/);
    }
    for (const good of ['box', 'user@box.example.com', 'gpu-01', '10.0.0.7']) assert.equal(validateHost(good), good);
  });

  it('puts "--" right before the destination and never lets input become an -o option', () => {
    for (const script of Object.keys(REMOTE_SCRIPTS) as RemoteScript[]) {
      const argv = scriptArgs({ ...target, configFile: '/tmp/cfg' }, script);
      assert.equal(argv[argv.indexOf('box') - 1], '--');
      assert.equal(argv.indexOf('box'), argv.length - 2, 'one remote command after the host');
      assert.deepEqual(argv.slice(0, 2), ['-F', '/tmp/cfg']);
      assert.ok(argv.includes('BatchMode=yes'));
      assert.ok(!argv.some((a) => /StrictHostKeyChecking=no/.test(a)));
    }
    const t = tunnelArgs(target, 40000, 41000);
    assert.deepEqual(t.slice(-4), ['-L', '127.0.0.1:40000:127.0.0.1:41000', '--', 'box']);
    assert.throws(() => tunnelArgs(target, 0, 1), /bad port/);
  });

  it('keeps the remote command fixed: settings and secrets never reach it', () => {
    const a = scriptArgs(target, 'startEnvironment').at(-1)!;
    assert.equal(a, scriptArgs({ ...target, configFile: '/other' }, 'startEnvironment').at(-1));
    assert.doesNotMatch(a, /sk-ant|environment-id|concurrency/);
  });

  it('accepts only plain relative remote directories', () => {
    assert.equal(validateRemoteDir('.perimeter'), '.perimeter');
    assert.equal(validateRemoteDir('tools/perimeter/'), 'tools/perimeter');
    for (const bad of ['/abs', '../up', 'a/../b', 'a b', "a'b", '$HOME', '-x', '']) assert.throws(() => validateRemoteDir(bad), /refusing remote directory/, bad);
  });

  it('lists concrete host aliases from an ssh config', () => {
    const cfg = 'Host *\n  ServerAliveInterval 5\nHost gpu gpu-2 # two\n  HostName 10.0.0.2\nhost !bad *.corp build\nMatch exec "x"\n';
    assert.deepEqual(sshConfigHosts(cfg), ['gpu', 'gpu-2', 'build']);
  });
});

describe('remote scripts, run through sh', () => {
  let home: string;
  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-remote-')); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('installs a bundle from a tar stream, replaces it atomically and reports its version', () => {
    const dist = mkdtempSync(path.join(os.tmpdir(), 'perimeter-ext-'));
    mkdirSync(path.join(dist, 'dist', 'guest'), { recursive: true });
    writeFileSync(path.join(dist, 'dist', 'perimeter.js'), '#!/usr/bin/env node\nconsole.log("companion")\n');
    writeFileSync(path.join(dist, 'dist', 'guest', 'perimeter-agent'), Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 1, 2]), { mode: 0o755 });
    const bundle = readCompanionBundle(dist, '0.1.0');
    assert.match(bundle.version, /^0\.1\.0 [0-9a-f]{16}$/);
    assert.equal(runRemote(home, 'probe').stdout.toString().split('\n')[0], 'none');
    const r = runRemote(home, 'install', packTar(bundle.files));
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(r.stdout.toString().trim(), bundle.version);
    const bin = path.join(home, '.perimeter', 'bin');
    assert.equal(readFileSync(path.join(bin, 'perimeter.js'), 'utf8'), readFileSync(path.join(dist, 'dist', 'perimeter.js'), 'utf8'));
    assert.deepEqual(readFileSync(path.join(bin, 'guest', 'perimeter-agent')), Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 1, 2]));
    assert.equal(statSync(path.join(bin, 'perimeter.js')).mode & 0o111, 0o111, 'executable bit kept');
    const probe = runRemote(home, 'probe').stdout.toString().split('\n');
    assert.equal(needsInstall(probe[0]!, bundle), false);
    assert.match(probe[1]!, /^v\d+/);
    writeFileSync(path.join(dist, 'dist', 'perimeter.js'), 'changed');
    assert.equal(needsInstall(probe[0]!, readCompanionBundle(dist, '0.1.0')), true, 'another build is detected');
    rmSync(dist, { recursive: true, force: true });
  });

  it('waits for a PID given on stdin and rejects anything but digits', () => {
    assert.equal(runRemote(home, 'waitExit', '999999999\n').status, 0, 'a gone process');
    assert.equal(runRemote(home, 'waitExit', '1; touch /tmp/x\n').status, 2);
    assert.equal(runRemote(home, 'waitExit', '\n').status, 2);
  });

  it('writes the worker\'s launch file from stdin with mode 0600, leaving config.json alone', () => {
    const settings: WorkerSettings = { mode: 'environment', environmentId: 'env_1', concurrency: 3, driver: 'qemu', persistDefaults: ['/workspace'], egressAllow: ['pypi.org'], logLevel: 'debug' };
    mkdirSync(stateDir(home), { recursive: true });
    const userConfig = '{"sandbox":{"poolSize":5}}';
    writeFileSync(path.join(stateDir(home), 'config.json'), userConfig);
    const r = runRemote(home, 'writeLaunch', JSON.stringify(launchFor(settings, false)));
    assert.equal(r.status, 0, r.stderr.toString());
    const file = path.join(stateDir(home), 'launch.json');
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { queue: { kind: 'environment', environmentId: 'env_1' }, concurrency: 3, logLevel: 'debug', sandboxDriver: 'qemu', persistDefaults: ['/workspace'], egressAllow: ['pypi.org'] });
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.doesNotMatch(readFileSync(file, 'utf8'), /key/i);
    assert.equal(readFileSync(path.join(stateDir(home), 'config.json'), 'utf8'), userConfig, 'the user\'s config.json is untouched');
  });

  it('starts the worker detached with the key on its stdin, not in argv, and finds it through control.json', async () => {
    // A stand-in companion: records its argv and stdin, writes control.json, then waits to be killed.
    const bin = path.join(home, '.perimeter', 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(path.join(bin, 'perimeter.js'), `
      const fs = require('fs'); const path = require('path');
      const home = process.argv[process.argv.indexOf('--home') + 1];
      let stdin = ''; process.stdin.on('data', (d) => stdin += d).on('end', () => {
        fs.writeFileSync(path.join(home, 'record.json'), JSON.stringify({ argv: process.argv.slice(2), stdin, env: process.env }));
        fs.writeFileSync(path.join(home, 'control.json'), JSON.stringify({ port: 4242, token: 'a'.repeat(43), pid: process.pid, version: 't' }));
      });
      setInterval(() => {}, 1000);`);
    assert.equal(runRemote(home, 'endpoint').status, 3, 'no worker yet');
    const key = 'sk-ant-test-' + 'k'.repeat(30);
    const r = runRemote(home, 'startEnvironment', `${key}\n`, { ANTHROPIC_ENVIRONMENT_KEY: 'sk-ant-from-the-login-environment' });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.match(r.stdout.toString(), /^started \d+$/m, 'the worker\'s PID is printed');
    const record = path.join(stateDir(home), 'record.json');
    const control = path.join(stateDir(home), 'control.json');
    for (let i = 0; i < 100 && !existsSync(control); i++) await new Promise((res) => setTimeout(res, 50));
    const rec = JSON.parse(readFileSync(record, 'utf8'));
    assert.equal(rec.stdin, `${key}\n`);
    assert.deepEqual(rec.argv, ['worker', '--home', stateDir(home), '--launch', path.join(stateDir(home), 'launch.json'), '--key-stdin']);
    assert.ok(!JSON.stringify(rec.env).includes(key), 'the key is not in the worker\'s environment');
    const ep = runRemote(home, 'endpoint');
    assert.equal(ep.status, 0);
    const pid = JSON.parse(ep.stdout.toString()).pid as number;
    process.kill(pid, 'SIGTERM');
    for (let i = 0; i < 100 && runRemote(home, 'endpoint').status !== 3; i++) await new Promise((res) => setTimeout(res, 50));
    assert.equal(runRemote(home, 'endpoint').status, 3, 'a stale control.json (dead pid) is no worker');
  });
});

describe('remote environment check', () => {
  let home: string;
  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-remote-')); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('hands the key to the CLI on stdin and the ID as a checked argument; refuses an ID with other characters', () => {
    const bin = path.join(home, '.perimeter', 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(path.join(bin, 'perimeter.js'), `
      let stdin = ''; process.stdin.on('data', (d) => stdin += d).on('end', () => {
        process.stdout.write(JSON.stringify({ argv: process.argv.slice(2), stdin, envHasKey: JSON.stringify(process.env).includes(stdin.trim()) }));
      });`);
    const key = 'sk-ant-test-' + 'k'.repeat(30);
    const r = runRemote(home, 'checkEnvironment', `${key}\nenv_01ABC\n`);
    assert.equal(r.status, 0, r.stderr.toString());
    const rec = JSON.parse(r.stdout.toString());
    assert.deepEqual(rec.argv, ['environment', 'check', '--environment-id', 'env_01ABC', '--key-stdin', '--json', '--home', stateDir(home)]);
    assert.equal(rec.stdin, `${key}\n`);
    assert.equal(rec.envHasKey, false);
    for (const bad of ['env;touch pwned', '$(id)', '', '-x']) {
      const refused = runRemote(home, 'checkEnvironment', `${key}\n${bad}\n`);
      assert.equal(refused.status, 2, bad);
      assert.match(refused.stderr.toString(), /refusing environment id/);
    }
  });
});

describe('remote worker that refuses to start', () => {
  let home: string;
  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-remote-')); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('is seen to exit (alive by PID) and its log gives the reason the extension shows', async () => {
    const bin = path.join(home, '.perimeter', 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(path.join(bin, 'perimeter.js'), 'console.error("INFO  [cli] starting"); console.error("perimeter worker: no microVM sandbox can run here (fix: perimeter template build)"); process.exit(1);');
    const r = runRemote(home, 'startLocalQueue');
    assert.equal(r.status, 0, r.stderr.toString());
    const pid = /^started (\d+)$/m.exec(r.stdout.toString())![1]!;
    let alive = 0;
    for (let i = 0; i < 100 && (alive = runRemote(home, 'alive', `${pid}\n`).status ?? -1) === 0; i++) await new Promise((res) => setTimeout(res, 50));
    assert.equal(alive, 3, 'a worker that exited is reported gone');
    assert.equal(runRemote(home, 'alive', '1; touch /tmp/x\n').status, 2, 'anything but digits is refused');
    const log = runRemote(home, 'log').stdout.toString();
    assert.equal(workerStartFailure(log), 'no microVM sandbox can run here (fix: perimeter template build)');
    assert.equal(workerStartFailure('INFO  [cli] starting\nsomething else'), null);
  });
});

describe('remote state directory', () => {
  let home: string;
  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-remote-')); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  /** The --home every CLI script passes, read from a stand-in companion that prints its argv. */
  const cliHome = (env: Record<string, string> = {}) => {
    const bin = path.join(home, '.perimeter', 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(path.join(bin, 'perimeter.js'), 'console.log(process.argv[process.argv.indexOf("--home") + 1])\n');
    const homes = (['templateBuild', 'doctor'] as const).map((s) => {
      const r = runRemote(home, s, '', env);
      assert.equal(r.status, 0, r.stderr.toString());
      return r.stdout.toString().trim();
    });
    assert.equal(homes[0], homes[1], 'Build Template and the doctor use one state directory');
    return homes[0]!;
  };

  it('is the companion\'s own default, as for a command typed on the host: $PERIMETER_HOME, else XDG, else ~/.local/state', () => {
    assert.equal(cliHome(), stateDir(home));
    for (const env of [{ XDG_STATE_HOME: path.join(home, 'xdg') } as Record<string, string>, { PERIMETER_HOME: path.join(home, 'custom') }, { PERIMETER_HOME: path.join(home, 'custom'), XDG_STATE_HOME: '/elsewhere' }]) {
      assert.equal(cliHome(env), defaultHome(env), JSON.stringify(env));
    }
    assert.equal(cliHome({ PERIMETER_HOME: 'rel/state' }), path.join(home, 'rel/state'), 'relative to the remote home, where the CLI starts');
  });

  it('takes over the state an older extension kept in ~/.perimeter/home, once, leaving a symlink', () => {
    const old = path.join(home, '.perimeter', 'home');
    mkdirSync(path.join(old, 'templates', 'abc'), { recursive: true });
    writeFileSync(path.join(old, 'templates', 'current'), 'abc');
    assert.equal(cliHome(), stateDir(home));
    assert.equal(readFileSync(path.join(stateDir(home), 'templates', 'current'), 'utf8'), 'abc', 'templates, cache and sessions moved');
    assert.ok(lstatSync(old).isSymbolicLink(), 'the old path still leads to the state (a worker running there keeps working)');
    assert.equal(realpathSync(old), realpathSync(stateDir(home)));
    assert.equal(cliHome(), stateDir(home), 'later scripts find it in place');
    assert.ok(lstatSync(old).isSymbolicLink());
  });

  it('leaves ~/.perimeter/home alone when the state directory already exists (never merges two)', () => {
    const old = path.join(home, '.perimeter', 'home');
    mkdirSync(old, { recursive: true });
    writeFileSync(path.join(old, 'marker'), 'old');
    mkdirSync(stateDir(home), { recursive: true });
    assert.equal(cliHome(), stateDir(home), 'an existing state directory wins');
    assert.equal(readFileSync(path.join(old, 'marker'), 'utf8'), 'old', 'the old directory is left alone');
    assert.equal(existsSync(path.join(stateDir(home), 'marker')), false);
  });
});

describe('bundle archive', () => {
  it('is a tar archive the system tar lists exactly', () => {
    const tar = packTar([{ name: 'a.txt', data: Buffer.from('A'), mode: 0o644 }, { name: 'guest/b', data: Buffer.alloc(1000, 1), mode: 0o755 }]);
    assert.equal(tar.length % 512, 0);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-tar-'));
    writeFileSync(path.join(dir, 'x.tar'), tar);
    assert.deepEqual(execFileSync('tar', ['-tf', path.join(dir, 'x.tar')]).toString().trim().split('\n'), ['a.txt', 'guest/b']);
    rmSync(dir, { recursive: true, force: true });
    assert.throws(() => packTar([{ name: '../evil', data: Buffer.alloc(0), mode: 0o644 }]), /bad archive member/);
  });
});

describe('input validation', () => {
  it('checks keys, environment IDs and persist paths', () => {
    assert.equal(validateKeyInput('sk-ant-' + 'x'.repeat(40)), undefined);
    assert.match(validateKeyInput('short')!, /does not look/);
    assert.match(validateKeyInput('sk-ant-aaaa bbbbbbbbbbbbbbbbbbbb')!, /spaces/);
    assert.equal(validateEnvironmentId('env_01ABC'), undefined);
    assert.match(validateEnvironmentId('env 1')!, /letters/);
    assert.equal(validatePersistPath('/data'), undefined);
    assert.match(validatePersistPath('data')!, /absolute/);
    assert.match(validatePersistPath('/a/../etc')!, /\.\./);
    assert.match(validatePersistPath('/data', ['/data'])!, /already/);
  });

  it('reads doctor output with its schema; the summary, the toast and the report count the same problems', () => {
    const check = (name: string, ok: boolean, severity: 'error' | 'warning', fix: string | null = null) => ({ name, ok, severity, detail: `${name} detail`, fix });
    const report = parseDoctorOutput({ code: 0, stderr: '', stdout: JSON.stringify({ ok: true, checks: [
      check('node', true, 'error'), check('kvm', false, 'warning', 'sudo setfacl -m u:ann:rw /dev/kvm'), check('ripgrep', false, 'warning', 'sudo apt-get install ripgrep'),
      check('disk', false, 'warning'), check('driver:firecracker', false, 'warning'), check('template', true, 'error'),
    ], confinement: { mode: 'jail' } }) });
    assert.deepEqual(doctorFacts(report), { kvm: false, template: true });
    const s = summarizeDoctor(report);
    assert.equal(s.headline, 'ready, with 4 warnings', '"ok": true with warnings is not "no problems"');
    assert.deepEqual(s.warnings.map((c) => c.name), ['kvm', 'ripgrep', 'disk', 'driver:firecracker'], 'none cut off');
    const text = renderDoctorReport('kvmbox', report, new Date(0));
    assert.match(text, /\*\*kvmbox: ready, with 4 warnings\.\*\*/);
    assert.match(text, /### ⚠ kvm \(warning\)\n\nkvm detail\n\n\*\*Fix:\*\* sudo setfacl -m u:ann:rw \/dev\/kvm/);
    assert.equal((text.match(/^### /gm) ?? []).length, 4, 'one section per problem');
    assert.match(summarizeDoctor({ ok: false, checks: [check('template', false, 'error', 'node ~/.perimeter/bin/perimeter.js template build')] }).headline, /^1 error: tool calls cannot run/);
    assert.throws(() => parseDoctorOutput({ code: 1, stdout: '', stderr: 'node: not found' }), /the doctor did not run: node: not found/);
    assert.throws(() => parseDoctorOutput({ code: 0, stdout: '{"kvm":{"status":"ok"}}', stderr: '' }), /not in the expected form/);
    assert.equal(parseDoctorUriPath(doctorUriPath('ssh:ann@kvmbox')), 'ssh:ann@kvmbox');
  });
});

