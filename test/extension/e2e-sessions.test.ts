// Browser end-to-end test of a session's whole story in the real VS Code workbench (code-server 4.100.3, headless
// Debian Chromium, playwright-core), as a user sees it: Try Locally plays test/extension/fixtures/sessions-scenario.json
// on the process driver (the status bar warns, in its warning colour, that there is no VM isolation); an ask-gated call
// is listed as waiting for its confirmation (with how long it has waited) before the scripted user approves it; the
// session is titled by its prompt; its transcript opens as a document; a persisted file opens from Persisted Files,
// compares with its previous generation in the diff editor and is exported into the workspace; Stop Persisting Path
// asks first and the file leaves the list at once; after the worker is stopped, a reloaded window shows the history
// read from the journal. The extension is installed from the packaged .vsix (PERIMETER_E2E_MODE=dev loads the source
// folder). The panel picture goes to a temporary folder, or to PERIMETER_SCREENSHOT (what `npm run screenshot` sets
// to the README's picture); failures save test-results/e2e-sessions-fail-<n>.png.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { requireHarness } from './harness/host';
import { ROOT as root, installPackagedExtension, openWorkbench, screenshotOnFailure, type Browser, type CodeServer, type Workbench } from './harness/workbench';

describe('e2e: transcripts, persisted files and history in the workbench (Chromium)', function () {
  let server: CodeServer;
  let browser: Browser;
  let wb: Workbench;
  let profile: { root: string; workspace: string };
  let home: string;
  let shots: string;
  let page: Page;
  let url: string;

  before(async function () {
    requireHarness();
    const cs = await import('./harness/code-server.mjs' as string);
    home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-e2e-sessions-'));
    shots = mkdtempSync(path.join(os.tmpdir(), 'perimeter-e2e-shots-'));
    const machineSettings = {
      'perimeter.home': home,
      'perimeter.sandboxDriver': 'process',
      'perimeter.localScenario': path.join(root, 'test/extension/fixtures/sessions-scenario.json'),
    };
    profile = cs.makeProfile({ ...machineSettings, 'workbench.colorTheme': 'Default Dark Modern' });
    writeFileSync(path.join(profile.workspace, 'README.md'), '# e2e workspace\n');
    // Machine-scoped settings of a remote (server-side) window are the server's Machine settings, as a user sets them.
    mkdirSync(path.join(profile.root, 'ud', 'Machine'), { recursive: true });
    writeFileSync(path.join(profile.root, 'ud', 'Machine', 'settings.json'), JSON.stringify(machineSettings, null, 2));
    const fromVsix = process.env.PERIMETER_E2E_MODE !== 'dev';
    if (fromVsix) installPackagedExtension(cs, profile);
    server = await cs.startCodeServer(profile);
    ({ browser, wb, url } = await openWorkbench(server, profile.workspace, { devExtension: !fromVsix, viewport: { width: 1600, height: 900 }, timeoutMs: 45_000 }));
    page = browser.page;
    await page.locator('.part.activitybar a.action-label[aria-label="Perimeter"]').click();
  });

  afterEach(screenshotOnFailure('e2e-sessions', () => page));

  after(async () => {
    if (page) await palette('Perimeter: Stop Worker').catch(() => {});
    await browser?.close();
    await server?.stop();
    for (const d of [profile?.root, home, shots]) if (d) rmSync(d, { recursive: true, force: true });
  });

  const sidebarLabel = (text: string) => wb.sidebarLabel(text);
  const sidebarRow = (text: string) => wb.sidebarRow(text);
  const palette = (title: string) => wb.palette(title);
  const editorLine = (text: string) => page.locator('.part.editor .view-line', { hasText: text }).first();
  /** A row label of the Persisted Files view that reads exactly `text`. */
  const persistedLabel = (text: string) => page.locator('.part.sidebar .pane').filter({ has: page.locator('.pane-header', { hasText: /persisted files/i }) })
    .locator('.monaco-list-row .label-name').filter({ hasText: new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) });

  /** Finds `text` in the active editor with the editor's Find widget (which scrolls it into view). */
  async function findInEditor(text: string): Promise<void> {
    await page.keyboard.press('Control+f');
    const find = page.locator('.part.editor .find-widget textarea, .part.editor .find-widget input').first();
    await find.waitFor({ state: 'visible' });
    await find.fill(text);
    await page.keyboard.press('Enter');
    await page.keyboard.press('Escape');
    await editorLine(text).waitFor();
  }


  it('lists a call waiting for its confirmation, with how long it has waited, before it is approved', async () => {
    await palette('Perimeter: Try Locally');
    const waiting = sidebarRow('bash: echo approved').filter({ hasText: 'waiting for confirmation' });
    await waiting.waitFor();
    assert.match(await waiting.innerText(), /waiting for confirmation · \d+(\.\d)? m?s/);
    await sidebarLabel('Tidy the notes').first().waitFor();   // the session, titled by its prompt's first line
    // The process driver runs tool calls without VM isolation: the status bar says so in the warning colour, once a toast.
    await page.locator('.statusbar-item.warning-kind', { hasText: 'no VM isolation' }).waitFor();
    await page.locator('.notifications-toasts .notification-toast', { hasText: 'WITHOUT VM isolation' }).waitFor();
    await sidebarRow('bash: echo approved').filter({ hasText: 'posted' }).waitFor();
    await sidebarRow('bash: echo tidy').filter({ hasText: 'posted' }).waitFor();
  });

  it('opens the session\'s transcript: prompt, every call with its input, placement and persisted changes', async () => {
    await palette('Perimeter: Open Transcript');
    await page.locator('.part.editor .tab', { hasText: 'Tidy the notes · transcript' }).waitFor();
    await editorLine('# Tidy the notes').waitFor();
    await editorLine('> Tidy the notes').waitFor();
    await findInEditor('write: /workspace/notes.txt');
    await findInEditor('ran on');
    await findInEditor('+ /workspace/notes.txt');
    await findInEditor('~ /workspace/notes.txt');
  });

  it('opens a persisted file from Persisted Files and compares it with its previous generation', async () => {
    await persistedLabel('/workspace/notes.txt').first().click();
    await page.locator('.part.editor .tab', { hasText: /^notes\.txt/ }).waitFor();
    await editorLine('second version').waitFor();
    await palette('Perimeter: Compare with Previous Generation');
    const diff = page.locator('.part.editor .monaco-diff-editor');
    await diff.waitFor();
    await diff.locator('.editor.original .view-line', { hasText: 'first version' }).first().waitFor();
    await diff.locator('.editor.modified .view-line', { hasText: 'second version' }).first().waitFor();
    await page.locator('.part.editor .tab', { hasText: /notes\.txt \(generation \d+ ↔ \d+\)/ }).waitFor();
  });

  it('saves the panel picture: sessions, persisted files with generations, the transcript and the diff side by side', async () => {
    await palette('View: Split Editor Right');
    await palette('View: Focus First Editor Group');
    await palette('Perimeter: Open Transcript');
    await page.locator('.part.editor .editor-group-container').first().locator('.tab', { hasText: 'transcript' }).waitFor();
    await persistedLabel('Generations').first().click();
    await sidebarLabel('Generation').first().waitFor();
    const bar = await page.locator('.part.sidebar').boundingBox();
    if (bar) {
      await page.mouse.move(bar.x + bar.width + 1, bar.y + 200);
      await page.mouse.down();
      await page.mouse.move(bar.x + 520, bar.y + 200, { steps: 5 });
      await page.mouse.up();
    }
    await page.mouse.move(1000, 880);
    const file = process.env.PERIMETER_SCREENSHOT ? path.resolve(process.env.PERIMETER_SCREENSHOT) : path.join(shots, 'screenshot-panel.png');
    await page.screenshot({ path: file });
    assert.ok(existsSync(file));
  });

  it('exports a persisted file into the workspace (Export to Workspace…)', async () => {
    await page.locator('.part.editor .monaco-diff-editor .editor.modified .view-line', { hasText: 'second version' }).last().click();
    await palette('Perimeter: Export to Workspace');
    const input = page.locator('.quick-input-widget .quick-input-box input');
    await input.waitFor({ state: 'visible' });
    await input.fill('exported');
    await page.keyboard.press('Enter');
    await page.locator('.notifications-toasts .notification-toast', { hasText: 'exported 1 file' }).waitFor();
    assert.equal(readFileSync(path.join(profile.workspace, 'exported', 'notes.txt'), 'utf8'), 'second version\n');
  });

  it('Stop Persisting Path asks first; once confirmed, the path\'s files leave the list at once', async () => {
    const dialog = page.locator('.monaco-dialog-box');
    await palette('Perimeter: Stop Persisting Path');
    await page.locator('.quick-input-widget .quick-input-list .monaco-list-row', { hasText: '/workspace' }).first().click();
    await dialog.filter({ hasText: 'Stop persisting /workspace?' }).waitFor();
    await dialog.locator('a.monaco-button', { hasText: 'Cancel' }).click();
    await dialog.waitFor({ state: 'detached' });
    await persistedLabel('/workspace/notes.txt').first().waitFor();
    await palette('Perimeter: Stop Persisting Path');
    await page.locator('.quick-input-widget .quick-input-list .monaco-list-row', { hasText: '/workspace' }).first().click();
    await dialog.locator('a.monaco-button', { hasText: 'Stop Persisting' }).click();
    await persistedLabel('/workspace/notes.txt').first().waitFor({ state: 'detached' });
  });

  it('shows the history read from the journal after the worker stopped and the window reloaded', async () => {
    await palette('Perimeter: Stop Worker');
    await page.locator('.statusbar-item', { hasText: 'Perimeter: stopped' }).waitFor();
    await page.goto(url);
    await page.locator('.monaco-workbench .part.activitybar').waitFor();
    await page.locator('.part.activitybar a.action-label[aria-label="Perimeter"]').click();
    await sidebarLabel('Tidy the notes').first().waitFor();
    await sidebarRow('Tidy the notes').filter({ hasText: 'ended' }).first().click();
    await sidebarLabel('write: /workspace/notes.txt').first().waitFor();
  });
});
