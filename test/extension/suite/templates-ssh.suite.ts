// The Templates view on an SSH host, in the real extension host: test/extension/templates-ssh.test.ts starts the
// throw-away sshd on loopback (harness/sshd.sh) and a remote state directory (PERIMETER_TEST_REMOTE_HOME, reaching the
// login environment through the ssh_config's SetEnv) seeded with this machine's kernel and root filesystem cache.
// The view first shows this machine's templates; once the SSH host is selected it shows that host's (title and rows,
// pushed by the selection change), and Build Template from File builds a workspace template file there for real (boot
// under QEMU, warm-up, snapshot), with the build's progress in the Worker Log; the view then lists the new template.
import * as vscode from 'vscode';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PerimeterApi } from '../../../extension/extension';
import type { TemplatesTree } from '../../../extension/templates/templatesView';
import { untilLogged, workerLog } from './helpers';

const ALIAS = 'perimeter-templates-host';
const HOST_ID = `ssh:${ALIAS}`;
const BUILD_TIMEOUT_MS = 20 * 60_000;

/** Resolves once `pred` holds for the Templates view, re-checking whenever the view's content changes (pushed). */
function untilTree(tree: TemplatesTree, pred: () => boolean): Promise<void> {
  if (pred()) return Promise.resolve();
  return new Promise((resolve) => {
    const off = tree.onDidChangeTreeData(() => { if (pred()) { off.dispose(); resolve(); } });
  });
}

describe('Templates view on an SSH host', function () {
  const env = process.env;
  let api: PerimeterApi;
  let dir: string;
  const remoteDir = `.perimeter-test-templates-${process.pid}`;
  const cfg = () => vscode.workspace.getConfiguration('perimeter');
  const names = () => (api.templatesTree.templates ?? []).flatMap((r) => r.names);

  before(async function () {
    if (!env.PERIMETER_TEST_REMOTE_HOME) { this.skip(); return; }   // set by test/extension/templates-ssh.test.ts
    api = await vscode.extensions.getExtension<PerimeterApi>('perimeter.perimeter')!.activate();
    dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-templates-ssh-'));
    writeFileSync(path.join(dir, 'ssh_config'), [
      `Host ${ALIAS}`,
      `  HostName ${env.SSH_TEST_HOST}`, `  Port ${env.SSH_TEST_PORT}`, `  User ${env.SSH_TEST_USER}`,
      `  IdentityFile ${env.SSH_TEST_KEY}`, '  IdentitiesOnly yes',
      `  UserKnownHostsFile ${env.SSH_TEST_KNOWN_HOSTS}`, '  StrictHostKeyChecking yes',
      `  SetEnv PERIMETER_HOME=${env.PERIMETER_TEST_REMOTE_HOME}`, '',
    ].join('\n'));
    await cfg().update('ssh.configFile', path.join(dir, 'ssh_config'), vscode.ConfigurationTarget.Global);
    await cfg().update('ssh.remoteDirectory', remoteDir, vscode.ConfigurationTarget.Global);
    await vscode.commands.executeCommand('perimeter.templates.focus');   // a visible view re-reads on selection change
  });

  after(async () => {
    if (!api) return;
    await cfg().update('hosts', undefined, vscode.ConfigurationTarget.Global);
    await cfg().update('ssh.configFile', undefined, vscode.ConfigurationTarget.Global);
    await cfg().update('ssh.remoteDirectory', undefined, vscode.ConfigurationTarget.Global);
    await api.registry.select('local');
    rmSync(path.join(os.homedir(), remoteDir), { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  it('shows this machine\'s templates, then the selected SSH host\'s', async function () {
    this.timeout(5 * 60_000);
    await api.registry.select('local');
    await vscode.commands.executeCommand('perimeter.refreshTemplates');
    assert.equal(api.templatesTree.host.label, 'This machine');
    assert.ok(names().includes('default'), `this machine's templates (its default one is built): ${names().join(', ')}`);
    assert.equal(await vscode.commands.executeCommand('perimeter.selectHost', ALIAS), HOST_ID);
    assert.equal(api.templatesTree.host.hostId, HOST_ID, 'the view follows the selection at once');
    assert.equal(api.templatesTree.host.label, ALIAS, 'its title names the host');
    await untilTree(api.templatesTree, () => api.templatesTree.templates !== null || api.templatesTree.failure !== null);
    assert.equal(api.templatesTree.failure, null);
    assert.deepEqual(names(), [], 'the SSH host\'s state directory has no template yet; this machine\'s are not shown');
  });

  it('builds a workspace template file on the SSH host with Build Template from File, then lists it', async function () {
    this.timeout(BUILD_TIMEOUT_MS);
    mkdirSync(path.join(dir, 'workspace'));
    const file = path.join(dir, 'workspace', 'perimeter.template.json');
    // the default template's packages and settings: its root filesystem is in the seeded cache, so nothing is bootstrapped
    writeFileSync(file, JSON.stringify({ name: 'remote-tools', description: 'built over SSH by the extension-host test', packages: JSON.parse(env.PERIMETER_TEST_DEFAULT_PACKAGES!) }));
    const ok = await vscode.commands.executeCommand('perimeter.buildTemplateFromFile', vscode.Uri.file(file));
    assert.equal(ok, true, workerLog(api).slice(-20).join('\n'));
    await untilLogged(api, (l) => l.includes(`[${ALIAS}] template: ready at ${env.PERIMETER_TEST_REMOTE_HOME}/templates/`));
    await untilTree(api.templatesTree, () => names().includes('remote-tools'));
    const row = api.templatesTree.templates!.find((r) => r.names.includes('remote-tools'))!;
    assert.ok(row.dir.startsWith(`${env.PERIMETER_TEST_REMOTE_HOME}/templates/`), row.dir);
    assert.equal(api.templatesTree.host.hostId, HOST_ID);
  });
});
