// Browser end-to-end test: the real VS Code workbench (code-server 4.100.3) in headless Debian Chromium, driven by
// playwright-core the way a user clicks: open the Perimeter panel, run "Perimeter: Try Locally" from the command
// palette, watch the session and its calls appear, add a persisted path through the input box, open a call's output
// document, stop the worker, build a template (its failure path), pick a host. The companion is the real dist/perimeter.js with its dev queue and the process sandbox
// driver; the extension is installed from the packaged .vsix (PERIMETER_E2E_MODE=dev loads the source folder).
// Failures save test-results/e2e-fail-<n>.png (the README's panel picture comes from e2e-sessions.test.ts).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { requireHarness } from './harness/host';
import {
  ROOT as root, installPackagedExtension, openWorkbench, screenshotOnFailure, startDevQueue,
  type Browser, type CodeServer, type DevQueueProcess, type Workbench,
} from './harness/workbench';

describe('e2e: the Perimeter panel in the VS Code workbench (Chromium)', function () {
  let server: CodeServer;
  let browser: Browser;
  let wb: Workbench;
  let profileRoot: string;
  let home: string;
  let page: Page;
  // `perimeter dev-queue` stands in for Anthropic in the Connect Environment flow (the worker finds it through
  // ANTHROPIC_BASE_URL, inherited from code-server's environment).
  let queue: DevQueueProcess;

  before(async function () {
    requireHarness();
    queue = await startDevQueue(path.join(root, 'test/extension/fixtures/environment-scenario.json'));
    const cs = await import('./harness/code-server.mjs' as string);
    home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-e2e-home-'));
    const sshConfig = path.join(home, 'ssh_config');
    writeFileSync(sshConfig, 'Host kvm-box\n  HostName 127.0.0.1\n  User builder\n');
    const profile = cs.makeProfile({
      'perimeter.ssh.configFile': sshConfig,
      'perimeter.home': home,
      'perimeter.sandboxDriver': 'process',
      'perimeter.concurrency': 2,
      'perimeter.persist.defaults': ['/workspace/keep'],
      'perimeter.localScenario': path.join(root, 'test/extension/fixtures/e2e-scenario.json'),
      'workbench.colorTheme': 'Default Dark Modern',
    });
    profileRoot = profile.root;
    writeFileSync(path.join(profile.workspace, 'README.md'), '# e2e workspace\n');
    // Default: install the packaged .vsix into a fresh extensions directory, as a user would (PERIMETER_E2E_MODE=dev
    // loads the source folder through the workbench URL payload instead).
    const fromVsix = process.env.PERIMETER_E2E_MODE !== 'dev';
    if (fromVsix) installPackagedExtension(cs, profile);
    server = await cs.startCodeServer(profile, { env: { ANTHROPIC_BASE_URL: queue.baseUrl } });
    ({ browser, wb } = await openWorkbench(server, profile.workspace, { devExtension: !fromVsix, timeoutMs: 45_000 }));
    page = browser.page;
  });

  afterEach(screenshotOnFailure('e2e', () => page));

  after(async () => {
    // Stop a worker a failed test left running, then tear everything down.
    if (page) await palette('Perimeter: Stop Worker').catch(() => {});
    await browser?.close();
    await server?.stop();
    if (profileRoot) rmSync(profileRoot, { recursive: true, force: true });
    if (home) rmSync(home, { recursive: true, force: true });
    queue?.proc.kill('SIGTERM');
  });

  const sidebarLabel = (text: string | RegExp) => wb.sidebarLabel(text);
  const sidebarRow = (text: string) => wb.sidebarRow(text);
  const palette = (title: string) => wb.palette(title);


  it('shows the Perimeter activity bar icon and its welcome view for a fresh install', async () => {
    await page.locator('.part.activitybar a.action-label[aria-label="Perimeter"]').click();
    await page.locator('.part.sidebar .welcome-view-content', { hasText: 'No environment is connected' }).waitFor();
    await page.locator('.part.sidebar .welcome-view-content a.monaco-button', { hasText: 'Try Locally' }).first().waitFor();
    await page.locator('.statusbar-item', { hasText: 'Perimeter: stopped' }).waitFor();
  });

  it('"Perimeter: Try Locally" from the palette starts the worker; the session appears in the Sessions view', async () => {
    await palette('Perimeter: Try Locally');
    await sidebarLabel(/^This machine$/).waitFor();   // the host's row (a Templates row may name it too)
    await sidebarRow('Sandbox driver').filter({ hasText: 'process' }).waitFor();
    await sidebarLabel('Check the e2e workspace').first().waitFor();
    await page.locator('.statusbar-item', { hasText: 'Perimeter: This machine · polling' }).waitFor();
  });

  it('"Perimeter: Persist Path…" adds a path in the input box; the next call\'s file shows under Persisted Files', async () => {
    await palette('Perimeter: Persist Path');
    const input = page.locator('.quick-input-widget .quick-input-box input');
    await input.waitFor({ state: 'visible' });
    await input.fill('/workspace/data');
    await page.keyboard.press('Enter');
    await sidebarLabel('/workspace/data').first().waitFor();
    await sidebarLabel('read: /workspace/data/note.txt').waitFor();
    await sidebarLabel('/workspace/data/note.txt').filter({ hasNotText: 'read:' }).first().waitFor();
  });

  it('clicking a finished call opens its input and output as a document', async () => {
    const call = sidebarLabel('bash: for i in');
    await call.waitFor();
    await sidebarRow('bash: for i in').filter({ hasText: 'done' }).waitFor();
    await call.click();
    await page.locator('.part.editor .tab', { hasText: 'bash: for i in' }).waitFor();   // the call's label, not the tool's name
    await page.locator('.part.editor .view-line', { hasText: 'all-done' }).first().waitFor();
    await page.locator('.part.editor .view-line', { hasText: '## input' }).first().waitFor();
    const labels = await page.locator('.part.sidebar .monaco-list-row .label-name').allTextContents();
    const calls = labels.filter((l) => /^(bash|read|write):/.test(l));
    assert.equal(calls[0], 'bash: for i in $(seq 1 5); do echo line-$i; done; echo all-done', `newest first: ${calls.join(' | ')}`);
  });

  it('"Perimeter: Stop Worker" stops it and the sessions stay listed', async () => {
    await palette('Perimeter: Stop Worker');
    await page.locator('.statusbar-item', { hasText: 'Perimeter: stopped' }).waitFor();
    await sidebarLabel('Check the e2e workspace').first().waitFor();
  });

  it('"Connect Environment" keeps the key in secret storage; "Start Worker" serves the environment with the key on stdin only', async () => {
    await palette('Perimeter: Connect Environment');
    const input = page.locator('.quick-input-widget .quick-input-box input');
    await page.locator('.quick-input-widget', { hasText: 'Connect Environment (1/2)' }).waitFor();
    await input.fill(queue.environmentId);
    await page.keyboard.press('Enter');
    await page.locator('.quick-input-widget', { hasText: 'Connect Environment (2/2)' }).waitFor();
    assert.equal(await input.getAttribute('type'), 'password', 'the key is typed into a password box');
    await input.fill(queue.key);
    await page.keyboard.press('Enter');
    await page.locator('.notifications-toasts .notification-toast', { hasText: `environment ${queue.environmentId} connected` }).waitFor();
    await palette('Perimeter: Start Worker');
    await sidebarLabel('Say hello from the environment').first().waitFor();
    await sidebarLabel('bash: echo hello-from-the-environment').waitFor();
    // The worker process got the key on stdin: not in its command line, not in its environment.
    const pid = JSON.parse(readFileSync(path.join(home, 'control.json'), 'utf8')).pid as number;
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    assert.ok(cmdline.includes('--key-stdin') && cmdline.includes(path.join(home, 'launch.json')), cmdline.join(' '));
    assert.ok(!cmdline.some((a) => a.includes(queue.key)), 'key not in argv');
    const launch = readFileSync(path.join(home, 'launch.json'), 'utf8');
    assert.ok(launch.includes(queue.environmentId) && !launch.includes(queue.key), 'the ID is in the launch file, the key is not');
    assert.ok(!readFileSync(`/proc/${pid}/environ`, 'utf8').includes(queue.key), 'key not in the environment');
    // Machine-scoped settings of a remote (server-side) window go to the server's Machine settings.
    const settings = ['User', 'Machine'].map((d) => { try { return readFileSync(path.join(profileRoot, 'ud', d, 'settings.json'), 'utf8'); } catch { return ''; } }).join('\n');
    assert.ok(settings.includes(queue.environmentId) && !settings.includes(queue.key), 'the ID is a setting, the key is not');
    await palette('Perimeter: Stop Worker');
    await page.locator('.statusbar-item', { hasText: 'Perimeter: stopped' }).waitFor();
  });

  it('the status bar item brings the Perimeter panel back', async () => {
    await page.locator('.part.activitybar a.action-label[aria-label^="Explorer"]').click();
    await page.locator('.part.sidebar .composite.title', { hasText: 'Explorer' }).waitFor();
    await page.locator('.statusbar-item', { hasText: 'Perimeter: stopped' }).click();
    await page.locator('.part.sidebar .composite.title', { hasText: 'Perimeter' }).waitFor();
    await sidebarLabel('Check the e2e workspace').first().waitFor();
  });

  it('"Perimeter: Build Template" reports a failed build with its reason and a way to the log', async () => {
    // This machine's companion reads <home>/config.json: a QEMU that does not exist makes the build fail at once.
    const config = path.join(home, 'config.json');
    writeFileSync(config, JSON.stringify({ sandbox: { qemuBinary: '/nonexistent/qemu-system-x86_64' } }));
    try {
      await palette('Perimeter: Build Template');
      const toast = page.locator('.notifications-toasts .notification-toast', { hasText: 'template build failed on This machine' });
      await toast.waitFor();
      assert.match(await toast.innerText(), /nonexistent\/qemu-system-x86_64/, 'the reason is shown');
      await toast.locator('a.monaco-button', { hasText: 'Show Worker Log' }).waitFor();
    } finally { rmSync(config, { force: true }); }
  });

  it('"Perimeter: Select Host" offers this machine, ssh config aliases and a typed host (validated); the chosen host is listed', async () => {
    const rows = page.locator('.quick-input-widget .quick-input-list .monaco-list-row');
    await palette('Perimeter: Select Host');
    await rows.filter({ hasText: 'This machine' }).waitFor();
    await rows.filter({ hasText: 'kvm-box' }).filter({ hasText: 'ssh_config' }).waitFor();
    await rows.filter({ hasText: 'Type an SSH host' }).click();
    await page.locator('.quick-input-widget', { hasText: 'Perimeter: SSH host' }).waitFor();
    const input = page.locator('.quick-input-widget .quick-input-box input');
    await input.fill('-oProxyCommand=touch /tmp/pwned');
    await page.locator('.quick-input-widget .quick-input-message', { hasText: 'would be read as an option' }).waitFor();
    await input.fill('dev@build-box');
    await page.locator('.quick-input-widget .quick-input-message', { hasText: 'refusing' }).waitFor({ state: 'detached' });
    await page.keyboard.press('Enter');
    await page.locator('.quick-input-widget', { hasText: 'Perimeter: SSH host' }).waitFor({ state: 'hidden' });
    await sidebarRow('dev@build-box').filter({ hasText: 'stopped' }).waitFor(); // listed before it ever ran
    const settings = ['User', 'Machine'].map((d) => { try { return readFileSync(path.join(profileRoot, 'ud', d, 'settings.json'), 'utf8'); } catch { return ''; } }).join('\n');
    assert.match(settings, /"perimeter\.hosts":\s*\[\s*"dev@build-box"\s*\]/, 'the typed host is kept in the settings');
    await palette('Perimeter: Select Host');
    await rows.filter({ hasText: 'dev@build-box' }).filter({ hasText: 'selected' }).waitFor();
    await rows.filter({ hasText: 'This machine' }).click();
    await palette('Perimeter: Select Host');
    await rows.filter({ hasText: 'This machine' }).filter({ hasText: 'selected' }).waitFor();
    await page.keyboard.press('Escape');
  });
});
