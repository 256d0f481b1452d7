// Browser test (code-server 4.100.3 in headless Chromium, the extension loaded from this folder) against a throw-away
// sshd on loopback (harness/sshd.sh) whose host key the user's known_hosts does not hold yet: Select Host shows the
// key's fingerprint and trusts it only when asked, then connects, installs the companion (its own step) and checks
// the host; the tree marks the selected host and the status bar names it; an SSH outage says "SSH connection lost" and
// offers Reconnect, which attaches to the same remote worker (never restarting it) and the toast goes away; the title
// bar's Select Host works with a row focused; Remove Host stops the worker there and forgets the host.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requireHarness } from './harness/host';
import { openWorkbench, screenshotOnFailure, type Browser, type CodeServer, type Workbench } from './harness/workbench';

const sshd = path.join(__dirname, 'harness/sshd.sh');
const ALIAS = 'kvmbox';

/** The pids of running `ssh -N` tunnels whose command line names `configFile`. */
function tunnelPids(configFile: string): number[] {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((pid) => {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      return argv.includes('-N') && argv.includes(configFile);
    } catch { return false; }
  }).map(Number);
}

describe('e2e: an SSH host in the workbench (Chromium, throw-away sshd)', function () {
  let server: CodeServer;
  let browser: Browser;
  let profileRoot: string;
  let dir: string;
  let env: Record<string, string>;
  let sshConfig: string;
  let knownHosts: string;
  let remoteState: string;
  let remoteDir: string;
  let wb: Workbench;

  /** Writes the ssh_config (replacing it at once, so an ssh never reads half of it); port 1: the host is unreachable. */
  const writeConfig = (port: string) => { writeFileSync(`${sshConfig}.new`, [
    `Host ${ALIAS}`, `  HostName ${env.SSH_TEST_HOST}`, `  Port ${port}`, `  User ${env.SSH_TEST_USER}`,
    `  IdentityFile ${env.SSH_TEST_KEY}`, '  IdentitiesOnly yes', `  UserKnownHostsFile ${knownHosts}`, '  StrictHostKeyChecking yes',
    `  SetEnv PERIMETER_HOME=${remoteState}`, '',
  ].join('\n')); renameSync(`${sshConfig}.new`, sshConfig); };
  /** The host's own row label (the Templates view's rows may name the host too, e.g. while it reads its templates). */
  const hostLabel = () => wb.sidebarLabel(new RegExp(`^${ALIAS}$`));
  const remotePid = () => JSON.parse(readFileSync(path.join(remoteState, 'control.json'), 'utf8')).pid as number;
  const settingsText = () => ['User', 'Machine'].map((d) => { try { return readFileSync(path.join(profileRoot, 'ud', d, 'settings.json'), 'utf8'); } catch { return ''; } }).join('\n');

  before(async function () {
    requireHarness();
    dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-e2e-ssh-'));
    execFileSync('bash', [sshd, 'start', dir], { stdio: 'pipe' });
    env = Object.fromEntries(readFileSync(path.join(dir, 'env'), 'utf8').trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
    sshConfig = path.join(dir, 'ssh_config');
    knownHosts = path.join(dir, 'user_known_hosts');     // empty: the host key is not known yet
    writeFileSync(knownHosts, '');
    remoteState = path.join(dir, 'remote-state');
    remoteDir = `.perimeter-e2e-${process.pid}-${Date.now()}`;
    writeConfig(env.SSH_TEST_PORT!);
    const cs = await import('./harness/code-server.mjs' as string);
    const profile = cs.makeProfile({
      'perimeter.home': path.join(dir, 'local-home'),
      'perimeter.sandboxDriver': 'process',
      'perimeter.ssh.configFile': sshConfig,
      'perimeter.ssh.remoteDirectory': remoteDir,
    });
    profileRoot = profile.root;
    server = await cs.startCodeServer(profile);
    ({ browser, wb } = await openWorkbench(server, profile.workspace, { devExtension: true }));
    await wb.openPanel();
  });

  afterEach(screenshotOnFailure('e2e-ssh', () => browser?.page));

  after(async () => {
    if (existsSync(path.join(remoteState, 'control.json'))) { try { process.kill(remotePid(), 'SIGTERM'); } catch { /* gone */ } }
    await browser?.close();
    await server?.stop();
    if (dir) { execFileSync('bash', [sshd, 'stop', dir]); rmSync(dir, { recursive: true, force: true }); }
    rmSync(path.join(os.homedir(), remoteDir), { recursive: true, force: true });
    if (profileRoot) rmSync(profileRoot, { recursive: true, force: true });
  });

  it('Select Host shows a new host key\'s fingerprint, trusts it when asked, then installs the companion and checks the host', async () => {
    await wb.palette('Perimeter: Select Host');
    await wb.quickRow(ALIAS).filter({ hasText: 'ssh_config' }).click();
    const dialog = wb.dialog(`first connection to ${ALIAS}. Verify its host key`);
    await dialog.waitFor();
    const fingerprint = /SHA256:\S+/.exec(execFileSync('ssh-keygen', ['-lf', env.SSH_TEST_HOSTKEY_PUB!], { encoding: 'utf8' }))![0];
    assert.ok((await dialog.innerText()).includes(fingerprint), 'the dialog shows the host\'s own key fingerprint');
    assert.equal(readFileSync(knownHosts, 'utf8'), '', 'nothing trusted before the user says so');
    await dialog.locator('a.monaco-button', { hasText: 'Trust Host Key' }).click();
    await wb.sidebarRow(ALIAS).filter({ hasText: 'selected' }).waitFor();
    // The doctor ran there once the companion was installed; its report (errors: no template on that host) is offered.
    await wb.toast(`Perimeter doctor on ${ALIAS}:`).waitFor();
    assert.match(readFileSync(knownHosts, 'utf8'), new RegExp(`^\\[127\\.0\\.0\\.1\\]:${env.SSH_TEST_PORT} ssh-ed25519 `, 'm'));
    assert.ok(existsSync(path.join(os.homedir(), remoteDir, 'bin', 'perimeter.js')), 'the companion was installed over SSH');
    await wb.palette('Perimeter: Show Worker Log');
    await browser.page.locator('.part.panel .view-line', { hasText: `installing the companion` }).first().waitFor();
    await wb.sidebarLabel(/^This machine$/).waitFor();   // still listed beside the SSH host, idle
    // With host rows in the tree (no welcome view any more), Try Locally and Connect Environment stay one click away.
    const row = wb.sidebarRow(ALIAS).filter({ hasText: 'selected' });
    await row.hover();
    await row.locator('.action-label[aria-label="Try Locally"]').waitFor();
    await row.locator('.action-label[aria-label="Connect Environment"]').waitFor();
  });

  it('runs a worker on the selected host; the status bar names it', async () => {
    await wb.palette('Perimeter: Try Locally');
    await wb.statusItem(`Perimeter: ${ALIAS} · polling · 1 session`).waitFor();   // the bundled demo scenario, played there
  });

  it('after an SSH outage says "SSH connection lost", offers Reconnect, reattaches to the same worker and the toast goes away', async () => {
    const pid = remotePid();
    const [tunnel] = tunnelPids(sshConfig);
    assert.ok(tunnel, 'an ssh tunnel carries the control socket');
    writeConfig('1');                     // the host is unreachable from now on
    process.kill(tunnel, 'SIGKILL');
    const lost = wb.toast(`SSH connection to ${ALIAS} lost`);
    await lost.waitFor();
    assert.doesNotMatch(await lost.innerText(), /Restart|1006/);
    const row = wb.sidebarRow(ALIAS).filter({ hasText: 'SSH connection lost' });
    await row.hover();
    await row.locator('.action-label[aria-label="Reconnect"]').click();   // still unreachable: it says so
    const givenUp = wb.toast(`SSH connection to ${ALIAS} lost (cannot reach ${ALIAS} over SSH`);
    await givenUp.waitFor();
    assert.match(await givenUp.innerText(), /The worker there may still be running: Reconnect re-opens the tunnel/);
    writeConfig(env.SSH_TEST_PORT!);      // SSH is back
    await givenUp.locator('a', { hasText: 'Reconnect' }).click();
    await wb.statusItem(`Perimeter: ${ALIAS} · polling`).waitFor();
    await wb.toast(`SSH connection to ${ALIAS} lost`).waitFor({ state: 'detached' });
    assert.equal(remotePid(), pid, 'the same remote worker: it was not restarted');
  });

  it('the title bar\'s Select Host opens the picker while a row has focus; the tree marks the selected host', async () => {
    await wb.sidebarLabel('Uptime').first().click();                      // a tree row has focus
    await browser.page.locator('.part.sidebar .pane-header', { hasText: 'Worker' }).hover();
    await browser.page.locator('.part.sidebar .pane-header', { hasText: 'Worker' }).locator('.action-label[aria-label="Select Host"]').click();
    await wb.quickRow('This machine').click();
    await wb.sidebarRow('This machine').filter({ hasText: 'selected' }).waitFor();
    assert.equal(await wb.toast('is not a function').count(), 0);
    await wb.palette('Perimeter: Select Host');
    await wb.quickRow(ALIAS).click();
    await wb.sidebarRow(ALIAS).filter({ hasText: 'selected' }).waitFor();
  });

  it('Remove Host stops the worker there when asked and forgets the host', async () => {
    const pid = remotePid();
    await hostLabel().click({ button: 'right' });
    // The context menu lists Remove Host last: move there with the keyboard (the menu ignores a click that lands while it opens).
    await browser.page.locator('.context-view .action-label', { hasText: 'Remove Host' }).waitFor();
    await browser.page.keyboard.press('ArrowUp');
    await browser.page.locator('.context-view .action-item.focused', { hasText: 'Remove Host' }).waitFor();
    await browser.page.keyboard.press('Enter');
    await wb.dialog(`remove ${ALIAS}?`).locator('a.monaco-button', { hasText: 'Stop Worker and Remove' }).click();
    await hostLabel().waitFor({ state: 'detached' });
    assert.doesNotMatch(settingsText(), new RegExp(`"${ALIAS}"`), 'gone from perimeter.hosts');
    assert.throws(() => process.kill(pid, 0), 'the remote worker was stopped');
    await wb.palette('Perimeter: Select Host');
    await wb.quickRow('This machine').filter({ hasText: 'selected' }).waitFor();
    assert.equal(await wb.quickRow(ALIAS).filter({ hasText: 'configured' }).count(), 0);
    await browser.page.keyboard.press('Escape');
  });
});
