// What the browser tests do in the VS Code workbench, as a user would: open the Perimeter panel from the activity bar,
// run a palette command, find tree rows, toasts and dialogs. Selectors are those of VS Code 1.100.3 (code-server
// 4.100.3); see docs/testing-vscode.md §7. The dev queue (`perimeter dev-queue`) and an on/off HTTP relay in front of it
// (a control plane that can become unreachable) are here too, and opening the workbench in a fresh Chromium with the
// extension loaded from this folder or installed from its packaged .vsix.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { Locator, Page } from 'playwright-core';

export const ROOT = path.resolve(__dirname, '..', '..', '..');
const RESULTS = path.join(ROOT, 'test-results');

export class Workbench {
  constructor(readonly page: Page) {}

  sidebarLabel(text: string | RegExp): Locator { return this.page.locator('.part.sidebar .monaco-list-row .label-name', { hasText: text }); }
  sidebarRow(text: string | RegExp): Locator { return this.page.locator('.part.sidebar .monaco-list-row', { hasText: text }); }
  toast(text: string | RegExp): Locator { return this.page.locator('.notifications-toasts .notification-toast', { hasText: text }); }
  dialog(text: string | RegExp): Locator { return this.page.locator('.monaco-dialog-box', { hasText: text }); }
  statusItem(text: string | RegExp): Locator { return this.page.locator('.statusbar-item', { hasText: text }); }
  quickInput(): Locator { return this.page.locator('.quick-input-widget .quick-input-box input'); }
  quickRow(text: string | RegExp): Locator { return this.page.locator('.quick-input-widget .quick-input-list .monaco-list-row', { hasText: text }); }

  async openPanel(): Promise<void> {
    await this.page.locator('.part.activitybar a.action-label[aria-label="Perimeter"]').click();
    await this.page.locator('.part.sidebar .composite.title', { hasText: 'Perimeter' }).waitFor();
  }

  /** Runs a command from the palette (F1, else the standard chord). */
  async palette(title: string): Promise<void> {
    const input = this.quickInput();
    await this.page.keyboard.press('F1');
    try { await input.waitFor({ state: 'visible', timeout: 5000 }); } catch {
      await this.page.keyboard.press('Control+Shift+P');
      await input.waitFor({ state: 'visible' });
    }
    await input.fill('>' + title);
    await this.quickRow(title).first().waitFor();
    await this.page.keyboard.press('Enter');
  }

  /** Types into the open input box (waiting for its title) and accepts it. */
  async answer(title: string, value: string): Promise<void> {
    await this.page.locator('.quick-input-widget', { hasText: title }).waitFor();
    await this.quickInput().fill(value);
    await this.page.keyboard.press('Enter');
  }
}

/** A running code-server (harness/code-server.mjs startCodeServer). */
export interface CodeServer { url: string; authority: string; stop(): Promise<void> }
export interface Browser { page: Page; close(): Promise<void> }

/**
 * Opens `server`'s workbench on `workspace` in a fresh headless Chromium and waits for it. With `devExtension` the
 * extension is loaded from this folder (the URL's payload); otherwise the window runs what the profile has installed
 * (installPackagedExtension). `url` opens the same window again (a reload).
 */
export async function openWorkbench(server: CodeServer, workspace: string, o: { devExtension: boolean; viewport?: { width: number; height: number }; timeoutMs?: number }): Promise<{ browser: Browser; wb: Workbench; url: string }> {
  const br = await import('./browser.mjs' as string);
  const browser: Browser = await br.launchBrowser({ viewport: o.viewport ?? { width: 1400, height: 860 } });
  browser.page.setDefaultTimeout(o.timeoutMs ?? 60_000);
  const payload = [['extensionDevelopmentPath', `vscode-remote://${server.authority}${ROOT}`]];
  const url = `${server.url}/?folder=${encodeURIComponent(workspace)}${o.devExtension ? `&payload=${encodeURIComponent(JSON.stringify(payload))}` : ''}`;
  await browser.page.goto(url);
  await browser.page.locator('.monaco-workbench .part.activitybar').waitFor();
  return { browser, wb: new Workbench(browser.page), url };
}

/** Packages this folder as a .vsix and installs it into the code-server profile, as a user installs it. */
export function installPackagedExtension(cs: { installVsix(profile: { root: string }, vsix: string): void }, profile: { root: string }): void {
  const vsix = path.join(profile.root, 'perimeter.vsix');
  execFileSync(path.join(ROOT, 'node_modules/.bin/vsce'), ['package', '--no-dependencies', '--no-rewrite-relative-links', '-o', vsix], { cwd: ROOT, stdio: 'pipe' });
  cs.installVsix(profile, vsix);
}

/** A mocha `afterEach` hook that saves each failed test's screenshot as test-results/<name>-fail-<n>.png. */
export function screenshotOnFailure(name: string, page: () => Page | undefined): (this: Mocha.Context) => Promise<void> {
  let failures = 0;
  return async function () {
    const p = page();
    if (this.currentTest?.state !== 'failed' || !p) return;
    mkdirSync(RESULTS, { recursive: true });
    await p.screenshot({ path: path.join(RESULTS, `${name}-fail-${++failures}.png`) }).catch(() => {});
  };
}

/** `perimeter dev-queue` with a scenario: its base URL, environment ID and key, and the session it created. */
export interface DevQueueProcess { proc: ChildProcess; baseUrl: string; environmentId: string; key: string; session: string }

export function startDevQueue(scenario: string): Promise<DevQueueProcess> {
  const proc = spawn(process.execPath, [path.join(ROOT, 'dist/perimeter.js'), 'dev-queue', '--scenario', scenario], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const m = /base URL:\s+(\S+)\s+environment id:\s+(\S+)\s+environment key:\s+(\S+).*\s+sessions:\s+(\S+)/s.exec(out);
      if (m) resolve({ proc, baseUrl: m[1]!, environmentId: m[2]!, key: m[3]!, session: m[4]! });
    });
    proc.once('exit', (code) => reject(new Error(`dev-queue exited (${code}): ${out}`)));
  });
}

/**
 * An HTTP relay to `target` that can be switched off: while `up` is false every connection is dropped at once (the
 * worker sees no answer, as with no route to the API). Streams (SSE) are piped through unchanged.
 */
export class Relay {
  up = true;
  private readonly server = http.createServer((req, res) => {
    if (!this.up) { req.socket.destroy(); return; }
    const out = http.request(new URL(req.url ?? '/', this.target), { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly target: string) {
    this.server.on('connection', (s) => { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)); });
  }

  async start(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  /** Switches the relay off: open connections (long polls, event streams) are cut too. */
  down(): void {
    this.up = false;
    for (const s of this.sockets) s.destroy();
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}
