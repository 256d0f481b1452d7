// SSH remote-host tests in the real extension host, against a throw-away sshd on 127.0.0.1 (started by
// test/extension/ssh.test.ts with harness/sshd.sh; its SSH_TEST_* variables reach the extension host through
// code-server's environment). The "remote" host is this machine reached through ssh, with the companion installed in
// a fresh directory under the remote home and its state in a fresh directory (the login environment's PERIMETER_HOME,
// set with the ssh_config's SetEnv): the extension installs the bundle, starts the worker, sees its sessions,
// survives the tunnel's ssh process being killed, and stops the worker.
import * as vscode from 'vscode';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync, existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PerimeterApi } from '../../../extension/extension';
import type { SshHost } from '../../../extension/launcher/sshHost';
import { until, untilLogged } from './helpers';

const ALIAS = 'perimeter-test-host';
const HOST_ID = `ssh:${ALIAS}`;

describe('Perimeter on an SSH host', function () {
  let api: PerimeterApi;
  let remoteDir: string;
  let remoteState: string;
  let sshConfig: string;
  const cfg = () => vscode.workspace.getConfiguration('perimeter');
  const env = process.env;
  /** The ssh_config for the test host, replaced at once; another port makes the host unreachable (an SSH outage). */
  const writeConfig = (port: string) => { writeFileSync(`${sshConfig}.new`, [
    `Host ${ALIAS}`,
    `  HostName ${env.SSH_TEST_HOST}`, `  Port ${port}`, `  User ${env.SSH_TEST_USER}`,
    `  IdentityFile ${env.SSH_TEST_KEY}`, '  IdentitiesOnly yes',
    `  UserKnownHostsFile ${env.SSH_TEST_KNOWN_HOSTS}`, '  StrictHostKeyChecking yes',
    `  SetEnv PERIMETER_HOME=${remoteState}`, '',
  ].join('\n')); renameSync(`${sshConfig}.new`, sshConfig); };

  before(async function () {
    if (!env.SSH_TEST_PORT) { this.skip(); return; }   // the Node-side runner always sets it; see test/extension/ssh.test.ts
    api = await vscode.extensions.getExtension<PerimeterApi>('perimeter.perimeter')!.activate();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-sshcfg-'));
    sshConfig = path.join(dir, 'ssh_config');
    remoteState = path.join(dir, 'remote-state');
    writeConfig(env.SSH_TEST_PORT!);
    remoteDir = `.perimeter-test-${process.pid}-${Date.now()}`;
    await cfg().update('sandboxDriver', 'process', vscode.ConfigurationTarget.Global);
    await cfg().update('ssh.configFile', sshConfig, vscode.ConfigurationTarget.Global);
    await cfg().update('ssh.remoteDirectory', remoteDir, vscode.ConfigurationTarget.Global);
    // Select Host with a typed host adds it to perimeter.hosts and selects it (no quick pick needed).
    assert.equal(await vscode.commands.executeCommand('perimeter.selectHost', ALIAS), HOST_ID);
    assert.ok(api.registry.get(HOST_ID), 'the SSH host has a supervisor');
  });

  after(async () => {
    if (!api) return;
    if (api.registry.get(HOST_ID)?.isRunning) await vscode.commands.executeCommand('perimeter.stopWorker', HOST_ID);
    await cfg().update('hosts', undefined, vscode.ConfigurationTarget.Global);
    await api.registry.select('local');
    rmSync(path.join(os.homedir(), remoteDir), { recursive: true, force: true });
    rmSync(path.dirname(sshConfig), { recursive: true, force: true });
  });

  it('refuses a host that would be read as an ssh option', async () => {
    assert.equal(await vscode.commands.executeCommand('perimeter.selectHost', '-oProxyCommand=touch /tmp/pwned'), undefined);
    assert.ok(!cfg().get<string[]>('hosts')!.some((h) => h.startsWith('-')));
  });

  it('upgrades an older companion over SSH and starts it remotely; its sessions appear', async () => {
    // An older install on the "remote" host: it must be replaced, not used.
    const bin = path.join(os.homedir(), remoteDir, 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(path.join(bin, 'VERSION'), '0.0.1 0000000000000000\n');
    writeFileSync(path.join(bin, 'perimeter.js'), 'process.exit(9)\n');
    assert.equal(await vscode.commands.executeCommand('perimeter.tryLocally', HOST_ID), true);
    const ext = vscode.extensions.getExtension('perimeter.perimeter')!;
    const installed = readFileSync(path.join(os.homedir(), remoteDir, 'bin', 'perimeter.js'));
    assert.ok(installed.equals(readFileSync(path.join(ext.extensionPath, 'dist', 'perimeter.js'))), 'the bundle was copied over ssh');
    assert.match(readFileSync(path.join(os.homedir(), remoteDir, 'bin', 'VERSION'), 'utf8'), /^\d+\.\d+\.\d+ [0-9a-f]{16}\n$/);
    assert.equal(api.model.host(HOST_ID)!.connection, 'connected');
    await until(api, () => api.model.sessionList(HOST_ID).length > 0 && api.model.sessionList(HOST_ID)[0]!.calls.size >= 3);
    await untilLogged(api, (l) => l.includes(`[${ALIAS}] installing the companion`) && l.includes('remote had: 0.0.1'));
  });

  it('survives the SSH connection being cut: it reconnects to the same remote worker', async () => {
    const sup = api.registry.get(HOST_ID)!;
    const host = sup.host as SshHost;
    const remotePid = JSON.parse(readFileSync(path.join(remoteState, 'control.json'), 'utf8')).pid as number;
    const tunnel = host.tunnelPid;
    assert.ok(tunnel, 'an ssh tunnel carries the control socket');
    const callsBefore = api.model.sessionList(HOST_ID)[0]!.calls.size;
    process.kill(tunnel, 'SIGKILL');
    await until(api, () => api.model.host(HOST_ID)!.connection === 'reconnecting');
    assert.ok(api.model.sessionList(HOST_ID)[0]!.calls.size >= callsBefore, 'history stays visible');
    await until(api, () => api.model.host(HOST_ID)!.connection === 'connected');
    assert.notEqual(host.tunnelPid, tunnel, 'a new tunnel');
    assert.equal(api.model.host(HOST_ID)!.facts!.pid, remotePid, 'the same remote worker (not restarted)');
    assert.equal(api.model.host(HOST_ID)!.restarts, 0);
  });

  it('after an SSH outage says "SSH connection lost" (no close code), and Reconnect attaches to the same worker', async () => {
    const sup = api.registry.get(HOST_ID)!;
    const host = sup.host as SshHost;
    const remotePid = JSON.parse(readFileSync(path.join(remoteState, 'control.json'), 'utf8')).pid as number;
    writeConfig('1');                     // SSH is down from here on; the remote worker is not
    process.kill(host.tunnelPid!, 'SIGKILL');
    await until(api, () => api.model.host(HOST_ID)!.problemKind === 'link' && /cannot reach/.test(api.model.host(HOST_ID)!.problem ?? ''));
    const [notice] = api.notices.openNotices().filter((n) => n.hostId === HOST_ID);
    assert.match(notice!.message, new RegExp(`SSH connection to ${ALIAS} lost`));
    assert.doesNotMatch(notice!.message, /1006|Restart/);
    writeConfig(env.SSH_TEST_PORT!);
    assert.equal(await vscode.commands.executeCommand('perimeter.reconnect', HOST_ID), true);
    assert.equal(api.model.host(HOST_ID)!.connection, 'connected');
    assert.equal(api.model.host(HOST_ID)!.facts!.pid, remotePid, 'the same remote worker');
    assert.equal(api.model.host(HOST_ID)!.restarts, 0, 'never restarted');
    assert.deepEqual(api.notices.openNotices().filter((n) => n.hostId === HOST_ID), [], 'the toast went away');
  });

  it('runs the doctor on the remote host; its fixes name the companion as installed there', async () => {
    const report = await vscode.commands.executeCommand<{ checks: Array<{ name: string; ok: boolean; detail: string; fix: string | null }> }>('perimeter.runDoctor', HOST_ID);
    const stateDir = report.checks.find((c) => c.name === 'state-dir');
    assert.ok(stateDir?.ok, JSON.stringify(report.checks));
    assert.ok(stateDir.detail.includes(remoteState), 'it checked the remote state directory');
    const template = report.checks.find((c) => c.name === 'template')!;
    assert.equal(template.fix, `node ~/${remoteDir}/bin/perimeter.js template build`, 'not `perimeter template build`: that is not on the remote PATH');
  });

  it('stops the remote worker', async () => {
    const remotePid = JSON.parse(readFileSync(path.join(remoteState, 'control.json'), 'utf8')).pid as number;
    assert.equal(await vscode.commands.executeCommand('perimeter.stopWorker', HOST_ID), true);
    assert.equal(api.model.host(HOST_ID)!.connection, 'stopped');
    assert.equal(spawnSync('kill', ['-0', String(remotePid)]).status !== 0, true, 'the remote worker exited');
    assert.equal(existsSync(path.join(remoteState, 'control.json')), false);
  });
});
