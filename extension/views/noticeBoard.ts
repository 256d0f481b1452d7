// Shows the host notices (views/notices.ts) as VS Code notifications. A transient notice is a progress notification,
// the one kind of notification an extension can close: it stays while its condition lasts and is closed when the
// condition is gone (a reconnect succeeded, polls work again); its actions are links in its text. Other notices are
// messages with buttons, shown once per occurrence (a condition that clears and comes back is announced again).
import * as vscode from 'vscode';
import { withActionLinks, type Notice } from './notices';
import { Disposable, toDisposable } from '../common/lifecycle';

export class NoticeBoard extends Disposable {
  /** Open transient notices: their text and how to close them. */
  private readonly open = new Map<string, { notice: Notice; close: () => void }>();
  /** Keys of shown persistent notices whose condition still holds. */
  private readonly shown = new Set<string>();

  constructor() {
    super();
    this._register(toDisposable(() => { for (const o of this.open.values()) o.close(); this.open.clear(); }));
  }

  update(notices: Notice[]): void {
    const keys = new Set(notices.map((n) => n.key));
    for (const [key, o] of this.open) if (!keys.has(key)) { o.close(); this.open.delete(key); }
    for (const key of this.shown) if (!keys.has(key)) this.shown.delete(key);
    for (const n of notices) {
      if (n.transient) { if (!this.open.has(n.key)) this.showTransient(n); }
      else if (!this.shown.has(n.key)) { this.shown.add(n.key); this.showPersistent(n); }
    }
  }

  /** The transient notices on screen now (for the tests). */
  openNotices(): Notice[] { return [...this.open.values()].map((o) => o.notice); }

  private showTransient(n: Notice): void {
    let close: () => void = () => {};
    const closed = new Promise<void>((resolve) => { close = resolve; });
    this.open.set(n.key, { notice: n, close });
    void vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: withActionLinks(n) }, () => closed);
  }

  private showPersistent(n: Notice): void {
    const show = n.severity === 'error' ? vscode.window.showErrorMessage : vscode.window.showWarningMessage;
    void show(n.message, ...n.actions.map((a) => a.title)).then((choice) => {
      const action = n.actions.find((a) => a.title === choice);
      if (action) void vscode.commands.executeCommand(action.command, ...(action.arguments ?? []));
    });
  }
}
