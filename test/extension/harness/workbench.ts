// What the browser tests do in the VS Code workbench, as a user would: open the Perimeter panel from the activity bar,
// run a palette command, find tree rows, toasts and dialogs. Selectors are those of VS Code 1.100.3 (code-server
// 4.100.3); see docs/testing-vscode.md §7. The dev queue (`perimeter dev-queue`) and an on/off HTTP relay in front of it
// (a control plane that can become unreachable) are here too.
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { Locator, Page } from 'playwright-core';

export const ROOT = path.resolve(__dirname, '..', '..', '..');

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
