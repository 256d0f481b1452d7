// Build Template from the installed .vsix, in the real extension host: test/extension/template.test.ts packs and
// installs the extension and loads it from that installed copy (PERIMETER_TEST_INSTALLED_EXTENSION), so the companion
// runs with exactly the files the .vsix carries. It builds on this machine (the extension host's PERIMETER_HOME is a
// throw-away state directory) and on an SSH host (the throw-away sshd on loopback, whose login environment gets
// PERIMETER_HOME=PERIMETER_TEST_REMOTE_HOME through the ssh_config's SetEnv), where the extension first installs the
// companion bundle. Both state directories start with the machine's kernel and root filesystem cache only.
import * as vscode from 'vscode';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PerimeterApi } from '../../../extension/extension';
import { untilLogged, workerLog } from './helpers';

const ALIAS = 'perimeter-template-host';
const HOST_ID = `ssh:${ALIAS}`;
const BUILD_TIMEOUT_MS = 20 * 60_000;

/** The template `current` points to in a state directory (its manifest must exist), or null. */
function currentTemplate(home: string): string | null {
  const current = path.join(home, 'templates', 'current');
  if (!existsSync(current)) return null;
  const dir = path.join(home, 'templates', readFileSync(current, 'utf8').trim());
  return existsSync(path.join(dir, 'template.json')) ? dir : null;
}

describe('Build Template from the installed .vsix', function () {
  const env = process.env;
  let api: PerimeterApi;
  let sshConfig: string;
  const remoteDir = `.perimeter-test-template-${process.pid}`;
  const cfg = () => vscode.workspace.getConfiguration('perimeter');
  const tail = () => workerLog(api).slice(-20).join('\n');

  before(async function () {
    if (!env.PERIMETER_TEST_INSTALLED_EXTENSION) { this.skip(); return; }   // set by test/extension/template.test.ts
    const ext = vscode.extensions.getExtension<PerimeterApi>('perimeter.perimeter')!;
    assert.equal(ext.extensionPath, env.PERIMETER_TEST_INSTALLED_EXTENSION, 'the extension runs from the copy installed from the .vsix');
    api = await ext.activate();
    sshConfig = path.join(mkdtempSync(path.join(os.tmpdir(), 'perimeter-sshcfg-')), 'ssh_config');
    writeFileSync(sshConfig, [
      `Host ${ALIAS}`,
      `  HostName ${env.SSH_TEST_HOST}`, `  Port ${env.SSH_TEST_PORT}`, `  User ${env.SSH_TEST_USER}`,
      `  IdentityFile ${env.SSH_TEST_KEY}`, '  IdentitiesOnly yes',
      `  UserKnownHostsFile ${env.SSH_TEST_KNOWN_HOSTS}`, '  StrictHostKeyChecking yes',
      `  SetEnv PERIMETER_HOME=${env.PERIMETER_TEST_REMOTE_HOME}`, '',
    ].join('\n'));
  });

  after(async () => {
    if (!api) return;
    await cfg().update('hosts', undefined, vscode.ConfigurationTarget.Global);
    await cfg().update('ssh.configFile', undefined, vscode.ConfigurationTarget.Global);
    await cfg().update('ssh.remoteDirectory', undefined, vscode.ConfigurationTarget.Global);
    await api.registry.select('local');
    rmSync(path.join(os.homedir(), remoteDir), { recursive: true, force: true });
    rmSync(path.dirname(sshConfig), { recursive: true, force: true });
  });

  it('builds the template on this machine', async function () {
    this.timeout(BUILD_TIMEOUT_MS);
    const home = env.PERIMETER_HOME!;
    assert.equal(currentTemplate(home), null, 'the state directory starts without a template');
    assert.equal(await vscode.commands.executeCommand('perimeter.buildTemplate', 'local'), true, tail());
    const built = currentTemplate(home);
    assert.ok(built, `a template in ${home}`);
    await untilLogged(api, (l) => l.includes(`template: ready at ${built}`));
  });

  it('builds the template on an SSH host, through the companion bundle it installs there', async function () {
    this.timeout(BUILD_TIMEOUT_MS);
    const home = env.PERIMETER_TEST_REMOTE_HOME!;
    await cfg().update('ssh.configFile', sshConfig, vscode.ConfigurationTarget.Global);
    await cfg().update('ssh.remoteDirectory', remoteDir, vscode.ConfigurationTarget.Global);
    assert.equal(await vscode.commands.executeCommand('perimeter.selectHost', ALIAS), HOST_ID);
    assert.equal(currentTemplate(home), null, 'the remote state directory starts without a template');
    assert.equal(await vscode.commands.executeCommand('perimeter.buildTemplate', HOST_ID), true, tail());
    assert.ok(existsSync(path.join(os.homedir(), remoteDir, 'bin', 'perimeter.js')), 'the bundle was installed over ssh');
    const built = currentTemplate(home);
    assert.ok(built, `a template in the remote state directory ${home}`);
    await untilLogged(api, (l) => l.includes(`[${ALIAS}] template: ready at ${built}`));
  });
});
