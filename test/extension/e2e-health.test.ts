// Browser test (code-server 4.100.3 in headless Chromium, the extension loaded from this folder): the panel tells the
// truth about a worker's health. Connect Environment checks the ID and key with the API before it says "connected";
// a worker whose polls fail (the API unreachable through a relay that is switched off) turns to a warning state (status
// bar text, the tree's icon and last error, a toast with its fix) that clears once polls work again; Try
// Locally while the environment worker runs offers a restart in local mode; Run Doctor shows a readable report that
// agrees with its toast; Forget Key deletes the key. The control plane is `perimeter dev-queue`.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requireHarness } from './harness/host';
import { ROOT, Relay, openWorkbench, screenshotOnFailure, startDevQueue, type Browser, type CodeServer, type DevQueueProcess, type Workbench } from './harness/workbench';


describe('e2e: health of the worker in the workbench (Chromium)', function () {
  let server: CodeServer;
  let browser: Browser;
  let profileRoot: string;
  let home: string;
  let wb: Workbench;
  let queue: DevQueueProcess;
  let relay: Relay;

  before(async function () {
    requireHarness();
    queue = await startDevQueue(path.join(ROOT, 'test/extension/fixtures/environment-scenario.json'));
    relay = new Relay(queue.baseUrl);
    const apiUrl = await relay.start();
    const cs = await import('./harness/code-server.mjs' as string);
    home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-e2e-health-'));
    const profile = cs.makeProfile({
      'perimeter.home': home,
      'perimeter.sandboxDriver': 'process',
      'perimeter.concurrency': 2,
      'perimeter.localScenario': path.join(ROOT, 'test/extension/fixtures/e2e-scenario.json'),
    });
    profileRoot = profile.root;
    writeFileSync(path.join(profile.workspace, 'README.md'), '# e2e workspace\n');
    server = await cs.startCodeServer(profile, { env: { ANTHROPIC_BASE_URL: apiUrl } });
    ({ browser, wb } = await openWorkbench(server, profile.workspace, { devExtension: true }));
    await wb.openPanel();
  });

  afterEach(screenshotOnFailure('e2e-health', () => browser?.page));

  after(async () => {
    if (wb) await wb.palette('Perimeter: Stop Worker').catch(() => {});
    if (wb) await wb.statusItem('Perimeter: stopped').waitFor({ timeout: 60_000 }).catch(() => {});
    await browser?.close();
    await server?.stop();
    await relay?.close();
    queue?.proc.kill('SIGTERM');
    if (profileRoot) rmSync(profileRoot, { recursive: true, force: true });
    if (home) rmSync(home, { recursive: true, force: true });
  });

  it('Connect Environment refuses a key the API refuses, and says "connected" only once the API accepted it', async () => {
    await wb.palette('Perimeter: Connect Environment');
    await wb.answer('Connect Environment (1/2)', queue.environmentId);
    await wb.answer('Connect Environment (2/2)', 'sk-ant-env01-not-the-right-key-at-all');
    const refused = wb.dialog('not connected: the API refused the key');
    await refused.waitFor();
    assert.match(await refused.innerText(), new RegExp(`environment ${queue.environmentId}`));
    await refused.locator('a.monaco-button', { hasText: 'Try Again' }).click();
    await wb.answer('Connect Environment (1/2)', queue.environmentId);
    await wb.answer('Connect Environment (2/2)', queue.key);
    await wb.toast(`environment ${queue.environmentId} connected (the API accepted the key`).waitFor();
  });

  it('a worker whose polls fail turns to a warning state with the last error and a fix; it clears when polls work again', async () => {
    await wb.palette('Perimeter: Start Worker');
    await wb.sidebarLabel('bash: echo hello-from-the-environment').waitFor();
    await wb.statusItem('Perimeter: This machine · polling').waitFor();
    relay.down();
    await wb.statusItem('Perimeter: This machine · cannot poll').waitFor();
    const toast = wb.toast('cannot poll its queue: no answer from the API');
    await toast.waitFor();
    assert.match(await toast.innerText(), /failed polls in a row; last: .+\)/, 'the toast names the last error');
    await toast.locator('a', { hasText: 'Show Worker Log' }).waitFor();
    await wb.sidebarRow('Polling').filter({ hasText: 'failed in a row' }).waitFor();
    const warningIcon = wb.sidebarRow('This machine').filter({ has: browser.page.locator('.label-name', { hasText: /^This machine$/ }) }).locator('.codicon-warning');
    await warningIcon.waitFor();
    relay.up = true;
    await toast.waitFor({ state: 'detached', timeout: 120_000 });
    await wb.statusItem('Perimeter: This machine · polling').waitFor();
    await warningIcon.waitFor({ state: 'detached' });
    await wb.sidebarLabel(/^Polling$/).waitFor({ state: 'detached' });
  });

  it('Try Locally while the environment worker runs says so and restarts it in local mode when asked', async () => {
    await wb.palette('Perimeter: Try Locally');
    const toast = wb.toast('This machine already runs for the environment. Restart it in local mode (Try Locally)?');
    await toast.waitFor();
    await toast.locator('a.monaco-button', { hasText: 'Restart in Local Mode' }).click();
    await wb.sidebarLabel('bash: for i in $(seq 1 5)').first().waitFor();
    await wb.statusItem('Perimeter: This machine · polling').waitFor();
  });

  it('Run Doctor shows a readable read-only report whose summary is the toast\'s', async () => {
    await wb.palette('Perimeter: Run Doctor');
    await browser.page.locator('.part.editor .tab', { hasText: 'doctor.md' }).waitFor();
    const toast = wb.toast('Perimeter doctor on This machine: ');
    await toast.waitFor();
    const headline = /Perimeter doctor on This machine: (.+?)(?: \(.*\))?\.(\n|$)/.exec(await toast.innerText())?.[1];
    assert.ok(headline, await toast.innerText());
    await browser.page.locator('.part.editor .view-line', { hasText: '## All checks' }).first().waitFor();
    const flat = (t: string) => t.replace(/\s+/g, ' ');   // the editor wraps long lines
    assert.ok(flat(await browser.page.locator('.part.editor .view-lines').innerText()).includes(flat(`**This machine: ${headline}.**`)), 'the report leads with the toast\'s summary');
  });

  it('Forget Key deletes the stored key after asking', async () => {
    await wb.palette('Perimeter: Forget Key');
    await wb.dialog('forget the environment key?').locator('a.monaco-button', { hasText: 'Forget Key' }).click();
    await wb.toast('the environment key was deleted from secret storage').waitFor();
  });
});
